"""VerifyingConsumer: verify, claim and dead-letter before the application sees a record.

One consumed batch goes through these steps (docs/OPERATIONS.md, "Producing and consuming"):

1. ``getmany()`` returns up to ``max_records`` records grouped by partition, each in offset order
   (through :func:`signed_bus._kafka.fetch.fetch_records`: a record batch the Kafka client cannot
   decode is skipped and rejected as ``undecodable`` instead of stopping the consumer).
2. Every record is verified. The freshness reference is the broker's append time when the record
   carries LogAppendTime (``timestamp_type == 1``), else the verifier's clock (one WARNING per
   CreateTime topic).
3. The nonces of all verified records are claimed in ONE replay-guard call. REPLAY is a
   rejection like any other (reason ``replay``).
4. Rejected records are logged (one WARNING each, never the payload), counted by reason and, with
   a dead-letter topic, re-produced there; those sends are awaited (durable) before any offset
   past them is committed.
5. Verified records are delivered partition by partition, in offset order.
6. Offsets are committed only for records the application finished with (at-least-once).

Redis unreachable: fail closed by default. The batch is held, nothing of it is delivered or
committed, and the claim is retried with capped exponential backoff (the consumer keeps polling
with its partitions paused, so it stays in its group); then the same batch continues. With
``fail_open=True`` the batch is delivered and every record counted as ``unchecked``.

A record that waited after it verified (held for Redis, held for the dead-letter topic, a relay's
transform) is checked against the whole freshness window again before it is claimed, delivered
or relayed (:meth:`Verifier.check_fresh`; docs/OPERATIONS.md "Freshness re-checks"). Consumers
read ``read_committed`` only (:func:`require_read_committed`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from signed_bus._deadletter import DeadLetterWriter, Omitted, is_retriable, is_too_large
from signed_bus._kafka.fetch import Skipped, fetch_records
from signed_bus._kafka.producer import ProducerOptions, SignedProducer, check_security
from signed_bus._lifecycle import AsyncLifecycle
from signed_bus._metrics import ConsumerMetrics
from signed_bus._replay.guard import ClaimRow, ClaimVerdict, RedisReplayGuard
from signed_bus._verifier import VerifiedMessage, Verifier
from signed_bus.errors import (
    ConfigurationError,
    Expired,
    MalformedEnvelope,
    NotYetValid,
    ReplayDetected,
    ReplayGuardUnavailable,
    Undecodable,
    VerificationError,
)

__all__ = [
    "Backoff",
    "ConsumedBatch",
    "ConsumedMessage",
    "ConsumerOptions",
    "Handler",
    "Record",
    "VerifyingConsumer",
    "require_read_committed",
]

log = logging.getLogger("signed_bus.consumer")


class Record(Protocol):
    """What signed-bus reads of aiokafka's ``ConsumerRecord`` (aiokafka ships no types)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


_LOG_APPEND_TIME = 1
_READ_COMMITTED = "read_committed"
# What a record waited for when a re-check finds it stale (ends the rejection's message).
_HELD_FOR_GUARD = "the batch was held for the replay guard (Redis unavailable)"
_HELD_FOR_DEAD_LETTERS = "the batch was held for the dead-letter topic (unavailable)"
_HELD_FOR_RELAY = "the relay's transform ran, before its outputs were published"


def require_read_committed(consumer: AIOKafkaConsumer) -> None:
    """Refuse an ``AIOKafkaConsumer`` that reads records of aborted transactions.

    aiokafka defaults to ``read_uncommitted``. A copy of an honest envelope inside a transaction
    that is later aborted would then verify and claim the envelope's nonce at the copy's
    position, and every group sharing the replay guard would drop the honest original as a
    replay. Raises ConfigurationError naming the setting.
    """
    level = getattr(consumer, "_isolation_level", None)
    if level != _READ_COMMITTED:
        raise ConfigurationError(
            f'the consumer must be built with isolation_level="read_committed" (it has '
            f"{level!r}): a copy inside an aborted transaction would claim the nonce of the "
            "honest record, which every group sharing the replay guard would then drop as a "
            "replay"
        )


