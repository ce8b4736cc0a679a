"""Settling a verified batch for the confluent-kafka front, without asyncio: one claim call to
the sync replay guard (fail closed: hold and retry with backoff, dropping records that went
stale; or fail open), dead letters through a librdkafka producer (waiting until the broker has
them, retrying with backoff), and the freshness re-check of records that waited. The decisions
are the gate's (:mod:`signed_bus._gate`), the letters :func:`~signed_bus._deadletter.letter_parts`:
this module only does the waiting, as :mod:`signed_bus._kafka.settle` does on asyncio.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiokafka import TopicPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as Partition

from signed_bus._deadletter import Omitted, after_refusal, letter_parts
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
from signed_bus._kafka.options import Backoff
from signed_bus._metrics import ConsumerMetrics
from signed_bus._replay.sync_guard import SyncRedisReplayGuard
from signed_bus.confluent._records import split_messages
from signed_bus.errors import ReplayGuardUnavailable, ReplayStateLost, VerificationError

__all__ = ["DeadLetters", "Hold", "SyncSettler", "hold_paused"]

log = logging.getLogger("signed_bus.consumer")

#: Waits ``seconds`` while a batch is held; False if the consumer is stopping.
Hold = Callable[[float], bool]

_TOO_LARGE: Final = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


def _too_large(error: KafkaError) -> bool:
    return error.code() in _TOO_LARGE


def _retriable(result: KafkaError | bool | None) -> bool:
    """True for a letter's outcome a retry may cure: no report in time, or a failure that is
    neither its size nor fatal."""
    if result is True:
        return True
    return isinstance(result, KafkaError) and not _too_large(result) and not result.fatal()


#: A letter still to send: the record, its rejection, what to leave out, and whether it goes
#: alone (flushed before anything else is queued).
_Pending = tuple[Any, VerificationError, Omitted, bool]


class DeadLetters:
    """Produces dead letters to one topic through a plain librdkafka producer and waits until
    the broker has them all, retrying with backoff while the topic is unavailable.

    A letter the broker refuses as too large in company is sent again alone first (letters
    queued together share a record batch, which the topic's ``max.message.bytes`` bounds as a
    whole); refused alone, it is sent without the record's value, then without its key too. A
    letter too large even then is dropped (counted, logged at ERROR)."""

    __slots__ = ("_backoff", "_flush_s", "_metrics", "_producer", "topic")

    def __init__(
        self,
        producer: Producer,
        topic: str,
        *,
        backoff: Backoff,
        metrics: ConsumerMetrics,
        flush_s: float = 30.0,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._backoff = backoff
        self._metrics = metrics
        self._flush_s = flush_s

    def send(self, items: Sequence[Rejected], hold: Hold) -> bool:
        """Dead-letter positioned rejections; False if stopped before they were durable."""
        todo: list[_Pending] = [
            (record, error, Omitted.NOTHING, len(items) == 1) for record, error in items
        ]
        attempt = 0
        while todo:
            results: list[KafkaError | bool | None] = []
            queued: list[_Pending] = []
            todo.sort(key=lambda pending: not pending[3])  # the lone ones first
            # not queued this round: a lone letter failed retriably, the rest waits for the
            # backoff (with the topic away, each lone flush would wait flush_s)
            waiting: list[_Pending] = []
            for record, error, omit, alone in todo:
                if waiting or (queued and queued[-1][3] and _retriable(results[-1])):
                    waiting.append((record, error, omit, alone))
                    continue
                omit = self._queue(record, error, omit, results)
                queued.append((record, error, omit, alone))
                if alone:  # its own batch: nothing else is queued until it is answered
                    self._producer.flush(self._flush_s)
            self._producer.flush(self._flush_s)
            retry: list[_Pending] = waiting
            last: str | None = None  # set below: the queued lone letter that failed is retried
            for (record, error, omit, alone), result in zip(queued, results, strict=True):
                if result is None:
                    self._metrics.dead_lettered += 1
                    self._metrics.observer.dead_letter_written(record, error)
                elif result is False:  # refused locally even without value and key
                    self._drop(record, error, "MSG_SIZE_TOO_LARGE")
                elif result is True:  # no delivery report within flush_s
                    retry.append((record, error, omit, alone))
                    last = "no delivery report"
                elif isinstance(result, KafkaError) and _too_large(result):
                    again = after_refusal(omit, alone)
                    if again is None:
                        self._drop(record, error, result.name())
                    else:
                        retry.append((record, error, *again))
                elif isinstance(result, KafkaError) and (result.fatal()):
                    raise KafkaException(result)
                else:
                    retry.append((record, error, omit, alone))
                    last = result.name() if isinstance(result, KafkaError) else str(result)
            todo = retry
            if todo and last is not None:
                attempt += 1
                self._metrics.dead_letter_retries += 1
                delay = self._backoff.delay(attempt)
                log.warning(
                    "dead-letter topic %s unavailable (%s): %d dead letters pending, "
                    "retry %d in %.2fs",
                    self.topic,
                    last,
                    len(todo),
                    attempt,
                    delay,
                )
                if not hold(delay):
                    return False
        return True

    def _queue(
        self,
        record: Any,
        error: VerificationError,
        omit: Omitted,
        results: list[KafkaError | bool | None],
    ) -> Omitted:
        """Queue one letter (leaving out more while librdkafka refuses it as too large);
        appends its slot to ``results`` (True until its report comes)."""
        index = len(results)
        results.append(True)

        def report(err: KafkaError | None, _: object) -> None:
            results[index] = err

        while True:
            value, key, built, omit = letter_parts(record, error, omit)
            headers: list[tuple[str, str | bytes | None]] = list(built)
            try:
                self._producer.produce(self.topic, value, key, headers=headers, on_delivery=report)
            except BufferError:
                self._producer.poll(0.1)
                continue
            except KafkaException as exc:
                if not _too_large(exc.args[0]):
                    raise
                if omit >= Omitted.VALUE_AND_KEY:
                    results[index] = False
                    return omit
                omit = Omitted(omit + 1)
                continue
            return omit

    def _drop(self, record: Any, error: VerificationError, why: str) -> None:
        self._metrics.dead_letters_dropped += 1
        self._metrics.observer.dead_letter_dropped(record, error)
        log.error(
            "dead letter dropped: too large for topic %s even without the record's value and "
            "key (%s); the rejected record stays at its source position: %s",
            self.topic,
            why,
            error,
        )


class SyncSettler:
    """Claims, holds, dead-letters and re-checks one batch at a time for a sync consumer."""

    __slots__ = ("_backoff", "_gate", "_guard", "_hold", "dead_letters")

    def __init__(
        self, gate: Gate, guard: SyncRedisReplayGuard | None, *, backoff: Backoff, hold: Hold
    ) -> None:
        self._gate = gate
        self._guard = guard
        self._backoff = backoff
        self._hold = hold
        self.dead_letters: DeadLetters | None = None

    def settle(
        self, batch: Settling[TopicPartition], revoked: set[TopicPartition]
    ) -> list[Entry[TopicPartition]] | None:
        """Claim the batch's nonces (one call), dead-letter its rejects; the deliverable
        entries, or None if the consumer stopped while the batch was held."""
        gate = self._gate
        if batch.verified and not self.claim(batch):
            return None
        if batch.rejected:
            retries = gate.metrics.dead_letter_retries
            if not self.dead_letter(gate.take_rejected(batch)):
                return None
            if (
                gate.metrics.dead_letter_retries != retries
                and self.reject_stale(batch.entries, revoked, HELD_FOR_DEAD_LETTERS) is None
            ):
                return None
        return batch.entries

    def claim(self, batch: Settling[TopicPartition]) -> bool:
        """One claim call; fail closed (hold, drop what went stale, retry) or open."""
        gate = self._gate
        guard = self._guard
        if guard is None:  # audit mode
            gate.settle(batch)
            return True
        try:
            self._claim_once(guard, batch)
        except ReplayGuardUnavailable as exc:
            error = exc
        else:
            return True
        if gate.fail_open and not isinstance(error, ReplayStateLost):  # a loss always holds
            gate.metrics.observer.unchecked([record for _, _, record, _ in batch.verified])
            gate.unchecked(batch, error)
            return True
        metrics = gate.metrics
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
                if not self._hold(delay):
                    return False
                if gate.drop_stale(batch, HELD_FOR_GUARD) and not batch.verified:
                    log.warning("every held record expired: nothing left to claim")
                    return True
                try:
                    self._claim_once(guard, batch)
                except ReplayGuardUnavailable as exc:
                    error = exc
                    continue
                log.warning("replay guard available again after %d retries", attempt)
                return True
        finally:
            metrics.guard_waiting = False

    def _claim_once(self, guard: SyncRedisReplayGuard, batch: Settling[TopicPartition]) -> None:
        """One claim call, timed for the observer; raises ReplayGuardUnavailable."""
        gate = self._gate
        observer = gate.metrics.observer
        rows = gate.claims(batch)
        started = time.perf_counter()
        try:
            verdicts = guard.claim(rows, freshness=gate.freshness)
            seconds = time.perf_counter() - started
            gate.settle(batch, verdicts)
        except ReplayGuardUnavailable:
            observer.guard_unavailable(len(rows))
            raise
        observer.claimed(rows, verdicts, seconds)

    def reject_stale(
        self, entries: list[Entry[TopicPartition]], revoked: set[TopicPartition], held_for: str
    ) -> int | None:
        """Re-check deliverable ``entries`` after a wait; stale ones are dead-lettered. How
        many went stale, or None if stopped before they were durable."""
        gate = self._gate
        total = 0
        while True:
            stale = gate.recheck(entries, revoked, held_for)
            if not stale:
                return total
            total += len(stale)
            retries = gate.metrics.dead_letter_retries
            if not self.dead_letter(gate.reject(stale)):
                return None
            if gate.metrics.dead_letter_retries == retries:
                return total

    def recheck_batch(
        self, batch: ConsumedBatch, revoked: set[TopicPartition]
    ) -> ConsumedBatch | None:
        """``batch`` without the messages that went stale during a relay's transform (each
        dead-lettered); ``batch`` itself if none did; None if stopped before durable."""
        if not batch.messages:
            return batch
        entries: list[Entry[TopicPartition]] = [
            (TopicPartition(m.topic, m.partition), m.offset + 1, m) for m in batch.messages
        ]
        stale = self.reject_stale(entries, revoked, HELD_FOR_RELAY)
        if stale is None:
            return None
        if not stale:
            return batch
        messages = tuple(m for _, _, m in entries if m is not None)
        return ConsumedBatch(messages, batch.offsets, batch.first_offsets)

    def dead_letter(self, positioned: Sequence[Rejected]) -> bool:
        """Dead-letter counted, positioned rejections; False if stopped before durable."""
        self._gate.metrics.observer.rejected(positioned)
        if self.dead_letters is None:
            return True
        return self.dead_letters.send(positioned, self._hold)


def hold_paused(
    consumer: Consumer, seconds: float, max_records: int, *, stopping: Callable[[], bool]
) -> bool:
    """Wait while holding a batch, consuming with every partition paused so the group does not
    evict the consumer (max.poll.interval.ms) and rebalance callbacks are served. Records of
    partitions assigned meanwhile are put back (seek) and those partitions paused too. False
    if the consumer is stopping."""
    deadline = time.monotonic() + seconds
    paused = consumer.assignment()
    consumer.pause(paused)
    try:
        while not stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            records, skipped = split_messages(consumer.consume(max_records, min(left, 0.5)))
            first: dict[tuple[str, int], int] = {}
            for tp, part in records.items():
                first[(tp.topic, tp.partition)] = part[0].offset
            for gap in skipped:
                key = (gap.topic, gap.partition)
                first[key] = min(first.get(key, gap.offset), gap.offset)
            if first:
                back = [Partition(t, p, o) for (t, p), o in first.items()]
                for partition in back:
                    consumer.seek(partition)
                consumer.pause(back)
                paused.extend(back)
    finally:
        assigned = {(p.topic, p.partition) for p in consumer.assignment()}
        resume = [p for p in paused if (p.topic, p.partition) in assigned]
        if resume:
            consumer.resume(resume)
    return not stopping()
