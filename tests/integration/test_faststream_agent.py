"""The reference FastStream planner (consumers/faststream_planner.py) run as its one command
against the real services: it plans verified results, names each result as its plan's parent,
and dead-letters a forged one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from producers.model import InferenceResult
from signed_bus import DeadLetter, Keyring, Signer, Verifier, generate_ed25519_key
from tests.conftest import TopicFactory
from tests.integration.bus import plain_producer, read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


async def test_the_faststream_planner_plans_verified_results_only(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    tmp_path: Path,
) -> None:
    results = await unique_topic("fs-agent-results")
    plans = await unique_topic("fs-agent-plans")
    dlq = await unique_topic("fs-agent-results-dlq")
    ring = Keyring(
        [
            generate_ed25519_key("inf-1", ["inference-agent"]),
            generate_ed25519_key("planner-1", ["planner"]),
        ]
    )
    keyfile = tmp_path / "planner.keyring"
    ring.dump(keyfile)
    inference = Signer(ring, kid="inf-1", issuer="inference-agent", model="incident-lm@1.3.0")
    honest = [
        InferenceResult("incident-lm", "1.3.0", f"p-{n}", "restart the cache", 10, 5, 12.5)
        for n in range(3)
    ]
    values = [
        inference.sign(r.to_payload(), topic=results, key=r.prompt_id.encode()) for r in honest
    ]
    forged = values[0][:-1] + bytes([values[0][-1] ^ 1])
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "SIGNED_BUS_KEYRING_FILE": str(keyfile),
        "SIGNED_BUS_REPLAY_PREFIX": redis_prefix,
        "AGENT_STATE_PREFIX": redis_prefix,
        "RESULTS_TOPIC": results,
        "PLANS_TOPIC": plans,
        "RESULTS_DLQ_TOPIC": dlq,
        "GROUP_ID": f"g-{redis_prefix}",
    }
    agent = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "consumers.faststream_planner"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        async with plain_producer(kafka_bootstrap) as producer:
            for result, value in zip(honest, values, strict=True):
                await producer.send_and_wait(results, value, key=result.prompt_id.encode())
            await producer.send_and_wait(results, forged, key=b"p-0")
        planned = await read_all(kafka_bootstrap, plans, len(honest), within=60)
        (letter,) = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dlq, 1)]
    finally:
        agent.send_signal(signal.SIGINT)
        try:
            output, _ = await asyncio.to_thread(agent.communicate, timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            output, _ = agent.communicate()
    assert len(planned) == len(honest), output
    verifier = Verifier(ring.public(), audit=True)
    digests = {
        Verifier(ring.public(), audit=True).verify(v, topic=results, key=k).digest
        for v, k in zip(values, (r.prompt_id.encode() for r in honest), strict=True)
    }
    for record in planned:
        plan = verifier.verify(record.value, topic=plans, key=record.key)
        assert plan.issuer == "planner"
        assert len(plan.parents) == 1 and plan.parents[0] in digests
    assert letter.reason == "bad_signature" and letter.source_topic == results
