"""Fault: a consumer process SIGKILLed after its nonce claim and before its commit (issue 4, #5).

The record in flight was claimed in Redis at its position but never committed. A new consumer
in the same group reads it again from the committed offset, its claim finds the same position
(SAME_POSITION) and delivers it: the crash loses nothing and no honest record reads as a replay.
The worker and the new consumer run on either consumer front (tests/integration/fronts.py).
"""

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
from aiokafka import AIOKafkaConsumer, TopicPartition

from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._replay.guard import ClaimVerdict
from tests.conftest import TopicFactory
from tests.integration.bus import end_offsets, keyring, signer, unique, verifier
from tests.integration.fronts import FRONTS, Front, Spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.parametrize("front", FRONTS),
]

WORKER = Path(__file__).with_name("_crash_worker.py")
RECORDS = 24
HANG_AT = 11  # the worker's 11th delivery hangs: batches of 4, so mid-batch, two batches done

Position = tuple[int, int]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def _wait_for(path: Path, proc: asyncio.subprocess.Process, within: float) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(path.exists):
        if proc.returncode is not None:
            raise AssertionError(f"the worker exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not reach the crash point in {within:.0f}s")
        await asyncio.sleep(0.05)


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


async def test_a_consumer_killed_between_claim_and_commit_loses_nothing(
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    unique_topic: TopicFactory,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    ring = keyring()
    topic = await unique_topic("crash", partitions=2)
    group = unique("g-crash")
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
    ) as producer:
        metadata = await producer.send_batch(
            topic, [Outgoing({"seq": i}, key=f"k{i}".encode()) for i in range(RECORDS)]
        )
    produced: set[Position] = {(m.partition, m.offset) for m in metadata}
    assert len(produced) == RECORDS and {p for p, _ in produced} == {0, 1}

    # 1. The worker claims, delivers, commits finished batches, then hangs in its handler.
    env = {**os.environ, "SIGNED_BUS_KEYRING": ring.to_json()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), kafka_bootstrap, topic, group, redis_url, redis_prefix,
        str(tmp_path), str(HANG_AT), front.name,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await _wait_for(tmp_path / "inflight", proc, within=45)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)  # no stop(), no final commit: a crash
        _, stderr = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr.decode(errors="replace")[-2000:]

    inflight = json.loads((tmp_path / "inflight").read_text())
    in_flight: Position = (inflight["partition"], inflight["offset"])
    assert inflight["claim"] == ClaimVerdict.NEW.value, "the worker claimed it first"
    handled = _read_lines(tmp_path / "handled")
    finished: set[Position] = {(h["partition"], h["offset"]) for h in handled}
    assert len(finished) == len(handled) == HANG_AT - 1
    assert in_flight not in finished

    # 2. The claim is in Redis, the commit is not: nothing at or past the record in flight
    #    was committed, and the batches finished before it were (commits work, then stop).
    committed = await _committed(kafka_bootstrap, group, topic, partitions=2)
    assert committed[in_flight[0]] <= in_flight[1]
    assert sum(committed.values()) >= 1, "finished batches were committed before the crash"

    # 3. A new consumer in the same group gets every record from the committed offsets on,
    #    the one in flight included, as SAME_POSITION: the worker's claim does not drop it.
    ends = await end_offsets(kafka_bootstrap, [topic])
    spec = Spec(kafka_bootstrap, [topic], redis_url, redis_prefix, verifier(ring), group=group)
    async with front.consume(spec) as running:
        await running.caught_up(ends, within=45)
    again = {(m.partition, m.offset): m for m in running.delivered}
    assert len(again) == len(running.delivered), "each record once in the restarted consumer"
    assert running.metrics.rejected_total == 0, running.metrics.rejected
    assert running.metrics.unchecked == 0

    assert in_flight in again, "the record in flight at the crash is delivered again"
    assert again[in_flight].claim is ClaimVerdict.SAME_POSITION
    # exactly the uncommitted tail of each partition is delivered again
    assert set(again) == {(p, o) for p, o in produced if o >= committed[p]}
    # whatever the worker had delivered and is read again was claimed by it at this position
    for position in finished & set(again):
        assert again[position].claim is ClaimVerdict.SAME_POSITION
    # nothing lost: the worker's finished records and the new consumer's cover every record
    assert finished | set(again) == produced
    assert running.metrics.same_position >= 1
