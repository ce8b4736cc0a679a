"""Freshness against the broker's append time, for consumers that read long after the fact.

The consumer's clock is injected an hour ahead (as if it caught up on an hour-old backlog, or its
clock were wrong): on a LogAppendTime topic the reference is when the broker stored the record,
so honest records stay fresh; an old envelope published now is expired whatever the consumer's
clock says. The append time is unsigned, so the consumer's clock still bounds it: a consumer more
than max_age + max_lag behind rejects even honest records as expired (dead-lettered, not lost),
which is what keeps a copy from outliving its nonce in the replay guard. On a CreateTime topic
the same consumer can only use its own clock (and warns once).
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from signed_bus._clock import system_clock
from signed_bus._deadletter import DeadLetter
from signed_bus._kafka.consumer import VerifyingConsumer
from tests.conftest import TopicFactory
from tests.integration.bus import (
    CREATE_TIME,
    MAX_AGE_MS,
    WINDOW,
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

HOUR_MS = 3_600_000


def an_hour_ahead() -> int:
    return system_clock() + HOUR_MS


def an_hour_ago() -> int:
    return system_clock() - HOUR_MS


async def test_lagging_consumer_accepts_honest_records_by_append_time_and_rejects_old_envelopes(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    assert HOUR_MS > MAX_AGE_MS
    assert MAX_AGE_MS + verifier(keyring()).freshness.max_lag_ms > HOUR_MS  # the default max_lag
    ring = keyring()
    topic = await unique_topic("lag", partitions=2)
    dead = await unique_topic("dlq")
    honest = signer(ring)
    stale = signer(ring, clock=an_hour_ago)  # an envelope captured an hour ago
    early = signer(ring, clock=an_hour_ahead)  # a producer whose clock runs an hour ahead
    async with plain_producer(kafka_bootstrap) as producer:
        for i in range(20):
            await producer.send(topic, honest.sign({"seq": i}, topic=topic), partition=i % 2)
        old = await producer.send_and_wait(topic, stale.sign({"seq": "old"}, topic=topic))
        ahead = await producer.send_and_wait(topic, early.sign({"seq": "ahead"}, topic=topic))
    ends = await end_offsets(kafka_bootstrap, [topic])

    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring, clock=an_hour_ahead),
            guard=g,
            dead_letter_topic=dead,
        )
        async with Running(consumer) as running:
            await running.caught_up(ends)

    assert sorted(m.payload["seq"] for m in running.delivered) == list(range(20))  # type: ignore[index]
    for m in running.delivered:
        assert m.timestamp_type == 1  # LogAppendTime: the broker's clock, not the producer's
        # By the consumer's (injected) clock every one of them is an hour old.
        assert an_hour_ahead() - m.verified.created_at > MAX_AGE_MS
    letters = {
        (d.source_partition, d.source_offset): d.reason
        for d in map(DeadLetter.from_record, await read_all(kafka_bootstrap, dead, 2))
    }
    assert letters == {
        (old.partition, old.offset): "expired",
        (ahead.partition, ahead.offset): "not_yet_valid",
    }
    assert consumer.metrics.rejected == {"expired": 1, "not_yet_valid": 1}


async def test_consumer_lagging_beyond_max_lag_dead_letters_honest_records_as_expired(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    ring = keyring()
    topic = await unique_topic("overlag", partitions=2)
    dead = await unique_topic("dlq")
    honest = signer(ring)
    async with plain_producer(kafka_bootstrap) as producer:
        sent = [
            await producer.send_and_wait(
                topic, honest.sign({"seq": i}, topic=topic), partition=i % 2
            )
            for i in range(6)
        ]
    ends = await end_offsets(kafka_bootstrap, [topic])

    # An hour behind, but allowed only max_age + 30 minutes: fresh by append time, too old by
    # the consumer's clock.
    lag_ms = HOUR_MS // 2
    v = verifier(
        ring, clock=an_hour_ahead, freshness=dataclasses.replace(WINDOW, max_lag_ms=lag_ms)
    )
    assert v.freshness.max_lag_ms == lag_ms
    assert MAX_AGE_MS + lag_ms < HOUR_MS
    async with guard(redis_url, redis_prefix) as g:
        # the guard keeps what this consumer claims for its own (shorter) window
        assert g.retention_ms(v.freshness) == v.freshness.retention_ms + g.bucket_ms
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]), verifier=v, guard=g, dead_letter_topic=dead
        )
        async with Running(consumer) as running:
            await running.caught_up(ends)

    assert running.delivered == []
    letters = {
        (d.source_partition, d.source_offset): d.reason
        for d in map(DeadLetter.from_record, await read_all(kafka_bootstrap, dead, len(sent)))
    }
    assert letters == {(r.partition, r.offset): "expired" for r in sent}
    assert consumer.metrics.rejected == {"expired": len(sent)}


async def test_create_time_topic_falls_back_to_the_consumer_clock_and_warns_once(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ring = keyring()
    topic = await unique_topic("createtime", config=CREATE_TIME)
    honest = signer(ring)
    async with plain_producer(kafka_bootstrap) as producer:
        for i in range(5):
            await producer.send(topic, honest.sign({"seq": i}, topic=topic))
        await producer.flush()

    async with guard(redis_url, redis_prefix) as g:
        lagging = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring, clock=an_hour_ahead),
            guard=g,
        )
        punctual = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]), verifier=verifier(ring), guard=g
        )
        with caplog.at_level(logging.WARNING, logger="signed_bus.consumer"):
            async with Running(lagging) as slow, Running(punctual) as fast:
                await slow.caught_up({(topic, 0): 5})
                await fast.caught_up({(topic, 0): 5})

    # Without append time the lagging consumer judges by its own clock: honest records expire.
    assert slow.delivered == [] and lagging.metrics.rejected == {"expired": 5}
    assert [m.payload["seq"] for m in fast.delivered] == list(range(5))  # type: ignore[index]
    assert all(m.timestamp_type == 0 for m in fast.delivered)
    warnings = [r.getMessage() for r in caplog.records if "CreateTime" in r.getMessage()]
    assert len(warnings) == 2  # once per consumer for the topic, not once per record
    assert all(topic in w for w in warnings)
