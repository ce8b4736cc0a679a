"""SignedProducer -> Kafka -> VerifyingConsumer on a real broker and a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from signed_bus._kafka.consumer import Backoff, ConsumedMessage, VerifyingConsumer
from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._kafka.topics import create_topics, topic_timestamp_types
from signed_bus._replay.guard import ClaimVerdict
from tests.conftest import TopicFactory
from tests.integration.bus import (
    CREATE_TIME,
    Running,
    consumer_options,
    end_offsets,
    guard,
    keyring,
    per_partition,
    plain_producer,
    signer,
    unique,
    verifier,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

N = 10_000


async def test_ten_thousand_results_round_trip_once_each_in_partition_order(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("rt", partitions=3)
    options = ProducerOptions(bootstrap_servers=kafka_bootstrap)
    started = time.monotonic()
    async with SignedProducer(options, signer=signer(ring)) as producer:
        items = [
            Outgoing(
                {"seq": i, "text": "x" * 400},
                key=f"user-{i % 97}".encode(),
                headers=[("traceparent", f"00-{i:032x}-{i:016x}-01".encode())],
            )
            for i in range(N)
        ]
        metadata = []
        for start in range(0, N, 2_500):
            metadata += await producer.send_batch(topic, items[start : start + 2_500])
    produced = time.monotonic() - started
    assert len(metadata) == N
    assert {m.partition for m in metadata} == {0, 1, 2}
    # RecordMetadata per item: distinct positions, LogAppendTime stamped by the broker.
    assert len({(m.partition, m.offset) for m in metadata}) == N
    assert all(m.timestamp_type == 1 for m in metadata)
    where = {i: (m.partition, m.offset) for i, m in enumerate(metadata)}

    ends = await end_offsets(kafka_bootstrap, [topic])
    assert sum(ends.values()) == N
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]), verifier=verifier(ring), guard=g
        )
        started = time.monotonic()
        async with Running(consumer) as running:
            await running.caught_up(ends)
        consumed = time.monotonic() - started

    delivered = running.delivered
    seqs = [m.payload["seq"] for m in delivered]  # type: ignore[index]
    assert sorted(seqs) == list(range(N)), "each result exactly once"
    for (_, partition), messages in per_partition(delivered).items():
        offsets = [m.offset for m in messages]
        assert offsets == sorted(offsets)
        in_order = [m.payload["seq"] for m in messages]  # type: ignore[index]
        assert in_order == sorted(in_order), f"partition {partition} out of order"
    for m in delivered:
        seq = m.payload["seq"]  # type: ignore[index]
        assert (m.partition, m.offset) == where[seq]
        assert m.key == f"user-{seq % 97}".encode()
        assert dict(m.headers)["traceparent"] == f"00-{seq:032x}-{seq:016x}-01".encode()
        assert m.claim is ClaimVerdict.NEW
        assert m.timestamp_type == 1
        assert m.verified.issuer == "agent-a" and m.verified.topic == topic
    metrics = consumer.metrics
    assert metrics.delivered == N and metrics.records == N
    assert metrics.rejected_total == 0 and metrics.same_position == 0
    assert metrics.committed == ends
    print(f"produced {N} in {produced:.2f}s, consumed in {consumed:.2f}s")


async def test_send_send_and_wait_and_send_bytes(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("send")
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await raw.start()
    try:
        producer = SignedProducer(raw, signer=signer(ring))
        await producer.start()
        future = await producer.send(topic, {"n": 1}, key=b"k", headers=[("h", b"v")])
        first = await future
        second = await producer.send_and_wait(topic, {"n": 2}, parents=[b"\x01" * 32])
        body = json.dumps({"n": 3}).encode()
        third = await (
            await producer.send_bytes(topic, body, content_type="application/json", key=b"k")
        )
        await producer.stop()
        await producer.stop()  # idempotent
        # The producer handed in is still open: stop() left it alone.
        await raw.send_and_wait(topic, b"still open")
    finally:
        await raw.stop()
    assert [first.offset, second.offset, third.offset] == [0, 1, 2]
    assert producer.metrics.signed == 3

    ends = {(topic, 0): 4}
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]), verifier=verifier(ring), guard=g
        )
        async with Running(consumer) as running:
            await running.caught_up(ends)
    one, two, three = running.delivered
    assert one.payload == {"n": 1} and one.key == b"k" and list(one.headers) == [("h", b"v")]
    assert two.payload == {"n": 2} and two.verified.parents == (b"\x01" * 32,)
    assert three.body == body and three.verified.content_type == "application/json"
    assert consumer.metrics.rejected == {"malformed": 1}  # the unsigned b"still open"


async def test_create_topics_is_idempotent_and_warns_on_create_time(
    kafka_bootstrap: str, unique_topic: TopicFactory, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("ct")
    legacy = await unique_topic("legacy", config=CREATE_TIME)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert await create_topics(admin, [name], partitions=2) == [name]
        assert await create_topics(admin, [name], partitions=2) == []
        with caplog.at_level(logging.WARNING, logger="signed_bus.topics"):
            assert await create_topics(kafka_bootstrap, [name, legacy]) == []
        types = await topic_timestamp_types(admin, [name, legacy])
    finally:
        await admin.delete_topics([name])
        await admin.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "signed_bus.topics"]
    assert len(warnings) == 1 and legacy in warnings[0] and "CreateTime" in warnings[0]
    assert types == {name: "LogAppendTime", legacy: "CreateTime"}


async def test_handler_error_commits_finished_records_and_redelivers_the_failed_one(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("fail")
    group = unique("g")
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
    ) as producer:
        await producer.send_batch(topic, [Outgoing({"seq": i}) for i in range(10)])

    seen: list[int] = []

    async def fail_on_five(message: ConsumedMessage) -> None:
        seen.append(message.payload["seq"])  # type: ignore[index]
        if message.payload["seq"] == 5:  # type: ignore[index]
            raise RuntimeError("handler failed")

    async with guard(redis_url, redis_prefix) as g:
        first = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic], group=group),
            verifier=verifier(ring),
            guard=g,
        )
        async with first:
            with pytest.raises(RuntimeError, match="handler failed"):
                await first.run(fail_on_five)
            assert first.metrics.committed == {(topic, 0): 5}
            # The same consumer delivers the failed record again first.
            again: list[ConsumedMessage] = []

            async def keep(message: ConsumedMessage) -> None:
                again.append(message)
                if len(again) == 5:
                    await first.stop()

            await first.run(keep)
        assert [m.payload["seq"] for m in again] == [5, 6, 7, 8, 9]  # type: ignore[index]
        assert first.metrics.committed == {(topic, 0): 10}
        assert seen == [0, 1, 2, 3, 4, 5]

        # A restarted consumer in the same group starts after the last committed record.
        async with SignedProducer(
            ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
        ) as producer:
            await producer.send_and_wait(topic, {"seq": 10})
        restarted = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic], group=group),
            verifier=verifier(ring),
            guard=g,
        )
        async with Running(restarted) as running:
            await running.caught_up({(topic, 0): 11})
        assert [m.payload["seq"] for m in running.delivered] == [10]  # type: ignore[index]


async def test_async_for_commits_what_was_asked_past_and_redelivers_the_last(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("iter")
    group = unique("g")
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
    ) as producer:
        await producer.send_batch(topic, [Outgoing({"seq": i}) for i in range(6)])

    async with guard(redis_url, redis_prefix) as g:

        def make() -> VerifyingConsumer:
            return VerifyingConsumer.from_options(
                consumer_options(kafka_bootstrap, [topic], group=group),
                verifier=verifier(ring),
                guard=g,
                timeout_ms=200,
            )

        got: list[int] = []
        async with make() as consumer:
            async for message in consumer:
                got.append(message.payload["seq"])  # type: ignore[index]
                if message.payload["seq"] == 2:  # type: ignore[index]
                    break
        # 0 and 1 were finished (the loop asked for the next one); 2 was not.
        assert consumer.metrics.committed == {(topic, 0): 2}

        async with make() as consumer:
            async for message in consumer:
                got.append(message.payload["seq"])  # type: ignore[index]
                if message.payload["seq"] == 4:  # type: ignore[index]
                    await consumer.commit()  # explicitly finished, including 4
                    break
        assert consumer.metrics.committed == {(topic, 0): 5}
        assert got == [0, 1, 2, 2, 3, 4]
        # The first consumer claimed its whole batch (0-5): records 2-5 are read again at
        # their own positions, SAME_POSITION, never a replay.
        assert consumer.metrics.same_position == 4 and consumer.metrics.rejected_total == 0


def unreachable_redis_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens once the socket is closed


async def test_fail_closed_holds_the_batch_until_redis_answers_and_loses_nothing(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("closed", partitions=2)
    group = unique("g")
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
    ) as producer:
        await producer.send_batch(topic, [Outgoing({"seq": i}) for i in range(20)])
    ends = await end_offsets(kafka_bootstrap, [topic])

    fast = Backoff(initial_ms=20, max_ms=100)
    down = guard(unreachable_redis_url(), redis_prefix)  # not started: start() would raise
    try:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic], group=group),
            verifier=verifier(ring),
            guard=down,
            backoff=fast,
            timeout_ms=200,
        )
        async with Running(consumer) as running:
            for _ in range(300):
                if consumer.metrics.guard_retries >= 3:
                    break
                await asyncio.sleep(0.05)
            assert consumer.metrics.guard_waiting
            assert running.delivered == [] and consumer.metrics.committed == {}
    finally:
        await down.stop()
    assert consumer.metrics.guard_retries >= 3 and consumer.metrics.unchecked == 0

    # The held batch was never committed: the group gets all of it once Redis answers.
    async with guard(redis_url, redis_prefix) as up:
        again = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic], group=group),
            verifier=verifier(ring),
            guard=up,
        )
        async with Running(again) as running:
            await running.caught_up(ends)
    assert sorted(m.payload["seq"] for m in running.delivered) == list(range(20))  # type: ignore[index]
    assert all(m.claim is ClaimVerdict.NEW for m in running.delivered)


async def test_fail_open_delivers_and_counts_unchecked_records(
    kafka_bootstrap: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ring = keyring()
    topic = await unique_topic("open")
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
    ) as producer:
        await producer.send_batch(topic, [Outgoing({"seq": i}) for i in range(5)])
    down = guard(unreachable_redis_url(), redis_prefix)
    try:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring),
            guard=down,
            fail_open=True,
        )
        with caplog.at_level(logging.WARNING, logger="signed_bus.consumer"):
            async with Running(consumer) as running:
                await running.caught_up({(topic, 0): 5})
    finally:
        await down.stop()
    assert [m.payload["seq"] for m in running.delivered] == list(range(5))  # type: ignore[index]
    assert all(m.claim is None for m in running.delivered)
    assert consumer.metrics.unchecked == 5 and consumer.metrics.guard_retries == 0
    assert any("UNCHECKED" in r.getMessage() for r in caplog.records)


async def test_audit_mode_skips_freshness_and_replay_but_not_signatures(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("audit")
    stale = signer(ring, clock=lambda: 1_000_000_000_000)  # created in 2001
    old = stale.sign({"seq": "old"}, topic=topic)
    async with plain_producer(kafka_bootstrap) as producer:
        await producer.send(topic, old)
        await producer.send(topic, old)  # a copy: audit mode does not check replays
        await producer.send(topic, old[:-1] + bytes([old[-1] ^ 1]))  # still verified
        await producer.flush()
    consumer = VerifyingConsumer.from_options(
        consumer_options(kafka_bootstrap, [topic]), verifier=verifier(ring, audit=True)
    )
    async with Running(consumer) as running:
        await running.caught_up({(topic, 0): 3})
    assert [m.offset for m in running.delivered] == [0, 1]
    assert all(m.claim is None for m in running.delivered)
    assert consumer.metrics.rejected == {"bad_signature": 1} and consumer.metrics.unchecked == 0
