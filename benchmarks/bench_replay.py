"""Replay guard benchmark: Redis bytes per nonce, time per nonce and round trips per batch.

Runs against a redis-server of its own (started on a free loopback port in a temp dir and
stopped at the end), so used_memory and INFO commandstats see nothing but this run. Measures, in
the same run:

(a) bytes per nonce = growth of INFO used_memory over N claims (N >= 100,000), for
    - the baseline: one string key per nonce, text position, ``SET key pos NX GET PX ttl``;
    - the guard's layout (time-bucketed, sharded hashes; 16-byte field, 8-byte position) at
      several stream rates, and the same layout with one hash per bucket (``shards=1``);
(b) microseconds per nonce, batches of --batch claims: the guard's one-script claim, a redis-py
    pipeline of the baseline ``SET NX GET`` per record, and one awaited command per record;
(c) round trips per batch (client writes, counted on the connection) and script calls per batch
    (server INFO commandstats).

    .venv/bin/python benchmarks/bench_replay.py             # about a minute
    .venv/bin/python benchmarks/bench_replay.py --claims 200000 --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from signed_bus.replay import (
    Claim,
    ClaimVerdict,
    RedisReplayGuard,
    estimate_memory_bytes,
    nonce_field,
    recommended_shards,
)

TARGET_BYTES_PER_NONCE = 120
MAX_AGE_MS, SKEW_MS = 300_000, 5_000
TOPIC, PARTITIONS = "bench.results", 6


class CountingConnection(Connection):
    """Counts client writes: each is one request flight, i.e. one round trip when awaited."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


# --- a private redis-server -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def private_redis(listpack_entries: int) -> AsyncIterator[str]:
    server = shutil.which("redis-server")
    if not server:
        sys.exit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as directory:
        args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", directory,
                "--hash-max-listpack-entries", str(listpack_entries)]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            server, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = aioredis.Redis.from_url(url)
            for _ in range(200):
                with contextlib.suppress(Exception):
                    await client.ping()
                    break
                await asyncio.sleep(0.05)
            await client.aclose()
            yield url
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


# --- workloads ------------------------------------------------------------------------------


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
    def verdict(previous: bytes | None, position: str) -> ClaimVerdict:
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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def memory_per_nonce(
    client: aioredis.Redis,
    claim_batch: Callable[[Sequence[Claim]], Awaitable[list[ClaimVerdict]]],
    claims: Sequence[Claim],
    batch: int,
) -> float:
    await client.flushdb()
    await claim_batch(claims[:1])  # warm-up: connection, layout record, script
    before = await used_memory(client)
    for part in batches(claims[1:], batch):
        verdicts = await claim_batch(part)
        assert all(v is ClaimVerdict.NEW for v in verdicts)
    after = await used_memory(client)
    return (after - before) / (len(claims) - 1)


async def encodings(client: aioredis.Redis, prefix: str) -> tuple[int, float, dict[str, int]]:
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
    claim_batch: Callable[[Sequence[Claim]], Awaitable[list[ClaimVerdict]]],
    claims: Sequence[Claim],
    batch: int,
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
    """(script calls, microseconds the server spent in them) so far."""
    stats = await client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        calls += int(stats.get(name, {}).get("calls", 0))
        usec += int(stats.get(name, {}).get("usec", 0))
    return calls, usec


