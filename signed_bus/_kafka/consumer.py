"""VerifyingConsumer: verify, claim and dead-letter before the application sees a record.

A thin aiokafka front over the sans-I/O gate (:mod:`signed_bus._gate`): it fetches, drives the
gate, claims with the replay guard, dead-letters (:mod:`signed_bus._kafka.deadletters`), holds
the batch while Redis or the dead-letter topic is unavailable, delivers through the cursor
(:mod:`signed_bus._kafka.cursor`) and commits only what the application finished. The steps of
a batch, the fail-closed / fail-open rules and the freshness re-checks: docs/OPERATIONS.md
("Producing and consuming", "Freshness re-checks"). Options: :mod:`signed_bus._kafka.options`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from signed_bus._clock import system_clock
from signed_bus._gate import (
    RECHECK_AFTER_MS,
    WAITED_IN_BATCH,
    ConsumedMessage,
    Gate,
    Record,
    Settling,
)
from signed_bus._kafka.batch import EMPTY_BATCH, ConsumedBatch, whole_batch
from signed_bus._kafka.clients import KafkaClients
from signed_bus._kafka.commits import Commits
from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._kafka.deadletters import DeadLetterSender, DeadLetterWriter
from signed_bus._kafka.fetch import Fetched, fetch_records
from signed_bus._kafka.options import Backoff, ConsumerOptions, require_read_committed
from signed_bus._kafka.producer import SignedProducer
from signed_bus._kafka.settle import Settler, hold_paused
from signed_bus._lifecycle import AsyncLifecycle
from signed_bus._metrics import ConsumerMetrics
from signed_bus._observe import NOOP, observed, observer_for, timed_receive
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._verifier import Verifier
from signed_bus.errors import ConfigurationError, Stopped

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


Handler = Callable[[ConsumedMessage], Awaitable[object]]


def _check_arguments(
    options: object,
    verifier: Verifier,
    guard: RedisReplayGuard | None,
    dead_letter_topic: str | None,
    dead_letter_producer: object,
    max_records: int,
    timeout_ms: int,
) -> None:
    """Refuse a combination :class:`VerifyingConsumer` cannot run with."""
    if not isinstance(options, ConsumerOptions):
        raise ConfigurationError(
            "VerifyingConsumer is built from ConsumerOptions (VerifyingConsumer.from_options)"
        )
    if verifier.audit and guard is not None:
        raise ConfigurationError("audit mode does not check replays: pass guard=None")
    if not verifier.audit and guard is None:
        raise ConfigurationError("a replay guard is required unless the verifier audits")
    if dead_letter_producer is not None and dead_letter_topic is None:
        raise ConfigurationError("dead_letter_producer given without dead_letter_topic")
    if max_records < 1 or timeout_ms < 0:
        raise ConfigurationError("max_records must be >= 1 and timeout_ms >= 0")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: VerifyingConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner._commits.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class VerifyingConsumer(AsyncLifecycle):
    """Delivers only verified, fresh, first-position records; commits only what was handled.

    Build it with :meth:`from_options`: it builds, subscribes, starts and stops its own
    ``AIOKafkaConsumer`` (auto commit off, ``read_committed``, a group), so no setting that
    would break at-least-once or the replay rule can slip in. ``start()``/``stop()`` (or
    ``async with``); a stopped consumer cannot be started or used again: that raises
    :class:`~signed_bus.errors.Stopped` (``async for`` simply ends).

    ``guard`` is required unless the verifier is in audit mode (then it must be None: audit
    mode checks neither freshness nor replay). Its lifecycle is the caller's; claims start it.
    Every claim carries the verifier's :class:`~signed_bus._freshness.Freshness`, so the guard
    keeps each nonce as long as this verifier could accept a copy of its envelope.

    ``dead_letter_topic`` receives every rejected record; ``dead_letter_producer`` (an
    ``AIOKafkaProducer`` or a :class:`SignedProducer`, started and stopped by you) sends them,
    or one is built from the options.
    """

    def __init__(
        self,
        *,
        options: ConsumerOptions,
        verifier: Verifier,
        guard: RedisReplayGuard | None = None,
        dead_letter_topic: str | None = None,
        dead_letter_producer: AIOKafkaProducer | SignedProducer | None = None,
        fail_open: bool = False,
        max_records: int = 1_000,
        timeout_ms: int = 1_000,
        backoff: Backoff | None = None,
    ) -> None:
        _check_arguments(
            options,
            verifier,
            guard,
            dead_letter_topic,
            dead_letter_producer,
            max_records,
            timeout_ms,
        )
        self._clients = KafkaClients(options, dead_letter_producer)
        self._options = options
        self.metrics = ConsumerMetrics(observer=observer_for(options.group_id, options.topics))
        self._gate = Gate(verifier, fail_open=fail_open, metrics=self.metrics)
        self._clock = verifier.clock
        self._guard = guard
        self._dead_letter_topic = dead_letter_topic
        self._max_records = max_records
        self._timeout_ms = timeout_ms
        self._backoff = backoff or Backoff()
        self._listener = _Listener(self)
        self._cursor = DeliveryCursor(self.metrics)
        self._commits = Commits(lambda: self.consumer, self._cursor, self.metrics, options)
        self._settler = Settler(self._gate, guard, backoff=self._backoff, hold=self._hold)
        self._started = False
        self._stopping = False
        self._closed = False
        self._close_after_run = False
        self._active: asyncio.Task[Any] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def from_options(
        cls,
        options: ConsumerOptions,
        *,
        verifier: Verifier,
        guard: RedisReplayGuard | None = None,
        dead_letter_topic: str | None = None,
        dead_letter_producer: AIOKafkaProducer | SignedProducer | None = None,
        fail_open: bool = False,
        max_records: int = 1_000,
        timeout_ms: int = 1_000,
        backoff: Backoff | None = None,
    ) -> VerifyingConsumer:
        """A consumer that builds and owns its ``AIOKafkaConsumer`` from ``options``."""
        return cls(
            options=options,
            verifier=verifier,
            guard=guard,
            dead_letter_topic=dead_letter_topic,
            dead_letter_producer=dead_letter_producer,
            fail_open=fail_open,
            max_records=max_records,
            timeout_ms=timeout_ms,
            backoff=backoff,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The underlying aiokafka consumer (built by :meth:`start`)."""
        return self._clients.consumer

    @property
    def gate(self) -> Gate:
        """The sans-I/O gate this consumer drives."""
        return self._gate

    @property
    def rebalance_listener(self) -> ConsumerRebalanceListener:
        """The listener :meth:`start` subscribes with: on a rebalance it commits the records
        already finished and drops the rest of the batch for the revoked partitions (their new
        owner reads them from the committed offset)."""
        return self._listener

    @property
    def revoked_since_fetch(self) -> frozenset[TopicPartition]:
        """Partitions revoked by a rebalance since the current batch was fetched (reset by each
        fetch): their records belong to the new owner, so nothing of them may be committed or
        published for this batch."""
        return frozenset(self._cursor.revoked)

    async def start(self) -> None:
        """Build, subscribe and start the consumer (and the dead-letter producer if built
        here). Idempotent; raises :class:`~signed_bus.errors.Stopped` after :meth:`stop`."""
        if self._closed or self._stopping:
            raise Stopped("VerifyingConsumer was stopped; make a new one")
        if self._started:
            return
        topic = self._dead_letter_topic
        producer = await self._clients.start(self._listener, dead_letters=topic is not None)
        if producer is not None and topic is not None:
            self._settler.dead_letters = DeadLetterSender(
                DeadLetterWriter(producer, topic),
                backoff=self._backoff,
                metrics=self.metrics,
                hold=self._hold,
            )
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
                await self._commits.commit_quietly()
        finally:
            await self._clients.stop()

    # -- delivery ----------------------------------------------------------------------------

    async def run(self, handler: Handler) -> None:
        """Await ``handler`` for every delivered message until :meth:`stop` is called.

        Offsets are committed in the background at most every ``commit_interval_ms``
        (:class:`ConsumerOptions`) for the records whose handler returned, plus the rejected
        records before them, and on a rebalance and :meth:`stop`. If the handler
        raises, the offsets finished so far are committed, that record is not, and the error
        propagates: the record is delivered again by the next ``run``/``async for`` on this
        consumer, or after a restart (at-least-once). Cancelling ``run`` commits nothing more.
        """
        self._enter()
        cursor = self._cursor
        cursor.rewind()
        handler = observed(self.metrics.observer, handler)  # its span covers the handler
        try:
            while not self._stopping:
                if cursor.due(self._clock(), RECHECK_AFTER_MS) and not await self._refresh():
                    break
                message = cursor.next()
                if message is None:
                    await self._commits.at_boundary()
                    if not self._stopping:
                        await self._fill()
                    continue
                try:
                    await handler(message)
                except Exception:
                    await self._commits.commit_quietly()
                    raise
                cursor.finish()
                self._commits.tick()
            await self._commits.commit()
        finally:
            self._leave()
            if self._close_after_run:
                await self._close()

    def __aiter__(self) -> VerifyingConsumer:
        # A new loop starts: the message the last loop received and never finished (the loop
        # body raised or broke out) is delivered again first.
        self._cursor.rewind()
        return self

    async def __anext__(self) -> ConsumedMessage:
        """The next verified message. Asking for it means the previous one is finished: its
        offset (and any rejected records before it) is committed with the next commit
        (``commit_interval_ms``, a rebalance) or by :meth:`stop`/:meth:`commit`."""
        observer = self.metrics.observer
        if observer is not NOOP:  # the loop's body is done with the last message
            observer.iterated()
        if self._closed or self._stopping:
            raise StopAsyncIteration
        cursor = self._cursor
        cursor.finish()
        self._commits.tick()
        if self._active is None and self._started:
            # A message ready and not due for a re-check (system_clock read without its frame):
            # nothing is awaited before the return, so _enter/_leave would have no observer.
            now = time.time_ns() // 1_000_000 if self._clock is system_clock else self._clock()
            message = cursor.next_unless_due(now, RECHECK_AFTER_MS)
            if message is not None:
                observer = self.metrics.observer
                return message if observer is NOOP else observer.iterating(message)
        self._enter()
        try:
            while True:
                if cursor.due(self._clock(), RECHECK_AFTER_MS) and not await self._refresh():
                    raise StopAsyncIteration
                message = cursor.next()
                if message is not None:
                    return self.metrics.observer.iterating(message)
                await self._commits.at_boundary()
                if self._stopping:
                    raise StopAsyncIteration
                await self._fill()
                if self._stopping:
                    raise StopAsyncIteration
        finally:
            self._leave()

    async def commit(self) -> None:
        """Mark the message in hand finished and commit everything finished so far."""
        self._check_open()
        self._cursor.finish()
        await self._commits.commit()

    # -- whole batches (relays) ----------------------------------------------------------------

    async def getbatch(self) -> ConsumedBatch | None:
        """The next ``getmany`` batch, verified, claimed and dead-lettered, handed out whole and
        NOT committed.

        For a hop that must commit its input offsets together with its own outputs: commit
        ``batch.offsets`` when done with the batch, with :meth:`commit_offsets` or in a Kafka
        transaction (``send_offsets_to_transaction``), or seek to ``batch.first_offsets`` to
        read it again. Returns an empty batch when ``timeout_ms`` passed without records (so
        the caller can check its own stop flag) and None while the consumer is stopping (raises
        :class:`~signed_bus.errors.Stopped` once it has stopped). Not to be mixed with
        :meth:`run` or ``async for`` on the same consumer.
        """
        self._check_open()
        if self._stopping:
            return None
        self._enter()
        try:
            if self._cursor.pending:
                raise RuntimeError("getbatch cannot take over a batch delivered message by message")
            fetched = await fetch_records(
                self.consumer, timeout_ms=self._timeout_ms, max_records=self._max_records
            )
            if not fetched:
                self._commits.tick(boundary=True)
                return None if self._stopping else EMPTY_BATCH
            batch, revoked = self._receive(fetched)
            entries = await self._settler.settle(batch, revoked)
        finally:
            self._leave()
        if entries is None:  # stopped while the batch was held (replay guard unavailable)
            return None
        whole = whole_batch(entries, revoked, batch.skipped)
        self.metrics.delivered += len(whole.messages)
        self.metrics.observer.delivered(whole.messages)
        return whole

    async def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Mark a batch's ``offsets`` (from :meth:`getbatch`) finished: they are committed, for
        the partitions still assigned, with the next commit (``commit_interval_ms``, a
        rebalance, :meth:`commit` or :meth:`stop`; with ``commit_interval_ms=0`` before this
        returns). A partition lost to a rebalance is read again by its new owner:
        at-least-once."""
        self._check_open()
        self._cursor.mark_finished(offsets)
        await self._commits.batch_done()

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
            return await self._settler.recheck_batch(batch, self._cursor.revoked)
        finally:
            self._leave()

    def _check_open(self) -> None:
        if self._closed:
            raise Stopped("VerifyingConsumer was stopped; make a new one")

    def _enter(self) -> None:
        self._check_open()
        if not self._started:
            raise RuntimeError("VerifyingConsumer.start() has not been called")
        if self._active is not None:
            raise RuntimeError("the consumer is already being iterated or run")
        self._active = asyncio.current_task()
        self._idle.clear()

    def _leave(self) -> None:
        self._active = None
        self._idle.set()

    async def _fill(self) -> None:
        """Fetch, verify, claim and dead-letter the next non-empty batch into the cursor."""
        consumer = self.consumer
        self._cursor.clear()
        while not self._stopping:
            fetched = await fetch_records(
                consumer, timeout_ms=self._timeout_ms, max_records=self._max_records
            )
            if not fetched:
                self._commits.tick(boundary=True)
                continue
            verified_at = self._clock()
            batch, revoked = self._receive(fetched)
            entries = await self._settler.settle(batch, revoked)
            if entries is not None:
                self._cursor.load(entries, verified_at)
            return

    async def _refresh(self) -> bool:
        """Re-check the records of the batch not handed out yet, which waited more than
        RECHECK_AFTER_MS since they were checked (a slow handler, a handler failure and its
        retry, slow acknowledgements of dead letters or claims): stale ones are dead-lettered,
        never delivered. False if the consumer stopped before those letters were durable."""
        cursor = self._cursor
        now = self._clock()
        waiting = cursor.waiting()
        if self._gate.audit:
            cursor.rechecked(waiting, now)
            return True
        if await self._settler.reject_stale(waiting, cursor.revoked, WAITED_IN_BATCH) is None:
            return False
        cursor.rechecked(waiting, now)
        return True

    def _receive(self, fetched: Fetched) -> tuple[Settling[TopicPartition], set[TopicPartition]]:
        """Verify a fetch; the revoked set the rebalance listener fills from now on."""
        batch = timed_receive(self._gate, fetched.records, fetched.skipped, self.metrics.observer)
        return batch, self._cursor.fetched()

    async def _hold(self, seconds: float) -> bool:
        """Wait while holding a batch, polling with every partition paused (see
        :func:`~signed_bus._kafka.settle.hold_paused`). False if the consumer is stopping."""
        self._commits.tick(boundary=True)
        return await hold_paused(
            self.consumer, seconds, max_records=self._max_records, stopping=lambda: self._stopping
        )


def options_of(consumer: VerifyingConsumer) -> ConsumerOptions:
    """What ``consumer`` was built from (its group and topics label its metrics and spans)."""
    return consumer._options
