"""Part 8: a FastStream subscriber's cost per message, raw FastStream vs ``SignedBus``.

The same results are produced once per variant: plain msgpack for raw FastStream (read by a
msgpack decoder on the subscriber, FastStream's own way to read a non-JSON body), HS256
envelopes for the signed app (verified, claimed in Redis, decoded by the middleware). Each app
is a ``faststream.kafka`` broker with one subscriber in a new group, ``AckPolicy.NACK_ON_ERROR``
(the policy docs/FASTSTREAM.md prescribes), reading its topic from the beginning:

- single-message subscribers: one handler call, one claim and one offset commit per message;
- batch subscribers (``batch=True``, up to 500 records): one of each per batch.

A run is timed from its first handled message to its last, so the group join is left out for
both. The guard uses a private redis-server unless ``private_redis`` is off. Figures are msg/s;
the details give microseconds per message and the signed app's extra cost per message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from signed_bus._kafka.producer import SignedProducer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import bench_topics, start_producer, unique_name
from signed_bus.bench.payloads import inference_results
from signed_bus.bench.prefixes import bench_prefix
from signed_bus.bench.redis_server import private_redis_url
from signed_bus.bench.results import PartResult, Row

__all__ = ["measure_faststream"]

MAX_RECORDS = 500
_TIMEOUT_S = 120.0


async def _fill(
    producer: AIOKafkaProducer, keyring: Keyring, topics: dict[str, str], results: list[Any]
) -> None:
    packb = msgpack.packb
    futures = [await producer.send(topics["raw"], packb(result)) for result in results]
    signed = SignedProducer(
        producer, signer=Signer(keyring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
    )
    futures += [await signed.send(topics["signed"], result) for result in results]
    await asyncio.gather(*futures)


async def _run(
    config: BenchConfig, topic: str, count: int, *, batch: bool, bus: Any | None
) -> dict[str, float]:
    """Handle ``count`` records with one FastStream app; msg/s from first to last."""
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(
        config.bootstrap_servers, middlewares=[bus] if bus is not None else [], logger=None
    )
    seen = 0
    untimed = 0  # the first call's records: it starts the clock
    first = last = 0.0
    done = asyncio.Event()
    options: dict[str, Any] = {
        "group_id": unique_name("fs-group"),
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "isolation_level": "read_committed",  # SignedBus refuses a subscriber without it
    }
    if batch:
        options.update(batch=True, max_records=MAX_RECORDS)
    if bus is None:  # raw FastStream reads msgpack through a subscriber decoder

        async def decode_msgpack(message: Any) -> Any:
            if isinstance(message.raw_message, tuple):
                return [msgpack.unpackb(record.value) for record in message.raw_message]
            return msgpack.unpackb(message.body)

        options["decoder"] = decode_msgpack

    def count_one(handled: int) -> None:
        nonlocal seen, first, last, untimed
        if seen == 0:
            first = time.perf_counter()
            untimed = handled
        seen += handled
        last = time.perf_counter()
        if seen >= count:
            done.set()

    if batch:

        @broker.subscriber(topic, **options)
        async def on_batch(items: list[Any]) -> None:
            count_one(len(items))

    else:

        @broker.subscriber(topic, **options)
        async def on_message(item: Any) -> None:
            count_one(1)

    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), _TIMEOUT_S)
    finally:
        await broker.stop()
    if seen - untimed < 1 or last <= first:
        raise RuntimeError(f"too few records for a rate: {seen} in one handler call")
    # the first handler call starts the clock: its records are not counted in the rate
    return {"rate": (seen - untimed) / (last - first), "records": float(seen)}


async def measure_faststream(config: BenchConfig) -> PartResult:
    async with bench_topics(config, ("raw", "signed")) as topics:
        return await _measure(config, topics)


async def _measure(config: BenchConfig, topics: dict[str, str]) -> PartResult:
    from signed_bus.faststream import SignedBus

    part = PartResult(name="faststream", title="6. FastStream subscriber per message")
    # a single-message subscriber commits every message: a tenth of the throughput runs' size;
    # a batch subscriber reads at least four full batches
    counts = {
        "single": max(200, config.messages // 10),
        "batch": max(4 * MAX_RECORDS, config.messages),
    }
    count = counts["batch"]
    keyring = bench_keyring()
    verifier = Verifier(keyring, freshness=config.freshness)
    producer = await start_producer(config)
    try:
        await _fill(producer, keyring, topics, inference_results(count, size=config.payload_bytes))
    finally:
        await producer.stop()

    runs: dict[str, list[dict[str, float]]] = {}
    async with private_redis_url(config.redis_url, enabled=config.private_redis) as (url, private):
        client = aioredis.Redis.from_url(url)
        try:
            for _ in range(config.repeats):
                for mode in ("single", "batch"):
                    batch = mode == "batch"
                    wanted = counts[mode]
                    raw = await _run(config, topics["raw"], wanted, batch=batch, bus=None)
                    guard = RedisReplayGuard(client, prefix=bench_prefix())
                    bus = SignedBus(verifier=verifier, guard=guard)
                    signed = await _run(config, topics["signed"], wanted, batch=batch, bus=bus)
                    runs.setdefault(f"raw {mode}", []).append(raw)
                    runs.setdefault(f"signed {mode}", []).append(signed)
        finally:
            await client.aclose()

    best = {name: max(run["rate"] for run in values) for name, values in runs.items()}
    unit = "msg/s"
    part.rows = [
        Row(
            "faststream",
            f"HS256 {mode} subscriber",
            unit,
            best[f"raw {mode}"],
            best[f"signed {mode}"],
            "raw FastStream",
        )
        for mode in ("single", "batch")
    ]
    micros = {name: 1e6 / rate for name, rate in best.items()}
    part.details = {
        "messages": counts,
        "max_records": MAX_RECORDS,
        "rounds": runs,
        "best_msg_per_s": best,
        "us_per_message": micros,
        "signed_bus_us_per_message": {
            mode: micros[f"signed {mode}"] - micros[f"raw {mode}"] for mode in ("single", "batch")
        },
        "estimator": "best of interleaved rounds",
        "guard_redis": "private redis-server" if private else url,
        "topics": topics,
    }
    return part
