"""Fault: kill -9 of one broker of a 3-node KRaft cluster (replication factor 3,
min.insync.replicas 2; tests/integration/clusters.py) under a steady produce load through an
exactly-once relay hop, then the broker restarts. Every honest input comes out of the hop exactly
once (read_committed), and a plain consumer of the inputs delivers each at least once and nothing
twice from two positions."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from signed_bus._kafka.consumer import ConsumedMessage, VerifyingConsumer
from signed_bus._kafka.options import ConsumerOptions
from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._kafka.relay import Output, Relay
from signed_bus._keys import Keyring, generate_ed25519_key
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from tests.integration.bus import Running, unique
from tests.integration.clusters import KafkaClusterProcesses

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

INPUTS = 300


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[KafkaClusterProcesses]:
    with KafkaClusterProcesses(nodes=3) as cluster:
        yield cluster


async def _topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 3) for name in names])
    finally:
        await admin.close()


async def _committed(consumer: VerifyingConsumer, topic: str, ends: dict[int, int]) -> bool:
    tps = {p: TopicPartition(topic, p) for p in ends}
    done = {p: await consumer.consumer.committed(tp) or 0 for p, tp in tps.items()}
    return all(done[p] >= end for p, end in ends.items())


async def _ends(bootstrap: str, topic: str) -> dict[int, int]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        return {tp.partition: end for tp, end in (await reader.end_offsets(tps)).items()}
    finally:
        await reader.stop()


async def _outputs(bootstrap: str, topic: str, verifier: Verifier) -> Counter[int]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await reader.start()
    counts: Counter[int] = Counter()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        deadline = time.monotonic() + 60
        while [tp for tp, end in ends.items() if await reader.position(tp) < end]:
            assert time.monotonic() < deadline, "could not read the sink to its end"
            for records in (await reader.getmany(timeout_ms=500)).values():
                for record in records:
                    message = verifier.verify(record.value, topic=topic, key=record.key)
                    assert isinstance(message.payload, dict)
                    counts[int(message.payload["from"])] += 1
    finally:
        await reader.stop()
    return counts


async def test_kill_9_of_a_broker_under_a_relay_hop_loses_nothing_and_duplicates_nothing(
    kafka_cluster: KafkaClusterProcesses, redis_url: str, redis_prefix: str
) -> None:
    bootstrap = kafka_cluster.bootstrap
    source, sink = unique("hop-in"), unique("hop-out")
    await _topics(bootstrap, source, sink)
    ring = Keyring(
        [generate_ed25519_key("src-1", ["source"]), generate_ed25519_key("relay-1", ["relay"])]
    )
    verifier = Verifier(ring.public())
    group = unique("relay")

    async def transform(message: ConsumedMessage) -> list[Output]:
        assert isinstance(message.payload, dict)
        return [Output({"from": message.payload["n"]}, key=message.key)]

    guard = RedisReplayGuard.from_url(redis_url, prefix=redis_prefix)
    consumer = VerifyingConsumer.from_options(
        ConsumerOptions(
            bootstrap_servers=bootstrap, group_id=group, topics=[source], session_timeout_ms=10_000
        ),
        verifier=verifier,
        guard=guard,
        max_records=20,
    )
    kafka = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, transactional_id=unique("txn")
    )
    relay_signer = Signer(ring, kid="relay-1", issuer="relay", model="relay@1")
    relay = Relay(
        consumer,
        SignedProducer(kafka, signer=relay_signer),
        transform,
        output_topic=sink,
        exactly_once=True,
        group_id=group,
    )
    plain_guard = RedisReplayGuard.from_url(redis_url, prefix=redis_prefix)
    plain = VerifyingConsumer.from_options(
        ConsumerOptions(bootstrap_servers=bootstrap, group_id=unique("plain"), topics=[source]),
        verifier=verifier,
        guard=plain_guard,
    )
    await guard.start()
    await kafka.start()
    await consumer.start()
    task = asyncio.create_task(relay.run())
    source_signer = Signer(ring, kid="src-1", issuer="source", model="lm@1")
    try:
        async with (
            plain_guard,
            Running(plain) as plain_running,
            SignedProducer(ProducerOptions(bootstrap_servers=bootstrap), signer=source_signer) as
            producer,
        ):  # fmt: skip
            sent = []
            for n in range(INPUTS):
                sent.append(await producer.send(source, {"n": n}, key=f"k{n}".encode()))
                if n == INPUTS // 3:
                    await asyncio.to_thread(kafka_cluster.kill, 1)  # kill -9, mid-stream
                if n == 2 * INPUTS // 3:
                    await asyncio.to_thread(kafka_cluster.start_node, 1)
                await asyncio.sleep(0.01)
            await asyncio.gather(*sent)
            ends = await _ends(bootstrap, source)
            deadline = time.monotonic() + 120
            while not (
                await _committed(consumer, source, ends) and await _committed(plain, source, ends)
            ):
                assert not task.done(), task.result()
                assert time.monotonic() < deadline, "the hop did not catch up"
                await asyncio.sleep(0.2)
    finally:
        await relay.stop()
        await task
        await consumer.stop()
        await kafka.stop()
        await guard.stop()
    outputs = await _outputs(bootstrap, sink, verifier)
    assert outputs == Counter(range(INPUTS)), "every input exactly once out of the hop"
    seen = Counter(int(m.payload["n"]) for m in plain_running.delivered)  # type: ignore[index]
    assert set(seen) == set(range(INPUTS)), "the plain consumer lost a record"
    positions = {(m.partition, m.offset) for m in plain_running.delivered}
    assert len(positions) == INPUTS, "the plain consumer delivered a record from two positions"
    assert plain.metrics.rejected_total == 0
