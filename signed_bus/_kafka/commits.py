"""Offset commits of a :class:`~signed_bus._kafka.consumer.VerifyingConsumer`: only what the
application finished (the cursor's finished offsets), coalesced to at most one commit per
``commit_interval_ms``, one commit in flight at a time, and on a rebalance the finished offsets
of the revoked partitions first (docs/OPERATIONS.md, "Delivery semantics: at-least-once" and
"Batches and commit interval").

Coalescing changes when, never what, is committed: an offset is still committed only once its
record and every record before it in its partition is finished. :meth:`Commits.tick` commits
in the background when the interval has passed since the last commit; :meth:`Commits.commit`
(an explicit ``commit()``, ``stop()``, a handler's failure) and :meth:`Commits.on_revoked`
commit at once whatever the interval. A crash redelivers at most the records finished since
the last commit: one interval's worth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._kafka.options import ConsumerOptions
from signed_bus._metrics import ConsumerMetrics

__all__ = ["Commits"]

log = logging.getLogger("signed_bus.consumer")


class Commits:
    """Commits the cursor's finished offsets through the consumer's aiokafka consumer.

    ``options.commit_interval_ms`` 0 (or no options) commits at every batch boundary; above 0,
    a commit starts once that long has passed since the last one started. The consumer ticks
    as records finish, at the end of a batch, on an empty fetch and while a batch is held, so
    finished offsets go out within the interval even when no more records come.
    """

    __slots__ = ("_clock", "_consumer", "_cursor", "_interval", "_last", "_metrics", "_task")

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer],
        cursor: DeliveryCursor,
        metrics: ConsumerMetrics,
        options: ConsumerOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._cursor = cursor
        self._metrics = metrics
        self._interval = 0.0 if options is None else options.commit_interval_ms / 1000
        self._clock = clock
        self._last = clock()
        self._task: asyncio.Task[None] | None = None

    def tick(self, *, boundary: bool = False) -> None:
        """Start a background commit of the finished offsets if one is due: the interval has
        passed since the last commit started (with an interval of 0: only at a ``boundary``,
        the end of a batch, an empty fetch, a held batch). Never waits; skipped while a commit
        is still in flight (the next tick retries), and left to :meth:`commit` when the last
        background commit failed (that raises its error)."""
        # Runs once per delivered record: the cheapest test (is one due at all?) first.
        interval = self._interval
        if interval == 0:
            if not boundary:
                return
        elif self._clock() - self._last < interval:
            return
        if not self._cursor.finished:
            return
        task = self._task
        if task is not None and (not task.done() or task.cancelled() or task.exception()):
            return
        self._task = None
        self._start()

    async def at_boundary(self) -> None:
        """A batch is done: raise the error of a background commit that failed (as
        :meth:`commit` would), then :meth:`tick`."""
        if self._interval == 0:
            await self.commit(wait=False)  # waits for the commit in flight, starts the next
            return
        task = self._task
        if task is not None and task.done():
            self._task = None
            await task
        self.tick()

    async def batch_done(self) -> None:
        """A whole batch was marked finished (``commit_offsets``): with an interval, as
        :meth:`at_boundary`; without, commit now and wait (committed when this returns)."""
        if self._interval > 0:
            await self.at_boundary()
        else:
            await self.commit()

    def _start(self) -> None:
        self._last = self._clock()
        self._task = asyncio.create_task(self._send(self._cursor.take_finished()))

    async def commit(self, *, wait: bool = True) -> None:
        """Commit the finished offsets now, whatever the interval. ``wait=False`` lets the
        commit run in the background: one commit is in flight at a time, in order, and the
        next commit (or the consumer's stop) waits for it and raises its error."""
        previous = self._task
        if previous is not None:
            self._task = None
            await previous
        if not self._cursor.finished:
            return
        if wait:
            self._last = self._clock()
            await self._send(self._cursor.take_finished())
        else:
            self._start()

    async def _send(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self._consumer().assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer().commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced: the partitions' new owner reads them from the last
            # committed offset, so these records are delivered again there (at-least-once).
            self._metrics.commit_failures += 1
            log.warning(
                "commit of %d partition(s) failed after a rebalance (%s); their records are "
                "delivered again by the new owner",
                len(offsets),
                type(exc).__name__,
            )
            return
        self._committed(offsets)

    def _committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._metrics.commits += 1
        committed = self._metrics.committed
        for tp, offset in offsets.items():
            committed[(tp.topic, tp.partition)] = offset

    async def commit_quietly(self) -> None:
        try:
            await self.commit()
        except Exception as exc:  # already on an error path: report, don't mask the first error
            log.warning("commit failed: %s: %s", type(exc).__name__, exc)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit the finished offsets of ``revoked`` before the partitions move, whatever
        the interval (their new owner starts from the committed offset)."""
        task = self._task
        if task is not None and not task.done():
            # An older commit of these partitions must not land after this one.
            await asyncio.wait([task])
        finished = self._cursor.revoke(revoked)
        if not finished:
            return
        try:
            await self._consumer().commit(finished)
        except Exception as exc:  # the new owner re-reads them: duplicates, never loss
            self._metrics.commit_failures += 1
            log.warning("commit on rebalance failed: %s: %s", type(exc).__name__, exc)
            return
        self._committed(finished)
