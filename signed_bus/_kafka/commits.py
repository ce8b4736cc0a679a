"""Offset commits of a :class:`~signed_bus._kafka.consumer.VerifyingConsumer`: only what the
application finished (the cursor's finished offsets), one commit in flight at a time, and on a
rebalance the finished offsets of the revoked partitions first (docs/OPERATIONS.md, "Producing
and consuming")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._metrics import ConsumerMetrics

__all__ = ["Commits"]

log = logging.getLogger("signed_bus.consumer")


class Commits:
    """Commits the cursor's finished offsets through the consumer's aiokafka consumer."""

    __slots__ = ("_consumer", "_cursor", "_metrics", "_task")

    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer],
        cursor: DeliveryCursor,
        metrics: ConsumerMetrics,
    ) -> None:
        self._consumer = consumer
        self._cursor = cursor
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def commit(self, *, wait: bool = True) -> None:
        """Commit the finished offsets. ``wait=False`` (at a batch boundary) lets the commit
        run while the next batch is fetched and handled: offsets are still committed only for
        finished records, one commit is in flight at a time, in order, and the next commit (or
        the consumer's stop) waits for it and raises its error."""
        previous = self._task
        if previous is not None:
            self._task = None
            await previous
        if not self._cursor.finished:
            return
        offsets = self._cursor.take_finished()
        if wait:
            await self._send(offsets)
        else:
            self._task = asyncio.create_task(self._send(offsets))

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
