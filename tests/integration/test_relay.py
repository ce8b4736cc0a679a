"""The relay on a real broker and Redis: parents, exactly-once transactions, and crashes mid-hop.

Every test has its own topics, consumer group, transactional id and replay-guard prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from signed_bus import Keyring, Signer, Verifier, generate_ed25519_key
from signed_bus._kafka.consumer import (
    ConsumedBatch,
    ConsumedMessage,
    ConsumerOptions,
    VerifyingConsumer,
)
from signed_bus._kafka.producer import SignedProducer
from signed_bus._kafka.relay import Output, Relay, RelayTransformError
from signed_bus._replay.guard import RedisReplayGuard

pytestmark = pytest.mark.integration

INPUTS = 30
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Hop:
    """One relay hop's names, keys and the inputs already published to it."""

    bootstrap: str
    redis_url: str
    source: str
    sink: str
    group: str
    txn_id: str
    prefix: str
    ring: Keyring
    inputs: dict[bytes, int]  # input digest -> input number

    def verifier(self, **kw: Any) -> Verifier:
        return Verifier(self.ring.public(), **kw)

    def consumer(self) -> tuple[VerifyingConsumer, RedisReplayGuard]:
        guard = RedisReplayGuard.from_url(self.redis_url, prefix=self.prefix)
        consumer = VerifyingConsumer.from_options(
            ConsumerOptions(
                bootstrap_servers=self.bootstrap,
                group_id=self.group,
                topics=[self.source],
                session_timeout_ms=6_000,
            ),
            verifier=self.verifier(),
            guard=guard,
            max_records=7,  # several batches, so a failure lands mid-stream
        )
        return consumer, guard

    def producer(self, *, exactly_once: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            transactional_id=self.txn_id if exactly_once else None,
        )

    def signer(self) -> Signer:
        return Signer(self.ring, kid="relay-1", issuer="relay", model="relay-rules@1")


@pytest.fixture
async def hop(kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: Any) -> Hop:
    run = uuid.uuid4().hex[:10]
    ring = Keyring(
        [
            generate_ed25519_key("source-1", ["source"]),
            generate_ed25519_key("relay-1", ["relay"]),
        ]
    )
    hop = Hop(
        bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        source=await unique_topic("relay-in", partitions=2),
        sink=await unique_topic("relay-out", partitions=2),
        group=f"relay-group-{run}",
        txn_id=f"relay-txn-{run}",
        prefix=redis_prefix,
        ring=ring,
        inputs={},
    )
    source = Signer(ring, kid="source-1", issuer="source", model="lm@1")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for n in range(INPUTS):
            value = source.sign({"n": n}, topic=hop.source, key=f"k{n}".encode())
            await producer.send(hop.source, value, key=f"k{n}".encode())
            hop.inputs[hashlib.sha256(value).digest()] = n
        await producer.flush()
    finally:
        await producer.stop()
    return hop


def fan_out(message: ConsumedMessage) -> list[Output]:
    """Input n -> n % 3 outputs (zero, one or two): every shape of the transform."""
    payload = message.payload
    assert isinstance(payload, dict)
    n = int(payload["n"])
    return [Output({"from": n, "part": i}, key=message.key) for i in range(n % 3)]


def expected_outputs() -> Counter[int]:
    return Counter({n: n % 3 for n in range(INPUTS) if n % 3})


async def run_relay(
    hop: Hop,
    *,
    exactly_once: bool,
    transform: Any = None,
    kafka: AIOKafkaProducer | None = None,
    within: float = 60,
) -> Relay:
    """Run a relay until its group has committed the whole source topic (or raise its error)."""

    async def default(message: ConsumedMessage) -> Iterable[Output]:
        return fan_out(message)

    consumer, guard = hop.consumer()
    kafka = kafka or hop.producer(exactly_once=exactly_once)
    relay = Relay(
        consumer,
        SignedProducer(kafka, signer=hop.signer()),
        transform or default,
        output_topic=hop.sink,
        exactly_once=exactly_once,
        group_id=hop.group,
    )
    await guard.start()
    await kafka.start()
    await consumer.start()
    task = asyncio.create_task(relay.run())
    try:
        tps = [TopicPartition(hop.source, p) for p in range(2)]
        ends = await consumer.consumer.end_offsets(tps)
        deadline = time.monotonic() + within
        while not task.done():
            committed = {tp: await consumer.consumer.committed(tp) or 0 for tp in tps}
            if all(committed[tp] >= end for tp, end in ends.items()):
                break
            assert time.monotonic() < deadline, f"relay committed {committed} of {ends}"
            await asyncio.sleep(0.1)
        await relay.stop()
        await task
    finally:
        if not task.done():
            await relay.stop()
            await asyncio.wait_for(asyncio.shield(task), 10)
        await consumer.stop()
        await kafka.stop()
        await guard.stop()
    return relay


