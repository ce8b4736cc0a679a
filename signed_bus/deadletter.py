"""Dead letters: where a verifying consumer puts every record it rejects.

A dead letter is the rejected record's ORIGINAL value bytes and key, re-produced unchanged to the
dead-letter topic, with headers saying why and where it came from. The headers never hold payload
bytes or secrets: the reason code, the source position and the error's message (which by the
error tree's rule carries only the kid, issuer and position as context).

The original record's own headers are not copied: they are unauthenticated and the source position
finds them. Nothing in a dead letter is trusted; an auditor reads them to see what was dropped.
"""

from __future__ import annotations

import asyncio
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

from .errors import VerificationError

__all__ = [
    "HEADER_ERROR",
    "HEADER_REASON",
    "HEADER_SOURCE_OFFSET",
    "HEADER_SOURCE_PARTITION",
    "HEADER_SOURCE_TIMESTAMP",
    "HEADER_SOURCE_TOPIC",
    "HEADER_VALUE_OMITTED",
    "DeadLetter",
    "DeadLetterWriter",
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
    message = str(error).encode("utf-8", "replace")[:_MAX_ERROR_BYTES]
    headers.append((HEADER_ERROR, message))
    return headers


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
        return cls(
            reason=reason,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            error=found.get(HEADER_ERROR, b"").decode("utf-8", "replace"),
            value=None if omitted else record.value,
            key=record.key,
            value_omitted=omitted,
            source_timestamp=int(timestamp) if timestamp is not None else None,
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
    ) -> asyncio.Future[Any]:
        """Queue the dead letter of ``record`` (an aiokafka ``ConsumerRecord``).

        Returns the delivery future (await it before committing the source offset). A value too
        large for the producer is left out (``signed-bus-value-omitted: 1``) rather than lost
        with its headers; pass ``omit_value=True`` to do that after the broker refused it.
        """
        headers = dead_letter_headers(
            error,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
        )
        if not omit_value:
            try:
                future: asyncio.Future[Any] = await self._producer.send(
                    self._topic, record.value or b"", key=record.key, headers=headers
                )
            except _TOO_LARGE:
                pass
            else:
                return future
        headers.append((HEADER_VALUE_OMITTED, b"1"))
        omitted: asyncio.Future[Any] = await self._producer.send(
            self._topic, b"", key=record.key, headers=headers
        )
        return omitted


def is_too_large(exc: BaseException) -> bool:
    """True when a dead-letter delivery failed because the value does not fit."""
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