_NEW = ClaimVerdict.NEW
_SAME = ClaimVerdict.SAME_POSITION
_REPLAY = ClaimVerdict.REPLAY


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerOptions:
    """How :class:`VerifyingConsumer` builds its own ``AIOKafkaConsumer`` (auto commit off).

    ``isolation_level`` is always ``read_committed`` (any other value is refused): a record of an
    aborted transaction is never verified, claimed or delivered (see
    :func:`require_read_committed`). ``security`` is passed to aiokafka as is (see
    :class:`~signed_bus._kafka.producer.ProducerOptions`) and kept out of ``repr``.
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
    fetch_max_wait_ms: int = 500
    max_partition_fetch_bytes: int = 1_048_576
    security: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_security(self.security)
        if isinstance(self.topics, str) or not self.topics:
            raise ConfigurationError("topics must be a non-empty sequence of topic names")
        if not self.group_id:
            raise ConfigurationError("group_id is required: offsets are committed per group")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigurationError("auto_offset_reset must be 'earliest' or 'latest'")
        if self.isolation_level != _READ_COMMITTED:
            raise ConfigurationError(
                'isolation_level must be "read_committed": a record of an aborted transaction '
                "must never claim a nonce in the replay guard every group shares"
            )

    def build(self) -> AIOKafkaConsumer:
        """A new, unsubscribed, unstarted consumer (needs a running event loop)."""
        kwargs: dict[str, Any] = {}
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
            max_partition_fetch_bytes=self.max_partition_fetch_bytes,
            **kwargs,
            **dict(self.security),
        )

    def dead_letter_producer(self) -> ProducerOptions:
        """Options for the dead-letter producer built from the same connection settings."""
        return ProducerOptions(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id or self.group_id}-dead-letters",
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


@dataclass(frozen=True, slots=True)
class ConsumedMessage:
    """A delivered record: the verified envelope plus where and when Kafka stored it.

    ``claim`` is the replay guard's verdict: NEW (first position seen) or SAME_POSITION (this
    record was claimed before at this very position: another group's fan-out or a redelivery);
    None when no claim was made (audit mode, or ``fail_open`` during a Redis outage).
    ``record`` is aiokafka's ``ConsumerRecord``; its value is exactly the verified envelope.
    ``headers`` are the record's unsigned Kafka headers (tracing); never trust them.
    """

    # Three fields, the rest read through: built once per record, so kept small.
    verified: VerifiedMessage
    record: Record
    claim: ClaimVerdict | None

    @property
    def payload(self) -> object:
        """The decoded body (msgpack content type), decoded once."""
        return self.verified.payload

    @property
    def body(self) -> bytes:
        """The body bytes exactly as the producer signed them."""
        return self.verified.body

    @property
    def topic(self) -> str:
        return self.record.topic

    @property
    def partition(self) -> int:
        return self.record.partition

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def timestamp(self) -> int:
        """The record's Kafka timestamp (the broker's append time on a LogAppendTime topic)."""
        return self.record.timestamp

    @property
    def timestamp_type(self) -> int:
        """1 for LogAppendTime, 0 for CreateTime."""
        return self.record.timestamp_type

    @property
    def key(self) -> bytes | None:
        return self.record.key

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        """The record's Kafka headers: NOT signed (tracing adds them); never trust them."""
        return self.record.headers


@dataclass(frozen=True, slots=True)
class ConsumedBatch:
    """One ``getmany`` worth of records from :meth:`VerifyingConsumer.getbatch`, not committed.

    ``messages`` are the verified records, in partition and offset order. ``offsets`` covers the
    whole batch, rejected records included (they are already dead-lettered): per partition, the
    offset after the batch's last record, which is what to commit. ``first_offsets`` is per
    partition the batch's first offset: seek there to read the batch again.
    """

    messages: tuple[ConsumedMessage, ...]
    offsets: Mapping[TopicPartition, int]
    first_offsets: Mapping[TopicPartition, int]


_EMPTY_BATCH = ConsumedBatch((), {}, {})


Handler = Callable[[ConsumedMessage], Awaitable[object]]

_Verified = tuple[int, TopicPartition, Record, VerifiedMessage]

# One entry per consumed record, in delivery order: (partition, offset + 1, message), where the
# message is None for a rejected record (already dead-lettered when the entry is handed out).
_Entry = tuple[TopicPartition, int, ConsumedMessage | None]

# A rejected record, or a range of offsets the Kafka client could not decode, with its error.
_Rejected = tuple[Record | Skipped, VerificationError]


