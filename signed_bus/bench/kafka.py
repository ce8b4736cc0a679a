"""Kafka plumbing shared by parts 1 to 3: unique topics, one set of client settings for all.

Raw and signed runs get their aiokafka clients from the same :class:`ProducerOptions` and
:class:`ConsumerOptions`, so "same producer settings" holds by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from signed_bus._kafka.consumer import ConsumerOptions
from signed_bus._kafka.producer import ProducerOptions
from signed_bus._kafka.topics import create_topics
from signed_bus.bench.config import BenchConfig

log = logging.getLogger("signed_bus.bench")

__all__ = [
    "bench_topics",
    "consumer_options",
    "producer_options",
    "start_consumer",
    "start_producer",
    "unique_name",
]


def unique_name(kind: str) -> str:
    """``signed-bus-bench.<kind>.<8 hex>``: runs never share a topic or group."""
    return f"signed-bus-bench.{kind}.{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def bench_topics(
    config: BenchConfig, kinds: Sequence[str], *, partitions: int = 1
) -> AsyncIterator[dict[str, str]]:
    """One new LogAppendTime topic per kind (kind -> name), deleted after.

    Yields once each partition's leader answers (a ListOffsets round trip), so the first
    produce does not meet a leader still being elected.
    """
    names = {kind: unique_name(kind) for kind in kinds}
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    await admin.start()
    try:
        await create_topics(admin, names.values(), partitions=partitions)
        probe = AIOKafkaConsumer(bootstrap_servers=config.bootstrap_servers)
        await probe.start()
        try:
            await probe.end_offsets(
                [TopicPartition(name, p) for name in names.values() for p in range(partitions)]
            )
        finally:
            await probe.stop()
        yield names
    finally:
        try:
            await admin.delete_topics(list(names.values()))
        except KafkaError as exc:  # leftovers are harmless: unique names
            log.warning("could not delete bench topics %s: %s", list(names.values()), exc)
        finally:
            await admin.close()


def producer_options(config: BenchConfig) -> ProducerOptions:
    """signed-bus's producer defaults (acks=all, idempotence, linger 0), for raw and signed."""
    return ProducerOptions(bootstrap_servers=config.bootstrap_servers, client_id="bench")


def consumer_options(config: BenchConfig, topic: str) -> ConsumerOptions:
    return ConsumerOptions(
        bootstrap_servers=config.bootstrap_servers,
        group_id=unique_name("group"),
        topics=[topic],
        client_id="bench",
    )


async def start_producer(config: BenchConfig) -> AIOKafkaProducer:
    producer = producer_options(config).build()
    await producer.start()
    return producer


async def start_consumer(
    options: ConsumerOptions, *, assignment_timeout_s: float = 30.0
) -> AIOKafkaConsumer:
    """Build, subscribe and start a consumer, and wait until the group assigned it partitions.

    Throughput is timed from the assignment on, so the group join (seconds, and noisy) is
    left out for raw and signed consumers alike.
    """
    consumer = options.build()
    consumer.subscribe(list(options.topics))
    await consumer.start()
    await wait_assigned(consumer, assignment_timeout_s=assignment_timeout_s)
    return consumer


async def wait_assigned(consumer: AIOKafkaConsumer, *, assignment_timeout_s: float = 30.0) -> None:
    """Wait until the group assigned ``consumer`` partitions (stopping it on timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + assignment_timeout_s
    while not consumer.assignment():
        if loop.time() > deadline:
            await consumer.stop()
            raise TimeoutError(f"no partition assigned within {assignment_timeout_s} s")
        await asyncio.sleep(0.005)
