"""Part 4: what the replay guard costs in Redis: round trips per batch and bytes per nonce.

- Round trips: INFO commandstats before and after every ``RedisReplayGuard.claim`` of a batch
  (on a server nobody else uses); the delta of commands, less our own INFO, is what the batch
  cost. commandstats counts commands, so a pipeline of N commands would show as N: the figure is
  an upper bound on network round trips and equals it for one script call per batch.
- Bytes per nonce: ``used_memory`` growth over ``config.nonces`` claims (at least 100,000 for a
  figure worth quoting), divided by the count. ``MEMORY USAGE`` of one key would undercount: it
  leaves out the keyspace and expiry dict entries and their bucket arrays, which this includes.
- The naive layout (one string key per nonce, TTL, text position; ``SET NX GET PX``) is measured
  the same way in the same run, on the same server, as the baseline.
- Sizing: bytes per nonce x rate x retention (max_age + 2 * future_skew).

Claims mimic a steady stream at ``config.rate``: created_at advances 1/rate s per claim and the
newest claim is "now", so a time-bucketed layout spreads them over its buckets as in production.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from signed_bus.bench.config import BenchConfig
from signed_bus.bench.redis_server import private_redis_url
from signed_bus.bench.results import PartResult, Row, Target
from signed_bus.replay import Claim, ClaimVerdict, RedisReplayGuard

__all__ = [
    "BATCH",
    "NaiveNonceStore",
    "command_counts",
    "make_claims",
    "measure_redis",
    "used_memory",
]

#: Claims per batch: a typical getmany() batch of a busy partition set.
BATCH = 500
ISSUER = "bench-agent"
TOPIC = "bench.results"
PARTITIONS = 6
#: Commands a client sends on connect or we send to observe; never part of a claim's cost.
_NOT_CLAIM_COMMANDS = frozenset({"info", "hello", "auth", "select", "ping", "slowlog", "config"})


def make_claims(count: int, *, rate: int, max_age_ms: int, first_offset: int = 0) -> list[Claim]:
    """``count`` fresh claims as a stream at ``rate``/s would produce them, newest = now."""
    now = time.time_ns() // 1_000_000
    span_ms = min(count * 1_000 // max(rate, 1), max_age_ms // 2)
    start = now - span_ms
    return [
        Claim(
            issuer=ISSUER,
            nonce=secrets.token_bytes(16),
            created_at=start + index * span_ms // max(count, 1),
            topic=TOPIC,
            partition=(first_offset + index) % PARTITIONS,
            offset=first_offset + index,
        )
        for index in range(count)
    ]


def _batches(claims: Sequence[Claim], size: int) -> list[Sequence[Claim]]:
    return [claims[index : index + size] for index in range(0, len(claims), size)]


async def used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def command_counts(client: aioredis.Redis) -> dict[str, int]:
    """Calls per command from INFO commandstats (``cmdstat_evalsha`` -> ``evalsha``)."""
    stats: dict[str, Any] = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(fields["calls"])
        for name, fields in stats.items()
        if isinstance(fields, dict)
    }


def _claim_commands(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {}
    for name, calls in after.items():
        base = name.split("|", 1)[0]
        if base in _NOT_CLAIM_COMMANDS or name.startswith("client"):
            continue
        if calls - before.get(name, 0):
            delta[name] = calls - before.get(name, 0)
    return delta


class NaiveNonceStore:
    """The baseline layout: one string key per nonce, a TTL, the position as text.

    ``SET key position NX GET PX ttl`` claims and returns any earlier position in one command.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str, retention_ms: int) -> None:
        self._client = client
        self._prefix = prefix
        self._retention_ms = retention_ms

    def _args(self, claim: Claim, now_ms: int) -> tuple[str, str, int]:
        key = f"{self._prefix}:n:{claim.issuer}:{claim.nonce.hex()}"
        position = f"{claim.topic}:{claim.partition}:{claim.offset}"
        ttl = max(1, claim.created_at + self._retention_ms - now_ms)
        return key, position, ttl

    async def claim_pipelined(self, claims: Sequence[Claim]) -> list[bytes | None]:
        now_ms = time.time_ns() // 1_000_000
        async with self._client.pipeline(transaction=False) as pipe:
            for claim in claims:
                key, position, ttl = self._args(claim, now_ms)
                pipe.set(key, position, nx=True, get=True, px=ttl)
            replies: list[bytes | None] = await pipe.execute()
        return replies

    async def claim_per_record(self, claims: Sequence[Claim]) -> list[object]:
        now_ms = time.time_ns() // 1_000_000
        replies: list[object] = []
        for claim in claims:
            key, position, ttl = self._args(claim, now_ms)
            replies.append(await self._client.set(key, position, nx=True, get=True, px=ttl))
        return replies


