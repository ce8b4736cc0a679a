"""The demo at small scale, as `make demo` runs it at full scale: every attack dropped, nothing
honest lost, every action executed exactly once, and the traced chain verified."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def test_demo_small(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url}
    demo = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "demo.pipeline",
            "--scale",
            "small",
            "--dir",
            str(tmp_path / "demo"),
            "--report-json",
            str(report),
            "--cleanup",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    assert "RESULT: PASS" in demo.stdout
    assert "cleanup: deleted" in demo.stdout, demo.stderr[-4000:]  # --cleanup left nothing behind
    assert "chain verified" in demo.stdout and "issuer=inference-agent" in demo.stdout
    data = json.loads(report.read_text())
    assert data["ok"] and not data["problems"] and not data["lost"] and not data["through"]
    produced = data["produced"]
    assert produced > 0
    delivered = data["delivered"]
    assert delivered["planner"] == delivered["plans_published"] == produced
    assert delivered["action_agent"] == produced
    assert delivered["planner_mode"].startswith("exactly-once")
    actions = data["actions"]
    assert actions["executed"] == actions["expected"] > 0
    assert actions["max_executions_per_action"] == 1
    attacks = data["attacks"]
    assert attacks["tried_total"] > 0
    # Every kind was tried, and every forgery published into a topic was dead-lettered there.
    assert set(attacks["tried"]) == {
        "replay",
        "replay_other_partition",
        "cross_topic",
        "bit_flip",
        "unknown_key",
        "stolen_kid",
        "spoofed_issuer",
        "unsigned",
    }
    for topic, into in attacks["into_topic"].items():
        assert sum(attacks["dropped_by_topic"][topic].values()) == into
    assert attacks["dropped_total"] == attacks["tried_total"]
