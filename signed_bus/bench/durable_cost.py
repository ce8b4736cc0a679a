"""Extra part ``durable``: what durable claims cost (``durable_replicas=1``: WAIT 1 pipelined
with the claim script, still one round trip per batch on a single node).

Two private redis-servers on loopback (:mod:`signed_bus.bench.redis_server`), the second a
replica of the first. The same claims (batches of :data:`~signed_bus.bench.redis_cost.BATCH`,
a stream at ``config.rate``/s) go through a guard without and with durable claims, alternating
rounds, once through the async guard (the aiokafka and FastStream fronts) and once through the
sync guard (the confluent-kafka front, in a worker thread as that front runs it); the table
gives claims per second and the p50/p99 time of one batch's claim per guard, and the details
how many WAITs were sent and how many came back short of the replica.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import redis.asyncio as aioredis

from signed_bus._replay import Claim, RedisReplayGuard
from signed_bus._replay.sync_guard import SyncRedisReplayGuard
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.redis_cost import BATCH, batches, make_claims
from signed_bus.bench.redis_server import private_redis
from signed_bus.bench.results import PartResult, Row

__all__ = ["measure_durable"]

_ROUNDS = 3


async def _replica_of(replica_url: str, master_url: str) -> None:
    client = aioredis.Redis.from_url(replica_url)
    try:
        port = int(master_url.rsplit(":", 1)[1].split("/")[0])
        await client.replicaof("127.0.0.1", port)
        deadline = time.monotonic() + 30
        while (await client.info("replication")).get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica never synced")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


#: The guards measured: (name in the table and the details, front it serves).
GUARDS = (("async", "aiokafka"), ("sync", "confluent-kafka"))


async def _claim_async(
    url: str, prefix: str, replicas: int, config: BenchConfig, claims: list[Claim]
) -> tuple[float, list[float], int, int]:
    guard = RedisReplayGuard.from_url(url, prefix=prefix, durable_replicas=replicas)
    times: list[float] = []
    async with guard:
        started = time.perf_counter()
        for batch in batches(claims, BATCH):
            began = time.perf_counter()
            await guard.claim(batch, freshness=config.freshness)
            times.append(time.perf_counter() - began)
        seconds = time.perf_counter() - started
    durable = guard.durable
    return seconds, times, durable.waits if durable else 0, durable.short if durable else 0


def _claim_sync(
    url: str, prefix: str, replicas: int, config: BenchConfig, claims: list[Claim]
) -> tuple[float, list[float], int, int]:
    guard = SyncRedisReplayGuard.from_url(url, prefix=prefix, durable_replicas=replicas)
    times: list[float] = []
    with guard:
        started = time.perf_counter()
        for batch in batches(claims, BATCH):
            began = time.perf_counter()
            guard.claim(batch, freshness=config.freshness)
            times.append(time.perf_counter() - began)
        seconds = time.perf_counter() - started
    durable = guard.durable
    return seconds, times, durable.waits if durable else 0, durable.short if durable else 0


async def _run(
    url: str, prefix: str, replicas: int, config: BenchConfig, kind: str
) -> dict[str, Any]:
    claims = make_claims(config.nonces, rate=config.rate, start_ms=int(time.time() * 1000))
    if kind == "async":
        seconds, times, waits, short = await _claim_async(url, prefix, replicas, config, claims)
    else:
        seconds, times, waits, short = await asyncio.to_thread(
            _claim_sync, url, prefix, replicas, config, claims
        )
    ordered = sorted(times)
    return {
        "claims_per_s": len(claims) / seconds,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "waits": waits,
        "short": short,
    }


async def measure_durable(config: BenchConfig) -> PartResult:
    result = PartResult("durable", "Durable claims: WAIT 1 pipelined with the claim")
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {kind: {0: [], 1: []} for kind, _ in GUARDS}
    async with private_redis() as master, private_redis() as replica:
        await _replica_of(replica, master)
        for round_ in range(_ROUNDS):
            for kind, _ in GUARDS:
                for replicas in (0, 1):
                    prefix = f"bench-durable-{kind}-{round_}-{replicas}"
                    runs[kind][replicas].append(await _run(master, prefix, replicas, config, kind))

    def median(values: list[dict[str, Any]], name: str) -> float:
        return float(statistics.median(v[name] for v in values))

    for kind, front in GUARDS:
        plain, durable = runs[kind][0], runs[kind][1]
        label = f"{kind} guard ({front})"
        result.rows += [
            Row("durable", f"claims per second, {label}", "claims/s",
                median(plain, "claims_per_s"), median(durable, "claims_per_s"),
                baseline_label="no WAIT"),
            Row("durable", f"claim of a {BATCH}-record batch, p50, {label}", "ms",
                median(plain, "p50_ms"), median(durable, "p50_ms"), baseline_label="no WAIT",
                better="lower"),
            Row("durable", f"claim of a {BATCH}-record batch, p99, {label}", "ms",
                median(plain, "p99_ms"), median(durable, "p99_ms"), baseline_label="no WAIT",
                better="lower"),
        ]  # fmt: skip
    result.details = {
        "rounds": _ROUNDS,
        "claims_per_run": config.nonces,
        "waits": {kind: sum(run["waits"] for run in runs[kind][1]) for kind, _ in GUARDS},
        "waits_short": {kind: sum(run["short"] for run in runs[kind][1]) for kind, _ in GUARDS},
        "runs": runs,
    }
    return result
