"""The confluent-kafka producer's per-record path against the real broker: with no observer and
no headers it hands the signed value straight to librdkafka, and that path keeps everything the
general one does (key, partition, delivery callback, the count, polling for room in a full local
queue) and verifies on the other side."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from signed_bus.confluent import SignedProducer
from signed_bus.errors import Stopped
from tests.conftest import TopicFactory
from tests.integration.bus import keyring, read_all, signer, verifier

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_produce_keeps_key_partition_callback_and_count_and_verifies(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("cf-produce", partitions=3)
    ring = keyring()
    reports: list[tuple[Any, Any]] = []
    lock = threading.Lock()

    def on_delivery(error: Any, message: Any) -> None:
        with lock:
            reports.append((error, message))

    def produce_all() -> None:
        with SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)) as p:
            for n in range(30):
                p.produce(
                    topic,
                    {"n": n},
                    key=b"k%d" % n,
                    partition=n % 3,
                    on_delivery=on_delivery if n % 2 else None,
                )
            p.producer.flush(30)
            assert p.metrics.signed == 30

    await asyncio.to_thread(produce_all)
    assert len(reports) == 15 and all(error is None for error, _ in reports)
    assert sorted(message.partition() for _, message in reports) == sorted(
        n % 3 for n in range(1, 30, 2)
    )
    records = await read_all(kafka_bootstrap, topic, 30)
    check = verifier(ring)
    seen = {}
    for record in records:
        payload = check.verify(record.value, topic=topic, key=record.key).payload
        assert isinstance(payload, dict)
        seen[payload["n"]] = (record.key, record.partition)
    assert seen == {n: (b"k%d" % n, n % 3) for n in range(30)}


async def test_a_full_local_queue_is_waited_out_not_raised(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("cf-full")
    ring = keyring()
    # room for 5 records in librdkafka's queue: produce must poll for room, never BufferError
    config = {"bootstrap.servers": kafka_bootstrap, "queue.buffering.max.messages": 5}

    def produce_all() -> int:
        with SignedProducer(config, signer=signer(ring)) as p:
            for n in range(200):
                p.produce(topic, {"n": n})
            p.producer.flush(30)
            return p.metrics.signed

    assert await asyncio.to_thread(produce_all) == 200
    records = await read_all(kafka_bootstrap, topic, 200)
    check = verifier(ring)
    payloads = [check.verify(r.value, topic=topic, key=None).payload for r in records]
    assert sorted(p["n"] for p in payloads if isinstance(p, dict)) == list(range(200))


def test_a_stopped_producer_refuses_to_produce() -> None:
    producer = SignedProducer({"bootstrap.servers": "127.0.0.1:1"}, signer=signer(keyring()))
    producer.stop()
    with pytest.raises(Stopped):
        producer.produce("t", {"n": 1})
