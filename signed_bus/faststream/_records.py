"""What the FastStream adapter reads of a consumed record and how it writes a dead letter,
for both broker flavours: ``faststream.kafka`` hands aiokafka ``ConsumerRecord`` objects (they
fit the gate's :class:`~signed_bus._gate.Record` as they are), ``faststream.confluent`` hands
confluent-kafka ``Message`` objects (read once into :class:`ConfluentRecord`)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from signed_bus._deadletter import (
    HEADER_KEY_OMITTED,
    HEADER_KEY_SHA256,
    HEADER_VALUE_NULL,
    HEADER_VALUE_OMITTED,
    Omitted,
    dead_letter_headers,
)
from signed_bus._gate import LOG_APPEND_TIME, Record
from signed_bus._librdkafka import message_headers
from signed_bus.errors import Undecodable, VerificationError

__all__ = ["ConfluentRecord", "as_record", "letter", "readable_headers"]

log = logging.getLogger("signed_bus.consumer")

# confluent_kafka.TIMESTAMP_LOG_APPEND_TIME (not imported: aiokafka-only apps lack the module)
_CONFLUENT_LOG_APPEND_TIME = 2


@dataclass(frozen=True, slots=True)
class ConfluentRecord:
    """A confluent-kafka ``Message`` as the gate reads it (one read of each accessor)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]

    @classmethod
    def of(cls, message: Any) -> ConfluentRecord:
        kind, timestamp = message.timestamp()
        key = message.key()
        value = message.value()
        return cls(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp=timestamp,
            timestamp_type=LOG_APPEND_TIME if kind == _CONFLUENT_LOG_APPEND_TIME else 0,
            # a str key or value only comes from a consumer with deserializers: take its bytes
            key=key.encode() if isinstance(key, str) else key,
            value=value.encode() if isinstance(value, str) else value,
            headers=tuple(message_headers(message) or ()),
        )


def as_record(raw: Any) -> Record:
    """The gate's view of one raw record of either flavour."""
    if callable(getattr(raw, "topic", None)):  # confluent-kafka: accessor methods
        return ConfluentRecord.of(raw)
    return raw  # type: ignore[no-any-return]  # aiokafka's ConsumerRecord fits Record


def readable_headers(raw: Any) -> None:
    """Drop, in place, the headers of a raw record (or tuple of them) that are not UTF-8 text.

    FastStream's parsers decode every header value as UTF-8 before any middleware sees the
    message, and a header that does not decode fails the parse, which the ack policy answers
    by redelivering the same record forever. Headers are not signed (anyone on the path can add
    one) and the gate never reads them, so the unreadable ones are dropped and logged."""
    for record in raw if isinstance(raw, tuple) else (raw,):
        accessor = getattr(record, "headers", None)
        if callable(accessor):  # confluent-kafka: a None value is skipped by the parser
            read = message_headers(record)
            if read is None:  # a header key that is not UTF-8: all of them dropped
                log.warning(
                    "dropped the headers of %s[%s]@%s: a header key is not UTF-8 text (headers "
                    "are not signed; the Kafka client cannot read them)",
                    *(_position(record)),
                )
                continue
            headers = read or ()
            kept = [(n, v) for n, v in headers if v is None or isinstance(v, str) or _text(v)]
            if len(kept) != len(headers):
                record.set_headers(kept)
        else:
            headers = accessor or ()
            kept = [(n, v) for n, v in headers if isinstance(v, bytes) and _text(v)]
            if len(kept) != len(headers):
                record.headers = tuple(kept)
        if len(kept) != len(headers):
            log.warning(
                "dropped %d header(s) that are not UTF-8 text from %s[%s]@%s (headers are not "
                "signed; FastStream cannot parse them)",
                len(headers) - len(kept),
                *(_position(record)),
            )


def _text(value: object) -> bool:
    if not isinstance(value, bytes):
        return False
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _position(record: Any) -> tuple[object, object, object]:
    if callable(getattr(record, "topic", None)):
        return record.topic(), record.partition(), record.offset()
    return record.topic, record.partition, record.offset


def letter(
    record: Record, error: VerificationError, omit: Omitted = Omitted.NOTHING
) -> tuple[bytes, bytes | None, dict[str, str]]:
    """The value, key and headers of ``record``'s dead letter, leaving out ``omit``: the same
    headers :class:`~signed_bus._kafka.deadletters.DeadLetterWriter` writes (FastStream takes
    headers as text; every dead-letter header is UTF-8 text)."""
    headers = dead_letter_headers(
        error,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
    )
    original = record.value
    if original is None and not isinstance(error, Undecodable):
        headers.append((HEADER_VALUE_NULL, b"1"))
    value = b"" if original is None else original
    key = record.key
    if omit >= Omitted.VALUE and original is not None:
        value = b""
        headers.append((HEADER_VALUE_OMITTED, b"1"))
    if omit >= Omitted.VALUE_AND_KEY and key is not None:
        headers.append((HEADER_KEY_OMITTED, b"1"))
        headers.append((HEADER_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()))
        key = None
    return value, key, {name: raw.decode() for name, raw in headers}
