"""A record without a value (a tombstone) is dead-lettered marked as null (never as a null-valued
letter), so an auditor tells it from a record whose value was empty. Real broker, real Redis."""

from __future__ import annotations

import pytest

from signed_bus._deadletter import (
    HEADER_VALUE_NULL,
    HEADER_VALUE_OMITTED,
    DeadLetter,
    header_map,
)
from signed_bus._kafka.consumer import VerifyingConsumer
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    guard,
    keyring,
    plain_producer,
    read_all,
    verifier,
)
from tests.integration.fronts import FRONTS, Front, Spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_a_tombstone_arrives_in_the_dead_letter_topic_marked_null(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("tombstones")
    dead = await unique_topic("tombstones-dlq")
    async with plain_producer(kafka_bootstrap) as producer:
        await producer.send_and_wait(topic, None, key=b"gone", partition=0)
        await producer.send_and_wait(topic, b"", key=b"empty", partition=0)
    ring = keyring()
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring),
            guard=g,
            dead_letter_topic=dead,
        )
        async with Running(consumer) as running:
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    assert running.delivered == []
    assert dict(consumer.metrics.rejected) == {"malformed": 2}
    records = sorted(await read_all(kafka_bootstrap, dead, 2), key=lambda r: r.offset)
    tombstone, empty = records
    assert (tombstone.key, tombstone.value) == (b"gone", b"")
    assert header_map(tombstone.headers)[HEADER_VALUE_NULL] == b"1"
    assert (empty.key, empty.value) == (b"empty", b"")
    assert HEADER_VALUE_NULL not in header_map(empty.headers)
    for record in records:
        assert HEADER_VALUE_OMITTED not in header_map(record.headers)
    letters = [DeadLetter.from_record(r) for r in records]
    assert [(d.source_offset, d.reason, d.value, d.value_null) for d in letters] == [
        (0, "malformed", None, True),
        (1, "malformed", b"", False),
    ]
    assert "no value" in letters[0].error


@pytest.mark.parametrize("front", FRONTS)
async def test_letters_that_each_fit_keep_their_values_when_their_batch_does_not(
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    """Rejected records whose letters each fit the dead-letter topic's ``max.message.bytes``
    but not several in one record batch: the broker refuses such a batch, and every letter is
    still written whole (sent again alone), none marked as omitted, and the consumer goes on.
    The dead-letter producer has written a letter before (a producer the broker knows: an
    idempotent one would fail the next batch with OutOfOrderSequenceNumber)."""
    topic = await unique_topic("dlq-batch")
    dead = await unique_topic("dlq-batch-dlq", config={"max.message.bytes": "8192"})
    count, size = 13, 3_000
    spec = Spec(kafka_bootstrap, [topic], redis_url, redis_prefix, verifier(keyring()),
                dead_letter_topic=dead)  # fmt: skip
    async with plain_producer(kafka_bootstrap) as producer, front.consume(spec) as running:
        await producer.send_and_wait(topic, b"@" * size, key=b"first", partition=0)
        await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
        assert running.metrics.dead_lettered == 1
        for n in range(1, count):
            await producer.send(topic, bytes([65 + n]) * size, key=b"k%d" % n, partition=0)
        await producer.flush()
        await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
        assert running.alive()
    assert running.metrics.dead_lettered == count
    assert running.metrics.dead_letters_dropped == 0
    letters = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead, count)]
    assert sorted(d.source_offset for d in letters) == list(range(count))
    assert not any(d.value_omitted for d in letters)
    expected = {0: b"@" * size} | {n: bytes([65 + n]) * size for n in range(1, count)}
    assert all(d.value == expected[d.source_offset] for d in letters)
