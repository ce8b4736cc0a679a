"""A reference agent's /metrics, scraped from the running process: the numbers are the ones the
agent publishes in its status hash (what the demo report reads), and the exposition passes the
same checks as tests/integration/test_observe_metrics.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from producers.common import read_status
from signed_bus import Keyring, Signer
from signed_bus._cli import main as cli_main
from signed_bus.errors import REASONS
from tests.integration.test_observe_metrics import check_exposition, free_port, scrape, value

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLANS = 5


def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "planner.keyring", tmp_path / "public.keyring"
    argv = ["keygen", "--alg", "ed25519", "--kid", "planner-1", "--issuer", "planner"]
    assert cli_main([*argv, "--out", str(private), "--public-out", str(public)]) == 0
    return private, public


async def test_action_agent_metrics_match_its_status(
    tmp_path: Path,
    unique_topic: Any,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    plans = await unique_topic("agent-plans")
    dead = await unique_topic("agent-plans-dlq")
    private, public = keys(tmp_path)
    signer = Signer(Keyring.from_file(private), kid="planner-1", issuer="planner", model="rules@1")
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "AGENT_STATE_PREFIX": redis_prefix,
        "SIGNED_BUS_REPLAY_PREFIX": f"{redis_prefix}:replay",
        "PLANS_TOPIC": plans,
        "PLANS_DLQ_TOPIC": dead,
        "SIGNED_BUS_KEYRING_FILE": str(public),
        "SIGNED_BUS_VERIFY_KEYRING_FILE": str(public),
        "GROUP_ID": f"action-{uuid.uuid4().hex[:8]}",
        "SIGNED_BUS_METRICS_PORT": str(port),
        "SIGNED_BUS_METRICS_ADDR": "127.0.0.1",
    }
    copied = signer.sign({"plan": "copied"}, topic=plans)
    flipped = bytearray(signer.sign({"plan": "flipped"}, topic=plans))
    flipped[-1] ^= 1
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(PLANS):
            await producer.send_and_wait(plans, signer.sign({"plan": n}, topic=plans))
        for raw in (copied, copied, bytes(flipped)):
            await producer.send_and_wait(plans, raw)
    finally:
        await producer.stop()
    log = tmp_path / "agent.log"
    with log.open("wb") as stderr:
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumers.action_agent", cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    redis = aioredis.Redis.from_url(redis_url)
    try:
        status: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while status.get("consumer", {}).get("records") != PLANS + 3:
            assert agent.returncode is None, log.read_text()
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
            status = await read_status(redis, f"{redis_prefix}:status:action-agent")
        for _ in range(50):  # the agent publishes its status every second; wait for a settled one
            try:
                text = await scrape(port)
            except urllib.error.URLError:
                await asyncio.sleep(0.2)
                continue
            families = check_exposition(text)
            if value(families, "signed_bus_records", topic=plans, group=env["GROUP_ID"]) == 8:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # the next status publish holds the same counts
        status = await read_status(redis, f"{redis_prefix}:status:action-agent")
        text = await scrape(port)
    finally:
        agent.terminate()
        await asyncio.wait_for(agent.wait(), 30)
        await redis.aclose()
    families = check_exposition(text)
    counted = status["consumer"]
    at = {"topic": plans, "group": env["GROUP_ID"]}
    assert value(families, "signed_bus_records", **at) == counted["records"] == PLANS + 3
    assert value(families, "signed_bus_delivered", **at) == counted["delivered"] == PLANS + 1
    assert value(families, "signed_bus_dead_letters", **at) == counted["dead_lettered"] == 2
    for reason in REASONS:
        got = value(families, "signed_bus_rejected", reason=reason, **at)
        assert got == counted["rejected"].get(reason, 0), reason
    assert counted["rejected"] == {"replay": 1, "bad_signature": 1}


def test_a_bad_metrics_port_stops_the_agent_with_status_2() -> None:
    env = {**os.environ, "SIGNED_BUS_METRICS_PORT": "http"}
    done = subprocess.run(
        [sys.executable, "-m", "consumers.action_agent"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "SIGNED_BUS_METRICS_PORT" in done.stderr
