"""Settling a verified batch for the aiokafka front: one claim call to the replay guard (fail
closed: hold and retry with backoff, re-checking held records; or fail open), dead letters
(waiting until durable), and the freshness re-check of records that waited. The decisions are
the gate's (:mod:`signed_bus._gate`); this module only does the waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from signed_bus._gate import (
    HELD_FOR_DEAD_LETTERS,
    HELD_FOR_GUARD,
    HELD_FOR_RELAY,
    Entry,
    Gate,
    Rejected,
    Settling,
)
from signed_bus._kafka.batch import ConsumedBatch
from signed_bus._kafka.deadletters import DeadLetterSender, Hold
from signed_bus._kafka.fetch import fetch_records
from signed_bus._kafka.options import Backoff
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus.errors import ReplayGuardUnavailable, ReplayStateLost

__all__ = ["Settler", "hold_paused"]

log = logging.getLogger("signed_bus.consumer")


class Settler:
    """Claims, holds, dead-letters and re-checks one batch at a time for a consumer."""

    __slots__ = ("_backoff", "_gate", "_guard", "_hold", "dead_letters")

    def __init__(
        self, gate: Gate, guard: RedisReplayGuard | None, *, backoff: Backoff, hold: Hold
    ) -> None:
        self._gate = gate
        self._guard = guard
        self._backoff = backoff
        self._hold = hold
        # set by the consumer's start() when it has a dead-letter topic
        self.dead_letters: DeadLetterSender | None = None

    async def settle(
        self, batch: Settling[TopicPartition], revoked: set[TopicPartition]
    ) -> list[Entry[TopicPartition]] | None:
        """Claim the batch's nonces (one call), dead-letter its rejects; the deliverable
        entries, or None if the consumer stopped while the batch was held."""
        gate = self._gate
        if batch.verified and not await self.claim(batch):
            return None
        if batch.rejected:
            retries = gate.metrics.dead_letter_retries
            if not await self.dead_letter(gate.take_rejected(batch)):
                return None
            if gate.metrics.dead_letter_retries != retries:
                # Held for the dead-letter topic: what is about to be delivered waited too.
                stale = await self.reject_stale(batch.entries, revoked, HELD_FOR_DEAD_LETTERS)
                if stale is None:
                    return None
        return batch.entries

    async def claim(self, batch: Settling[TopicPartition]) -> bool:
        """One claim call for the batch; fail closed (hold and retry) or open. False: stopped
        while held. Before each retry the records that went stale while held leave the claim.

        (Verifying the next batch while Redis answers was tried: no measurable gain, since the
        claim's own encoding runs in this process and Redis answers in a few milliseconds.)
        """
        gate = self._gate
        guard = self._guard
        if guard is None:  # audit mode
            gate.settle(batch)
            return True
        observer = gate.metrics.observer
        try:
            # settle() inside: a guard answering with the wrong number of verdicts is held and
            # retried like one that did not answer
            await self._claim_once(guard, batch)
        except ReplayGuardUnavailable as exc:
            error = exc
        else:
            return True
        if gate.fail_open and not isinstance(error, ReplayStateLost):  # a loss always holds
            observer.unchecked([record for _, _, record, _ in batch.verified])
            gate.unchecked(batch, error)
            return True
        metrics = self._gate.metrics
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
                    len(batch.verified),
                    attempt,
                    delay,
                )
                if not await self._hold(delay):
                    return False
                if gate.drop_stale(batch, HELD_FOR_GUARD) and not batch.verified:
                    log.warning("every held record expired: nothing left to claim")
                    return True
                try:
                    await self._claim_once(guard, batch)
                except ReplayGuardUnavailable as exc:
                    error = exc
                    continue
                log.warning("replay guard available again after %d retries", attempt)
                return True
        finally:
            metrics.guard_waiting = False

    async def _claim_once(self, guard: RedisReplayGuard, batch: Settling[TopicPartition]) -> None:
        """One claim call, timed for the observer; raises ReplayGuardUnavailable."""
        gate = self._gate
        observer = gate.metrics.observer
        rows = gate.claims(batch)
        started = time.perf_counter()
        try:
            verdicts = await guard.claim(rows, freshness=gate.freshness)
            seconds = time.perf_counter() - started
            gate.settle(batch, verdicts)
        except ReplayGuardUnavailable:
            observer.guard_unavailable(len(rows))
            raise
        observer.claimed(rows, verdicts, seconds)

    async def reject_stale(
        self, entries: list[Entry[TopicPartition]], revoked: set[TopicPartition], held_for: str
    ) -> int | None:
        """Re-check the deliverable ``entries`` after a hold: each stale one becomes a rejected
        entry, dead-lettered (waiting until durable; if that holds again, the rest are checked
        again). Returns how many went stale, or None if stopped before they were durable."""
        gate = self._gate
        total = 0
        while True:
            stale = gate.recheck(entries, revoked, held_for)
            if not stale:
                return total
            total += len(stale)
            retries = gate.metrics.dead_letter_retries
            if not await self.dead_letter(gate.reject(stale)):
                return None
            if gate.metrics.dead_letter_retries == retries:
                return total

    async def recheck_batch(
        self, batch: ConsumedBatch, revoked: set[TopicPartition]
    ) -> ConsumedBatch | None:
        """:meth:`VerifyingConsumer.recheck`: ``batch`` without its stale messages (each
        dead-lettered), ``batch`` itself if none went stale, None if stopped before durable."""
        entries: list[Entry[TopicPartition]] = [
            (TopicPartition(m.topic, m.partition), m.offset + 1, m) for m in batch.messages
        ]
        stale = await self.reject_stale(entries, revoked, HELD_FOR_RELAY)
        if stale is None:
            return None
        if not stale:
            return batch
        messages = tuple(m for _, _, m in entries if m is not None)
        return ConsumedBatch(messages, batch.offsets, batch.first_offsets)

    async def dead_letter(self, positioned: Sequence[Rejected]) -> bool:
        """Dead-letter counted, positioned rejections; False if stopped before durable."""
        self._gate.metrics.observer.rejected(positioned)
        if self.dead_letters is None:
            return True
        return await self.dead_letters.send(positioned)


async def hold_paused(
    consumer: AIOKafkaConsumer,
    seconds: float,
    *,
    max_records: int,
    stopping: Callable[[], bool],
) -> bool:
    """Wait while holding a batch, polling with every partition paused so the group does
    not evict this consumer (max_poll_interval_ms). False if the consumer is stopping."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    paused: set[TopicPartition] = set(consumer.assignment()) - set(consumer.paused())
    consumer.pause(*paused)
    try:
        while not stopping():
            left = deadline - loop.time()
            if left <= 0:
                break
            stray = await fetch_records(
                consumer,
                timeout_ms=max(1, int(min(left, 0.5) * 1000)),
                max_records=max_records,
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
    return not stopping()
