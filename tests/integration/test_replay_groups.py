"""Re-published envelopes against several consumer groups sharing one Redis nonce set.

Every group gets every honest record once; a copy of an envelope at any other position is
dropped in every group, including a group that starts later or never saw the original. The
groups run on both consumer fronts (tests/integration/fronts.py), and the first test mixes them:
aiokafka and confluent-kafka groups share one nonce set.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from signed_bus._deadletter import DeadLetter
from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import ClaimVerdict
from tests.conftest import TopicFactory
from tests.integration.bus import (
    end_offsets,
    keyring,
    plain_producer,
    read_all,
    signer,
    verifier,
)
from tests.integration.fronts import FRONTS, Front, Spec, other

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.parametrize("front", FRONTS),
]


async def produce_honest(bootstrap: str, ring: Keyring, topic: str, tag: str, count: int) -> None:
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=bootstrap), signer=signer(ring)
    ) as producer:
        await producer.send_batch(
            topic,
            [Outgoing({"seq": f"{tag}-{i}"}, key=f"{tag}-{i}".encode()) for i in range(count)],
        )


def group(
    bootstrap: str, ring: Keyring, redis_url: str, prefix: str, topics: list[str], dead: str
) -> Spec:
    """One group's consumer: its own dead-letter topic, the test's nonce set."""
    return Spec(
        bootstrap, topics, redis_url, prefix, verifier(ring), dead_letter_topic=dead, timeout_s=0.2
    )


async def test_copies_are_dropped_in_every_group_and_each_group_gets_every_record_once(
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    ring = keyring()
    topic = await unique_topic("orders", partitions=3)
    other_topic = await unique_topic("other", partitions=3)
    dead = {name: await unique_topic(f"dlq-{name}") for name in "ABC"}

    await produce_honest(kafka_bootstrap, ring, topic, "first", 200)
    await produce_honest(kafka_bootstrap, ring, other_topic, "other", 20)
    victim = signer(ring).sign({"seq": "victim", "action": "pay"}, topic=topic)
    async with plain_producer(kafka_bootstrap) as producer:
        original = await producer.send_and_wait(topic, victim, partition=0)

    topics = [topic, other_topic]

    def spec(name: str) -> Spec:
        return group(kafka_bootstrap, ring, redis_url, redis_prefix, topics, dead[name])

    # Groups A and B on this front, C on the other: one nonce set for both kinds.
    async with front.consume(spec("A")) as a:
        await a.caught_up(await end_offsets(kafka_bootstrap, topics))
        # The captured envelope comes back: same partition, another partition, another
        # topic the groups also read. Honest traffic continues around the copies.
        async with plain_producer(kafka_bootstrap) as producer:
            copies = [
                await producer.send_and_wait(topic, victim, partition=0),
                await producer.send_and_wait(topic, victim, partition=1),
                await producer.send_and_wait(other_topic, victim, partition=0),
            ]
        await produce_honest(kafka_bootstrap, ring, topic, "second", 200)
        ends = await end_offsets(kafka_bootstrap, topics)
        async with front.consume(spec("B")) as b, other(front).consume(spec("C")) as c:
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
                (other_topic, copies[2].partition, copies[2].offset, "wrong_topic"),
            ]
        )
        assert all(d.value == victim for d in letters)
        assert running.metrics.rejected == {"replay": 2, "wrong_topic": 1}
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
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    ring = keyring()
    topic = await unique_topic("late", partitions=3)
    dead = {name: await unique_topic(f"dlq-{name}") for name in "ABC"}
    victim = signer(ring).sign({"seq": "victim"}, topic=topic)
    async with plain_producer(kafka_bootstrap) as producer:
        original = await producer.send_and_wait(topic, victim, partition=0)
    await produce_honest(kafka_bootstrap, ring, topic, "h", 30)

    def spec(name: str) -> Spec:
        return group(kafka_bootstrap, ring, redis_url, redis_prefix, [topic], dead[name])

    async with front.consume(spec("A")) as a:
        await a.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    assert "victim" in {m.payload["seq"] for m in a.delivered}  # type: ignore[index]

    # Group A is gone. A copy appears; group B starts from the beginning afterwards.
    async with plain_producer(kafka_bootstrap) as producer:
        copy = await producer.send_and_wait(topic, victim, partition=1)
    async with front.consume(spec("B")) as b:
        await b.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    victims = [m for m in b.delivered if m.payload["seq"] == "victim"]  # type: ignore[index]
    assert [(m.partition, m.offset, m.claim) for m in victims] == [
        (original.partition, original.offset, ClaimVerdict.SAME_POSITION)
    ]
    assert len(b.delivered) == 31
    assert b.metrics.rejected == {"replay": 1}
    (letter,) = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead["B"], 1)]
    assert (letter.source_partition, letter.source_offset, letter.reason) == (
        copy.partition,
        copy.offset,
        "replay",
    )

    # Group C starts at the end of the log: it never reads the original, yet drops the
    # next copy, because the nonce set is shared.
    late_spec = Spec(
        kafka_bootstrap,
        [topic],
        redis_url,
        redis_prefix,
        verifier(ring),
        dead_letter_topic=dead["C"],
        timeout_s=0.2,
        auto_offset_reset="latest",
    )
    async with front.consume(late_spec) as c:
        await c.assigned(3)
        async with plain_producer(kafka_bootstrap) as producer:
            late = await producer.send_and_wait(topic, victim, partition=2)
        await c.caught_up({(topic, 2): late.offset + 1})
    assert c.delivered == []
    assert c.metrics.rejected == {"replay": 1}
    (letter,) = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead["C"], 1)]
    assert (letter.source_partition, letter.source_offset, letter.reason) == (
        2,
        late.offset,
        "replay",
    )
