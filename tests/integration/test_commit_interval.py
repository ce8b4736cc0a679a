"""Coalesced offset commits at steady load: at most one commit per ``commit_interval_ms``, a
commit on every rebalance before partitions move, and after a crash mid-interval at most one
interval of finished records delivered again, none lost; the same for an at-least-once relay,
and one transaction per fetch wait for an exactly-once one (docs/OPERATIONS.md, "Batches and
commit interval")."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from signed_bus._kafka.consumer import ConsumedMessage, VerifyingConsumer
from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._kafka.relay import Output, Relay
from signed_bus._keys import Keyring
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    guard,
    keyring,
    signer,
    unique,
    verifier,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORKER = Path(__file__).with_name("_interval_worker.py")
RATE = 150  # records per second, spread over the topic's partitions

Position = tuple[int, int]


async def _produce_steadily(
    bootstrap: str, ring: Keyring, topic: str, seconds: float
) -> set[Position]:
    """Send RATE records per second for ``seconds``; the (partition, offset) of each."""
    positions: set[Position] = set()
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=bootstrap), signer=signer(ring)
    ) as producer:
        loop = asyncio.get_running_loop()
        start = loop.time()
        futures = []
        for seq in range(int(RATE * seconds)):
            delay = start + seq / RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(await producer.send(topic, {"seq": seq}, key=f"k{seq}".encode()))
        for metadata in await asyncio.gather(*futures):
            positions.add((metadata.partition, metadata.offset))
    return positions


async def test_commits_at_steady_load_come_at_most_once_per_interval(
    kafka_bootstrap: str, redis_url: str, unique_topic: TopicFactory, redis_prefix: str
) -> None:
    ring = keyring()
    topic = await unique_topic("interval", partitions=3)
    interval_s, seconds = 1.0, 4.0
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            # fetch_min_bytes=1: many small batches, the case that used to commit each one
            consumer_options(kafka_bootstrap, [topic], commit_interval_ms=1_000, fetch_min_bytes=1),
            verifier=verifier(ring),
            guard=g,
        )
        async with Running(consumer) as running:
            started = time.monotonic()
            produced = await _produce_steadily(kafka_bootstrap, ring, topic, seconds)
            ends = await end_offsets(kafka_bootstrap, [topic])
            # idle after the last record: the finished offsets still go out within the interval
            await running.caught_up(ends, within=interval_s + 5)
            elapsed = time.monotonic() - started
            commits, batches = consumer.metrics.commits, consumer.metrics.batches
    assert {(m.partition, m.offset) for m in running.delivered} == produced
    assert batches >= 4 * commits, (batches, commits)  # batches are not commits any more
    assert 1 <= commits <= elapsed / interval_s + 1, (commits, elapsed)


async def test_a_rebalance_commits_the_finished_offsets_before_the_interval(
    kafka_bootstrap: str, redis_url: str, unique_topic: TopicFactory, redis_prefix: str
) -> None:
    ring = keyring()
    topic = await unique_topic("interval-revoke", partitions=2)
    group = unique("g-revoke")
    produced = await _produce_steadily(kafka_bootstrap, ring, topic, 0.2)
    ends = await end_offsets(kafka_bootstrap, [topic])
    options = consumer_options(
        kafka_bootstrap, [topic], group, commit_interval_ms=600_000, heartbeat_interval_ms=500
    )
    async with guard(redis_url, redis_prefix) as g:
        first = VerifyingConsumer.from_options(options, verifier=verifier(ring), guard=g)
        async with Running(first) as running:
            deadline = time.monotonic() + 30
            while len(running.delivered) < len(produced):
                assert time.monotonic() < deadline, "the first consumer did not read the topic"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert first.metrics.commits == 0  # finished, and not due for ten minutes
            second = VerifyingConsumer.from_options(options, verifier=verifier(ring), guard=g)
            async with Running(second) as joined:
                await running.caught_up(ends, within=30)  # committed on revocation
                await asyncio.sleep(1.0)  # the new owner starts from those offsets
                assert joined.delivered == []
    assert {(m.partition, m.offset) for m in running.delivered} == produced


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


async def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed next offsets (0 where nothing was committed); joins no group."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        out = {}
        for p in range(partitions):
            offset = await reader.committed(TopicPartition(topic, p))
            out[p] = offset if offset is not None else 0
        return out
    finally:
        await reader.stop()


async def test_a_consumer_killed_mid_interval_redelivers_at_most_one_interval_and_loses_none(
    kafka_bootstrap: str,
    redis_url: str,
    unique_topic: TopicFactory,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    ring = keyring()
    topic = await unique_topic("interval-crash", partitions=2)
    group = unique("g-interval-crash")
    interval_ms = 1_500
    producing = asyncio.ensure_future(_produce_steadily(kafka_bootstrap, ring, topic, 12.0))
    env = {**os.environ, "SIGNED_BUS_KEYRING": ring.to_json()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), kafka_bootstrap, topic, group, redis_url, redis_prefix,
        str(tmp_path), str(interval_ms),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    handled_path = tmp_path / "handled"
    try:
        # Kill once a commit went out and many records finished after it: mid-interval.
        deadline = time.monotonic() + 60
        while True:
            assert proc.returncode is None, "the worker exited early"
            assert time.monotonic() < deadline, "the worker never committed and went on"
            committed = await _committed(kafka_bootstrap, group, topic, 2)
            handled = await asyncio.to_thread(_read_lines, handled_path)
            beyond = [h for h in handled if h["offset"] >= committed[h["partition"]]]
            if sum(committed.values()) > 0 and len(beyond) >= 30:
                break
            await asyncio.sleep(0.1)
    finally:
        killed_at = time.time()
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)  # no stop(), no final commit: a crash
        _, stderr = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr.decode(errors="replace")[-2000:]
    produced = await producing

    handled = _read_lines(handled_path)
    finished = {(h["partition"], h["offset"]) for h in handled}
    assert len(finished) == len(handled), "the worker handled each record once"
    committed = await _committed(kafka_bootstrap, group, topic, 2)
    uncommitted = [h for h in handled if h["offset"] >= committed[h["partition"]]]
    assert uncommitted, "killed between two commits: finished records not yet committed"
    # At most one interval of finished records is left (the slack covers the commit's round
    # trip and a batch's fetch wait on a loaded machine, not a second interval).
    oldest = min(h["t"] for h in uncommitted)
    slack = 0.9
    assert killed_at - oldest <= interval_ms / 1000 + slack, (killed_at - oldest, len(uncommitted))
    assert len(uncommitted) <= RATE * (interval_ms / 1000 + slack)

    # A new consumer in the same group delivers exactly the uncommitted tail: nothing lost.
    ends = await end_offsets(kafka_bootstrap, [topic])
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic], group), verifier=verifier(ring), guard=g
        )
        async with Running(consumer) as running:
            await running.caught_up(ends, within=45)
    again: dict[Position, ConsumedMessage] = {(m.partition, m.offset): m for m in running.delivered}
    assert len(again) == len(running.delivered)
    assert set(again) == {(p, o) for p, o in produced if o >= committed[p]}
    assert {(h["partition"], h["offset"]) for h in uncommitted} <= set(again)
    assert finished | set(again) == produced
    assert consumer.metrics.rejected_total == 0, consumer.metrics.rejected


async def test_an_at_least_once_relay_commits_at_most_once_per_interval(
    kafka_bootstrap: str, redis_url: str, unique_topic: TopicFactory, redis_prefix: str
) -> None:
    ring = keyring()
    source = await unique_topic("interval-relay-in", partitions=2)
    sink = await unique_topic("interval-relay-out")
    interval_s = 1.0

    async def echo(message: ConsumedMessage) -> list[Output]:
        return [Output({"from": message.payload})]

    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [source], commit_interval_ms=1_000),
            verifier=verifier(ring),
            guard=g,
            max_records=5,  # many small batches: each used to be committed
        )
        async with (
            consumer,
            SignedProducer(
                ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
            ) as producer,
        ):
            relay = Relay(consumer, producer, echo, output_topic=sink)
            running = asyncio.create_task(relay.run())
            started = time.monotonic()
            produced = await _produce_steadily(kafka_bootstrap, ring, source, 3.0)
            ends = await end_offsets(kafka_bootstrap, [source])
            deadline = time.monotonic() + 30
            committed = consumer.metrics.committed
            while any(committed.get(pos, 0) < end for pos, end in ends.items()):
                assert time.monotonic() < deadline, f"not committed: {committed}, ends {ends}"
                assert not running.done()
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            await relay.stop()
            await running
    assert relay.metrics.inputs == len(produced)
    commits, batches = consumer.metrics.commits, relay.metrics.batches
    assert batches >= 4 * commits, (batches, commits)
    assert 1 <= commits <= elapsed / interval_s + 1, (commits, elapsed)


async def test_an_exactly_once_relay_commits_one_transaction_per_fetch_wait_not_per_record(
    kafka_bootstrap: str, redis_url: str, unique_topic: TopicFactory, redis_prefix: str
) -> None:
    ring = keyring()
    source = await unique_topic("txn-relay-in", partitions=2)
    sink = await unique_topic("txn-relay-out")
    group = unique("g-txn-relay")
    seconds = 3.0

    async def echo(message: ConsumedMessage) -> list[Output]:
        return [Output({"from": message.payload})]

    kafka = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        enable_idempotence=True,
        transactional_id=unique("txn-relay"),
    )
    async with guard(redis_url, redis_prefix) as g:
        # the default fetch settings (the bus helper only sets the commit interval)
        options = consumer_options(kafka_bootstrap, [source], group)
        assert options.fetch_min_bytes > 1
        consumer = VerifyingConsumer.from_options(options, verifier=verifier(ring), guard=g)
        await kafka.start()
        try:
            async with consumer, SignedProducer(kafka, signer=signer(ring)) as producer:
                relay = Relay(
                    consumer, producer, echo, output_topic=sink, exactly_once=True, group_id=group
                )
                running = asyncio.create_task(relay.run())
                deadline = time.monotonic() + 30
                while not consumer.consumer.assignment():
                    assert time.monotonic() < deadline, "no partition assigned"
                    await asyncio.sleep(0.05)
                started = time.monotonic()
                produced = await _produce_steadily(kafka_bootstrap, ring, source, seconds)
                deadline = time.monotonic() + 30
                while relay.metrics.inputs < len(produced):
                    assert time.monotonic() < deadline, relay.metrics.snapshot()
                    assert not running.done()
                    await asyncio.sleep(0.05)
                elapsed = time.monotonic() - started
                await relay.stop()
                await running
        finally:
            await kafka.stop()
    transactions = relay.metrics.transactions
    assert relay.metrics.inputs == len(produced) == int(RATE * seconds)
    # A fetch is answered after fetch_max_wait_ms at this rate (far below fetch_min_bytes):
    # about 5 transactions a second, not one per record or two.
    per_second = 1000 / options.fetch_max_wait_ms
    assert transactions <= elapsed * per_second * 1.5 + 2, (transactions, elapsed)
    assert relay.metrics.inputs >= 10 * transactions
