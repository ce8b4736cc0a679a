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
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from signed_bus._freshness import Freshness
from signed_bus._replay import (
    Claim,
    ClaimVerdict,
    RedisReplayGuard,
    estimate_memory_bytes,
    recommended_shards,
)

# The measuring primitives live in the package, shared with `signed-bus bench` (part 4).
from signed_bus.bench.redis_cost import (
    Baseline,
    CountingConnection,
    batches,
    encodings,
    make_claims,
    memory_per_nonce,
    script_stats,
    time_per_nonce,
)
from signed_bus.bench.redis_server import private_redis

TARGET_BYTES_PER_NONCE = 120
WINDOW = Freshness()  # the defaults, as the verifier has them
MAX_AGE_MS, SKEW_MS = WINDOW.max_age_ms, WINDOW.future_skew_ms


def claimer(guard: RedisReplayGuard) -> Callable[[Sequence[Claim]], Awaitable[list[ClaimVerdict]]]:
    """The guard's claim with the default window, as a consumer calls it."""

    async def claim(claims: Sequence[Claim]) -> list[ClaimVerdict]:
        return await guard.claim(claims, freshness=WINDOW)

    return claim


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the run --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    async with private_redis(listpack_entries=args.listpack_entries) as url:
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
                return RedisReplayGuard(client, prefix=prefix, **options)

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
                    per_nonce = await memory_per_nonce(client, claimer(g), claims, args.batch)
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
            retention = guard("sizing").retention_ms(WINDOW)
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
            lua_us, lua_trips = await time_per_nonce(claimer(g), claims, args.batch)
            calls_after, usec_after = await script_stats(observer)
            scripts = (calls_after - calls_before) / len(batches(claims, args.batch))
            server_us = (usec_after - usec_before) / len(claims)
            again_us, _ = await time_per_nonce(claimer(g), claims, args.batch)  # all SAME_POSITION
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
