"""Re-published envelopes against several consumer groups sharing one Redis nonce set.

Every group gets every honest record once; a copy of an envelope at any other position is
dropped in every group, including a group that starts later or never saw the original.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from aiokafka import TopicPartition

from signed_bus._deadletter import DeadLetter
from signed_bus._kafka.consumer import VerifyingConsumer
from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import ClaimVerdict, RedisReplayGuard
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    guard,
    keyring,
    plain_producer,
    read_all,
    signer,
    verifier,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def produce_honest(bootstrap: str, ring: Keyring, topic: str, tag: str, count: int) -> None:
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=bootstrap), signer=signer(ring)
    ) as producer:
        await producer.send_batch(
            topic,
            [Outgoing({"seq": f"{tag}-{i}"}, key=f"{tag}-{i}".encode()) for i in range(count)],
        )


def group_consumer(
    bootstrap: str, ring: Keyring, g: RedisReplayGuard, topics: list[str], dead: str, **kw: object
) -> VerifyingConsumer:
    return VerifyingConsumer.from_options(
        consumer_options(bootstrap, topics, **kw),  # type: ignore[arg-type]
        verifier=verifier(ring),
        guard=g,
        dead_letter_topic=dead,
        timeout_ms=200,
    )


async def test_copies_are_dropped_in_every_group_and_each_group_gets_every_record_once(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("orders", partitions=3)
    other = await unique_topic("other", partitions=3)
    dead = {name: await unique_topic(f"dlq-{name}") for name in "ABC"}

    await produce_honest(kafka_bootstrap, ring, topic, "first", 200)
    await produce_honest(kafka_bootstrap, ring, other, "other", 20)
    victim = signer(ring).sign({"seq": "victim", "action": "pay"}, topic=topic)
    async with plain_producer(kafka_bootstrap) as producer:
        original = await producer.send_and_wait(topic, victim, partition=0)

    async with guard(redis_url, redis_prefix) as g:
        a = Running(group_consumer(kafka_bootstrap, ring, g, [topic, other], dead["A"]))
        async with a:
            await a.caught_up(await end_offsets(kafka_bootstrap, [topic, other]))
            # The captured envelope comes back: same partition, another partition, another
            # topic the groups also read. Honest traffic continues around the copies.
            async with plain_producer(kafka_bootstrap) as producer:
                copies = [
                    await producer.send_and_wait(topic, victim, partition=0),
                    await producer.send_and_wait(topic, victim, partition=1),
                    await producer.send_and_wait(other, victim, partition=0),
                ]
            await produce_honest(kafka_bootstrap, ring, topic, "second", 200)
            ends = await end_offsets(kafka_bootstrap, [topic, other])
            b = Running(group_consumer(kafka_bootstrap, ring, g, [topic, other], dead["B"]))
            c = Running(group_consumer(kafka_bootstrap, ring, g, [topic, other], dead["C"]))
            async with b, c:
                await asyncio.gather(a.caught_up(ends), b.caught_up(ends), c.caught_up(ends))

    honest = {f"first-{i}" for i in range(200)} | {f"second-{i}" for i in range(200)}
    honest |= {f"other-{i}" for i in range(20)} | {"victim"}
    copy_positions = {(m.topic, m.partition, m.offset) for m in copies}
    first_claims: Counter[tuple[str, int, int]] = Counter()
    for name, running in zip("ABC", (a, b, c), strict=True):
        seqs = [m.payload["seq"] for m in running.delivered]  # type: ignore[index]
        assert len(seqs) == len(honest) and set(seqs) == honest, f"group {name}"
        victims = [m for m in running.delivered if m.payload["seq"] == "victim"]  # type: ignore[index]
        assert [(m.topic, m.partition, m.offset) for m in victims] == [
            (original.topic, original.partition, original.offset)
        ]
        assert not copy_positions & {(m.topic, m.partition, m.offset) for m in running.delivered}
        for m in running.delivered:
            if m.claim is ClaimVerdict.NEW:
                first_claims[(m.topic, m.partition, m.offset)] += 1
        letters = [
            DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead[name], 3)
        ]
        assert sorted(
            (d.source_topic, d.source_partition, d.source_offset, d.reason) for d in letters
        ) == sorted(
            [
                (topic, copies[0].partition, copies[0].offset, "replay"),
                (topic, copies[1].partition, copies[1].offset, "replay"),
                (other, copies[2].partition, copies[2].offset, "wrong_topic"),
            ]
        )
        assert all(d.value == victim for d in letters)
        assert running.consumer.metrics.rejected == {"replay": 2, "wrong_topic": 1}
    # All groups agree: each honest record was NEW for exactly one group, SAME_POSITION for
    # the other two.
    assert len(first_claims) == len(honest) and set(first_claims.values()) == {1}
    # Group A ran alone through the first records: it claimed them first.
    assert all(
        m.claim is ClaimVerdict.NEW
        for m in a.delivered
        if str(m.payload["seq"]).startswith(("first-", "other-", "victim"))  # type: ignore[index]
    )


async def test_a_group_starting_later_or_at_the_end_still_drops_copies(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("late", partitions=3)
    dead = {name: await unique_topic(f"dlq-{name}") for name in "ABC"}
    victim = signer(ring).sign({"seq": "victim"}, topic=topic)
    async with plain_producer(kafka_bootstrap) as producer:
        original = await producer.send_and_wait(topic, victim, partition=0)
    await produce_honest(kafka_bootstrap, ring, topic, "h", 30)

    async with guard(redis_url, redis_prefix) as g:
        a = Running(group_consumer(kafka_bootstrap, ring, g, [topic], dead["A"]))
        async with a:
            await a.caught_up(await end_offsets(kafka_bootstrap, [topic]))
        assert "victim" in {m.payload["seq"] for m in a.delivered}  # type: ignore[index]

        # Group A is gone. A copy appears; group B starts from the beginning afterwards.
        async with plain_producer(kafka_bootstrap) as producer:
            copy = await producer.send_and_wait(topic, victim, partition=1)
        b = Running(group_consumer(kafka_bootstrap, ring, g, [topic], dead["B"]))
        async with b:
            await b.caught_up(await end_offsets(kafka_bootstrap, [topic]))
        victims = [m for m in b.delivered if m.payload["seq"] == "victim"]  # type: ignore[index]
        assert [(m.partition, m.offset, m.claim) for m in victims] == [
            (original.partition, original.offset, ClaimVerdict.SAME_POSITION)
        ]
        assert len(b.delivered) == 31
        assert b.consumer.metrics.rejected == {"replay": 1}
        (letter,) = [
            DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead["B"], 1)
        ]
        assert (letter.source_partition, letter.source_offset, letter.reason) == (
            copy.partition,
            copy.offset,
            "replay",
        )

        # Group C starts at the end of the log: it never reads the original, yet drops the
        # next copy, because the nonce set is shared.
        c_consumer = group_consumer(
            kafka_bootstrap, ring, g, [topic], dead["C"], auto_offset_reset="latest"
        )
        c = Running(c_consumer)
        async with c:
            await wait_positions(c_consumer, topic, 3)
            async with plain_producer(kafka_bootstrap) as producer:
                late = await producer.send_and_wait(topic, victim, partition=2)
            await c.caught_up({(topic, 2): late.offset + 1})
        assert c.delivered == []
        assert c.consumer.metrics.rejected == {"replay": 1}
        (letter,) = [
            DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead["C"], 1)
        ]
        assert (letter.source_partition, letter.source_offset, letter.reason) == (
            2,
            late.offset,
            "replay",
        )


async def wait_positions(consumer: VerifyingConsumer, topic: str, partitions: int) -> None:
    """Wait until the group assigned every partition and resolved its start offset."""
    for _ in range(200):
        assigned = consumer.consumer.assignment()
        if len(assigned) == partitions:
            for p in range(partitions):
                await consumer.consumer.position(TopicPartition(topic, p))
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no assignment")
