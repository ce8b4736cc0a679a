"""Runs the selected parts in order, then writes ``bench-<time>.json`` and ``.png``.

A part that fails (a service down, a wrapper missing) is recorded with its error and the run
goes on: a partial report says more than none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from signed_bus.bench.config import EXTRA_PARTS, PARTS, BenchConfig
from signed_bus.bench.machine import describe_machine
from signed_bus.bench.prefixes import quiet_new_bench_prefixes
from signed_bus.bench.results import BenchReport, PartResult

__all__ = ["BenchOutput", "run_bench"]

PartFunction = Callable[[BenchConfig], PartResult | Awaitable[PartResult]]


#: part -> (module, function). Imported on demand: a part's dependencies (standardwebhooks,
#: the Kafka wrappers) are needed only when that part runs.
_PART_FUNCTIONS: dict[str, tuple[str, str]] = {
    "codec": ("signed_bus.bench.codec", "measure_codec"),
    "redis": ("signed_bus.bench.redis_cost", "measure_redis"),
    "produce": ("signed_bus.bench.produce", "measure_produce"),
    "consume": ("signed_bus.bench.consume", "measure_consume"),
    "latency": ("signed_bus.bench.latency", "measure_latency"),
    "observability": ("signed_bus.bench.observability", "measure_observability"),
    "confluent": ("signed_bus.bench.confluent", "measure_confluent"),
    "steady": ("signed_bus.bench.steady", "measure_steady"),
    "faststream": ("signed_bus.bench.faststream_cost", "measure_faststream"),
    "durable": ("signed_bus.bench.durable_cost", "measure_durable"),
}


def _part_function(name: str) -> PartFunction:
    try:
        module_name, function_name = _PART_FUNCTIONS[name]
    except KeyError:
        names = ", ".join(PARTS + EXTRA_PARTS)
        raise ValueError(f"unknown part {name!r}; choose from {names}") from None
    function: PartFunction = getattr(importlib.import_module(module_name), function_name)
    return function


async def _redis_server_info(url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        info: dict[str, Any] = await client.info("server")
        memory: dict[str, Any] = await client.info("memory")
        return {**info, "mem_allocator": memory.get("mem_allocator", "unknown")}
    except (aioredis.RedisError, OSError):
        return {}
    finally:
        await client.aclose()


async def _run_part(name: str, config: BenchConfig) -> PartResult:
    started = time.perf_counter()
    try:
        with quiet_new_bench_prefixes():  # each bench guard starts a fresh prefix on purpose
            outcome = _part_function(name)(config)
            result = await outcome if inspect.isawaitable(outcome) else outcome
    except Exception as exc:  # one failing part must not lose the others
        result = PartResult(name=name, title=name, error=f"{type(exc).__name__}: {exc}")
        result.details["traceback"] = traceback.format_exc()
    result.seconds = time.perf_counter() - started
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class BenchOutput:
    report: BenchReport
    json_path: Path
    png_path: Path | None


async def run_bench(
    config: BenchConfig,
    *,
    command: str = "signed-bus bench",
    progress: Callable[[str], None] | None = None,
) -> BenchOutput:
    """Run ``config.parts`` and write the results into ``config.out_dir``."""
    started = time.perf_counter()
    now = datetime.now(tz=UTC)
    report = BenchReport(
        started_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=command,
        machine=describe_machine(redis_info=await _redis_server_info(config.redis_url)),
        config={k: str(v) if isinstance(v, Path) else v for k, v in _asdict(config).items()},
    )
    for name in PARTS + EXTRA_PARTS:
        if name not in config.parts:
            continue
        if progress:
            progress(f"running {name} ...")
        result = await _run_part(name, config)
        report.parts.append(result)
        if progress:
            state = f"failed: {result.error}" if result.error else "done"
            progress(f"  {name} {state} in {result.seconds:.1f} s")
        await asyncio.sleep(0)
    report.seconds = time.perf_counter() - started
    config.out_dir.mkdir(parents=True, exist_ok=True)
    stem = config.out_dir / f"bench-{now.strftime('%Y%m%d-%H%M%S')}"
    json_path = stem.with_suffix(".json")
    report.write_json(json_path)
    png_path: Path | None = stem.with_suffix(".png")
    try:
        from signed_bus.bench.chart import write_chart

        assert png_path is not None
        write_chart(report, png_path)
    except ImportError as exc:  # matplotlib is in the bench extra
        if progress:
            progress(f"no chart: {exc} (pip install 'signed-bus[bench]')")
        png_path = None
    return BenchOutput(report=report, json_path=json_path, png_path=png_path)


def _asdict(config: BenchConfig) -> dict[str, Any]:
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
