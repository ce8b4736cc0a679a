"""The confluent-kafka verifying consumer: a thin sync front over the sans-I/O gate
(:mod:`signed_bus._gate`), as :mod:`signed_bus._kafka.consumer` is on asyncio. It consumes a
batch, drives the gate, claims with the sync replay guard (one call per batch), dead-letters,
holds the batch while Redis or the dead-letter topic is unavailable, delivers through the
delivery cursor and commits only what the application finished. docs/CLIENTS.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as Partition

from signed_bus._gate import (
    RECHECK_AFTER_MS,
    WAITED_IN_BATCH,
    ConsumedMessage,
    Gate,
)
from signed_bus._kafka.batch import EMPTY_BATCH, ConsumedBatch, whole_batch
from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._kafka.options import Backoff
from signed_bus._lifecycle import SyncLifecycle
from signed_bus._metrics import ConsumerMetrics
from signed_bus._observe import Observer, observer_for, timed_receive
from signed_bus._replay.sync_guard import SyncRedisReplayGuard
from signed_bus._verifier import Verifier
from signed_bus.confluent._commits import SyncCommits
from signed_bus.confluent._records import consumer_config, dead_letter_config, split_messages
from signed_bus.confluent._settle import DeadLetters, SyncSettler, hold_paused
from signed_bus.errors import ConfigurationError, Stopped

__all__ = ["Handler", "VerifyingConsumer", "observed_as"]

log = logging.getLogger("signed_bus.consumer")

Handler = Callable[[ConsumedMessage], object]


class VerifyingConsumer(SyncLifecycle):
    """Delivers only verified, fresh, first-position records; commits only what was handled.

    ``config`` is librdkafka's settings (``bootstrap.servers``, ``group.id``, security ...):
    auto commit and auto offset store are turned off and ``read_committed`` enforced (a value
    that would break at-least-once or the replay rule is refused). The consumer is built and
    subscribed to ``topics`` by :meth:`start` and closed by :meth:`stop` (``with`` does both).

    ``guard`` (a :class:`~signed_bus.confluent.SyncRedisReplayGuard`) is required unless the
    verifier audits. ``dead_letter_topic`` receives every rejected record, through
    ``dead_letter_producer`` (a ``confluent_kafka.Producer``, yours) or one built from the
    connection settings of ``config``.

    One thread drives a consumer (librdkafka's rule); :meth:`stop` may be called from another
    thread: it waits for the record in hand. Run one consumer per worker thread or process.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: Sequence[str],
        *,
        verifier: Verifier,
        guard: SyncRedisReplayGuard | None = None,
        dead_letter_topic: str | None = None,
        dead_letter_producer: Producer | None = None,
        fail_open: bool = False,
        max_records: int = 1_000,
        timeout_s: float = 1.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = consumer_config(config)
        if isinstance(topics, str) or not topics:
            raise ConfigurationError("topics must be a non-empty sequence of topic names")
        if verifier.audit and guard is not None:
            raise ConfigurationError("audit mode does not check replays: pass guard=None")
        if not verifier.audit and guard is None:
            raise ConfigurationError("a replay guard is required unless the verifier audits")
        if dead_letter_producer is not None and dead_letter_topic is None:
            raise ConfigurationError("dead_letter_producer given without dead_letter_topic")
        if max_records < 1 or timeout_s < 0:
            raise ConfigurationError("max_records must be >= 1 and timeout_s >= 0")
        self._topics = list(topics)
        self.metrics = ConsumerMetrics(observer=observer_for(*observed_as(self)))
        self._gate = Gate(verifier, fail_open=fail_open, metrics=self.metrics)
        self._clock = verifier.clock
        self._max_records = max_records
        self._timeout_s = timeout_s
        self._backoff = backoff or Backoff()
        self._cursor = DeliveryCursor(self.metrics)
        self._commits = SyncCommits(lambda: self.consumer, self._cursor, self.metrics)
        self._settler = SyncSettler(self._gate, guard, backoff=self._backoff, hold=self._hold)
        self._dead_letter_topic = dead_letter_topic
        self._dead_letter_producer = dead_letter_producer
        self._owned_producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._group_metadata: Any = None
        self._stopping = False
        self._closed = False
        self._close_after_run = False
        self._active: int | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the settings: they may hold a password
        return f"VerifyingConsumer(topics={self._topics!r}, group={self._config['group.id']!r})"

    @property
    def consumer(self) -> Consumer:
        """The underlying librdkafka consumer (built by :meth:`start`)."""
        if self._consumer is None:
            raise RuntimeError("VerifyingConsumer.start() has not been called")
        return self._consumer

    @property
    def gate(self) -> Gate:
        return self._gate

    @property
    def group_metadata(self) -> Any:
        """The consumer group metadata (member id and generation) as of the consume() that
        read the batch :meth:`getbatch` last handed out: a transaction's offsets sent with it
        are refused by the broker if the group moved on since (KIP-447)."""
        return self._group_metadata

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """The partitions the group assigned to this consumer, as of the last rebalance
        callback: safe to read from any thread (calling the librdkafka consumer from a thread
        other than the one consuming can deadlock with its rebalance callbacks)."""
        return self._commits.assigned

    @property
    def revoked_since_fetch(self) -> frozenset[TopicPartition]:
        """Partitions revoked by a rebalance since the current batch was consumed."""
        return frozenset(self._cursor.revoked)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Build and subscribe the consumer (and the dead-letter producer). Idempotent."""
        with self._lock:
            if self._closed or self._stopping:
                raise Stopped("VerifyingConsumer was closed; make a new one")
            if self._consumer is not None:
                return
            config = dict(self._config)
            config["on_commit"] = self._commits.on_commit
            consumer = Consumer(config)
            commits = self._commits
            consumer.subscribe(
                self._topics,
                on_assign=commits.on_assign,
                on_revoke=commits.on_revoke,
                on_lost=commits.on_lost,
            )
            topic = self._dead_letter_topic
            if topic is not None:
                producer = self._dead_letter_producer
                if producer is None:
                    producer = self._owned_producer = Producer(dead_letter_config(self._config))
                self._settler.dead_letters = DeadLetters(
                    producer, topic, backoff=self._backoff, metrics=self.metrics
                )
            self._consumer = consumer

    def stop(self) -> None:
        """Commit what the application finished, then close what :meth:`start` built.

        Idempotent. From another thread, waits for :meth:`run` to finish the record in hand;
        from inside the handler, :meth:`run` closes after that handler returns."""
        if self._closed:
            return
        self._stopping = True
        if self._active == threading.get_ident():
            self._close_after_run = True
            return
        self._idle.wait()
        self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        consumer = self._consumer
        if consumer is None:
            return
        try:
            try:
                self._commits.commit()
            except Exception as exc:  # closing: report, do not mask
                log.warning("commit on close failed: %s", type(exc).__name__)
        finally:
            consumer.close()
            if self._owned_producer is not None:
                self._owned_producer.flush(10)

    # -- delivery --------------------------------------------------------------------------------

    def run(self, handler: Handler) -> None:
        """Call ``handler`` for every delivered message until :meth:`stop`.

        Offsets are committed after each batch for the records whose handler returned (plus
        the rejected records before them). If the handler raises, what was finished is
        committed, that record is not, and the error propagates (at-least-once)."""
        self._enter()
        cursor = self._cursor
        cursor.rewind()
        try:
            while not self._stopping:
                if cursor.due(self._clock(), RECHECK_AFTER_MS) and not self._refresh():
                    break
                message = cursor.next()
                if message is None:
                    self._commits.commit(wait=False)
                    if not self._stopping:
                        self._fill()
                    continue
                try:
                    _handle(self.metrics.observer, handler, message)
                except Exception:
                    _commit_quietly(self._commits)
                    raise
                cursor.finish()
            self._commits.commit()
        finally:
            self._leave()
            if self._close_after_run:
                self._close()

    def __iter__(self) -> VerifyingConsumer:
        self._cursor.rewind()
        return self

    def __next__(self) -> ConsumedMessage:
        """The next verified message; asking for it finishes the previous one."""
        observer = self.metrics.observer
        observer.iterated()  # the body of the loop is done with the last message
        if self._closed or self._stopping:
            raise StopIteration
        cursor = self._cursor
        cursor.finish()
        if (
            self._active is None
            and self._consumer is not None
            and not cursor.due(self._clock(), RECHECK_AFTER_MS)
        ):
            # A message of the batch is ready: nothing blocks and nothing touches librdkafka,
            # so the per-record cost of marking the consumer busy is saved.
            message = cursor.next()
            if message is not None:
                return observer.iterating(message)
        self._enter()
        try:
            while True:
                if cursor.due(self._clock(), RECHECK_AFTER_MS) and not self._refresh():
                    raise StopIteration
                message = cursor.next()
                if message is not None:
                    return observer.iterating(message)
                self._commits.commit(wait=False)
                if self._stopping:
                    raise StopIteration
                self._fill()
                if self._stopping:
                    raise StopIteration
        finally:
            self._leave()

    def commit(self) -> None:
        """Mark the message in hand finished and commit everything finished so far."""
        self._check_open()
        self._cursor.finish()
        self._commits.commit()

    # -- whole batches (relays) ------------------------------------------------------------------

    def getbatch(self) -> ConsumedBatch | None:
        """The next ``consume()`` batch, verified, claimed and dead-lettered, NOT committed
        (see :meth:`signed_bus.VerifyingConsumer.getbatch`). An empty batch when nothing came
        within ``timeout_s``; None while stopping."""
        self._check_open()
        if self._stopping:
            return None
        self._enter()
        try:
            if self._cursor.pending:
                raise RuntimeError("getbatch cannot take over a batch delivered message by message")
            consumer = self.consumer
            messages = consumer.consume(self._max_records, self._timeout_s)
            self._group_metadata = consumer.consumer_group_metadata()
            records, skipped = split_messages(messages)
            if not records and not skipped:
                return None if self._stopping else EMPTY_BATCH
            batch = timed_receive(self._gate, records, skipped, self.metrics.observer)
            revoked = self._cursor.fetched()
            entries = self._settler.settle(batch, revoked)
        finally:
            self._leave()
        if entries is None:
            return None
        whole = whole_batch(entries, revoked, batch.skipped)
        self.metrics.delivered += len(whole.messages)
        self.metrics.observer.delivered(whole.messages)
        return whole

    def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit a batch's ``offsets`` for the partitions still assigned."""
        self._check_open()
        self._cursor.mark_finished(offsets)
        self._commits.commit()

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read again from ``offsets`` (a batch's ``first_offsets``), for the partitions still
        assigned and not revoked since the fetch."""
        consumer = self.consumer
        assigned = {(p.topic, p.partition) for p in consumer.assignment()}
        revoked = self._cursor.revoked
        for tp, offset in offsets.items():
            if (tp.topic, tp.partition) in assigned and tp not in revoked:
                consumer.seek(Partition(tp.topic, tp.partition, offset))

    def recheck(self, batch: ConsumedBatch) -> ConsumedBatch | None:
        """Re-check a batch that waited (a relay's transform): stale messages are dead-lettered
        and left out; None if stopped before those letters were durable."""
        return self._settler.recheck_batch(batch, self._cursor.revoked)

    # -- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Stopped("VerifyingConsumer was closed; make a new one")

    def _enter(self) -> None:
        self._check_open()
        if self._consumer is None:
            raise RuntimeError("VerifyingConsumer.start() has not been called")
        if self._active is not None:
            raise RuntimeError("the consumer is already being iterated or run")
        self._active = threading.get_ident()
        self._idle.clear()

    def _leave(self) -> None:
        self._active = None
        self._idle.set()

    def _fill(self) -> None:
        """Consume, verify, claim and dead-letter the next non-empty batch into the cursor."""
        consumer = self.consumer
        self._cursor.clear()
        while not self._stopping:
            messages = consumer.consume(self._max_records, self._timeout_s)
            if not messages:
                continue
            records, skipped = split_messages(messages)
            if not records and not skipped:
                continue
            verified_at = self._clock()
            batch = timed_receive(self._gate, records, skipped, self.metrics.observer)
            entries = self._settler.settle(batch, self._cursor.fetched())
            if entries is not None:
                self._cursor.load(entries, verified_at)
            return

    def _refresh(self) -> bool:
        """Re-check the records of the batch that waited past RECHECK_AFTER_MS."""
        cursor = self._cursor
        now = self._clock()
        waiting = cursor.waiting()
        if not self._gate.audit:
            stale = self._settler.reject_stale(waiting, cursor.revoked, WAITED_IN_BATCH)
            if stale is None:
                return False
        cursor.rechecked(waiting, now)
        return True

    def _hold(self, seconds: float) -> bool:
        """Wait while holding a batch (:func:`hold_paused`). False if stopping."""
        return hold_paused(
            self.consumer, seconds, self._max_records, stopping=lambda: self._stopping
        )


def observed_as(consumer: VerifyingConsumer) -> tuple[str, tuple[str, ...]]:
    """The consumer group and topics that label ``consumer``'s metrics and spans."""
    return str(consumer._config["group.id"]), tuple(consumer._topics)


def _handle(observer: Observer, handler: Handler, message: ConsumedMessage) -> None:
    """``handler(message)`` between :meth:`Observer.handing` and :meth:`Observer.finished`."""
    token = observer.handing(message)  # a span around the handler
    try:
        handler(message)
    except BaseException as exc:
        observer.finished(token, exc)
        raise
    observer.finished(token, None)


def _commit_quietly(commits: SyncCommits) -> None:
    """Commit what was finished, on an error path: a failure is logged, not raised."""
    try:
        commits.commit()
    except Exception as exc:
        log.warning("commit failed: %s", type(exc).__name__)