# --- the run --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    async with private_redis(args.listpack_entries) as url:
        pool = aioredis.ConnectionPool.from_url(url, connection_class=CountingConnection)
        client = aioredis.Redis(connection_pool=pool)
        observer = aioredis.Redis.from_url(url)
        try:
            info = await observer.info("server")
            config = await observer.config_get("hash-max-listpack-entries")
            entries = next(iter(config.values()), "?")
            print(
                f"Redis {info['redis_version']} (private server, {url}), "
                f"hash-max-listpack-entries={_text(entries)}; "
                f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs"
            )
            print(
                f"claims per memory figure: {args.claims:,}; batch: {args.batch}; "
                f"max_age {MAX_AGE_MS} ms, skew {SKEW_MS} ms\n"
            )
            start_ms = time.time_ns() // 1_000_000 - MAX_AGE_MS // 2

            def guard(prefix: str, **options: Any) -> RedisReplayGuard:
                return RedisReplayGuard(
                    client, max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS, prefix=prefix,
                    **options,
                )  # fmt: skip

            # (a) bytes per nonce
            print("(a) Redis used_memory growth per nonce")
            base = Baseline(client, "base", MAX_AGE_MS + 2 * SKEW_MS)
            claims = make_claims(args.claims + 1, rate=args.rate, start_ms=start_ms)
            baseline_bytes = await memory_per_nonce(client, base.claim_pipelined, claims, 500)
            print(
                f"  {'baseline: string key per nonce, text position':62s} "
                f"{baseline_bytes:7.1f} B/nonce"
            )
            ours: float | None = None
            for rate in args.rates:
                for shards in sorted({16, 1, recommended_shards(rate)}, reverse=True):
                    g = guard(f"g{rate}s{shards}", shards=shards)
                    claims = make_claims(args.claims + 1, rate=rate, start_ms=start_ms)
                    per_nonce = await memory_per_nonce(client, g.claim, claims, args.batch)
                    keys, fill, kinds = await encodings(client, g.prefix)
                    label = f"guard layout, {rate:>6,}/s, shards={shards}"
                    if shards == recommended_shards(rate):
                        label += " (recommended)"
                    if shards == 16 and rate == args.rate:
                        label += ", the default"
                        ours = per_nonce
                    detail = f"{keys:,} hashes, {fill:.0f} nonces each, {kinds}"
                    print(f"  {label:62s} {per_nonce:7.1f} B/nonce   {detail}")
            assert ours is not None
            print(f"  ratio default/baseline: {ours / baseline_bytes:.2f}")
            retention = guard("sizing").retention_ms
            need = estimate_memory_bytes(args.rate, retention_ms=retention, bytes_per_nonce=ours)
            print(
                f"  sizing: {args.rate:,}/s x {retention / 1000:.0f} s retention x "
                f"{ours:.1f} B = {need / 2**20:.1f} MiB"
            )

            # (b) + (c) time per nonce and round trips per batch
            print(f"\n(b, c) time per nonce and round trips, batches of {args.batch}")
            await client.flushdb()
            g = guard("speed")
            await g.start()
            base = Baseline(client, "speed-base", MAX_AGE_MS + 2 * SKEW_MS)
            claims = make_claims(args.speed_claims, rate=args.rate, start_ms=start_ms)
            calls_before, usec_before = await script_stats(observer)
            lua_us, lua_trips = await time_per_nonce(g.claim, claims, args.batch)
            calls_after, usec_after = await script_stats(observer)
            scripts = (calls_after - calls_before) / len(batches(claims, args.batch))
            server_us = (usec_after - usec_before) / len(claims)
            again_us, _ = await time_per_nonce(g.claim, claims, args.batch)  # all SAME_POSITION
            claims = make_claims(args.speed_claims, rate=args.rate, start_ms=start_ms)
            pipe_us, pipe_trips = await time_per_nonce(base.claim_pipelined, claims, args.batch)
            few = make_claims(args.per_record_claims, rate=args.rate, start_ms=start_ms)
            rec_us, rec_trips = await time_per_nonce(base.claim_per_record, few, args.batch)
            print(f"  {'method':44s} {'us/nonce':>9s} {'round trips/batch':>18s}")
            print(
                f"  {'Lua script, whole batch (guard.claim)':44s} {lua_us:9.2f} "
                f"{lua_trips:18.2f}   script calls/batch: {scripts:.2f}"
            )
            print(f"  {'  of which Redis ran the script':44s} {server_us:9.2f}")
            print(f"  {'  the same batches again (SAME_POSITION)':44s} {again_us:9.2f}")
            print(f"  {'redis-py pipeline, SET NX GET per record':44s} {pipe_us:9.2f} "
                  f"{pipe_trips:18.2f}")  # fmt: skip
            print(f"  {'one awaited SET NX GET per record':44s} {rec_us:9.2f} {rec_trips:18.2f}")

            verdict = "PASS" if ours <= TARGET_BYTES_PER_NONCE else "MISS"
            trips_ok = "PASS" if lua_trips == 1.0 and scripts == 1.0 else "MISS"
            print(
                f"\n{verdict}: {ours:.1f} B/nonce (default layout at {args.rate:,}/s) "
                f"<= {TARGET_BYTES_PER_NONCE} B/nonce target; baseline {baseline_bytes:.1f}"
            )
            print(
                f"{trips_ok}: {lua_trips:.2f} round trips and {scripts:.2f} script calls per batch"
            )
            return 0 if verdict == "PASS" and trips_ok == "PASS" else 1
        finally:
            await client.aclose()
            await observer.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=100_000, help="claims per memory figure")
    parser.add_argument("--rate", type=int, default=1_000, help="stream rate (distinct/s)")
    parser.add_argument(
        "--rates", type=int, nargs="+", default=[100, 1_000, 10_000],
        help="rates to show the layout at",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--speed-claims", type=int, default=50_000)
    parser.add_argument("--per-record-claims", type=int, default=10_000)
    parser.add_argument(
        "--listpack-entries", type=int, default=128,
        help="hash-max-listpack-entries of the private server (128: stock redis.conf)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.claims < 100_000:
        print("note: fewer than 100,000 claims: the memory figures are indicative only")
    if args.rate not in args.rates:
        args.rates = sorted({*args.rates, args.rate})
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
