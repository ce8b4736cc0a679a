"""The bench drops the guard's new-prefix warning for its own fresh prefixes, and no other."""

from __future__ import annotations

import asyncio
import logging

import pytest

from signed_bus._replay.recovery import Epochs
from signed_bus.bench import runner
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.prefixes import BENCH_PREFIX, bench_prefix, quiet_new_bench_prefixes
from signed_bus.bench.results import PartResult


def _warn_new(prefix: str) -> None:
    # The guard's own warning, as a guard that found no state under ``prefix`` logs it.
    Epochs(prefix=prefix, cluster=False, layout=None, on_state_loss="quarantine")._warn_no_state()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "signed_bus.replay"]


def test_a_bench_prefix_starts_without_the_new_prefix_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="signed_bus.replay")
    prefix = bench_prefix()
    assert prefix.startswith(BENCH_PREFIX) and prefix != bench_prefix()
    with quiet_new_bench_prefixes():
        _warn_new(prefix)
    assert _warnings(caplog) == []


def test_other_prefixes_and_other_records_still_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="signed_bus.replay")
    with quiet_new_bench_prefixes():
        _warn_new("orders")
        logging.getLogger("signed_bus.replay").warning("prefix %r: other news", bench_prefix())
    _warn_new(bench_prefix())  # outside the bench's parts: warned as for any guard
    found = _warnings(caplog)
    assert len(found) == 3
    assert "'orders'" in found[0] and "started as a new prefix" in found[0]
    assert "other news" in found[1]
    assert BENCH_PREFIX in found[2] and "started as a new prefix" in found[2]


def test_the_bench_runs_each_part_with_the_warning_dropped(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="signed_bus.replay")

    def part(config: BenchConfig) -> PartResult:
        _warn_new(bench_prefix())
        return PartResult(name="consume", title="consume")

    monkeypatch.setattr(runner, "_part_function", lambda name: part)
    result = asyncio.run(runner._run_part("consume", BenchConfig()))
    assert result.error is None
    assert _warnings(caplog) == []


def test_every_bench_guard_takes_its_prefix_from_bench_prefix() -> None:
    # A prefix spelt by hand ("sb-obs-...") missed the filter above and printed one warning per
    # guard: every replay guard the bench builds names bench_prefix() (or a name bound to it).
    import ast
    import pathlib

    import signed_bus.bench

    root = pathlib.Path(signed_bus.bench.__file__).parent
    guards = 0
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if not name.endswith("ReplayGuard"):
                continue
            guards += 1
            for keyword in node.keywords:
                if keyword.arg == "prefix":
                    value = keyword.value
                    assert not isinstance(value, ast.JoinedStr | ast.Constant), (
                        f"{path.name}:{node.lineno}: a prefix spelt by hand; use bench_prefix()"
                    )
    assert guards >= 5
