"""The test harness is real: a broker that stores and serves records, a Redis that honours NX
and EX, append-time topics, and private services that stop and come back (services.py).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import TopicFactory
from tests.integration.services import KafkaProcess, RedisProcess

pytestmark = pytest.mark.integration

LOG_APPEND_TIME = 1


async def _produce(bootstrap: str, topic: str, *values: bytes) -> list[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, v, key=b"k") for v in values]
    finally:
        await producer.stop()
    return [metadata.offset for metadata in sent]


async def _read_all(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, int, int]]:
    """The first ``count`` records of partition 0 as (value, timestamp, timestamp_type)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[tuple[bytes, int, int]] = []
        async with asyncio.timeout(30):
            while len(records) < count:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                records.extend((r.value, r.timestamp, r.timestamp_type) for r in batch.get(tp, []))
    finally:
        await consumer.stop()
    return records


async def test_a_record_goes_through_the_broker(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("harness")
    value = f"hello {uuid.uuid4()}".encode()

    offsets = await _produce(kafka_bootstrap, topic, value)

    assert offsets == [0]
    assert [r[0] for r in await _read_all(kafka_bootstrap, topic, 1)] == [value]


async def test_redis_set_nx_ex(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = f"{redis_prefix}:nonce"
        assert await client.set(key, b"first", nx=True, ex=60) is True
        assert await client.set(key, b"second", nx=True, ex=60) is None  # NX: kept the first
        assert await client.get(key) == b"first"
        assert 0 < await client.ttl(key) <= 60
    finally:
        await client.aclose()


async def test_append_time_topics_report_timestamp_type_1(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("append-time")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        # a producer-supplied timestamp far in the past is replaced by the broker's append time
        sent = await producer.send_and_wait(topic, b"v", timestamp_ms=1_000)
    finally:
        await producer.stop()

    [(value, timestamp, timestamp_type)] = await _read_all(kafka_bootstrap, topic, 1)

    assert value == b"v"
    assert timestamp_type == LOG_APPEND_TIME
    assert timestamp > 1_000_000_000_000
    assert sent.timestamp == timestamp  # the broker tells the producer the append time too


async def test_create_time_stays_available_when_asked_for(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("create-time", config={"message.timestamp.type": "CreateTime"})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"v", timestamp_ms=1_700_000_000_000)
    finally:
        await producer.stop()
    [(_, timestamp, timestamp_type)] = await _read_all(kafka_bootstrap, topic, 1)
    assert (timestamp, timestamp_type) == (1_700_000_000_000, 0)  # CreateTime: the producer's


async def test_private_redis_starts_serves_stops_and_restarts_empty() -> None:
    with RedisProcess() as server:
        assert server.is_running()
        client = aioredis.Redis.from_url(server.url)
        try:
            assert await client.set("k", b"v", nx=True, ex=60)

            await asyncio.to_thread(server.stop)
            assert not server.is_running()
            assert not server.serves()
            with pytest.raises(RedisConnectionError):
                await client.ping()

            await asyncio.to_thread(server.start)
            assert await client.ping()
            assert await client.get("k") is None  # no persistence: a restart forgets

            await asyncio.to_thread(server.kill)
            assert not server.is_running()
            await asyncio.to_thread(server.start)
            # pooled connections died with the process; the next command on one of them fails
            await client.connection_pool.disconnect()
            assert await client.set("k", b"again", nx=True, ex=60)
        finally:
            await client.aclose()
    assert not server.serves()
    assert not server.directory.exists()


async def test_private_kafka_starts_serves_stops_and_restarts_with_its_data() -> None:
    # two broker starts keep this short; crash recovery after kill() is what
    # test_faults_broker.py exercises at length
    with KafkaProcess() as broker:
        topic = f"restart-{uuid.uuid4().hex}"
        assert await _produce(broker.bootstrap, topic, b"before") == [0]  # auto-created

        await asyncio.to_thread(broker.stop)
        assert not broker.is_running()
        assert not broker.serves()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        with pytest.raises(KafkaConnectionError):
            await producer.start()
        await producer.stop()

        await asyncio.to_thread(broker.start)
        assert await _produce(broker.bootstrap, topic, b"after") == [1]
        records = await _read_all(broker.bootstrap, topic, 2)
        assert [r[0] for r in records] == [b"before", b"after"]

        await asyncio.to_thread(broker.kill)
        assert not broker.is_running()
        assert not broker.serves()
    assert not broker.directory.exists()
