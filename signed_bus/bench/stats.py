"""Small statistics helpers (no numpy: the library must import without the bench extra)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Loop", "percentile", "summarize_latencies", "time_per_op_us"]


@dataclass(frozen=True)
class Loop:
    """A case that runs its own loop over all its inputs, as a caller's loop calls the API:
    no wrapper function call per item (which would add its own frame to the figure)."""

    run: Callable[[Sequence[Any]], object]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def summarize_latencies(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean of a latency sample, in milliseconds."""
    if not latencies_ms:
        nan = math.nan
        return {"count": 0, "p50": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    return {
        "count": float(len(latencies_ms)),
        "p50": percentile(latencies_ms, 50),
        "p90": percentile(latencies_ms, 90),
        "p99": percentile(latencies_ms, 99),
        "max": float(max(latencies_ms)),
        "mean": statistics.fmean(latencies_ms),
    }


def time_per_op_us(
    cases: Mapping[str, tuple[Callable[[Any], object] | Loop, Sequence[Any]]], *, repeats: int
) -> dict[str, float]:
    """Microseconds per call of each case's function over its inputs: the best of ``repeats``.

    Rounds of the different cases are interleaved so that background load on a shared machine
    hits every contender alike; the minimum over rounds is the figure least disturbed by that
    load (the same choice as :mod:`timeit`). A :class:`Loop` case is one call over all its
    inputs.
    """
    best = dict.fromkeys(cases, math.inf)
    for _ in range(repeats):
        for name, (function, inputs) in cases.items():
            start = time.perf_counter_ns()
            if isinstance(function, Loop):
                function.run(inputs)
            else:
                for item in inputs:
                    function(item)
            elapsed = time.perf_counter_ns() - start
            best[name] = min(best[name], elapsed / max(len(inputs), 1) / 1_000)
    return best
