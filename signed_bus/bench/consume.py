"""Part 2: consume throughput, raw ``getmany`` vs ``VerifyingConsumer`` with the replay guard.

The same results are produced once per variant: plain msgpack for the raw consumer, HS256 and
EdDSA envelopes for the verifying ones. Each round then reads every topic from the beginning
with a new consumer group (the replay guard gets a new key prefix too, so every claim is a new
nonce, as in steady state). Both sides use consumers built from the same ``ConsumerOptions``,
commit once per batch without waiting (as ``VerifyingConsumer`` does) and end with the decoded
result in hand. Timing starts once the group has assigned the partition.

The guard uses a private redis-server unless ``private_redis`` is off (other clients of a shared
server would share its CPU). One extra, untimed HS256 pass counts the guard's Redis round trips
per consumed batch (client writes on its connection, script calls from INFO commandstats).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from signed_bus._kafka.consumer import VerifyingConsumer
from signed_bus._kafka.producer import SignedProducer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import ED25519_KID, HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import (
    bench_topics,
    consumer_options,
    start_consumer,
    start_producer,
    wait_assigned,
)
from signed_bus.bench.paths import bench_paths, built_on, on_path_of
from signed_bus.bench.payloads import inference_results
from signed_bus.bench.prefixes import bench_prefix
from signed_bus.bench.profiling import profiled
from signed_bus.bench.redis_cost import CountingConnection, counting_client, script_stats
from signed_bus.bench.redis_server import private_redis_url
from signed_bus.bench.results import PartResult, Row, Target

__all__ = ["measure_consume"]

#: Signed variants are "<alg>-<path>": each algorithm verified on the native and the pure path.
_SIGNED = tuple(f"{alg}-{path}" for alg in ("hs256", "eddsa") for path in bench_paths())
_VARIANTS = ("raw", *_SIGNED)

MAX_RECORDS = 500
_COUNTING_PASS_RECORDS = 5_000


async def _fill(
    producer: AIOKafkaProducer, keyring: Keyring, topics: dict[str, str], results: list[Any]
) -> None:
    packb = msgpack.packb
    futures = [await producer.send(topics["raw"], packb(result)) for result in results]
    for variant in _SIGNED:
        kid = HMAC_KID if variant.startswith("hs256") else ED25519_KID
        signed = SignedProducer(
            producer, signer=Signer(keyring, kid=kid, issuer=ISSUER, model=MODEL)
        )
        futures += [await signed.send(topics[variant], result) for result in results]
    await asyncio.gather(*futures)


async def _raw_rate(config: BenchConfig, topic: str, count: int) -> dict[str, float]:
    consumer = await start_consumer(consumer_options(config, topic))
    unpackb = msgpack.unpackb
    try:
        start = time.perf_counter()
        seen = 0
        batches = 0
        commit: asyncio.Task[Any] | None = None
        while seen < count:
            records = await consumer.getmany(timeout_ms=1_000, max_records=MAX_RECORDS)
            if not records:
                continue
            batches += 1
            offsets = {}
            for tp, batch in records.items():
                for record in batch:
                    unpackb(record.value)
                seen += len(batch)
                offsets[tp] = batch[-1].offset + 1
            if commit is not None:
                await commit
            commit = asyncio.create_task(consumer.commit(offsets))
        if commit is not None:
            await commit
        elapsed = time.perf_counter() - start
    finally:
        await consumer.stop()
    return {"rate": seen / elapsed, "batches": float(batches), "records": float(seen)}


async def _verified_rate(
    config: BenchConfig,
    topic: str,
    count: int,
    verifier: Verifier,
    guard: RedisReplayGuard,
) -> dict[str, float]:
    verifying = VerifyingConsumer.from_options(
        consumer_options(config, topic), verifier=verifier, guard=guard, max_records=MAX_RECORDS
    )
    try:
        await verifying.start()
        await wait_assigned(verifying.consumer)
        start = time.perf_counter()
        seen = 0
        async for message in verifying:
            message.payload  # noqa: B018 - decode the result, as the raw consumer does
            seen += 1
            if seen >= count:
                break
        elapsed = time.perf_counter() - start
        metrics = verifying.metrics
    finally:
        await verifying.stop()
    return {
        "rate": seen / elapsed,
        "batches": float(metrics.batches),
        "records": float(seen),
        "rejected": float(metrics.rejected_total),
    }


async def measure_consume(config: BenchConfig) -> PartResult:
    async with bench_topics(config, _VARIANTS) as topics:
        return await _measure(config, topics)


async def _measure(config: BenchConfig, topics: dict[str, str]) -> PartResult:
    part = PartResult(name="consume", title="2. consume throughput (getmany batches)")
    count = config.messages
    results = inference_results(count, size=config.payload_bytes)
    keyring = bench_keyring()
    verifiers = {}
    for path in bench_paths():
        with built_on(path):
            verifiers[path] = Verifier(keyring, freshness=config.freshness)
    verifier = verifiers[bench_paths()[0]]
    producer = await start_producer(config)
    try:
        await _fill(producer, keyring, topics, results)
    finally:
        await producer.stop()

    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in _VARIANTS}
    counting: dict[str, Any] = {}
    async with private_redis_url(config.redis_url, enabled=config.private_redis) as (url, private):
        client = aioredis.Redis.from_url(url)
        try:

            def new_guard() -> RedisReplayGuard:
                return RedisReplayGuard(
                    client,
                    prefix=bench_prefix(),
                )

            for _ in range(config.repeats):
                runs["raw"].append(await _raw_rate(config, topics["raw"], count))
                for variant in _SIGNED:
                    path = variant.split("-", 1)[1]
                    with on_path_of(variant):
                        runs[variant].append(
                            await _verified_rate(
                                config, topics[variant], count, verifiers[path], new_guard()
                            )
                        )
            counting = await _count_round_trips(config, url, topics[_SIGNED[0]], verifier, private)
        finally:
            await client.aclose()

    best = {variant: max(run["rate"] for run in values) for variant, values in runs.items()}
    unit = "msg/s"
    part.rows = [
        Row(
            "consume",
            f"{variant.split('-')[0].replace('hs256', 'HS256').replace('eddsa', 'EdDSA')} "
            f"verified + guard, {variant.split('-', 1)[1]}",
            unit,
            best["raw"],
            best[variant],
            "raw aiokafka",
        )
        for variant in _SIGNED
    ]
    rejected = sum(run.get("rejected", 0.0) for values in runs.values() for run in values)
    if rejected:
        part.rows[0].note = f"{rejected:.0f} records rejected during timed runs: investigate"
    per_batch = counting.get("round_trips_per_batch")
    part.targets = [
        Target(
            f"HMAC verified consume with replay guard vs raw ({bench_paths()[0]})",
            part.rows[0].ratio,
            ">=",
            0.75,
            "x",
        ),
        Target(
            f"EdDSA verified consume with replay guard vs raw ({bench_paths()[0]})",
            part.rows[len(bench_paths())].ratio,
            ">=",
            0.30,
            "x",
        ),
        Target("Redis round trips per consumed batch (VerifyingConsumer)", per_batch, "==", 1.0),
    ]
    part.details = {
        "messages": count,
        "max_records": MAX_RECORDS,
        "rounds": runs,
        "best_msg_per_s": best,
        "estimator": "best of interleaved rounds",
        "guard_redis": "private redis-server" if private else url,
        "counting_pass": counting,
        "topics": topics,
    }
    return part


async def _count_round_trips(
    config: BenchConfig, url: str, topic: str, verifier: Verifier, private: bool
) -> dict[str, Any]:
    """Untimed: Redis round trips per consumed batch while a VerifyingConsumer reads ``topic``.

    The guard gets a client whose connection counts its writes; INFO commandstats gives the
    script calls as a cross-check (private server only: commandstats is server-wide). With
    ``config.profile`` this is the pass that gets profiled.
    """
    client = counting_client(url)
    observer = aioredis.Redis.from_url(url)
    try:
        guard = RedisReplayGuard(
            client,
            prefix=bench_prefix(),
        )
        await guard.start()  # layout check and script load happen once, not per batch
        calls_before, _ = await script_stats(observer)
        sends = CountingConnection.sends
        async with profiled(config, "consume-hs256") as profiles:
            run = await _verified_rate(
                config, topic, min(config.messages, _COUNTING_PASS_RECORDS), verifier, guard
            )
        round_trips = CountingConnection.sends - sends
        calls_after, _ = await script_stats(observer)
    finally:
        await client.aclose()
        await observer.aclose()
    batches = int(run["batches"])
    return {
        "records": int(run["records"]),
        "batches": batches,
        "round_trips": round_trips,
        "profiles": [str(path) for path in profiles],
        "round_trips_per_batch": round_trips / batches if batches else None,
        "script_calls_per_batch": (
            (calls_after - calls_before) / batches if batches and private else None
        ),
    }