async def read_outputs(
    hop: Hop, *, isolation_level: str = "read_committed"
) -> list[tuple[Any, tuple[bytes, ...], dict[str, Any]]]:
    """Every record of the sink topic, verified in audit mode: (record, parents, payload)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=hop.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        probe = TopicPartition(hop.sink, 0)
        consumer.assign([probe])
        await consumer.end_offsets([probe])
        tps = [TopicPartition(hop.sink, p) for p in sorted(consumer.partitions_for_topic(hop.sink))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        verifier = hop.verifier(audit=True)
        out = []
        deadline = time.monotonic() + 30
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= end for tp, end in ends.items()):
                break
            assert time.monotonic() < deadline, "could not read the sink topic to its end"
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    message = verifier.verify(record.value, topic=record.topic, key=record.key)
                    payload = message.payload
                    assert isinstance(payload, dict)
                    out.append((record, message.parents, payload))
        return out
    finally:
        await consumer.stop()


def outputs_per_input(hop: Hop, outputs: list[Any]) -> Counter[int]:
    """How many outputs each input got, checking every output's parents name its input."""
    counts: Counter[int] = Counter()
    for _, parents, payload in outputs:
        assert len(parents) == 1
        assert parents[0] in hop.inputs, "an output names a digest that is not an input"
        assert hop.inputs[parents[0]] == payload["from"]
        counts[payload["from"]] += 1
    return counts


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_outputs_carry_the_inputs_digest_as_parent(hop: Hop, exactly_once: bool) -> None:
    relay = await run_relay(hop, exactly_once=exactly_once)
    outputs = await read_outputs(hop)
    per_input = outputs_per_input(hop, outputs)
    assert per_input == expected_outputs()
    assert relay.metrics.outputs == sum(expected_outputs().values())
    assert relay.metrics.empty == INPUTS - len(expected_outputs())
    if exactly_once:
        assert relay.metrics.transactions == relay.metrics.batches > 1
    # The outputs are signed by the relay, for the output topic, each with a fresh nonce.
    assert len({hashlib.sha256(r.value).digest() for r, _, _ in outputs}) == len(outputs)