class CommandCounter:
    """Counts the commands clients send to a private server, split from those run in scripts.

    INFO commandstats counts every command the server executed, including the ones a Lua script
    calls, so its delta alone would bill a one-call batch for every HSETNX inside the script.
    The slow log (threshold 0 on a server we own) records each command with its client's
    address, ``?:0`` for script-internal calls, so it tells the two apart. Our own observer
    connection (INFO, SLOWLOG) is excluded by its client name.
    """

    NAME = "signed-bus-bench-observer"

    def __init__(self, url: str) -> None:
        self._client = aioredis.Redis.from_url(url, client_name=self.NAME)

    async def start(self) -> None:
        await self._client.config_set("slowlog-log-slower-than", 0)
        await self._client.config_set("slowlog-max-len", 1_000_000)

    async def close(self) -> None:
        await self._client.aclose()

    async def reset(self) -> dict[str, int]:
        await self._client.slowlog_reset()
        return await command_counts(self._client)

    async def since(self, before: dict[str, int]) -> dict[str, Any]:
        """Client-sent commands by name, and the commandstats delta, since ``reset``."""
        entries = await self._client.slowlog_get(-1)
        after = await command_counts(self._client)
        sent: dict[str, int] = {}
        in_scripts = 0
        for entry in entries:
            if entry["client_name"] == self.NAME.encode():
                continue
            if entry["client_address"] == b"?:0":
                in_scripts += 1
                continue
            name = bytes(entry["command"]).split(b" ", 1)[0].decode().lower()
            sent[name] = sent.get(name, 0) + 1
        return {
            "sent": sent,
            "in_scripts": in_scripts,
            "commandstats": _claim_commands(before, after),
        }


async def _round_trips(
    counter: CommandCounter, guard: RedisReplayGuard, config: BenchConfig, batches: int
) -> dict[str, Any]:
    """Commands sent per claim() call over ``batches`` new batches plus mixed-verdict ones."""
    fresh = make_claims(BATCH * (batches + 1), rate=config.rate, max_age_ms=config.max_age_ms)
    await guard.claim(fresh[:BATCH])  # warm-up: connection handshake, layout check, script load
    plan: list[Sequence[Claim]] = _batches(fresh[BATCH:], BATCH)
    # A redelivered batch (same positions) and a replayed one (same nonces, other offsets).
    plan.append(fresh[BATCH : 2 * BATCH])
    plan.append([_moved(claim) for claim in fresh[BATCH : 2 * BATCH]])
    per_batch: list[int] = []
    sent_by_name: dict[str, int] = {}
    executed_by_name: dict[str, int] = {}
    verdicts: list[list[ClaimVerdict]] = []
    for batch in plan:
        before = await counter.reset()
        verdicts.append(await guard.claim(batch))
        seen = await counter.since(before)
        per_batch.append(sum(seen["sent"].values()))
        for name, calls in seen["sent"].items():
            sent_by_name[name] = sent_by_name.get(name, 0) + calls
        for name, calls in seen["commandstats"].items():
            executed_by_name[name] = executed_by_name.get(name, 0) + calls
    return {
        "batches": len(plan),
        "batch_size": BATCH,
        "commands_sent_per_batch": per_batch,
        "commands_sent_by_name": sent_by_name,
        "commandstats_delta_by_name": executed_by_name,
        "verdicts_ok": (
            all(v is ClaimVerdict.NEW for batch in verdicts[:-2] for v in batch)
            and all(v is ClaimVerdict.SAME_POSITION for v in verdicts[-2])
            and all(v is ClaimVerdict.REPLAY for v in verdicts[-1])
        ),
    }


def _moved(claim: Claim) -> Claim:
    return Claim(
        issuer=claim.issuer,
        nonce=claim.nonce,
        created_at=claim.created_at,
        topic=claim.topic,
        partition=claim.partition,
        offset=claim.offset + 1_000_000,
    )


async def _naive_round_trips(counter: CommandCounter, store: NaiveNonceStore, rate: int) -> int:
    claims = make_claims(BATCH + 1, rate=rate, max_age_ms=600_000)
    await store.claim_per_record(claims[:1])  # connection handshake
    before = await counter.reset()
    await store.claim_per_record(claims[1:])
    seen = await counter.since(before)
    return sum(seen["sent"].values())


