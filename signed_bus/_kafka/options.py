"""How a :class:`~signed_bus._kafka.consumer.VerifyingConsumer` is configured: the options it
builds its own ``AIOKafkaConsumer`` from, and the backoff of its retries (docs/OPERATIONS.md,
"Producing and consuming")."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer

from signed_bus._kafka.producer import KAFKA_SECURITY_OPTIONS, ProducerOptions, check_security
from signed_bus.errors import ConfigurationError

__all__ = ["OWNED_OPTIONS", "Backoff", "ConsumerOptions", "require_read_committed"]

#: The dead-letter producer's ``max_batch_size`` (aiokafka's own default; a larger letter
#: still travels, alone in its batch).
DEAD_LETTER_BATCH_BYTES = 16_384

_READ_COMMITTED = "read_committed"

#: aiokafka consumer options the library sets itself: refused in ``ConsumerOptions.extra``.
OWNED_OPTIONS = frozenset(
    {
        "bootstrap_servers",
        "group_id",
        "client_id",
        "enable_auto_commit",
        "auto_commit_interval_ms",
        "auto_offset_reset",
        "isolation_level",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_poll_interval_ms",
        "fetch_max_wait_ms",
        "fetch_min_bytes",
        "max_partition_fetch_bytes",
        "max_poll_records",
        "key_deserializer",
        "value_deserializer",
        "loop",
    }
)


def require_read_committed(consumer: AIOKafkaConsumer) -> None:
    """Refuse an ``AIOKafkaConsumer`` that reads records of aborted transactions.

    Kept for the trace's RecordFetcher's handed-in consumer only: aiokafka has no documented way to
    read a consumer's isolation level, so this reads a private attribute. VerifyingConsumer
    builds its own consumer and needs no such check. Raises ConfigurationError.
    """
    level = getattr(consumer, "_isolation_level", None)
    if level != _READ_COMMITTED:
        raise ConfigurationError(
            f'the consumer must be built with isolation_level="read_committed" (it has '
            f"{level!r}): a copy inside an aborted transaction would claim the nonce of the "
            "honest record, which every group sharing the replay guard would then drop as a "
            "replay"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerOptions:
    """How :class:`VerifyingConsumer` builds its own ``AIOKafkaConsumer`` (auto commit off).

    ``isolation_level`` is always ``read_committed`` (any other value is refused): a record of an
    aborted transaction is never verified, claimed or delivered. ``security`` is passed to
    aiokafka as is (see :class:`~signed_bus._kafka.producer.ProducerOptions`) and kept out of
    ``repr``. ``extra`` holds further ``AIOKafkaConsumer`` keyword options (e.g.
    ``retry_backoff_ms``); the ones the library sets itself (:data:`OWNED_OPTIONS`, and the
    security ones, which go in ``security``) are refused.

    Batches and commits at steady load (docs/OPERATIONS.md, "Batches and commit interval"):
    the broker answers a fetch once ``fetch_min_bytes`` are ready or ``fetch_max_wait_ms``
    passed, so below ``fetch_min_bytes`` per ``fetch_max_wait_ms`` (about 1.3 MB/s with the
    defaults) a batch holds ``fetch_max_wait_ms`` of records (300 at 1,500/s) and each record
    waits up to that long in the broker; one replay claim per batch follows. Set
    ``fetch_min_bytes=1`` for the lowest latency at low rates (one batch, claim and commit per
    few records). ``commit_interval_ms`` spaces offset commits: finished offsets are committed
    at most that often (and always on a rebalance, ``stop()`` and ``commit()``), so a crash
    redelivers at most that interval's finished records; 0 commits at every batch boundary.
    """

    bootstrap_servers: str | Sequence[str]
    group_id: str
    topics: Sequence[str]
    client_id: str | None = None
    auto_offset_reset: str = "earliest"
    isolation_level: str = _READ_COMMITTED
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    fetch_max_wait_ms: int = 200
    fetch_min_bytes: int = 262_144
    commit_interval_ms: int = 2_000
    max_partition_fetch_bytes: int = 1_048_576
    security: Mapping[str, Any] = field(default_factory=dict, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_security(self.security)
        if isinstance(self.topics, str) or not self.topics:
            raise ConfigurationError("topics must be a non-empty sequence of topic names")
        if not self.group_id:
            raise ConfigurationError("group_id is required: offsets are committed per group")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigurationError("auto_offset_reset must be 'earliest' or 'latest'")
        if self.fetch_max_wait_ms < 0 or self.fetch_min_bytes < 1 or self.commit_interval_ms < 0:
            raise ConfigurationError(
                "fetch_max_wait_ms and commit_interval_ms must be >= 0 and fetch_min_bytes >= 1"
            )
        if self.isolation_level != _READ_COMMITTED:
            raise ConfigurationError(
                'isolation_level must be "read_committed": a record of an aborted transaction '
                "must never claim a nonce in the replay guard every group shares"
            )
        owned = sorted(
            name for name in self.extra if name in OWNED_OPTIONS or name in KAFKA_SECURITY_OPTIONS
        )
        if owned:
            raise ConfigurationError(
                f"extra may not set {', '.join(owned)}: the library sets them (use the named "
                "option, or security for connection settings)"
            )

    def build(self) -> AIOKafkaConsumer:
        """A new, unsubscribed, unstarted consumer (needs a running event loop)."""
        kwargs: dict[str, Any] = dict(self.extra)
        if self.client_id is not None:
            kwargs["client_id"] = self.client_id
        return AIOKafkaConsumer(
            bootstrap_servers=_servers(self.bootstrap_servers),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            isolation_level=_READ_COMMITTED,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_poll_interval_ms=self.max_poll_interval_ms,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            fetch_min_bytes=self.fetch_min_bytes,
            max_partition_fetch_bytes=self.max_partition_fetch_bytes,
            **kwargs,
            **dict(self.security),
        )

    def dead_letter_producer(self) -> ProducerOptions:
        """Options for the dead-letter producer built from the same connection settings.

        ``acks=all`` without idempotence, in batches of at most 16 KiB: letters are delivered
        at least once anyway (a duplicate letter is harmless: a redrive of it is a replay), and
        a dead-letter topic's ``max.message.bytes`` bounds a whole record batch. A batch it
        refuses is resent letter by letter (:class:`~signed_bus._kafka.deadletters.
        DeadLetterSender`), which an idempotent producer cannot do: the refused batch spent its
        sequence numbers, and the next one fails with OutOfOrderSequenceNumber. Small batches
        keep such refusals rare (a letter is usually the size of the record it carries).
        """
        return ProducerOptions(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id or self.group_id}-dead-letters",
            enable_idempotence=False,
            max_batch_size=DEAD_LETTER_BATCH_BYTES,
            security=self.security,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits
    ``min(max_ms, initial_ms * multiplier ** (n - 1))``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so consumers that lost Redis together do not retry together."""

    initial_ms: int = 100
    max_ms: int = 5_000
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial_ms <= 0 or self.max_ms < self.initial_ms or self.multiplier < 1:
            raise ConfigurationError("backoff needs 0 < initial_ms <= max_ms and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError("backoff jitter must be in [0, 1)")

    def delay(self, attempt: int, *, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 64)
        base = min(float(self.max_ms), self.initial_ms * self.multiplier**exponent)
        return base * (1 - self.jitter + 2 * self.jitter * rand()) / 1000


def _servers(servers: str | Sequence[str]) -> str | list[str]:
    return servers if isinstance(servers, str) else list(servers)
