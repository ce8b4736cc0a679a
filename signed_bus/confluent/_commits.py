"""Offset commits of the confluent-kafka :class:`~signed_bus.confluent.VerifyingConsumer`: only
what the application finished (the delivery cursor's finished offsets), and on a rebalance the
finished offsets of the revoked partitions first, from librdkafka's ``on_revoke``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from aiokafka import TopicPartition
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as Partition

from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._metrics import ConsumerMetrics

__all__ = ["SyncCommits", "partitions_of"]

log = logging.getLogger("signed_bus.consumer")


def partitions_of(offsets: Mapping[TopicPartition, int]) -> list[Partition]:
    """librdkafka's partition list for ``offsets`` (per partition, the next offset to read)."""
    return [Partition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]


class SyncCommits:
    """Commits the cursor's finished offsets through a librdkafka consumer."""

    __slots__ = ("_consumer", "_cursor", "_metrics", "assigned")

    def __init__(
        self, consumer: Callable[[], Consumer], cursor: DeliveryCursor, metrics: ConsumerMetrics
    ) -> None:
        self._consumer = consumer
        self._cursor = cursor
        self._metrics = metrics
        # what librdkafka's callbacks last said the group assigned (a snapshot other threads
        # may read: they must not call the consumer, whose callbacks need this thread)
        self.assigned: frozenset[TopicPartition] = frozenset()

    def commit(self, *, wait: bool = True) -> None:
        """Commit the finished offsets of the partitions still assigned. ``wait=False`` (at a
        batch boundary) lets librdkafka send it in the background: its result arrives through
        :meth:`on_commit` (librdkafka keeps the commits of one consumer in order)."""
        if not self._cursor.finished:
            return
        offsets = self._cursor.take_finished()
        consumer = self._consumer()
        assigned = {(p.topic, p.partition) for p in consumer.assignment()}
        todo = {tp: o for tp, o in offsets.items() if (tp.topic, tp.partition) in assigned}
        if not todo:
            return
        try:
            if wait:
                consumer.commit(offsets=partitions_of(todo), asynchronous=False)
            else:
                consumer.commit(offsets=partitions_of(todo), asynchronous=True)
                return
        except KafkaException as exc:
            self._failed(exc.args[0], len(todo))
            return
        self._committed(todo)

    def on_commit(self, error: KafkaError | None, partitions: list[Partition]) -> None:
        """librdkafka's ``on_commit`` callback (background commits)."""
        if error is not None:
            self._failed(error, len(partitions))
            return
        self._committed(
            {
                TopicPartition(p.topic, p.partition): p.offset
                for p in partitions
                if p.error is None and p.offset >= 0
            }
        )

    def _failed(self, error: object, count: int) -> None:
        if isinstance(error, KafkaError) and error.fatal():
            raise KafkaException(error)
        # The group rebalanced (or the coordinator moved): the partitions' new owner reads them
        # from the last committed offset, so these records are delivered again (at-least-once).
        self._metrics.commit_failures += 1
        name = error.name() if isinstance(error, KafkaError) else type(error).__name__
        log.warning(
            "commit of %d partition(s) failed (%s); their records are delivered again by the "
            "partitions' next owner",
            count,
            name,
        )

    def _committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        self._metrics.commits += 1
        committed = self._metrics.committed
        for tp, offset in offsets.items():
            key = (tp.topic, tp.partition)
            committed[key] = max(offset, committed.get(key, 0))

    def on_assign(self, consumer: Consumer, partitions: list[Partition]) -> None:
        """librdkafka's ``on_assign``: only recorded."""
        self.assigned |= {TopicPartition(p.topic, p.partition) for p in partitions}

    def on_revoke(self, consumer: Consumer, partitions: list[Partition]) -> None:
        """librdkafka's ``on_revoke``: commit what was finished of the revoked partitions; the
        rest of the batch for them is the new owner's."""
        revoked = {TopicPartition(p.topic, p.partition) for p in partitions}
        self.assigned -= revoked
        finished = self._cursor.revoke(revoked)
        if not finished:
            return
        try:
            consumer.commit(offsets=partitions_of(finished), asynchronous=False)
        except KafkaException as exc:  # the new owner re-reads them: duplicates, never loss
            self._failed(exc.args[0], len(finished))
            return
        self._committed(finished)

    def on_lost(self, consumer: Consumer, partitions: list[Partition]) -> None:
        """librdkafka's ``on_lost``: the partitions may already be another member's, so nothing
        of them is committed; the rest of the batch for them is dropped."""
        lost = {TopicPartition(p.topic, p.partition) for p in partitions}
        self.assigned -= lost
        self._cursor.revoke(lost)