async def _memory(
    client: aioredis.Redis,
    claim_batch: Callable[[Sequence[Claim]], Awaitable[object]],
    claims: Sequence[Claim],
) -> tuple[float, float]:
    """(bytes per nonce, microseconds per nonce) for claiming ``claims`` via ``claim_batch``.

    The first batch is a warm-up left out of both figures: it grows the connection's buffers
    and (for the guard) loads the script, none of which scales with the number of nonces.
    """
    batches = _batches(claims, BATCH)
    await claim_batch(batches[0])
    counted = len(claims) - len(batches[0])
    before = await used_memory(client)
    elapsed_ns = 0
    for batch in batches[1:]:
        start = time.perf_counter_ns()
        await claim_batch(batch)
        elapsed_ns += time.perf_counter_ns() - start
    grown = await used_memory(client) - before
    return grown / max(counted, 1), elapsed_ns / max(counted, 1) / 1_000


async def _clear(client: aioredis.Redis, prefix: str, private: bool) -> None:
    if private:
        await client.flushall()
        return
    async for key in client.scan_iter(match=f"{prefix}*", count=1_000):
        await client.unlink(key)


async def measure_redis(config: BenchConfig) -> PartResult:
    part = PartResult(name="redis", title="4. Redis cost of the replay guard")
    async with private_redis_url(config.redis_url, enabled=config.private_redis) as (url, private):
        # A server of our own holds nothing else: the production prefix, FLUSHALL between runs.
        prefix = "signed-bus" if private else f"sb-bench-{uuid.uuid4().hex[:8]}"
        client = aioredis.Redis.from_url(url)
        counter = CommandCounter(url)
        try:
            server = await client.info("server")
            guard = RedisReplayGuard(
                client,
                max_age_ms=config.max_age_ms,
                future_skew_ms=config.future_skew_ms,
                prefix=prefix,
            )
            naive = NaiveNonceStore(client, prefix=prefix, retention_ms=config.retention_ms)
            trips: dict[str, Any] = {}
            naive_trips: int | None = None
            if private:  # the slow log and commandstats are server-wide: only on our own
                await counter.start()
                trips = await _round_trips(counter, guard, config, batches=20)
                naive_trips = await _naive_round_trips(counter, naive, config.rate)
                await counter.reset()
                await client.config_set("slowlog-log-slower-than", 10_000)
            await _clear(client, prefix, private)
            claims = make_claims(
                config.nonces + BATCH, rate=config.rate, max_age_ms=config.max_age_ms
            )
            guard_bytes, guard_us = await _memory(client, guard.claim, claims)
            await _clear(client, prefix, private)
            naive_bytes, naive_us = await _memory(client, naive.claim_pipelined, claims)
            await _clear(client, prefix, private)
        finally:
            await counter.close()
            await client.aclose()

    per_batch: list[int] = trips.get("commands_sent_per_batch", [])
    trips_value = float(max(per_batch)) if per_batch else None
    live_nonces = config.rate * config.retention_ms // 1_000
    sizing = f"{config.rate:,} msg/s x {config.retention_ms / 1_000:g} s"
    naive_label = "naive key/nonce"
    part.rows = [
        Row(
            "redis",
            "commands sent per batch",
            "commands",
            None if naive_trips is None else float(naive_trips),
            trips_value,
            "naive, 1 cmd/record",
            "lower",
        ),
        Row("redis", "memory per nonce", "bytes", naive_bytes, guard_bytes, naive_label, "lower"),
        Row(
            "redis",
            f"memory at {sizing}",
            "MiB",
            naive_bytes * live_nonces / 2**20,
            guard_bytes * live_nonces / 2**20,
            naive_label,
            "lower",
        ),
        Row("redis", "claim time per nonce", "us", naive_us, guard_us, "naive, pipelined", "lower"),
    ]
    if not private:
        part.rows[0].note = "no private redis-server: round trips not measured"
    if config.nonces < 100_000:
        part.rows[1].note = f"only {config.nonces:,} claims: indicative, quote runs of >= 100,000"
    part.targets = [
        Target("Redis round trips per consumed batch (guard claim, max)", trips_value, "==", 1.0),
        Target("Redis memory per nonce", guard_bytes, "<=", 120.0, " B"),
    ]
    part.details = {
        "server": "private redis-server" if private else url,
        "redis_version": server.get("redis_version"),
        "nonces": config.nonces,
        "batch_size": BATCH,
        "guard_layout": guard.layout,
        "round_trips": trips,
        "round_trips_per_batch": trips_value,
        "naive_round_trips_per_batch": naive_trips,
        "bytes_per_nonce": {"guard": guard_bytes, "naive": naive_bytes},
        "us_per_nonce": {"guard": guard_us, "naive_pipelined": naive_us},
        "sizing": {
            "rate_per_s": config.rate,
            "retention_ms": config.retention_ms,
            "live_nonces": live_nonces,
            "guard_bytes": guard_bytes * live_nonces,
            "naive_bytes": naive_bytes * live_nonces,
        },
    }
    return part
