"""Part 4: what the replay guard costs in Redis: round trips per batch and bytes per nonce.

Everything runs on a private redis-server (:mod:`signed_bus.bench.redis_server`), so used_memory
and INFO commandstats see nothing but this run.

- Round trips per batch: client writes counted on the guard's connection
  (:class:`CountingConnection`; a write is one request flight, one round trip when awaited),
  cross-checked with the script calls in INFO commandstats (``evalsha`` + ``eval``; commandstats
  also counts every command a script runs, so only the script entries are read from it).
- Bytes per nonce: ``used_memory`` growth over ``config.nonces`` claims (>= 100,000 for a figure
  worth quoting) divided by the count. ``MEMORY USAGE`` of one key would undercount: it leaves
  out the keyspace and expiry dict entries and their bucket arrays, which this includes.
- Baseline, same run, same server: one string key per nonce with a TTL and the position as
  text, ``SET key position NX GET PX ttl`` (:class:`Baseline`).
- Sizing: bytes per nonce x rate x the guard's retention (max_age + max_lag + 2 x skew + a bucket).

The measuring primitives here are shared with ``benchmarks/bench_replay.py``, the replay
guard's own, more detailed benchmark (several rates and shard counts, listpack encodings).
Claims mimic a stream at ``rate``/s: created_at advances 1/rate s per claim, so the guard's
time buckets fill as in production.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from signed_bus._freshness import Freshness
from signed_bus._replay import Claim, ClaimVerdict, RedisReplayGuard, nonce_field
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.redis_server import private_redis
from signed_bus.bench.results import PartResult, Row, Target

__all__ = [
    "BATCH",
    "Baseline",
    "CountingConnection",
    "batches",
    "counting_client",
    "encodings",
    "make_claims",
    "measure_redis",
    "memory_per_nonce",
    "script_stats",
    "time_per_nonce",
    "used_memory",
]

#: Claims per batch: what one ``getmany(max_records=500)`` hands the guard.
BATCH = 500
TOPIC, PARTITIONS = "bench.results", 6
ClaimBatch = Callable[[Sequence[Claim]], Awaitable[list[ClaimVerdict]]]


class CountingConnection(Connection):
    """Counts client writes: each is one request flight, i.e. one round trip when awaited."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


def counting_client(url: str) -> aioredis.Redis:
    """A client whose connections count their writes in :attr:`CountingConnection.sends`."""
    pool = aioredis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    return aioredis.Redis(connection_pool=pool)


def make_claims(count: int, *, rate: float, start_ms: int, first_offset: int = 0) -> list[Claim]:
    """A stream at ``rate``/s: created_at advances 1/rate s per claim, offsets per partition."""
    return [
        Claim(
            issuer="bench-agent",
            nonce=os.urandom(16),
            created_at=start_ms + int(i * 1000 / rate),
            topic=TOPIC,
            partition=i % PARTITIONS,
            offset=first_offset + i // PARTITIONS,
        )
        for i in range(count)
    ]


def batches(claims: Sequence[Claim], size: int) -> list[Sequence[Claim]]:
    return [claims[i : i + size] for i in range(0, len(claims), size)]


