"""Fault: the replay guard's Redis restarts empty mid-stream (no persistence: every nonce is
gone), then copies of envelopes created before the restart come back.

A private redis-server (tests/integration/services.py) serves three consumer groups whose guards
rebuild their topics from Kafka by themselves (``rebuild_from``). After the restart the claim
script reports the loss, every group holds, one rebuild re-claims the first-seen positions, and
the groups resume. Copies into the same topic and into another topic, and a group started
afterwards: no copy is delivered, every honest record is delivered once per group.

The second test restarts Redis empty while no consumer runs: the guard that starts next finds no
state for its prefix, cannot tell it from a new one, and rebuilds from Kafka before its first
claim. Both tests run over both fronts (the aiokafka consumer with the async guard, the
confluent-kafka consumer with the sync guard).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from signed_bus._kafka.consumer import Backoff
from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._keys import Keyring
from signed_bus._replay.rebuild import RebuildSource
from tests.conftest import TopicFactory
from tests.integration.bus import end_offsets, keyring, plain_producer, signer, unique, verifier
from tests.integration.fronts import FRONTS, Consuming, Front, Spec
from tests.integration.services import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FAST = Backoff(initial_ms=50, max_ms=500)


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess() as server:  # no persistence: a restart starts empty
        yield server


async def _honest(bootstrap: str, ring: Keyring, topic: str, tag: str, count: int) -> None:
    options = ProducerOptions(bootstrap_servers=bootstrap)
    async with SignedProducer(options, signer=signer(ring)) as producer:
        await producer.send_batch(
            topic,
            [Outgoing({"seq": f"{tag}-{i}"}, key=f"{tag}-{i}".encode()) for i in range(count)],
        )


@pytest.mark.parametrize("front", FRONTS)
async def test_redis_restarted_empty_drops_every_copy_and_loses_no_honest_record(
    front: Front, kafka_bootstrap: str, unique_topic: TopicFactory, redis_server: RedisProcess
) -> None:
    ring = keyring()
    topic = await unique_topic("loss", partitions=3)
    other_topic = await unique_topic("loss-other", partitions=2)
    topics = [topic, other_topic]
    prefix = unique("p")
    source = RebuildSource(kafka_bootstrap, tuple(topics), verifier(ring))

    def spec(name: str) -> Spec:
        return Spec(
            kafka_bootstrap,
            topics,
            redis_server.url,
            prefix,
            verifier(ring),
            group=unique(f"g{name}"),
            backoff=FAST,
            timeout_s=0.2,
            redis_options={"rebuild_from": source},
        )

    await _honest(kafka_bootstrap, ring, topic, "first", 150)
    await _honest(kafka_bootstrap, ring, other_topic, "other", 20)
    victim = signer(ring).sign({"seq": "victim"}, topic=topic)
    async with plain_producer(kafka_bootstrap) as producer:
        original = await producer.send_and_wait(topic, victim, partition=0)

    groups: dict[str, Consuming] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name in "ABC":
            groups[name] = await stack.enter_async_context(front.consume(spec(name)))
        ends = await end_offsets(kafka_bootstrap, topics)
        await asyncio.gather(*(g.caught_up(ends) for g in groups.values()))

        # Redis restarts empty while records keep coming: claimed nonces are all gone
        await asyncio.to_thread(redis_server.stop)
        await _honest(kafka_bootstrap, ring, topic, "during", 40)
        await asyncio.to_thread(redis_server.start)
        await _honest(kafka_bootstrap, ring, topic, "after", 40)
        # copies of envelopes claimed before the restart: same topic (two partitions) and
        # another topic the groups read
        async with plain_producer(kafka_bootstrap) as producer:
            copies = [
                await producer.send_and_wait(topic, victim, partition=0),
                await producer.send_and_wait(topic, victim, partition=1),
                await producer.send_and_wait(other_topic, victim, partition=0),
            ]
        ends = await end_offsets(kafka_bootstrap, topics)
        await asyncio.gather(*(g.caught_up(ends, within=90) for g in groups.values()))
        async with front.consume(spec("late")) as late:
            await late.caught_up(ends, within=60)
        groups["late"] = late

    honest = {f"first-{i}" for i in range(150)} | {f"other-{i}" for i in range(20)}
    honest |= {f"during-{i}" for i in range(40)} | {f"after-{i}" for i in range(40)} | {"victim"}
    copy_positions = {(c.topic, c.partition, c.offset) for c in copies}
    for name, running in groups.items():
        seqs = [m.payload["seq"] for m in running.delivered]  # type: ignore[index]
        assert len(seqs) == len(set(seqs)), f"group {name}: a record delivered twice"
        assert set(seqs) == honest, f"group {name}: {sorted(honest - set(seqs))[:5]} missing"
        delivered = {(m.topic, m.partition, m.offset) for m in running.delivered}
        assert not delivered & copy_positions, f"group {name} delivered a copy"
        assert (original.topic, original.partition, original.offset) in delivered
        assert running.metrics.rejected == {"replay": 2, "wrong_topic": 1}, name
    # every group saw the loss and held for the rebuild (the late group started after it)
    assert all(groups[name].metrics.guard_retries > 0 for name in "ABC")


@pytest.mark.parametrize("front", FRONTS)
async def test_redis_restarted_empty_while_no_consumer_ran_is_rebuilt_before_the_first_claim(
    front: Front, kafka_bootstrap: str, unique_topic: TopicFactory, redis_server: RedisProcess
) -> None:
    ring = keyring()
    topic = await unique_topic("gone", partitions=2)
    other_topic = await unique_topic("gone-other", partitions=1)
    topics = [topic, other_topic]
    source = RebuildSource(kafka_bootstrap, tuple(topics), verifier(ring))
    spec = Spec(
        kafka_bootstrap,
        topics,
        redis_server.url,
        unique("p"),
        verifier(ring),
        group=unique("g"),
        backoff=FAST,
        timeout_s=0.2,
        redis_options={"rebuild_from": source},
    )
    await _honest(kafka_bootstrap, ring, topic, "first", 30)
    victim = signer(ring).sign({"seq": "victim"}, topic=topic)
    async with plain_producer(kafka_bootstrap) as producer:
        original = await producer.send_and_wait(topic, victim, partition=0)
    async with front.consume(spec) as before:
        await before.caught_up(await end_offsets(kafka_bootstrap, topics))

    # every consumer is down when Redis restarts empty: no claim can notice the loss
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)
    async with plain_producer(kafka_bootstrap) as producer:
        copies = [
            await producer.send_and_wait(topic, victim, partition=0),
            await producer.send_and_wait(topic, victim, partition=1),
            await producer.send_and_wait(other_topic, victim, partition=0),
        ]
    await _honest(kafka_bootstrap, ring, topic, "after", 20)
    async with front.consume(spec) as after:  # the same group, from its committed offsets
        await after.caught_up(await end_offsets(kafka_bootstrap, topics), within=90)

    delivered = before.delivered + after.delivered
    seqs = [m.payload["seq"] for m in delivered]  # type: ignore[index]
    honest = {f"first-{i}" for i in range(30)} | {f"after-{i}" for i in range(20)} | {"victim"}
    assert len(seqs) == len(set(seqs)), "a record delivered twice"
    assert set(seqs) == honest, f"{sorted(honest - set(seqs))[:5]} missing"
    positions = {(m.topic, m.partition, m.offset) for m in delivered}
    assert not positions & {(c.topic, c.partition, c.offset) for c in copies}, "a copy delivered"
    assert (original.topic, original.partition, original.offset) in positions
    assert after.metrics.rejected == {"replay": 2, "wrong_topic": 1}
    assert after.metrics.guard_retries > 0, "the first claim did not wait for the rebuild"
