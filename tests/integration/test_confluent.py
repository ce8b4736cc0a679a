"""The confluent-kafka front against the real broker and Redis: the sync guard shares the async
guard's nonce set, the two producers and consumers interoperate on the same topics and guard,
and a worker made of plain threads (no event loop anywhere) signs, produces, consumes,
verifies and claims."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from signed_bus import DeadLetter
from signed_bus._gate import ConsumedMessage
from signed_bus._kafka.producer import Outgoing, ProducerOptions
from signed_bus._kafka.producer import SignedProducer as AioProducer
from signed_bus._replay.guard import Claim, ClaimVerdict
from signed_bus.confluent import SignedProducer, SyncRedisReplayGuard, VerifyingConsumer
from signed_bus.errors import ConfigurationError, DeliveryFailed, ReplayGuardUnavailable
from tests.conftest import TopicFactory
from tests.integration.bus import (
    WINDOW,
    end_offsets,
    guard,
    keyring,
    plain_producer,
    read_all,
    signer,
    unique,
    verifier,
)
from tests.integration.fronts import AIOKAFKA, CONFLUENT, Spec, confluent_config
from tests.integration.test_undecodable import bad_header_batch, produce_raw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NEW, SAME, REPLAY = ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION, ClaimVerdict.REPLAY
NOW = int(time.time() * 1000)


async def test_the_sync_and_async_guards_share_one_nonce_set(
    redis_url: str, redis_prefix: str
) -> None:
    claims = [Claim("agent-a", bytes([i]) * 16, NOW + i, "t", 0, i) for i in range(50)]
    with SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as sync_guard:
        assert sync_guard.claim(claims, freshness=WINDOW) == [NEW] * 50
        async with guard(redis_url, redis_prefix) as async_guard:
            # the same positions: a fan-out; other positions: replays, whichever guard asks
            assert await async_guard.claim(claims, freshness=WINDOW) == [SAME] * 50
            moved = [c._replace(partition=1) for c in claims]
            assert await async_guard.claim(moved[:25], freshness=WINDOW) == [REPLAY] * 25
            assert sync_guard.claim(moved[25:], freshness=WINDOW) == [REPLAY] * 25
        # a batch over max_claims_per_call goes as one pipeline and keeps its order
        with SyncRedisReplayGuard.from_url(
            redis_url, prefix=redis_prefix, max_claims_per_call=7
        ) as small:
            assert small.claim(claims[::-1], freshness=WINDOW) == [SAME] * 50
    with pytest.raises(ConfigurationError, match="layout"):
        SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix, shards=3).start()


def test_the_sync_guard_reports_an_unreachable_redis_without_its_password() -> None:
    g = SyncRedisReplayGuard.from_url("redis://user:s3cret-pw@127.0.0.1:1/0")
    with pytest.raises(ReplayGuardUnavailable) as caught:
        g.claim([Claim("a", b"n" * 16, NOW, "t", 0, 0)], freshness=WINDOW)
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(g)


@pytest.mark.parametrize(
    ("producer_front", "consumer_front"),
    [("aiokafka", "confluent"), ("confluent", "aiokafka")],
)
async def test_each_producer_feeds_the_other_consumer_through_one_guard(
    producer_front: str,
    consumer_front: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    ring = keyring()
    topic = await unique_topic("interop", partitions=2)
    items = [Outgoing({"seq": i}, key=f"k{i}".encode()) for i in range(40)]
    if producer_front == "aiokafka":
        async with AioProducer(
            ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
        ) as producer:
            await producer.send_batch(topic, items)
    else:
        with SignedProducer(
            {"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)
        ) as sync_producer:
            reports = await asyncio.to_thread(sync_producer.produce_batch, topic, items)
        assert len(reports) == 40 and all(r.error() is None for r in reports)
    ends = await end_offsets(kafka_bootstrap, [topic])
    front = CONFLUENT if consumer_front == "confluent" else AIOKAFKA
    spec = Spec(kafka_bootstrap, [topic], redis_url, redis_prefix, verifier(ring))
    async with front.consume(spec) as running:
        await running.caught_up(ends)
    assert sorted(m.payload["seq"] for m in running.delivered) == list(range(40))  # type: ignore[index]
    assert {m.claim for m in running.delivered} == {NEW}
    # the other front, another group, the same nonce set: the fan-out is delivered again
    other = AIOKAFKA if front is CONFLUENT else CONFLUENT
    async with other.consume(spec) as second:
        await second.caught_up(ends)
    assert len(second.delivered) == 40 and {m.claim for m in second.delivered} == {SAME}


async def test_a_record_the_broker_refuses_raises_delivery_failed_with_the_reports(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("refused")
    ring = keyring()
    # librdkafka takes it (its own limit raised), the topic's 1 MiB limit refuses it
    config = {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4_000_000}
    items = [Outgoing({"ok": 1}), Outgoing({"big": "x" * 2_000_000}), Outgoing({"ok": 2})]
    with (
        SignedProducer(config, signer=signer(ring)) as producer,
        pytest.raises(DeliveryFailed) as caught,
    ):
        await asyncio.to_thread(producer.produce_batch, topic, items)
    failed = caught.value
    assert [e.name() for e in failed.errors] == ["MSG_SIZE_TOO_LARGE"]  # type: ignore[attr-defined]
    assert len(failed.reports) == 3 and all(r is not None for r in failed.reports)
    assert "x" * 20 not in str(failed)


async def test_a_worker_of_plain_threads_signs_produces_consumes_verifies_and_claims(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("threads", partitions=4)
    dead = await unique_topic("dlq")
    ring = keyring()

    def worker() -> dict[str, Any]:
        # No event loop in these threads: this function is all a sync worker needs.
        assert not _has_running_loop()
        group = unique("g")
        producers_done = threading.Event()
        delivered: list[ConsumedMessage] = []
        lock = threading.Lock()

        def produce(n: int) -> None:
            with SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)) as p:
                p.produce_batch(topic, [Outgoing({"t": n, "i": i}) for i in range(50)])

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        producers_done.set()
        with SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as g:

            def consume(consumer: VerifyingConsumer) -> None:
                for message in consumer:
                    with lock:
                        delivered.append(message)
                        if len({(m.partition, m.offset) for m in delivered}) >= 150:
                            break

            consumers = [
                VerifyingConsumer(
                    confluent_config(kafka_bootstrap, group),
                    [topic],
                    verifier=verifier(ring),
                    guard=g,
                    dead_letter_topic=dead,
                    timeout_s=0.2,
                )
                for _ in range(2)
            ]
            for c in consumers:
                c.start()
            runners = [threading.Thread(target=consume, args=(c,)) for c in consumers]
            for r in runners:
                r.start()
            deadline = time.monotonic() + 60
            while (
                len({(m.partition, m.offset) for m in delivered}) < 150
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            for c in consumers:
                threading.Thread(target=c.stop).start()
            for r in runners:
                r.join(30)
            for c in consumers:
                c.stop()
            metrics = [c.metrics for c in consumers]
        return {"delivered": delivered, "metrics": metrics}

    result = await asyncio.to_thread(worker)
    delivered = result["delivered"]
    # every record delivered; one read again after the two consumers' rebalance (at-least-once)
    # comes back SAME_POSITION, never as a replay
    assert {(m.payload["t"], m.payload["i"]) for m in delivered} == {
        (n, i) for n in range(3) for i in range(50)
    }
    assert {m.claim for m in delivered} <= {NEW, SAME}
    new = [(m.partition, m.offset) for m in delivered if m.claim is NEW]
    assert len(new) == len(set(new)), "at most one NEW per position"
    assert sum(m.rejected_total for m in result["metrics"]) == 0


def _has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_not_fatal(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    # librdkafka's binding raises SystemError reading such a key and leaves a NULL key cached:
    # the consumer must dead-letter the record by its position and go on, as the aiokafka one
    topic = await unique_topic("cf-bad-header")
    dead = await unique_topic("cf-bad-header-dlq")
    ring = keyring()
    sign = signer(ring)
    async with plain_producer(kafka_bootstrap) as producer:
        for seq in range(2):
            await producer.send_and_wait(topic, sign.sign({"seq": seq}, topic=topic), partition=0)
    bad = await produce_raw(
        kafka_bootstrap, topic, 0, bad_header_batch(sign.sign({"seq": "bad"}, topic=topic))
    )
    async with plain_producer(kafka_bootstrap) as producer:
        await producer.send_and_wait(topic, sign.sign({"seq": 2}, topic=topic), partition=0)

    def consume() -> tuple[list[ConsumedMessage], dict[str, int]]:
        delivered: list[ConsumedMessage] = []
        with SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as g:
            consumer = VerifyingConsumer(
                confluent_config(kafka_bootstrap, unique("g"), **{"auto.offset.reset": "earliest"}),
                [topic],
                verifier=verifier(ring),
                guard=g,
                dead_letter_topic=dead,
                timeout_s=0.2,
            )
            with consumer:
                deadline = time.monotonic() + 60
                for message in consumer:
                    delivered.append(message)
                    if len(delivered) == 3 or time.monotonic() > deadline:
                        break
            return delivered, dict(consumer.metrics.rejected)

    delivered, rejected = await asyncio.to_thread(consume)
    assert [m.payload["seq"] for m in delivered] == [0, 1, 2]  # type: ignore[index]
    assert bad == 2 and [m.offset for m in delivered] == [0, 1, 3]
    assert rejected == {"undecodable": 1}
    (letter_record,) = await read_all(kafka_bootstrap, dead, 1)
    letter = DeadLetter.from_record(letter_record)
    assert (letter.reason, letter.source_offset, letter.not_decoded) == ("undecodable", 2, True)