async def test_aborted_transaction_delivers_nothing_and_input_is_reprocessed(hop: Hop) -> None:
    kafka = hop.producer(exactly_once=True)
    original = kafka.send_offsets_to_transaction
    calls = 0

    async def fail_second_commit(offsets: Any, group_id: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # outputs of the second batch are produced: now fail before the commit
            raise RuntimeError("injected failure between produce and commit")
        await original(offsets, group_id)

    kafka.send_offsets_to_transaction = fail_second_commit
    with pytest.raises(RuntimeError, match="injected"):
        await run_relay(hop, exactly_once=True, kafka=kafka)
    # The aborted batch's outputs reached the log, and no read_committed consumer sees them.
    everything = await read_outputs(hop, isolation_level="read_uncommitted")
    committed = await read_outputs(hop)
    assert len(everything) > len(committed) > 0
    # A new run re-reads the aborted batch from the committed offsets: each output once.
    relay = await run_relay(hop, exactly_once=True)
    assert relay.metrics.inputs < INPUTS  # the first batch was not taken again
    assert outputs_per_input(hop, await read_outputs(hop)) == expected_outputs()


async def test_partition_revoked_mid_batch_is_not_committed(hop: Hop) -> None:
    """A batch naming a partition the relay no longer owns (unassigned, or revoked while its
    outputs were produced) is aborted: no output of it is published, no offset committed."""
    consumer, guard = hop.consumer()
    kafka = hop.producer(exactly_once=True)
    relay = Relay(
        consumer,
        SignedProducer(kafka, signer=hop.signer()),
        lambda message: asyncio.sleep(0, fan_out(message)),
        output_topic=hop.sink,
        exactly_once=True,
        group_id=hop.group,
    )
    await guard.start()
    await kafka.start()
    await consumer.start()
    try:
        batch = None
        while batch is None or not batch.messages:
            batch = await consumer.getbatch()
            assert batch is not None
        # 1. An offsets dict naming a partition that is not assigned: dropped before producing.
        gone = TopicPartition(hop.source, 9)
        assert gone not in consumer.consumer.assignment()
        stale = ConsumedBatch(batch.messages, {**batch.offsets, gone: 1}, batch.first_offsets)
        await relay.process(stale)
        assert relay.metrics.revoked == 1
        assert relay.metrics.transactions == relay.metrics.batches == 0
        # 2. A partition revoked while the outputs are being produced: the transaction aborts.
        revoked = next(iter(batch.offsets))
        send_offsets = kafka.send_offsets_to_transaction

        async def revoke_then_send_offsets(*args: Any, **kwargs: Any) -> Any:
            await consumer.rebalance_listener.on_partitions_revoked([revoked])
            return await send_offsets(*args, **kwargs)

        kafka.send_offsets_to_transaction = revoke_then_send_offsets
        await relay.process(batch)
        assert relay.metrics.revoked == 2
        assert relay.metrics.aborted == 1
        assert relay.metrics.transactions == relay.metrics.batches == 0
        tps = [TopicPartition(hop.source, p) for p in range(2)]
        assert all([await consumer.consumer.committed(tp) is None for tp in tps])
    finally:
        await consumer.stop()
        await kafka.stop()
        await guard.stop()
    # The aborted outputs reached the log, invisible to read_committed; a normal run then
    # relays every input exactly once.
    produced = sum(len(fan_out(message)) for message in batch.messages)
    assert len(await read_outputs(hop, isolation_level="read_uncommitted")) == produced
    assert await read_outputs(hop) == []
    await run_relay(hop, exactly_once=True)
    assert outputs_per_input(hop, await read_outputs(hop)) == expected_outputs()


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_transform_error_loses_nothing(hop: Hop, exactly_once: bool) -> None:
    failed = False

    async def flaky(message: ConsumedMessage) -> Iterable[Output]:
        nonlocal failed
        payload = message.payload
        assert isinstance(payload, dict)
        if payload["n"] == 17 and not failed:
            failed = True
            raise ValueError("transform bug")
        return fan_out(message)

    with pytest.raises(RelayTransformError) as info:
        await run_relay(hop, exactly_once=exactly_once, transform=flaky)
    assert isinstance(info.value.__cause__, ValueError)
    await run_relay(hop, exactly_once=exactly_once, transform=flaky)
    per_input = outputs_per_input(hop, await read_outputs(hop))
    want = expected_outputs()
    if exactly_once:
        assert per_input == want
    else:  # nothing lost; the failed batch's earlier inputs may have been relayed twice
        assert set(per_input) == set(want)
        assert all(per_input[n] >= want[n] for n in want)


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_relay_killed_between_produce_and_commit(hop: Hop, exactly_once: bool) -> None:
    fields = {
        name: getattr(hop, name)
        for name in ("bootstrap", "redis_url", "source", "sink", "group", "txn_id", "prefix")
    }
    # The child needs the keys: hand it the private ring through the environment.
    env = {**os.environ, "TEST_RING": hop.ring.to_json()}
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _child_script(fields, exactly_once)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 9, child.stdout + child.stderr
    assert "dying between produce and commit" in child.stdout
    assert len(await read_outputs(hop, isolation_level="read_uncommitted")) > 0
    # Restart (same group, same transactional id): nothing lost, and in EOS mode nothing twice.
    await run_relay(hop, exactly_once=exactly_once)
    per_input = outputs_per_input(hop, await read_outputs(hop))
    want = expected_outputs()
    if exactly_once:
        assert per_input == want
    else:
        assert set(per_input) == set(want)
        assert all(per_input[n] >= want[n] for n in want)
        assert sum(per_input.values()) > sum(want.values())  # the killed batch came twice


def _child_script(fields: dict[str, str], exactly_once: bool) -> str:
    return textwrap.dedent(
        f"""
        import asyncio, os, sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from integration import test_relay as t

        hop = t.Hop(ring=t.Keyring.from_env("TEST_RING"), inputs={{}}, **{fields!r})
        exactly_once = {exactly_once!r}

        async def main():
            kafka = hop.producer(exactly_once=exactly_once)
            send, sent = kafka.send, []

            async def counting_send(*args, **kwargs):
                sent.append(1)
                return await send(*args, **kwargs)

            kafka.send = counting_send
            from signed_bus._kafka.consumer import VerifyingConsumer
            commit = (
                kafka.send_offsets_to_transaction
                if exactly_once
                else VerifyingConsumer.commit_offsets
            )

            async def die(*args, **kwargs):
                if not sent:  # a batch without outputs: nothing to lose yet, carry on
                    return await commit(*args, **kwargs)
                await kafka.flush()  # every output of the batch is in the log
                print("dying between produce and commit", flush=True)
                os._exit(9)

            if exactly_once:
                kafka.send_offsets_to_transaction = die
            else:
                VerifyingConsumer.commit_offsets = die
            await t.run_relay(hop, exactly_once=exactly_once, kafka=kafka)

        asyncio.run(main())
        """
    )
