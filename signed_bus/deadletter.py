"""Dead letters: where a verifying consumer puts every record it rejects.

A dead letter is the rejected record's ORIGINAL value bytes and key, re-produced unchanged to the
dead-letter topic, with headers saying why and where it came from. The headers never hold payload
bytes or secrets: the reason code, the source position and the error's message (which by the
error tree's rule carries only the kid, issuer and position as context).

The original record's own headers are not copied: they are unauthenticated and the source position
finds them. Nothing in a dead letter is trusted; an auditor reads them to see what was dropped.

A record that does not fit the dead-letter producer or topic loses its value first
(``signed-bus-value-omitted: 1``), then its key too (``signed-bus-key-omitted: 1``, with the key's
SHA-256 in ``signed-bus-key-sha256``): a record can be as large as the source topic allows while
the dead letter adds its headers, so a key near the broker's limit cannot travel again.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

from .errors import Undecodable, VerificationError

__all__ = [
    "HEADER_ERROR",
    "HEADER_KEY_OMITTED",
    "HEADER_KEY_SHA256",
    "HEADER_NOT_DECODED",
    "HEADER_REASON",
    "HEADER_SOURCE_LAST_OFFSET",
    "HEADER_SOURCE_OFFSET",
    "HEADER_SOURCE_PARTITION",
    "HEADER_SOURCE_TIMESTAMP",
    "HEADER_SOURCE_TOPIC",
    "HEADER_VALUE_OMITTED",
    "DeadLetter",
    "DeadLetterWriter",
    "Omitted",
    "dead_letter_headers",
    "header_map",
    "is_retriable",
    "is_too_large",
]

HEADER_REASON = "signed-bus-reason"
HEADER_SOURCE_TOPIC = "signed-bus-source-topic"
HEADER_SOURCE_PARTITION = "signed-bus-source-partition"
HEADER_SOURCE_OFFSET = "signed-bus-source-offset"
HEADER_SOURCE_TIMESTAMP = "signed-bus-source-timestamp"
HEADER_ERROR = "signed-bus-error"
#: Present (value b"1") when the original value did not fit in the dead-letter topic and was left
#: out; the record is still at its source position until the topic's retention removes it.
HEADER_VALUE_OMITTED = "signed-bus-value-omitted"
#: Present (value b"1") when the original key did not fit either and was left out too (the value
#: is then omitted as well); :data:`HEADER_KEY_SHA256` then names the key.
HEADER_KEY_OMITTED = "signed-bus-key-omitted"
#: The SHA-256 of the omitted key, lowercase hex (only with :data:`HEADER_KEY_OMITTED`).
HEADER_KEY_SHA256 = "signed-bus-key-sha256"
#: Present (value b"1") when the Kafka client could not decode the source record (reason
#: ``undecodable``): the letter has no value and no key because none was ever read; read the
#: source offsets with another client while the topic's retention keeps them.
HEADER_NOT_DECODED = "signed-bus-not-decoded"
#: With :data:`HEADER_NOT_DECODED`: the last source offset skipped with the first one (the rest
#: of its record batch, unreadable by the client too).
HEADER_SOURCE_LAST_OFFSET = "signed-bus-source-last-offset"

# Error messages are library-made and short; the cap keeps one odd message from bloating a record.
_MAX_ERROR_BYTES = 512

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)
# Transient whatever aiokafka's flag says: KafkaTimeoutError (no metadata, a full buffer, an
# expired batch during a broker outage) is marked retriable=False, yet a retry after the broker
# returns succeeds.
_TRANSIENT = (KafkaTimeoutError, KafkaConnectionError)


def dead_letter_headers(
    error: VerificationError,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int | None = None,
) -> list[tuple[str, bytes]]:
    """The headers of a dead letter, all UTF-8 text (integers in decimal)."""
    headers = [
        (HEADER_REASON, error.reason.encode()),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
    ]
    if timestamp is not None:
        headers.append((HEADER_SOURCE_TIMESTAMP, str(timestamp).encode()))
    if isinstance(error, Undecodable):
        headers.append((HEADER_NOT_DECODED, b"1"))
        if error.last_offset is not None:
            headers.append((HEADER_SOURCE_LAST_OFFSET, str(error.last_offset).encode()))
    message = str(error).encode("utf-8", "replace")[:_MAX_ERROR_BYTES]
    headers.append((HEADER_ERROR, message))
    return headers


class Omitted(enum.IntEnum):
    """What a dead letter leaves out of the original record, in the order it is given up."""

    NOTHING = 0
    VALUE = 1
    VALUE_AND_KEY = 2


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter read back from the dead-letter topic (see :meth:`from_record`)."""

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    error: str
    value: bytes | None
    key: bytes | None
    value_omitted: bool = False
    source_timestamp: int | None = None
    key_omitted: bool = False
    #: SHA-256 of the omitted key, lowercase hex (None unless ``key_omitted``)
    key_sha256: str | None = None

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """Parse an aiokafka ``ConsumerRecord`` of the dead-letter topic.

        Raises ``ValueError`` when the record lacks the headers a dead letter carries.
        """
        found = header_map(record.headers)
        try:
            reason = found[HEADER_REASON].decode()
            topic = found[HEADER_SOURCE_TOPIC].decode()
            partition = int(found[HEADER_SOURCE_PARTITION])
            offset = int(found[HEADER_SOURCE_OFFSET])
        except (KeyError, ValueError) as exc:
            raise ValueError("not a signed-bus dead letter: missing or bad headers") from exc
        timestamp = found.get(HEADER_SOURCE_TIMESTAMP)
        omitted = found.get(HEADER_VALUE_OMITTED) == b"1"
        key_omitted = found.get(HEADER_KEY_OMITTED) == b"1"
        digest = found.get(HEADER_KEY_SHA256) if key_omitted else None
        return cls(
            reason=reason,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            error=found.get(HEADER_ERROR, b"").decode("utf-8", "replace"),
            value=None if omitted else record.value,
            key=None if key_omitted else record.key,
            value_omitted=omitted,
            source_timestamp=int(timestamp) if timestamp is not None else None,
            key_omitted=key_omitted,
            key_sha256=digest.decode("ascii", "replace") if digest is not None else None,
        )


