"""A copy of an honest envelope inside an aborted transaction never claims its nonce.

The replay guard's nonce set is shared by every consumer group. A consumer that read
uncommitted records would verify an attacker's copy written inside a transaction that is then
aborted, claim the nonce at the copy's position, and every correctly configured group would drop
the honest original as a replay. So a consumer handed in must read ``read_committed``, and the
consumers built from ``ConsumerOptions`` always do. Real broker, real Redis, real transactions.
"""

from __future__ import annotations

import asyncio
import functools

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from signed_bus._kafka.consumer import ConsumerOptions, VerifyingConsumer
from signed_bus._replay.guard import ClaimVerdict
from signed_bus.errors import ConfigurationError
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    guard,
    keyring,
    plain_producer,
    signer,
    unique,
    verifier,
)
from tests.integration.test_faults_redis import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def read_everything(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    """Every value of ``topic`` (two partitions) a consumer with ``isolation_level`` reads."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2_000)
            if not batch:
                return values
            values.extend(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()


def both_delivered(running: Running) -> bool:
    return len(running.delivered) >= 2


async def test_an_aborted_copy_claims_nothing_and_every_group_gets_the_original_once(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("aborted-copy", partitions=2)
    dead = await unique_topic("aborted-copy-dlq")
    ring = keyring()
    key = b"order-7"
    honest = signer(ring).sign({"act": "ship"}, topic=topic, key=key)
    other = signer(ring).sign({"act": "log"}, topic=topic, key=b"order-8")

    # The attacker copies the honest value and key into a transaction on both partitions, ahead
    # of the honest record, and aborts it.
    attacker = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique("attacker")
    )
    await attacker.start()
    try:
        await attacker.begin_transaction()
        for partition in (0, 1):
            await attacker.send_and_wait(topic, honest, key=key, partition=partition)
        await attacker.abort_transaction()
    finally:
        await attacker.stop()
    async with plain_producer(kafka_bootstrap) as producer:
        placed = await producer.send_and_wait(topic, honest, key=key, partition=0)
        await producer.send_and_wait(topic, other, key=b"order-8", partition=1)

    # The copies are in the log: a read_uncommitted reader sees them ahead of the original.
    uncommitted = await read_everything(kafka_bootstrap, topic, "read_uncommitted")
    assert uncommitted.count(honest) == 3
    assert (await read_everything(kafka_bootstrap, topic, "read_committed")).count(honest) == 1

    async with guard(redis_url, redis_prefix) as shared:
        careless = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, group_id=unique("g"), enable_auto_commit=False
        )
        try:
            # A consumer built elsewhere cannot be checked (aiokafka has no documented way to
            # read its isolation level): it is refused outright; options refuse the setting.
            with pytest.raises(ConfigurationError, match="ConsumerOptions"):
                VerifyingConsumer.from_options(
                    careless,
                    verifier=verifier(ring),
                    guard=shared,
                )
            with pytest.raises(
                ConfigurationError, match='isolation_level must be "read_committed"'
            ):
                ConsumerOptions(
                    bootstrap_servers=kafka_bootstrap,
                    group_id=unique("g"),
                    topics=[topic],
                    isolation_level="read_uncommitted",
                )
        finally:
            await careless.stop()

        groups = []
        for _ in range(2):  # two groups, one nonce set
            consumer = VerifyingConsumer.from_options(
                consumer_options(kafka_bootstrap, [topic]),
                verifier=verifier(ring),
                guard=shared,
                dead_letter_topic=dead,
            )
            async with Running(consumer) as running:
                # Not "committed up to the end offsets": the broker writes an abort's markers
                # after the abort returns, so a marker can land after the originals and end a
                # partition (a marker is never delivered, so nothing commits past it).
                await until(functools.partial(both_delivered, running), "both", within=60)
                await asyncio.sleep(1)  # anything delivered beyond them would show now
            groups.append(running)

    for running, claim in zip(groups, (ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION), strict=True):
        delivered = running.delivered
        originals = [m for m in delivered if m.record.value == honest]
        assert [(m.partition, m.offset) for m in originals] == [(0, placed.offset)]
        assert originals[0].claim is claim
        assert sorted(m.payload["act"] for m in delivered) == ["log", "ship"]  # type: ignore[index]
        assert running.consumer.metrics.rejected_total == 0  # no replay, no aborted copy