class Baseline:
    """The naive layout: one string key per nonce, the position as text, SET NX GET PX."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_ms: int) -> None:
        self.client, self.prefix, self.ttl_ms = client, prefix, ttl_ms

    def args(self, c: Claim) -> tuple[bytes, str]:
        key = f"{self.prefix}:n:".encode() + nonce_field(c.issuer, c.nonce).hex().encode()
        return key, f"{c.topic}:{c.partition}:{c.offset}"

    @staticmethod
    def verdict(previous: object, position: str) -> ClaimVerdict:
        if previous is None:
            return ClaimVerdict.NEW
        if previous == position.encode():
            return ClaimVerdict.SAME_POSITION
        return ClaimVerdict.REPLAY

    async def claim_pipelined(self, claims: Sequence[Claim]) -> list[ClaimVerdict]:
        pipe = self.client.pipeline(transaction=False)
        positions = []
        for c in claims:
            key, position = self.args(c)
            positions.append(position)
            pipe.set(key, position, nx=True, get=True, px=self.ttl_ms)
        replies = await pipe.execute()
        return [self.verdict(r, p) for r, p in zip(replies, positions, strict=True)]

    async def claim_per_record(self, claims: Sequence[Claim]) -> list[ClaimVerdict]:
        out = []
        for c in claims:
            key, position = self.args(c)
            previous = await self.client.set(key, position, nx=True, get=True, px=self.ttl_ms)
            out.append(self.verdict(previous if isinstance(previous, bytes) else None, position))
        return out


async def used_memory(client: aioredis.Redis) -> int:
    # Let clientsCron shrink the query buffer a big script call left behind.
    await asyncio.sleep(1.2)
    return int((await client.info("memory"))["used_memory"])


async def memory_per_nonce(
    client: aioredis.Redis, claim_batch: ClaimBatch, claims: Sequence[Claim], batch: int
) -> float:
    """used_memory growth per claim over ``claims[1:]`` (FLUSHDB first: private servers only)."""
    await client.flushdb()
    await claim_batch(claims[:1])  # warm-up: connection, layout record, script
    before = await used_memory(client)
    for part in batches(claims[1:], batch):
        verdicts = await claim_batch(part)
        if not all(v is ClaimVerdict.NEW for v in verdicts):
            raise AssertionError("fresh nonces were not all claimed as NEW")
    after = await used_memory(client)
    return (after - before) / (len(claims) - 1)


async def encodings(client: aioredis.Redis, prefix: str) -> tuple[int, float, dict[str, int]]:
    """(hashes under ``prefix``, mean entries per hash, count per Redis encoding)."""
    keys = [k async for k in client.scan_iter(match=f"{prefix}:n:*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.object("encoding", k)
        pipe.hlen(k)
    replies = await pipe.execute()
    kinds: dict[str, int] = {}
    for kind in replies[0::2]:
        name = kind.decode() if isinstance(kind, bytes) else str(kind)
        kinds[name] = kinds.get(name, 0) + 1
    sizes = replies[1::2]
    return len(keys), sum(sizes) / max(len(sizes), 1), kinds


async def time_per_nonce(
    claim_batch: ClaimBatch, claims: Sequence[Claim], batch: int
) -> tuple[float, float]:
    """(microseconds per nonce, client round trips per batch)."""
    parts = batches(claims, batch)
    sends = CountingConnection.sends
    started = time.perf_counter()
    for part in parts:
        await claim_batch(part)
    elapsed = time.perf_counter() - started
    return elapsed / len(claims) * 1e6, (CountingConnection.sends - sends) / len(parts)


async def script_stats(client: aioredis.Redis) -> tuple[int, int]:
    """(script calls, microseconds the server spent in them) so far, from INFO commandstats."""
    stats = await client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        calls += int(stats.get(name, {}).get("calls", 0))
        usec += int(stats.get(name, {}).get("usec", 0))
    return calls, usec


def claiming(guard: RedisReplayGuard, config: BenchConfig) -> ClaimBatch:
    """The guard's claim with the benchmark's window, as the consumer calls it."""

    async def claim(claims: Sequence[Claim]) -> list[ClaimVerdict]:
        return await guard.claim(claims, freshness=config.freshness)

    return claim


async def _round_trips(
    client: aioredis.Redis,
    observer: aioredis.Redis,
    guard: RedisReplayGuard,
    rate: int,
    freshness: Freshness,
) -> dict[str, Any]:
    """Round trips per claim() call, per batch, for new, redelivered and replayed batches."""
    start_ms = time.time_ns() // 1_000_000 - 60_000
    fresh = make_claims(BATCH * 20, rate=rate, start_ms=start_ms)
    moved = [
        Claim(c.issuer, c.nonce, c.created_at, c.topic, c.partition, c.offset + 10**6)
        for c in fresh[:BATCH]
    ]
    await guard.start()  # the layout record and the script load happen once, not per batch
    plan = [*batches(fresh, BATCH), fresh[:BATCH], moved]
    per_batch: list[int] = []
    verdicts: list[list[ClaimVerdict]] = []
    calls_before, _ = await script_stats(observer)
    for batch in plan:
        sends = CountingConnection.sends
        verdicts.append(await guard.claim(batch, freshness=freshness))
        per_batch.append(CountingConnection.sends - sends)
    calls_after, _ = await script_stats(observer)
    await client.flushdb()
    return {
        "batches": len(plan),
        "batch_size": BATCH,
        "round_trips_per_batch": per_batch,
        "script_calls_per_batch": (calls_after - calls_before) / len(plan),
        "verdicts_ok": (
            all(v is ClaimVerdict.NEW for batch in verdicts[:-2] for v in batch)
            and all(v is ClaimVerdict.SAME_POSITION for v in verdicts[-2])
            and all(v is ClaimVerdict.REPLAY for v in verdicts[-1])
        ),
    }


async def measure_redis(config: BenchConfig) -> PartResult:
    part = PartResult(name="redis", title="4. Redis cost of the replay guard")
    async with private_redis() as url:
        client = counting_client(url)
        observer = aioredis.Redis.from_url(url)
        try:
            server = await observer.info("server")

            def guard(prefix: str) -> RedisReplayGuard:
                return RedisReplayGuard(client, prefix=prefix)

            trips = await _round_trips(
                client, observer, guard("trips"), config.rate, config.freshness
            )
            # the window the guard keeps each nonce for: the sizing below and the naive keys' TTL
            retention = guard("sizing").retention_ms(config.freshness)
            naive = Baseline(client, "base", retention)
            start_ms = time.time_ns() // 1_000_000 - config.freshness.max_age_ms // 2
            claims = make_claims(config.nonces + 1, rate=config.rate, start_ms=start_ms)
            naive_bytes = await memory_per_nonce(client, naive.claim_pipelined, claims, BATCH)
            ours = guard("signed-bus")
            claims = make_claims(config.nonces + 1, rate=config.rate, start_ms=start_ms)
            guard_bytes = await memory_per_nonce(client, claiming(ours, config), claims, BATCH)
            hashes, fill, kinds = await encodings(client, ours.prefix)
            await client.flushdb()
            speed = make_claims(min(config.nonces, 50_000), rate=config.rate, start_ms=start_ms)
            guard_us, _ = await time_per_nonce(claiming(guard("speed"), config), speed, BATCH)
            speed = make_claims(len(speed), rate=config.rate, start_ms=start_ms)
            naive_us, naive_trips = await time_per_nonce(naive.claim_pipelined, speed, BATCH)
            few = make_claims(BATCH * 4, rate=config.rate, start_ms=start_ms)
            _, per_record_trips = await time_per_nonce(naive.claim_per_record, few, BATCH)
            await client.flushdb()
        finally:
            await client.aclose()
            await observer.aclose()

    per_batch: list[int] = trips["round_trips_per_batch"]
    trips_value = float(max(per_batch))
    live = config.rate * retention // 1_000
    sizing = f"{config.rate:,} msg/s x {retention / 1_000:g} s"
    label = "naive key/nonce"
    part.rows = [
        Row(
            "redis",
            "round trips per batch",
            "trips",
            per_record_trips,
            trips_value,
            "naive, 1 cmd/record",
            "lower",
        ),
        Row("redis", "memory per nonce", "bytes", naive_bytes, guard_bytes, label, "lower"),
        Row(
            "redis",
            f"memory at {sizing}",
            "MiB",
            naive_bytes * live / 2**20,
            guard_bytes * live / 2**20,
            label,
            "lower",
        ),
        Row("redis", "claim time per nonce", "us", naive_us, guard_us, "naive, pipelined", "lower"),
    ]
    if config.nonces < 100_000:
        part.rows[1].note = f"only {config.nonces:,} claims: indicative, quote >= 100,000"
    if not trips["verdicts_ok"]:
        part.rows[0].note = "the guard returned unexpected verdicts: investigate"
    part.targets = [
        Target("Redis round trips per batch (guard claim, worst batch)", trips_value, "==", 1.0),
        Target("Redis memory per nonce", guard_bytes, "<=", 120.0, " B"),
    ]
    part.details = {
        "server": "private redis-server",
        "redis_version": server.get("redis_version"),
        "nonces": config.nonces,
        "batch_size": BATCH,
        "guard_layout": ours.layout,
        "guard_hashes": {"count": hashes, "mean_entries": fill, "encodings": kinds},
        "round_trips": trips,
        "round_trips_per_batch": trips_value,
        "naive_round_trips_per_batch": {"per_record": per_record_trips, "pipelined": naive_trips},
        "bytes_per_nonce": {"guard": guard_bytes, "naive": naive_bytes},
        "us_per_nonce": {"guard": guard_us, "naive_pipelined": naive_us},
        "sizing": {
            "rate_per_s": config.rate,
            "retention_ms": retention,
            "live_nonces": live,
            "guard_bytes": guard_bytes * live,
            "naive_bytes": naive_bytes * live,
        },
    }
    return part
