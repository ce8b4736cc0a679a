"""Kafka plumbing shared by parts 1 to 3: unique topics, one set of client settings for all.

Raw and signed runs get their aiokafka clients from the same :class:`ProducerOptions` and
:class:`ConsumerOptions`, so "same producer settings" holds by construction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from signed_bus.bench.config import BenchConfig
from signed_bus.consumer import ConsumerOptions
from signed_bus.producer import ProducerOptions
from signed_bus.topics import create_topics

__all__ = [
    "consumer_options",
    "make_topics",
    "producer_options",
    "start_consumer",
    "start_producer",
    "unique_name",
]


def unique_name(kind: str) -> str:
    """``signed-bus-bench.<kind>.<8 hex>``: runs never share a topic or group."""
    return f"signed-bus-bench.{kind}.{uuid.uuid4().hex[:8]}"


async def make_topics(config: BenchConfig, kinds: Sequence[str]) -> dict[str, str]:
    """Create one new single-partition LogAppendTime topic per kind; kind -> topic name."""
    names = {kind: unique_name(kind) for kind in kinds}
    await create_topics(config.bootstrap_servers, names.values(), partitions=1)
    return names


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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + assignment_timeout_s
    while not consumer.assignment():
        if loop.time() > deadline:
            await consumer.stop()
            raise TimeoutError(f"no partition assigned within {assignment_timeout_s} s")
        await asyncio.sleep(0.005)
    return consumer