class _Batch:
    """One ``getmany`` result between verification and delivery."""

    __slots__ = ("entries", "rejected", "revoked", "skipped", "verified")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        # (index in entries, partition, record, message) for every record that verified
        self.verified: list[_Verified] = []
        self.rejected: list[_Rejected] = []
        # ranges of offsets the Kafka client could not decode (also in ``rejected``)
        self.skipped: list[Skipped] = []
        # partitions revoked since the batch was fetched: their new owner delivers them
        self.revoked: set[TopicPartition] = set()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: VerifyingConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class VerifyingConsumer(AsyncLifecycle):
    """Delivers only verified, fresh, first-position records; commits only what was handled.

    ``kafka`` is a built ``AIOKafkaConsumer`` (yours: created with ``enable_auto_commit=False``,
    ``isolation_level="read_committed"`` and a ``group_id``, subscribed, started and stopped by
    you; pass :attr:`rebalance_listener` to ``subscribe`` to commit finished records on a
    rebalance) or :class:`ConsumerOptions` (built, subscribed and started by :meth:`start`,
    closed by :meth:`stop`).

    ``guard`` is required unless the verifier is in audit mode (then it must be None: audit
    mode checks neither freshness nor replay). Its lifecycle is the caller's; claims start it.
    Every claim carries the verifier's :class:`~signed_bus._freshness.Freshness`, so the guard
    keeps each nonce as long as this verifier could accept a copy of its envelope.

    ``dead_letter_topic`` receives every rejected record; ``dead_letter_producer`` (an
    ``AIOKafkaProducer`` or a :class:`SignedProducer`, started and stopped by you) sends them,
    or one is built from the :class:`ConsumerOptions`.
    """

    def __init__(
        self,
        kafka: AIOKafkaConsumer | ConsumerOptions,
        *,
        verifier: Verifier,
        guard: RedisReplayGuard | None = None,
        dead_letter_topic: str | None = None,
        dead_letter_producer: AIOKafkaProducer | SignedProducer | None = None,
        fail_open: bool = False,
        max_records: int = 1_000,
        timeout_ms: int = 1_000,
        backoff: Backoff | None = None,
    ) -> None:
        if isinstance(kafka, ConsumerOptions):
            self._options: ConsumerOptions | None = kafka
            self._consumer: AIOKafkaConsumer | None = None
        elif isinstance(kafka, AIOKafkaConsumer):
            if getattr(kafka, "_enable_auto_commit", True):
                raise ConfigurationError(
                    "the consumer must be built with enable_auto_commit=False: offsets are "
                    "committed only after the handler finished with a record"
                )
            if getattr(kafka, "_group_id", None) is None:
                raise ConfigurationError("the consumer needs a group_id to commit offsets")
            require_read_committed(kafka)
            self._options = None
            self._consumer = kafka
        else:
            raise ConfigurationError("kafka must be an AIOKafkaConsumer or ConsumerOptions")
        self._audit = verifier.audit
        if self._audit and guard is not None:
            raise ConfigurationError("audit mode does not check replays: pass guard=None")
        if not self._audit and guard is None:
            raise ConfigurationError("a replay guard is required unless the verifier audits")
        if dead_letter_producer is not None and dead_letter_topic is None:
            raise ConfigurationError("dead_letter_producer given without dead_letter_topic")
        if dead_letter_topic is not None and dead_letter_producer is None and self._options is None:
            raise ConfigurationError(
                "a consumer handed in needs a dead_letter_producer for its dead_letter_topic"
            )
        if max_records < 1 or timeout_ms < 0:
            raise ConfigurationError("max_records must be >= 1 and timeout_ms >= 0")
        self._verifier = verifier
        self._freshness = verifier.freshness
        self._guard = guard
        self._dead_letter_topic = dead_letter_topic
        self._dead_letter_source = dead_letter_producer
        self._dead_letter_owned: AIOKafkaProducer | None = None
        self._dead_letters: DeadLetterWriter | None = None
        self._fail_open = fail_open
        self._max_records = max_records
        self._timeout_ms = timeout_ms
        self._backoff = backoff or Backoff()
        self.metrics = ConsumerMetrics()
        self._listener = _Listener(self)
        self._warned_create_time: set[str] = set()
        # Delivery state: the current batch, the next entry to hand out, the entry handed out
        # and not yet finished, finished offsets not yet committed, partitions revoked since
        # the batch was fetched (their remaining entries belong to the new owner now).
        self._queue: list[_Entry] = []
        self._pos = 0
        self._inflight: int | None = None
        self._done: dict[TopicPartition, int] = {}
        self._revoked: set[TopicPartition] = set()
        self._started = False
        self._stopping = False
        self._closed = False
        self._close_after_run = False
        self._active: asyncio.Task[Any] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The underlying aiokafka consumer (built by :meth:`start` when options were given)."""
        if self._consumer is None:
            raise RuntimeError("VerifyingConsumer.start() has not been called")
        return self._consumer

    @property
    def rebalance_listener(self) -> ConsumerRebalanceListener:
        """Pass to ``subscribe(listener=...)`` of a consumer you hand in (optional): on a
        rebalance it commits the records already finished and drops the rest of the batch for
        the revoked partitions (their new owner reads them from the committed offset)."""
        return self._listener

    @property
    def revoked_since_fetch(self) -> frozenset[TopicPartition]:
        """Partitions revoked by a rebalance since the current batch was fetched (reset by each
        fetch): their records belong to the new owner, so nothing of them may be committed or
        published for this batch."""
        return frozenset(self._revoked)

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("VerifyingConsumer was stopped; make a new one")
        if self._started:
            return
        try:
            if self._options is not None:
                consumer = self._options.build()
                self._consumer = consumer
                consumer.subscribe(list(self._options.topics), listener=self._listener)
                await consumer.start()
            if self._dead_letter_topic is not None:
                source = self._dead_letter_source
                if source is None:
                    assert self._options is not None  # checked in __init__
                    producer = self._options.dead_letter_producer().build()
                    self._dead_letter_owned = producer
                    await producer.start()
                elif isinstance(source, SignedProducer):
                    producer = source.producer
                else:
                    producer = source
                self._dead_letters = DeadLetterWriter(producer, self._dead_letter_topic)
        except BaseException:
            await self._close_owned()
            raise
        self._started = True

    async def stop(self) -> None:
        """Commit what the application finished, then close what :meth:`start` built.

        Idempotent. A record handed out by ``async for`` and not followed by a request for the
        next one is not committed (it is delivered again after a restart). Called from another
        task, waits for :meth:`run` to finish the record in hand; called from inside the
        handler, :meth:`run` stops after that handler returns.
        """
        if self._closed:
            return
        self._stopping = True
        if self._active is not None and self._active is asyncio.current_task():
            self._close_after_run = True  # inside run()'s handler: run() closes on return
            return
        await self._idle.wait()
        await self._close()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                await self._commit_quietly()
        finally:
            await self._close_owned()

    async def _close_owned(self) -> None:
        try:
            if self._options is not None and self._consumer is not None:
                await self._consumer.stop()
        finally:
            if self._dead_letter_owned is not None:
                await self._dead_letter_owned.stop()

    # -- delivery ----------------------------------------------------------------------------

    async def run(self, handler: Handler) -> None:
        """Await ``handler`` for every delivered message until :meth:`stop` is called.

        Offsets are committed after each batch (and before the next ``getmany``) for the
        records whose handler returned, plus the rejected records before them. If the handler
        raises, the offsets finished so far are committed, that record is not, and the error
        propagates: the record is delivered again by the next ``run``/``async for`` on this
        consumer, or after a restart (at-least-once). Cancelling ``run`` commits nothing more.
        """
        self._enter()
        self._rewind()
        try:
            while not self._stopping:
                message = self._next()
                if message is None:
                    await self._commit(wait=False)
                    if not self._stopping:
                        await self._fill()
                    continue
                try:
                    await handler(message)
                except Exception:
                    await self._commit_quietly()
                    raise
                self._finish()
            await self._commit()
        finally:
            self._leave()
            if self._close_after_run:
                await self._close()

    def __aiter__(self) -> VerifyingConsumer:
        # A new loop starts: the message the last loop received and never finished (the loop
        # body raised or broke out) is delivered again first.
        self._rewind()
        return self

    async def __anext__(self) -> ConsumedMessage:
        """The next verified message. Asking for it means the previous one is finished: its
        offset (and any rejected records before it) is committed at the next batch boundary
        or by :meth:`stop`/:meth:`commit`."""
        if self._closed or self._stopping:
            raise StopAsyncIteration
        self._finish()
        if self._active is None and self._started:
            # The batch has a message ready: nothing is awaited, so no other task can run
            # between here and the return, and _enter/_leave would have no observer.
            message = self._next()
            if message is not None:
                return message
        self._enter()
        try:
            while True:
                message = self._next()
                if message is not None:
                    return message
                await self._commit(wait=False)
                if self._stopping:
                    raise StopAsyncIteration
                await self._fill()
                if self._stopping:
                    raise StopAsyncIteration
        finally:
            self._leave()

    async def commit(self) -> None:
        """Mark the message in hand finished and commit everything finished so far."""
        self._finish()
        await self._commit()

    # -- whole batches (relays) ----------------------------------------------------------------

    async def getbatch(self) -> ConsumedBatch | None:
        """The next ``getmany`` batch, verified, claimed and dead-lettered, handed out whole and
        NOT committed.

        For a hop that must commit its input offsets together with its own outputs: commit
        ``batch.offsets`` when done with the batch, with :meth:`commit_offsets` or in a Kafka
        transaction (``send_offsets_to_transaction``), or seek to ``batch.first_offsets`` to
        read it again. Returns an empty batch when ``timeout_ms`` passed without records (so
        the caller can check its own stop flag) and None once the consumer is stopping. Not to
        be mixed with :meth:`run` or ``async for`` on the same consumer.
        """
        if self._closed or self._stopping:
            return None
        self._enter()
        try:
            if self._pos < len(self._queue) or self._inflight is not None:
                raise RuntimeError("getbatch cannot take over a batch delivered message by message")
            fetched = await fetch_records(
                self.consumer, timeout_ms=self._timeout_ms, max_records=self._max_records
            )
            if not fetched:
                return None if self._stopping else _EMPTY_BATCH
            batch = self._verify(fetched.records, fetched.skipped)
            self._revoked = batch.revoked
            entries = await self._settle(batch)
        finally:
            self._leave()
        if entries is None:  # stopped while the batch was held (replay guard unavailable)
            return None
        messages: list[ConsumedMessage] = []
        offsets: dict[TopicPartition, int] = {}
        first: dict[TopicPartition, int] = {}
        for tp, next_offset, message in entries:
            if tp in batch.revoked:  # the partition's new owner reads these records
                continue
            first.setdefault(tp, next_offset - 1)
            offsets[tp] = next_offset
            if message is not None:
                messages.append(message)
        for skipped in batch.skipped:  # its entry holds the offset after the range
            if skipped.tp in first:
                first[skipped.tp] = min(first[skipped.tp], skipped.offset)
        self.metrics.delivered += len(messages)
        return ConsumedBatch(tuple(messages), offsets, first)

    async def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit a batch's ``offsets`` (from :meth:`getbatch`) for the partitions still assigned
        (a partition lost to a rebalance is read again by its new owner: at-least-once)."""
        self._done.update(offsets)
        await self._commit()

    async def recheck(self, batch: ConsumedBatch) -> ConsumedBatch | None:
        """Re-check the freshness of a batch from :meth:`getbatch` that waited, before anything
        derived from it is published or committed (a relay calls it once its transform ran).

        Each message is checked by :meth:`Verifier.check_fresh` (the rule :meth:`Verifier.verify`
        applied). A message no longer fresh is rejected like any other record (``expired`` or
        ``not_yet_valid``: counted, logged, dead-lettered and waited for), and left out of the
        batch returned; ``offsets`` stay as they were (a rejected record is committed past).
        Returns ``batch`` itself when every message is still fresh, and None if the consumer
        stopped before the dead letters were durable: commit nothing of the batch then.
        """
        if not batch.messages:
            return batch
        if self._closed:
            return None
        self._enter()
        try:
            entries: list[_Entry] = [
                (TopicPartition(m.topic, m.partition), m.offset + 1, m) for m in batch.messages
            ]
            stale = await self._reject_stale(entries, self._revoked, _HELD_FOR_RELAY)
        finally:
            self._leave()
        if stale is None:
            return None
        if not stale:
            return batch
        messages = tuple(m for _, _, m in entries if m is not None)
        return ConsumedBatch(messages, batch.offsets, batch.first_offsets)

    def _enter(self) -> None:
        if not self._started:
            raise RuntimeError("VerifyingConsumer.start() has not been called")
        if self._active is not None:
            raise RuntimeError("the consumer is already being iterated or run")
        self._active = asyncio.current_task()
        self._idle.clear()

    def _rewind(self) -> None:
        """Hand out again the message handed out and never finished."""
        if self._inflight is not None:
            self._pos = self._inflight
            self._inflight = None

    def _leave(self) -> None:
        self._active = None
        self._idle.set()

    def _next(self) -> ConsumedMessage | None:
        """The next deliverable message of the batch; rejected entries passed are finished."""
        queue, pos, done, revoked = self._queue, self._pos, self._done, self._revoked
        while pos < len(queue):
            tp, next_offset, message = queue[pos]
            pos += 1
            if revoked and tp in revoked:
                continue
            if message is None:
                done[tp] = next_offset
                continue
            self._pos = pos
            self._inflight = pos - 1
            self.metrics.delivered += 1
            return message
        self._pos = pos
        return None

    def _finish(self) -> None:
        if self._inflight is not None:
            tp, next_offset, _ = self._queue[self._inflight]
            self._inflight = None
            if tp not in self._revoked:
                self._done[tp] = next_offset

    # -- batch preparation ---------------------------------------------------------------------

    async def _fill(self) -> None:
        """Fetch, verify, claim and dead-letter the next non-empty batch into the queue."""
        consumer = self.consumer
        self._queue, self._pos, self._inflight = [], 0, None
        while not self._stopping:
            fetched = await fetch_records(
                consumer, timeout_ms=self._timeout_ms, max_records=self._max_records
            )
            if not fetched:
                continue
            batch = self._verify(fetched.records, fetched.skipped)
            self._revoked = batch.revoked
            entries = await self._settle(batch)
            if entries is not None:
                self._queue = entries
            return

    def _verify(
        self, records: Mapping[TopicPartition, Sequence[Record]], skipped: Sequence[Skipped] = ()
    ) -> _Batch:
        """Verify every record of a ``getmany`` result (no I/O); reject the ranges of offsets
        the Kafka client could not decode (:class:`~signed_bus._kafka.fetch.Skipped`)."""
        verify = self._verifier.verify
        batch = _Batch()
        entries, verified, rejected = batch.entries, batch.verified, batch.rejected
        count = 0
        for tp, records_of_tp in records.items():
            count += len(records_of_tp)
            for record in records_of_tp:
                if record.timestamp_type == _LOG_APPEND_TIME:
                    reference: int | None = record.timestamp
                else:
                    reference = None
                    if record.topic not in self._warned_create_time:
                        self._warn_create_time(record.topic)
                value = record.value
                try:
                    if value is None:
                        raise MalformedEnvelope("the record has no value")
                    message = verify(
                        value, topic=record.topic, key=record.key, reference_ms=reference
                    )
                except VerificationError as exc:
                    rejected.append((record, exc))
                except Exception as exc:  # a verifier bug must not stop the consumer
                    log.exception("the verifier raised %s", type(exc).__name__)
                    error = MalformedEnvelope(f"the verifier raised {type(exc).__name__}")
                    rejected.append((record, error))
                else:
                    verified.append((len(entries), tp, record, message))
                entries.append((tp, record.offset + 1, None))
        # A range follows every record of its partition in the fetch: its entry comes last.
        for unreadable in skipped:
            count += 1
            batch.skipped.append(unreadable)
            rejected.append((unreadable, _undecodable(unreadable)))
            entries.append((unreadable.tp, unreadable.last_offset + 1, None))
        self.metrics.records += count
        self.metrics.batches += 1
        return batch

    async def _settle(self, batch: _Batch) -> list[_Entry] | None:
        """Claim the batch's nonces (one call), dead-letter its rejects; the deliverable
        entries, or None if the consumer stopped while the batch was held."""
        if batch.verified:
            verdicts = await self._claim(batch)
            if verdicts is None:
                return None
            # Re-read: records that expired while the batch was held moved to batch.rejected.
            verified, entries, rejected = batch.verified, batch.entries, batch.rejected
            metrics = self.metrics
            for (index, tp, record, message), verdict in zip(verified, verdicts, strict=True):
                if verdict is _REPLAY:
                    error = ReplayDetected(
                        "nonce already claimed at another position",
                        kid=message.kid,
                        issuer=message.issuer,
                    )
                    rejected.append((record, error))
                    continue
                if verdict is _SAME:
                    metrics.same_position += 1
                entries[index] = (tp, record.offset + 1, ConsumedMessage(message, record, verdict))
        if batch.rejected:
            retries = self.metrics.dead_letter_retries
            if not await self._reject(batch.rejected):
                return None
            if self.metrics.dead_letter_retries != retries:
                # Held for the dead-letter topic: what is about to be delivered waited too.
                stale = await self._reject_stale(
                    batch.entries, batch.revoked, _HELD_FOR_DEAD_LETTERS
                )
                if stale is None:
                    return None
        return batch.entries

    def _warn_create_time(self, topic: str) -> None:
        self._warned_create_time.add(topic)
        log.warning(
            "topic %s carries CreateTime timestamps: freshness is checked against this "
            "consumer's clock, so a lagging consumer rejects honest records as expired; "
            "create the topic with message.timestamp.type=LogAppendTime",
            topic,
        )

    async def _claim(self, batch: _Batch) -> list[ClaimVerdict | None] | None:
        """One claim call for the batch; fail closed (retry) or open. None: stopped while held.

        The verdicts follow ``batch.verified``, from which a held batch's records that expired
        while it was held are moved to ``batch.rejected`` (see :meth:`_drop_expired`).

        (Verifying the next batch while Redis answers was tried: no measurable gain, since the
        claim's own encoding runs in this process and Redis answers in a few milliseconds.)
        """
        verified = batch.verified
        guard = self._guard
        if guard is None:  # audit mode
            return [None] * len(verified)
        # Plain tuples, not Claim objects: built once per record, so kept cheap.
        claims: list[ClaimRow] = [
            (m.issuer, m.nonce, m.created_at, r.topic, r.partition, r.offset)
            for _, _, r, m in verified
        ]
        result: list[ClaimVerdict | None] | None
        try:
            result = list(await guard.claim(claims, freshness=self._freshness))
        except ReplayGuardUnavailable as exc:
            result = await self._claim_again(guard, batch, claims, exc)
        if result is not None and len(result) != len(batch.verified):
            raise ReplayGuardUnavailable("the replay guard returned a wrong number of verdicts")
        return result

    async def _claim_again(
        self,
        guard: RedisReplayGuard,
        batch: _Batch,
        claims: list[ClaimRow],
        error: ReplayGuardUnavailable,
    ) -> list[ClaimVerdict | None] | None:
        """The claim failed: deliver unchecked (fail open) or hold and retry (fail closed).

        Before each retry the records that expired while held leave the claim (rejected as
        Expired): ``claims`` keeps following ``batch.verified``.
        """
        metrics = self.metrics
        if self._fail_open:
            metrics.unchecked += len(claims)
            log.warning(
                "replay guard unavailable (%s): delivering %d records UNCHECKED (fail_open=True)",
                error,
                len(claims),
            )
            return [None] * len(claims)
        attempt = 0
        metrics.guard_waiting = True
        try:
            while True:
                attempt += 1
                metrics.guard_retries += 1
                delay = self._backoff.delay(attempt)
                log.warning(
                    "replay guard unavailable (%s): holding %d records undelivered and "
                    "uncommitted; retry %d in %.2fs",
                    error,
                    len(claims),
                    attempt,
                    delay,
                )
                if not await self._hold(delay):
                    return None
                if self._drop_expired(batch):
                    claims = [
                        (m.issuer, m.nonce, m.created_at, r.topic, r.partition, r.offset)
                        for _, _, r, m in batch.verified
                    ]
                    if not claims:
                        log.warning("every held record expired: nothing left to claim")
                        return []
                try:
                    verdicts: list[ClaimVerdict | None] = list(
                        await guard.claim(claims, freshness=self._freshness)
                    )
                except ReplayGuardUnavailable as exc:
                    error = exc
                    continue
                log.warning("replay guard available again after %d retries", attempt)
                return verdicts
        finally:
            metrics.guard_waiting = False

    def _drop_expired(self, batch: _Batch) -> bool:
        """Move the held records no longer fresh from ``batch.verified`` to ``batch.rejected``
        (Expired or NotYetValid, by the verifier's own rule); True if any moved.

        The guard keeps a nonce for max_age + max_lag + 2 x skew + one bucket after its claim,
        which covers a record claimed within moments of its verification. A batch held while
        Redis is down breaks that: a copy verified at the edge of the window and claimed after
        the original's nonce expired would come back NEW, and a record whose expires_at passed
        meanwhile must not be delivered. Checked only after a hold, never on the hot path.
        """
        now = self._verifier.clock()
        verified = batch.verified
        kept: list[_Verified] = []
        for item in verified:
            _, _, record, message = item
            error = self._stale(record, message, now, _HELD_FOR_GUARD)
            if error is None:
                kept.append(item)
            else:
                batch.rejected.append((record, error))
        if len(kept) == len(verified):
            return False
        log.warning(
            "%d held record(s) went stale while the replay guard was unavailable: rejected, "
            "not claimed",
            len(verified) - len(kept),
        )
        verified[:] = kept
        return True

    def _stale(
        self, record: Record, message: VerifiedMessage, now: int, held_for: str
    ) -> VerificationError | None:
        """The freshness error of a verified record that waited (``held_for``) after it
        verified, or None while it is still fresh: :meth:`Verifier.check_fresh`, the rule
        :meth:`Verifier.verify` applied, with the record's reference time."""
        if record.timestamp_type == _LOG_APPEND_TIME:
            reference: int | None = record.timestamp
        else:
            reference = None
        try:
            self._verifier.check_fresh(message, reference_ms=reference, now=now)
        except (Expired, NotYetValid) as exc:
            return type(exc)(
                f"{exc.message}: it went stale while {held_for}", kid=exc.kid, issuer=exc.issuer
            )
        return None

    async def _reject_stale(
        self, entries: list[_Entry], revoked: set[TopicPartition], held_for: str
    ) -> int | None:
        """Re-check the deliverable ``entries`` after a hold: each stale one becomes a rejected
        entry, dead-lettered (waiting until durable; if that holds again, the rest are checked
        again). Returns how many went stale, or None if stopped before they were durable."""
        total = 0
        while True:
            now = self._verifier.clock()
            stale: list[tuple[Record, VerificationError]] = []
            for index, (tp, next_offset, message) in enumerate(entries):
                if message is None or tp in revoked:  # a revoked one is its new owner's
                    continue
                error = self._stale(message.record, message.verified, now, held_for)
                if error is not None:
                    entries[index] = (tp, next_offset, None)
                    stale.append((message.record, error))
            if not stale:
                return total
            total += len(stale)
            log.warning(
                "%d record(s) went stale while %s: rejected, not delivered", len(stale), held_for
            )
            retries = self.metrics.dead_letter_retries
            if not await self._reject(stale):
                return None
            if self.metrics.dead_letter_retries == retries:
                return total

    async def _hold(self, seconds: float) -> bool:
        """Wait while holding a batch, polling with every partition paused so the group does
        not evict this consumer (max_poll_interval_ms). False if the consumer is stopping."""
        consumer = self.consumer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        paused: set[TopicPartition] = set(consumer.assignment()) - set(consumer.paused())
        consumer.pause(*paused)
        try:
            while not self._stopping:
                left = deadline - loop.time()
                if left <= 0:
                    break
                stray = await fetch_records(
                    consumer,
                    timeout_ms=max(1, int(min(left, 0.5) * 1000)),
                    max_records=self._max_records,
                )
                # Partitions assigned by a rebalance meanwhile are not paused: put their
                # records (and any range skipped as undecodable) back and pause them too.
                for tp, offset in stray.first_offsets().items():
                    consumer.seek(tp, offset)
                for tp in {*stray.records, *(skipped.tp for skipped in stray.skipped)}:
                    consumer.pause(tp)
                    paused.add(tp)
        finally:
            assigned = consumer.assignment()
            consumer.resume(*(tp for tp in paused if tp in assigned))
        return not self._stopping

    async def _reject(self, rejected: Sequence[_Rejected]) -> bool:
        """Count, log and dead-letter rejected records; False if stopped before durable."""
        metrics = self.metrics
        positioned: list[_Rejected] = []
        # Replays are found after the verification failures: restore offset order so the dead
        # letters of a partition follow its records.
        ordered = sorted(rejected, key=lambda item: (item[0].partition, item[0].offset))
        for record, error in ordered:
            error = error.with_position(record.topic, record.partition, record.offset)
            metrics.rejected[error.reason] += 1
            log.warning("rejected record: %s", error)
            positioned.append((record, error))
        if self._dead_letters is None:
            return True
        return await self._dead_letter(positioned)

    async def _dead_letter(self, items: Sequence[_Rejected]) -> bool:
        """Send dead letters and wait until the broker has them all (retrying what failed).

        A letter too large even without the record's value and key is dropped (counted in
        ``metrics.dead_letters_dropped``, logged at ERROR): raising would stop the consumer on
        that record after every restart, since its offset is never committed.
        """
        writer = self._dead_letters
        assert writer is not None
        todo = [(record, error, Omitted.NOTHING) for record, error in items]
        attempt = 0
        while todo:
            failed: list[tuple[Record | Skipped, VerificationError, Omitted]] = []
            sent: list[tuple[Record | Skipped, VerificationError, Omitted]] = []
            futures: list[asyncio.Future[Any]] = []
            last_error: BaseException | None = None
            for record, error, omit in todo:
                try:
                    future, omit = await writer.send_letter(record, error, omit=omit)
                except KafkaError as exc:
                    if is_too_large(exc):
                        self._drop_dead_letter(error, exc)
                        continue
                    if not is_retriable(exc):
                        raise
                    failed.append((record, error, omit))
                    last_error = exc
                else:
                    futures.append(future)
                    sent.append((record, error, omit))
            results = await asyncio.gather(*futures, return_exceptions=True)
            for (record, error, omit), result in zip(sent, results, strict=True):
                if not isinstance(result, BaseException):
                    self.metrics.dead_lettered += 1
                elif is_too_large(result):
                    # The broker refused it (its limit is below the producer's): leave out more.
                    if omit < Omitted.VALUE_AND_KEY:
                        failed.append((record, error, Omitted(omit + 1)))
                    else:
                        self._drop_dead_letter(error, result)
                elif is_retriable(result):
                    failed.append((record, error, omit))
                    last_error = result
                else:
                    raise result
            todo = failed
            if todo and last_error is not None:
                attempt += 1
                self.metrics.dead_letter_retries += 1
                delay = self._backoff.delay(attempt)
                log.warning(
                    "dead-letter topic %s unavailable (%s): %d dead letters pending, "
                    "retry %d in %.2fs",
                    writer.topic,
                    type(last_error).__name__,
                    len(todo),
                    attempt,
                    delay,
                )
                if not await self._hold(delay):
                    return False
        return True

    def _drop_dead_letter(self, error: VerificationError, exc: BaseException) -> None:
        self.metrics.dead_letters_dropped += 1
        log.error(
            "dead letter dropped: too large for topic %s even without the record's value and "
            "key (%s); the rejected record stays at its source position: %s",
            self._dead_letter_topic,
            type(exc).__name__,
            error,
        )

    # -- commits -----------------------------------------------------------------------------

    async def _commit(self, *, wait: bool = True) -> None:
        """Commit the finished offsets. ``wait=False`` (at a batch boundary) lets the commit
        run while the next batch is fetched and handled: offsets are still committed only for
        finished records, one commit is in flight at a time, in order, and the next commit (or
        :meth:`stop`) waits for it and raises its error."""
        previous = self._commit_task
        if previous is not None:
            self._commit_task = None
            await previous
        if not self._done:
            return
        offsets, self._done = self._done, {}
        if wait:
            await self._send_commit(offsets)
        else:
            self._commit_task = asyncio.create_task(self._send_commit(offsets))

    async def _send_commit(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced: the partitions' new owner reads them from the last
            # committed offset, so these records are delivered again there (at-least-once).
            self.metrics.commit_failures += 1
            log.warning(
                "commit of %d partition(s) failed after a rebalance (%s); their records are "
                "delivered again by the new owner",
                len(offsets),
                type(exc).__name__,
            )
            return
        self.metrics.commits += 1
        committed = self.metrics.committed
        for tp, offset in offsets.items():
            committed[(tp.topic, tp.partition)] = offset

    async def _commit_quietly(self) -> None:
        try:
            await self._commit()
        except Exception as exc:  # already on an error path: report, don't mask the first error
            log.warning("commit failed: %s: %s", type(exc).__name__, exc)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoked |= revoked
        finished = {tp: off for tp, off in self._done.items() if tp in revoked}
        if not finished:
            return
        for tp in finished:
            del self._done[tp]
        try:
            await self.consumer.commit(finished)
        except Exception as exc:  # the new owner re-reads them: duplicates, never loss
            self.metrics.commit_failures += 1
            log.warning("commit on rebalance failed: %s: %s", type(exc).__name__, exc)
            return
        self.metrics.commits += 1
        for tp, offset in finished.items():
            self.metrics.committed[(tp.topic, tp.partition)] = offset


def _undecodable(skipped: Skipped) -> Undecodable:
    span = (
        f"offset {skipped.offset}"
        if skipped.last_offset == skipped.offset
        else f"offsets {skipped.offset} to {skipped.last_offset} (the rest of its record batch)"
    )
    return Undecodable(
        f"the Kafka client could not decode {span}: {skipped.error}; skipped",
        last_offset=skipped.last_offset,
    )


def _servers(servers: str | Sequence[str]) -> str | list[str]:
    return servers if isinstance(servers, str) else list(servers)
