"""The bench framework's pure parts: statistics, targets, payloads, table, chart, lazy imports."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from signed_bus._freshness import Freshness
from signed_bus.bench.config import PARTS, BenchConfig
from signed_bus.bench.payloads import inference_results, packed_size
from signed_bus.bench.results import BenchReport, PartResult, Row, Target
from signed_bus.bench.stats import Loop, percentile, summarize_latencies, time_per_op_us
from signed_bus.bench.table import format_number, format_report


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_summarize_latencies_of_nothing_is_nan_not_an_error() -> None:
    summary = summarize_latencies([])
    assert summary["count"] == 0
    assert math.isnan(summary["p99"])


def test_time_per_op_runs_every_case_and_reports_microseconds() -> None:
    calls: list[str] = []
    result = time_per_op_us(
        {"a": (calls.append, ["a"] * 10), "b": (calls.append, ["b"] * 5)}, repeats=2
    )
    assert calls.count("a") == 20
    assert calls.count("b") == 10
    assert set(result) == {"a", "b"}
    assert all(value > 0 and math.isfinite(value) for value in result.values())


def test_a_loop_case_runs_once_over_all_its_inputs_per_round() -> None:
    runs: list[list[int]] = []
    items: list[int] = []
    result = time_per_op_us(
        {
            "loop": (Loop(lambda inputs: runs.append(list(inputs))), [1, 2, 3]),
            "each": (items.append, [4, 5]),
        },
        repeats=3,
    )
    assert runs == [[1, 2, 3]] * 3
    assert items == [4, 5] * 3
    assert all(value > 0 and math.isfinite(value) for value in result.values())


def test_target_status_follows_the_measurement() -> None:
    assert Target("t", 0.95, ">=", 0.9).status == "PASS"
    assert Target("t", 0.85, ">=", 0.9).status == "MISS"
    assert Target("t", 1.0, "==", 1.0).status == "PASS"
    assert Target("t", 2.0, "==", 1.0).status == "MISS"
    assert Target("t", 121.0, "<=", 120.0).status == "MISS"
    assert Target("t", None, "<=", 120.0).status == "n/a"
    assert Target("t", math.nan, "<=", 120.0).passed is None


def test_row_ratio_is_signed_over_baseline() -> None:
    assert Row("p", "m", "msg/s", 100.0, 90.0).ratio == pytest.approx(0.9)
    assert Row("p", "m", "msg/s", 0.0, 90.0).ratio is None
    assert Row("p", "m", "msg/s", None, 90.0).ratio is None


def test_payloads_have_the_exact_size_and_stay_so_when_stamped() -> None:
    results = inference_results(300, size=512)
    assert {packed_size(result) for result in results} == {512}
    assert len({result["request_id"] for result in results}) == 300
    stamped = dict(results[0], sent_ns=1_800_000_000_000_000_000)
    assert len(msgpack.packb(stamped)) == 512
    with pytest.raises(ValueError):
        inference_results(1, size=64)


def test_quick_mode_keeps_at_least_100k_nonces() -> None:
    quick = BenchConfig().quick_mode()
    assert quick.quick
    assert quick.nonces >= 100_000
    # quick mode shrinks sizes only: the freshness window (and so the guard's retention) stays
    window = quick.freshness
    assert (window.max_age_ms, window.future_skew_ms, window.max_lag_ms) == (
        300_000,
        5_000,
        3_600_000,
    )
    assert window == BenchConfig().freshness == Freshness()
    assert set(quick.parts) == set(PARTS)


def _report() -> BenchReport:
    part = PartResult(name="produce", title="1. produce")
    part.rows = [
        Row("produce", "HS256 throughput", "msg/s", 10_000.0, 9_500.0),
        Row("produce", "p99", "ms", 2.0, 2.5, better="lower", note="noisy"),
    ]
    part.targets = [Target("HMAC produce", 0.95, ">=", 0.9, "x")]
    failed = PartResult(name="latency", title="3. latency", error="RuntimeError: no broker")
    failed.targets = [Target("p99 added latency", None, "<=", 2.0, " ms")]
    machine = {
        "cpu": "Test CPU",
        "cores": 2,
        "load_average": [0.5, 0.4, 0.3],
        "python": "CPython 3.11",
        "kafka": "4.1.2",
        "redis": "7.0.15",
        "redis_allocator": "jemalloc",
        "os": "Linux",
    }
    report = BenchReport("2026-01-01T00:00:00Z", "signed-bus bench --quick", machine, {})
    report.parts = [part, failed]
    return report


def test_table_shows_machine_rows_ratios_targets_and_errors() -> None:
    text = format_report(_report())
    assert "Test CPU, 2 cores" in text
    assert "Kafka 4.1.2" in text and "Redis 7.0.15" in text
    assert "10,000" in text and "9,500" in text and "0.95x" in text
    assert "PASS  HMAC produce" in text
    assert "n/a   p99 added latency" in text
    assert "ERROR in latency: RuntimeError: no broker" in text
    assert "note  produce: noisy" in text


def test_format_number() -> None:
    assert format_number(None) == "-"
    assert format_number(math.nan) == "-"
    assert format_number(12_345.6) == "12,346"
    assert format_number(1.234) == "1.23"
    assert format_number(0.01234) == "0.012"


def test_json_and_chart_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from signed_bus.bench.chart import write_chart

    report = _report()
    report.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["parts"]["produce"]["rows"][0]["ratio"] == pytest.approx(0.95)
    assert data["targets"][0]["status"] == "PASS"
    write_chart(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_library_and_the_bench_does_not_load_dev_extras() -> None:
    code = (
        "import sys, signed_bus, signed_bus.bench, signed_bus.bench.runner;"
        "import signed_bus.bench.table;"
        "bad = [m for m in ('matplotlib', 'standardwebhooks') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_kafka_version_comes_from_the_broker_jar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from signed_bus.bench.machine import describe_machine, kafka_version

    monkeypatch.delenv("KAFKA_VERSION", raising=False)
    lib = tmp_path / "kafka" / "lib"
    lib.mkdir(parents=True)
    (lib / "kafka-clients-4.1.2.jar").touch()
    assert kafka_version([tmp_path]).startswith("unknown")
    (lib / "kafka_2.13-4.1.2.jar").touch()
    assert kafka_version([tmp_path]) == "4.1.2"
    monkeypatch.setenv("KAFKA_VERSION", "3.9.0")
    assert kafka_version([tmp_path]) == "3.9.0"
    machine = describe_machine(redis_info={"redis_version": "7.0.15"})
    assert machine["redis"] == "7.0.15" and machine["kafka"] == "3.9.0"
    assert machine["cores"] >= 1
