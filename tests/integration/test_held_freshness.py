"""Records that waited after they verified are checked against the whole freshness window again.

Real broker, real Redis; the verifier's clock is injected (the real clock plus an offset the test
moves forward while a batch is held). Three holds: the replay guard's Redis is down (a private
redis-server, stopped and started), the dead-letter topic is unavailable (a dead-letter producer
whose sends time out until the test lets them through), and a relay's transform runs long.
A record whose expires_at passes during the hold, or whose created_at leaves the window around
the reference time, is rejected as ``expired`` and dead-lettered, never delivered or relayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from signed_bus._clock import system_clock
from signed_bus._deadletter import DeadLetter
from signed_bus._kafka.consumer import Backoff, ConsumedMessage, VerifyingConsumer
from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._kafka.relay import Output, Relay
from signed_bus._keys import Keyring, generate_hmac_key
from signed_bus._signer import Signer
from tests.conftest import TopicFactory
from tests.integration.bus import (
    CREATE_TIME,
    MAX_AGE_MS,
    Running,
    consumer_options,
    end_offsets,
    guard,
    keyring,
    plain_producer,
    read_all,
    signer,
    unique,
    verifier,
)
from tests.integration.services import RedisProcess
from tests.integration.test_faults_redis import fixed_ports, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FAST = Backoff(initial_ms=50, max_ms=200)
#: How far the test moves the verifier's clock while a batch is held.
HELD_MS = 120_000


class Clock:
    """The real clock plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return system_clock() + self.offset


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with RedisProcess(fixed_ports(6490), persistent=True) as server:
        yield server


async def produce_together(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """One producer batch: a single fetch then returns every record, so they are held together."""
    async with plain_producer(bootstrap) as producer:
        futures = [await producer.send(topic, value, partition=0) for value in values]
        await producer.flush()
        await asyncio.gather(*futures)


def letters_by_offset(records: Iterable[Any]) -> dict[int, DeadLetter]:
    letters = [DeadLetter.from_record(r) for r in records]
    return {letter.source_offset: letter for letter in letters}


async def test_records_that_go_stale_while_redis_is_down_are_rejected_not_claimed(
    kafka_bootstrap: str, unique_topic: TopicFactory, redis_server: RedisProcess
) -> None:
    # CreateTime: the reference time is the consumer's clock, so the created_at edge around the
    # reference moves with the hold as much as expires_at does.
    topic = await unique_topic("held-redis", config=CREATE_TIME)
    dead = await unique_topic("held-redis-dlq")
    ring = keyring()
    clock = Clock()
    now = clock()
    sign = signer(ring).sign
    old = signer(ring, clock=lambda: now - (MAX_AGE_MS - 60_000)).sign
    await produce_together(
        kafka_bootstrap,
        topic,
        [
            sign({"n": 0}, topic=topic, expires_at=now + 60_000),  # exp passes while held
            old({"n": 1}, topic=topic),  # leaves [ref - max_age, ...] while held
            sign({"n": 2}, topic=topic),  # still fresh after the hold
        ],
    )
    async with guard(redis_server.url, unique("g")) as g:
        await asyncio.to_thread(redis_server.stop)
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring, clock=clock),
            guard=g,
            dead_letter_topic=dead,
            backoff=FAST,
        )
        async with Running(consumer) as running:
            metrics = consumer.metrics
            await until(lambda: metrics.guard_retries >= 2, "the batch held for Redis")
            assert metrics.records == 3 and running.delivered == []
            clock.offset = HELD_MS
            await asyncio.to_thread(redis_server.start)
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    assert [m.payload for m in running.delivered] == [{"n": 2}]
    assert dict(metrics.rejected) == {"expired": 2}
    letters = letters_by_offset(await read_all(kafka_bootstrap, dead, 2))
    assert sorted(letters) == [0, 1] and {d.reason for d in letters.values()} == {"expired"}
    assert "expires_at has passed" in letters[0].error and "Redis" in letters[0].error
    assert "reference time" in letters[1].error and "Redis" in letters[1].error


