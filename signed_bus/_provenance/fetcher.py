"""Reading single Kafka records by position for a trace: assign + seek, no consumer group."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from signed_bus._kafka.consumer import require_read_committed
from signed_bus._kafka.fetch import fetch_records
from signed_bus._lifecycle import AsyncLifecycle, start_kafka_client, stopped_error
from signed_bus._provenance.trace import FetchedRecord, Position
from signed_bus.errors import ConfigurationError

__all__ = ["RecordFetcher", "partitions_of"]


class RecordFetcher(AsyncLifecycle):
    """Reads single records by position: assign + seek, no consumer group, read_committed.

    Pass a built AIOKafkaConsumer (created with ``group_id=None``, ``enable_auto_commit=False``
    and ``isolation_level="read_committed"``, else ConfigurationError; not closed by us) or
    ``bootstrap_servers``.

    Lifecycle: :meth:`start` starts a consumer the fetcher created, :meth:`stop` stops it and is
    idempotent; ``async with`` does both. After :meth:`stop`, :meth:`start` and :meth:`fetch`
    raise :class:`~signed_bus.errors.Stopped`.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer | None = None,
        *,
        bootstrap_servers: str | None = None,
        timeout_s: float = 10.0,
        **consumer_options: Any,
    ) -> None:
        if (consumer is None) == (bootstrap_servers is None):
            raise ConfigurationError("pass either a consumer or bootstrap_servers")
        if consumer is not None:
            # A record of an aborted transaction must never become a link of a trace.
            require_read_committed(consumer)
        self._owns_consumer = consumer is None
        self._consumer = consumer or AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            **consumer_options,
        )
        self._timeout_s = timeout_s
        self._started = False
        self._stopped = False
        self._known: dict[str, set[int]] = {}

    async def start(self) -> None:
        """Start the consumer if the fetcher created it; Stopped after :meth:`stop`."""
        if self._stopped:
            raise stopped_error("the record fetcher")
        if self._owns_consumer and not self._started:
            await start_kafka_client(self._consumer)
        self._started = True

    async def stop(self) -> None:
        """Close the consumer if the fetcher created it (started or not: an unclosed one warns
        when collected); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._started = False
        if self._owns_consumer:
            await self._consumer.stop()

    async def fetch(self, position: Position) -> FetchedRecord | None:
        """The record at ``position``, or None if the log does not (or no longer) hold it.

        None covers: unknown topic or partition, an offset outside [log start, last stable
        offset), and an offset that holds no readable record (an aborted transaction's output,
        a transaction marker, a compacted-away record, or a record the Kafka client cannot
        decode). Raises :class:`~signed_bus.errors.Stopped` after :meth:`stop`.
        """
        if self._stopped:
            raise stopped_error("the record fetcher")
        try:
            return await asyncio.wait_for(self._fetch(position), self._timeout_s)
        except (TimeoutError, KafkaError):
            return None

    async def _fetch(self, position: Position) -> FetchedRecord | None:
        partitions = await self._partitions(position.topic)
        if position.partition not in partitions:
            return None
        tp = TopicPartition(position.topic, position.partition)
        self._consumer.assign([tp])
        begin = (await self._consumer.beginning_offsets([tp]))[tp]
        end = (await self._consumer.end_offsets([tp]))[tp]
        if not begin <= position.offset < end:
            return None
        self._consumer.seek(tp, position.offset)
        while True:
            batch = await fetch_records(self._consumer, tp, timeout_ms=1000, max_records=1)
            if any(s.offset <= position.offset <= s.last_offset for s in batch.skipped):
                return None
            for record in batch.records.get(tp, ()):
                if record.offset != position.offset:
                    return None
                return FetchedRecord(
                    position=position,
                    key=record.key,
                    value=record.value,
                    timestamp=record.timestamp,
                    timestamp_type=record.timestamp_type,
                )
            if await self._consumer.position(tp) > position.offset:
                return None

    async def _partitions(self, topic: str) -> set[int]:
        known = self._known.get(topic)
        if known is not None:
            return known
        partitions = await partitions_of(self._consumer, topic)
        self._known[topic] = partitions
        return partitions


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition numbers of ``topic`` (empty if it does not exist), for a group-less
    consumer; leaves the consumer assigned to the topic's partition 0.

    ``topics()`` asks the broker without creating anything (assigning an unknown topic would
    auto-create it on brokers that allow that). A consumer's own metadata only covers assigned
    topics, so partition 0, which every topic has, is assigned and probed to load the list.
    """
    if topic not in await consumer.topics():
        return set()
    probe = TopicPartition(topic, 0)
    consumer.assign([probe])
    await consumer.end_offsets([probe])
    return set(consumer.partitions_for_topic(topic) or ())
