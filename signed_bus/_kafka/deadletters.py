"""The dead-letter side of a verifying consumer: the writer that produces dead letters through a
plain aiokafka producer, and the sender that waits until the broker has them all, retrying
with backoff while the dead-letter topic is unavailable. What a dead letter holds:
:mod:`signed_bus._deadletter` and docs/OPERATIONS.md ("Dead letters")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

from signed_bus._deadletter import Omitted, after_refusal, letter_parts
from signed_bus._gate import Rejected
from signed_bus._kafka.options import Backoff
from signed_bus._metrics import ConsumerMetrics
from signed_bus.errors import VerificationError

__all__ = ["DeadLetterSender", "DeadLetterWriter", "is_retriable", "is_too_large"]

log = logging.getLogger("signed_bus.consumer")

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)
# Transient whatever aiokafka's flag says: KafkaTimeoutError (no metadata, a full buffer, an
# expired batch during a broker outage) is marked retriable=False, yet a retry after the broker
# returns succeeds.
_TRANSIENT = (KafkaTimeoutError, KafkaConnectionError)

#: Waits ``seconds`` while a batch is held; False if the consumer is stopping.
Hold = Callable[[float], Awaitable[bool]]


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
        while True:
            value, key, headers, omit = letter_parts(record, error, omit)
            try:
                future: asyncio.Future[Any] = await self._producer.send(
                    self._topic, value, key=key, headers=headers
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


#: A letter still to send: the record, its rejection, what to leave out, and whether it goes
#: alone (in a produce request of its own).
_Pending = tuple[Any, VerificationError, Omitted, bool]


class DeadLetterSender:
    """Sends a batch's dead letters and waits until the broker has them all, retrying what
    failed with backoff (holding the batch meanwhile through ``hold``).

    A letter the broker refuses as too large is sent again alone first: letters queued together
    travel in one record batch, and the topic's ``max.message.bytes`` bounds the batch, so a
    refusal in company says nothing about the letter's own size. Refused alone, it is sent
    without the record's value, then without its key too; a letter too large even then is
    dropped (counted in ``metrics.dead_letters_dropped``, logged at ERROR): raising would stop
    the consumer on that record after every restart, since its offset is never committed.
    """

    __slots__ = ("_backoff", "_hold", "_metrics", "_writer")

    def __init__(
        self,
        writer: DeadLetterWriter,
        *,
        backoff: Backoff,
        metrics: ConsumerMetrics,
        hold: Hold,
    ) -> None:
        self._writer = writer
        self._backoff = backoff
        self._metrics = metrics
        self._hold = hold

    @property
    def topic(self) -> str:
        return self._writer.topic

    async def send(self, items: Sequence[Rejected]) -> bool:
        """Dead-letter ``items`` (positioned rejections); False if stopped before durable."""
        writer = self._writer
        metrics = self._metrics
        todo: list[_Pending] = [
            (record, error, Omitted.NOTHING, len(items) == 1) for record, error in items
        ]
        attempt = 0
        while todo:
            failed: list[_Pending] = []
            sent: list[_Pending] = []
            futures: list[asyncio.Future[Any]] = []
            last_error: BaseException | None = None
            todo.sort(key=lambda pending: not pending[3])  # the lone ones first
            stalled = False  # a lone letter failed retriably: the rest waits for the backoff
            for record, error, omit, alone in todo:
                if stalled:
                    failed.append((record, error, omit, alone))
                    continue
                try:
                    future, omit = await writer.send_letter(record, error, omit=omit)
                    if alone:  # its own request: nothing else is queued until it is answered
                        await asyncio.wait((future,))
                        stalled = _failed_retriably(future)
                except KafkaError as exc:
                    if is_too_large(exc):
                        self._drop(record, error, exc)
                        continue
                    if not is_retriable(exc):
                        raise
                    failed.append((record, error, omit, alone))
                    last_error = exc
                else:
                    futures.append(future)
                    sent.append((record, error, omit, alone))
            results = await asyncio.gather(*futures, return_exceptions=True)
            for (record, error, omit, alone), result in zip(sent, results, strict=True):
                if not isinstance(result, BaseException):
                    metrics.dead_lettered += 1
                    metrics.observer.dead_letter_written(record, error)
                elif is_too_large(result):
                    again = after_refusal(omit, alone)
                    if again is None:
                        self._drop(record, error, result)
                    else:
                        failed.append((record, error, *again))
                elif is_retriable(result):
                    failed.append((record, error, omit, alone))
                    last_error = result
                else:
                    raise result
            todo = failed
            if todo and last_error is not None:
                attempt += 1
                metrics.dead_letter_retries += 1
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

    def _drop(self, record: Any, error: VerificationError, exc: BaseException) -> None:
        self._metrics.dead_letters_dropped += 1
        self._metrics.observer.dead_letter_dropped(record, error)
        log.error(
            "dead letter dropped: too large for topic %s even without the record's value and "
            "key (%s); the rejected record stays at its source position: %s",
            self._writer.topic,
            type(exc).__name__,
            error,
        )


def _failed_retriably(future: asyncio.Future[Any]) -> bool:
    """True when a lone letter's delivery failed for a reason a retry may cure (the topic is
    unavailable), not for its size."""
    if future.cancelled():
        return False
    problem = future.exception()
    return problem is not None and not is_too_large(problem) and is_retriable(problem)
