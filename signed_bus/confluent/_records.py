"""confluent-kafka messages as the records the gate reads, and the librdkafka settings the
library owns. No I/O here."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from aiokafka import TopicPartition
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaError, KafkaException, Message

from signed_bus._gate import LOG_APPEND_TIME
from signed_bus._librdkafka import message_headers
from signed_bus.errors import ConfigurationError

__all__ = [
    "KafkaRecord",
    "SkippedOffset",
    "consumer_config",
    "dead_letter_config",
    "split_messages",
]

log = logging.getLogger("signed_bus.consumer")

_READ_COMMITTED: Final = "read_committed"
# Per-message errors that name an offset the client could not decode: dead-lettered by position.
_UNDECODABLE: Final = frozenset({KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION})
_NO_HEADERS: Final[tuple[tuple[str, bytes], ...]] = ()


class KafkaRecord(NamedTuple):
    """A consumed confluent-kafka message, read once into plain attributes (``Message``
    methods are C calls; the gate reads each attribute more than once). ``timestamp_type`` is 1
    for LogAppendTime and 0 otherwise, as in aiokafka; ``headers`` are unsigned. A named tuple:
    built once per record, and a frozen dataclass costs several times more to build."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class SkippedOffset:
    """An offset librdkafka handed out as an error instead of a record (a corrupt message):
    dead-lettered as ``undecodable`` by its position. Nothing else can be read of it."""

    topic: str
    partition: int
    offset: int
    error: str

    @property
    def last_offset(self) -> int:
        return self.offset

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def key(self) -> None:
        return None

    @property
    def value(self) -> None:
        return None

    @property
    def timestamp(self) -> None:
        return None


def split_messages(
    messages: Sequence[Message],
) -> tuple[dict[TopicPartition, list[KafkaRecord]], list[SkippedOffset]]:
    """Group one ``consume()`` result by partition, in offset order; corrupt messages become
    skipped offsets; other per-message errors are logged (a fatal one is raised)."""
    records: dict[TopicPartition, list[KafkaRecord]] = {}
    skipped: list[SkippedOffset] = []
    for message in messages:
        error = message.error()
        topic = message.topic()
        partition = message.partition()
        offset = message.offset()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            if (
                error.code() in _UNDECODABLE
                and topic
                and partition is not None
                and offset is not None
                and offset >= 0
            ):
                skipped.append(SkippedOffset(topic, partition, offset, error.name()))
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("the Kafka client reported %s: %s", error.name(), error.str())
            continue
        assert topic is not None and partition is not None and offset is not None
        headers = message_headers(message)
        if headers is None:  # as the aiokafka front: dead-lettered by position, never fatal
            skipped.append(SkippedOffset(topic, partition, offset, "header key not UTF-8"))
            continue
        kind, timestamp = message.timestamp()
        records.setdefault(TopicPartition(topic, partition), []).append(
            KafkaRecord(
                topic,
                partition,
                offset,
                timestamp,
                LOG_APPEND_TIME if kind == TIMESTAMP_LOG_APPEND_TIME else 0,
                _bytes(message.key()),
                _bytes(message.value()),
                _headers(headers) if headers else _NO_HEADERS,
            )
        )
    return records, skipped


def _headers(headers: object) -> list[tuple[str, bytes]]:
    items = headers.items() if isinstance(headers, dict) else headers
    assert isinstance(items, Iterable)
    return [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in items]


def _bytes(data: object) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):  # only with a deserializer; a plain Consumer returns bytes
        return data.encode()
    raise TypeError("a verifying consumer reads raw bytes: build it without deserializers")


def consumer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The librdkafka settings of a verifying consumer: ``config`` with auto commit and auto
    offset store off and ``read_committed`` enforced (a value that would break at-least-once or
    the replay rule is refused), ``auto.offset.reset`` earliest unless set."""
    if not isinstance(config, Mapping):
        raise ConfigurationError("config must be a mapping of librdkafka settings")
    if not config.get("group.id"):
        raise ConfigurationError("group.id is required: offsets are committed per group")
    if not config.get("bootstrap.servers"):
        raise ConfigurationError("bootstrap.servers is required")
    for name in ("enable.auto.commit", "enable.auto.offset.store"):
        if name in config and config[name] not in (False, "false"):
            raise ConfigurationError(
                f"{name} must be false: offsets are committed only for handled records"
            )
    if config.get("isolation.level", _READ_COMMITTED) != _READ_COMMITTED:
        raise ConfigurationError(
            'isolation.level must be "read_committed": a record of an aborted transaction '
            "must never claim a nonce in the replay guard every group shares"
        )
    built = dict(config)
    built["enable.auto.commit"] = False
    built["enable.auto.offset.store"] = False
    built["isolation.level"] = _READ_COMMITTED
    built.setdefault("auto.offset.reset", "earliest")
    return built


# librdkafka settings a dead-letter producer built by a consumer copies from the consumer's.
_CONNECTION_PREFIXES: Final = ("bootstrap.servers", "client.id", "security.", "sasl.", "ssl.")


def dead_letter_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of the dead-letter producer a consumer builds: its connection settings,
    acks=all and idempotence; a delivery that takes over 30 s is retried with backoff."""
    built = {k: v for k, v in config.items() if k.startswith(_CONNECTION_PREFIXES)}
    built.update({"acks": "all", "enable.idempotence": True, "linger.ms": 5})
    built["message.timeout.ms"] = 30_000
    return built