class FlakyDeadLetters(AIOKafkaProducer):  # type: ignore[misc]
    """A dead-letter producer whose sends time out (as with the dead-letter topic's leader away)
    until ``available`` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.available = asyncio.Event()
        self.refused = 0

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        if not self.available.is_set():
            self.refused += 1
            raise KafkaTimeoutError("dead-letter topic unavailable")
        return await super().send(*args, **kwargs)


async def test_a_record_that_expires_while_the_dead_letter_topic_is_down_is_not_delivered(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("held-dlq")
    dead = await unique_topic("held-dlq-dlq")
    ring = keyring()
    clock = Clock()
    now = clock()
    sign = signer(ring).sign
    await produce_together(
        kafka_bootstrap,
        topic,
        [
            b"not an envelope",  # its dead letter is what waits for the topic
            sign({"n": 1}, topic=topic, expires_at=now + 60_000),
            sign({"n": 2}, topic=topic),
        ],
    )
    letters_out = FlakyDeadLetters(bootstrap_servers=kafka_bootstrap, acks="all")
    await letters_out.start()
    try:
        async with guard(redis_url, redis_prefix) as g:
            consumer = VerifyingConsumer.from_options(
                consumer_options(kafka_bootstrap, [topic]),
                verifier=verifier(ring, clock=clock),
                guard=g,
                dead_letter_topic=dead,
                dead_letter_producer=letters_out,
                backoff=FAST,
            )
            async with Running(consumer) as running:
                metrics = consumer.metrics
                await until(lambda: metrics.dead_letter_retries >= 2, "dead letters held")
                assert running.delivered == []
                clock.offset = HELD_MS
                letters_out.available.set()
                await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    finally:
        await letters_out.stop()
    assert [m.payload for m in running.delivered] == [{"n": 2}]
    assert dict(metrics.rejected) == {"malformed": 1, "expired": 1}
    letters = letters_by_offset(await read_all(kafka_bootstrap, dead, 2))
    assert {offset: d.reason for offset, d in letters.items()} == {0: "malformed", 1: "expired"}
    assert "dead-letter topic" in letters[1].error


async def test_a_relay_publishes_nothing_from_an_input_that_expired_while_transformed(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    source = await unique_topic("held-relay-in")
    sink = await unique_topic("held-relay-out")
    dead = await unique_topic("held-relay-dlq")
    ring = Keyring([generate_hmac_key("k1", ["agent-a"]), generate_hmac_key("r1", ["relay"])])
    clock = Clock()
    now = clock()
    sign = signer(ring).sign
    await produce_together(
        kafka_bootstrap,
        source,
        [sign({"n": 0}, topic=source, expires_at=now + 60_000), sign({"n": 1}, topic=source)],
    )
    seen: list[object] = []

    async def slow(message: ConsumedMessage) -> list[Output]:
        seen.append(message.payload)
        clock.offset = HELD_MS  # the transform took two minutes
        return [Output({"from": message.payload})]

    group = unique("relay")
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [source], group=group),
            verifier=verifier(ring, clock=clock),
            guard=g,
            dead_letter_topic=dead,
        )
        relay_signer = Signer(ring, kid="r1", issuer="relay", model="rules@1")
        async with (
            consumer,
            SignedProducer(
                ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=relay_signer
            ) as producer,
        ):
            relay = Relay(consumer, producer, slow, output_topic=sink)
            task = asyncio.create_task(relay.run())
            try:
                await until(lambda: relay.metrics.batches >= 1, "the relay's first batch")
            finally:
                await relay.stop()
                await task
            committed = dict(consumer.metrics.committed)
    assert seen == [{"n": 0}, {"n": 1}]  # both fresh when handed to the transform
    (output,) = await read_all(kafka_bootstrap, sink, 1)  # read_all fails on a second one
    check = verifier(ring, clock=clock)
    assert check.verify(output.value, topic=sink, key=None).payload == {"from": {"n": 1}}
    assert relay.metrics.expired == 1 and relay.metrics.outputs == 1
    assert committed == {(source, 0): 2}  # the stale input is committed past, as rejected
    (letter,) = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead, 1)]
    assert (letter.reason, letter.source_offset) == ("expired", 0)
    assert "relay" in letter.error


async def test_a_record_that_expires_while_a_slow_handler_runs_is_not_delivered(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    # One batch: the handler of its first record takes "two minutes" (the clock moves), so the
    # next record is handed out long after it verified: it is checked again first.
    topic = await unique_topic("held-handler")
    dead = await unique_topic("held-handler-dlq")
    ring = keyring()
    clock = Clock()
    now = clock()
    sign = signer(ring).sign
    await produce_together(
        kafka_bootstrap,
        topic,
        [
            sign({"n": 0}, topic=topic),
            sign({"n": 1}, topic=topic, expires_at=now + 60_000),  # passes during the handler
            sign({"n": 2}, topic=topic),
        ],
    )

    def slow(message: ConsumedMessage) -> None:
        if message.payload == {"n": 0}:
            clock.offset = HELD_MS

    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring, clock=clock),
            guard=g,
            dead_letter_topic=dead,
        )
        async with Running(consumer, slow) as running:
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    assert [m.payload for m in running.delivered] == [{"n": 0}, {"n": 2}]
    assert dict(consumer.metrics.rejected) == {"expired": 1}
    (letter,) = letters_by_offset(await read_all(kafka_bootstrap, dead, 1)).values()
    assert letter.source_offset == 1 and "waited in its batch" in letter.error


async def test_a_record_whose_handler_failed_is_checked_again_before_its_retry(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("held-retry")
    dead = await unique_topic("held-retry-dlq")
    ring = keyring()
    clock = Clock()
    now = clock()
    sign = signer(ring).sign
    await produce_together(
        kafka_bootstrap,
        topic,
        [sign({"n": 0}, topic=topic, expires_at=now + 60_000), sign({"n": 1}, topic=topic)],
    )
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring, clock=clock),
            guard=g,
            dead_letter_topic=dead,
        )
        async with consumer:
            with pytest.raises(RuntimeError, match="handler failed"):
                async for message in consumer:
                    assert message.payload == {"n": 0}
                    raise RuntimeError("handler failed")
            clock.offset = HELD_MS  # the retry comes after the record's expires_at
            async for message in consumer:  # the failed record would be handed out again first
                assert message.payload == {"n": 1}
                break
            await consumer.commit()
    assert dict(consumer.metrics.rejected) == {"expired": 1}
    (letter,) = letters_by_offset(await read_all(kafka_bootstrap, dead, 1)).values()
    assert letter.source_offset == 0 and "expires_at has passed" in letter.error
