"""`signed-bus bench` in its smallest mode against the real services: complete and sane output.

No timing assertions (figures depend on the machine); only that every part ran, every figure
is a positive finite number, the targets were evaluated, and the JSON and PNG were written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from signed_bus.bench.config import PARTS

pytestmark = pytest.mark.integration

SMALLEST = [
    "--quick",
    "--messages", "300",
    "--duration", "1",
    "--nonces", "2000",
    "--codec-ops", "200",
    "--repeats", "1",
]  # fmt: skip


def test_bench_smallest_mode_writes_a_complete_sane_report(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    command = [sys.executable, "-m", "signed_bus", "bench", *SMALLEST, "--out", str(tmp_path)]
    command += ["--bootstrap-servers", kafka_bootstrap, "--redis-url", redis_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    [json_path] = tmp_path.glob("bench-*.json")
    [png_path] = tmp_path.glob("bench-*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(json_path.read_text())

    assert set(report["parts"]) == set(PARTS)
    for name, part in report["parts"].items():
        assert part["error"] is None, (name, part["error"])
        assert part["rows"], name
        for row in part["rows"]:
            for key in ("baseline", "signed", "ratio"):
                value = row[key]
                assert isinstance(value, float | int) and math.isfinite(value), (name, row)
                assert value > 0, (name, row)

    targets = report["targets"]
    # 6 from the first parts, the core seal/open and EdDSA consume targets, observability's 4
    # (metrics and 1%-sampled tracing, each per wall and per CPU second) and confluent's 2
    assert len(targets) == 15
    observability = [t["name"] for t in targets if t["name"].startswith("verified consume")]
    assert len(observability) == 4 and not any("all" in name for name in observability)
    # produce, consume and the core codec rows come on both paths (the extension is installed)
    labels = {row["measurement"] for part in report["parts"].values() for row in part["rows"]}
    assert {"HS256 signed send, native", "HS256 signed send, pure"} <= labels, labels
    assert "send of pre-signed envelopes (size only)" in labels, labels
    confluent = {f"HS256 {what}, {path}" for what in ("signed produce", "verified + guard")
                 for path in ("native", "pure")}  # fmt: skip
    assert confluent <= labels, labels
    assert {t["status"] for t in targets} <= {"PASS", "MISS"}
    trips = report["parts"]["redis"]["details"]["round_trips_per_batch"]
    assert float(trips).is_integer()
    consumed = report["parts"]["consume"]["details"]["counting_pass"]["round_trips_per_batch"]
    assert float(consumed).is_integer()

    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"]
    assert machine["redis"] != "unknown"

    out = done.stdout
    assert "targets (from this run's figures)" in out
    assert out.count("PASS") + out.count("MISS") == len(targets)
    for name in PARTS:
        assert f"\n{name} " in out
    assert str(json_path) in out and str(png_path) in out


def test_the_durable_part_measures_both_guards_and_counts_their_waits(tmp_path: Path) -> None:
    """The extra ``durable`` part (its own private master and replica): rows for the async
    and the sync guard, and each guard's durable runs sent WAITs, none short."""
    command = [sys.executable, "-m", "signed_bus", "bench", "--only", "durable", "--nonces",
               "1500", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [json_path] = tmp_path.glob("bench-*.json")
    part = json.loads(json_path.read_text())["parts"]["durable"]
    assert part["error"] is None, part["error"]
    labels = [row["measurement"] for row in part["rows"]]
    for guard in ("async guard (aiokafka)", "sync guard (confluent-kafka)"):
        assert f"claims per second, {guard}" in labels, labels
    details = part["details"]
    assert details["waits"]["async"] > 0 and details["waits"]["sync"] > 0, details["waits"]
    assert details["waits_short"] == {"async": 0, "sync": 0}