class DeadLetterWriter:
    """Produces dead letters to one topic through a plain (unsigned) aiokafka producer.

    The producer's lifecycle belongs to whoever made it; the writer never starts or stops it.
    """

    __slots__ = ("_producer", "_topic")

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    @property
    def topic(self) -> str:
        return self._topic

    async def send(
        self,
        record: Any,
        error: VerificationError,
        *,
        omit_value: bool = False,
        omit_key: bool = False,
    ) -> asyncio.Future[Any]:
        """Queue the dead letter of ``record`` (an aiokafka ``ConsumerRecord``).

        Returns the delivery future (await it before committing the source offset). A value too
        large for the producer is left out (``signed-bus-value-omitted: 1``) rather than lost
        with its headers, then the key too (``signed-bus-key-omitted: 1``); pass
        ``omit_value=True`` or ``omit_key=True`` to do that after the broker refused it.
        """
        if omit_key:
            omit = Omitted.VALUE_AND_KEY
        else:
            omit = Omitted.VALUE if omit_value else Omitted.NOTHING
        future, _ = await self.send_letter(record, error, omit=omit)
        return future

    async def send_letter(
        self,
        record: Any,
        error: VerificationError,
        *,
        omit: Omitted = Omitted.NOTHING,
    ) -> tuple[asyncio.Future[Any], Omitted]:
        """Queue the dead letter of ``record`` leaving out at least ``omit``.

        While the producer refuses the letter as too large, it leaves out more (the value, then
        the key). Returns the delivery future and what the queued letter left out (so a refusal
        by the broker can be retried leaving out more). Raises the producer's too-large error
        when even the letter without value and key does not fit.
        """
        headers = dead_letter_headers(
            error,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
        )
        while True:
            value: bytes = record.value or b""
            key: bytes | None = record.key
            extra: list[tuple[str, bytes]] = []
            if omit >= Omitted.VALUE:
                value = b""
                extra.append((HEADER_VALUE_OMITTED, b"1"))
            if omit >= Omitted.VALUE_AND_KEY and key is not None:
                extra.append((HEADER_KEY_OMITTED, b"1"))
                extra.append((HEADER_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()))
                key = None
            try:
                future: asyncio.Future[Any] = await self._producer.send(
                    self._topic, value, key=key, headers=headers + extra
                )
            except _TOO_LARGE:
                if omit >= Omitted.VALUE_AND_KEY:
                    raise
                omit = Omitted(omit + 1)
                continue
            return future, omit


def is_too_large(exc: BaseException) -> bool:
    """True when a dead-letter send or delivery failed because the letter does not fit."""
    return isinstance(exc, _TOO_LARGE)


def is_retriable(exc: BaseException) -> bool:
    """True when a dead-letter send failed for a reason that a later retry can cure: a timeout,
    a lost connection, or any aiokafka error flagged ``retriable``."""
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


def header_map(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    """First value of each header name (helper for auditors and tests)."""
    found: dict[str, bytes] = {}
    for name, raw in headers:
        found.setdefault(name, raw)
    return found
