"""Part 1: produce throughput, raw ``AIOKafkaProducer.send`` vs ``SignedProducer.send``.

One aiokafka producer (signed-bus's defaults: acks=all, idempotence, linger 0) serves every
variant, so the settings and the connection are the same; the signed variants hand it to a
``SignedProducer``. Each variant sends the same results, one ``send`` per record (raw encodes
each with msgpack, signed signs it into an envelope), then waits for every acknowledgement.
Variants alternate for ``config.repeats`` rounds and the best round of each counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack

from signed_bus._kafka.producer import SignedProducer
from signed_bus._signer import Signer
from signed_bus.bench.codec import ED25519_KID, HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import bench_topics, start_producer
from signed_bus.bench.paths import bench_paths, built_on
from signed_bus.bench.payloads import inference_results
from signed_bus.bench.profiling import profiled
from signed_bus.bench.results import PartResult, Row, Target

__all__ = ["measure_produce"]

#: Signed variants are "<alg>-<path>": each algorithm on the native and the pure-Python path.
_VARIANTS = ("raw", *(f"{alg}-{path}" for alg in ("hs256", "eddsa") for path in bench_paths()))

Send = Callable[[str, object], Awaitable["asyncio.Future[Any]"]]
_WARMUP = 200


async def _rate(send: Send, topic: str, results: Sequence[object]) -> float:
    """Records per second from the first send to the last acknowledgement."""
    start = time.perf_counter()
    futures = [await send(topic, result) for result in results]
    await asyncio.gather(*futures)
    return len(results) / (time.perf_counter() - start)


async def measure_produce(config: BenchConfig) -> PartResult:
    async with bench_topics(config, _VARIANTS) as topics:
        return await _measure(config, topics)


async def _measure(config: BenchConfig, topics: dict[str, str]) -> PartResult:
    part = PartResult(name="produce", title="1. produce throughput (send per record)")
    results = inference_results(config.messages, size=config.payload_bytes)
    warmup = inference_results(_WARMUP, size=config.payload_bytes, seed=7)
    keyring = bench_keyring()
    producer = await start_producer(config)
    try:
        packb = msgpack.packb

        async def raw_send(topic: str, result: object) -> asyncio.Future[Any]:
            future: asyncio.Future[Any] = await producer.send(topic, packb(result))
            return future

        sends: dict[str, Send] = {"raw": raw_send}
        for alg, kid in (("hs256", HMAC_KID), ("eddsa", ED25519_KID)):
            for path in bench_paths():
                with built_on(path):
                    signer = Signer(keyring, kid=kid, issuer=ISSUER, model=MODEL)
                sends[f"{alg}-{path}"] = SignedProducer(producer, signer=signer).send
        rates: dict[str, list[float]] = {variant: [] for variant in sends}
        for variant, send in sends.items():
            await _rate(send, topics[variant], warmup)
        for _ in range(config.repeats):
            for variant, send in sends.items():
                rates[variant].append(await _rate(send, topics[variant], results))
        first = f"hs256-{bench_paths()[0]}"
        async with profiled(config, "produce-hs256") as profiles:
            if config.profile:
                await _rate(sends[first], topics[first], results)
    finally:
        await producer.stop()

    best = {variant: max(values) for variant, values in rates.items()}
    unit = "msg/s"
    raw = best["raw"]
    part.rows = [
        Row(
            "produce",
            f"{label} signed send, {path}",
            unit,
            raw,
            best[f"{alg}-{path}"],
            "raw aiokafka",
        )
        for alg, label in (("hs256", "HS256"), ("eddsa", "EdDSA"))
        for path in bench_paths()
    ]
    # the target is the default path's: native where it is installed
    part.targets = [
        Target(
            f"HMAC signed produce vs raw ({bench_paths()[0]})", part.rows[0].ratio, ">=", 0.90, "x"
        ),
    ]
    part.details = {
        "messages": config.messages,
        "payload_bytes": config.payload_bytes,
        "rounds_msg_per_s": rates,
        "best_msg_per_s": best,
        "estimator": "best of interleaved rounds",
        "producer": "one AIOKafkaProducer for all variants: acks=all, idempotence, linger_ms=0",
        "topics": topics,
        "profiles": [str(path) for path in profiles],
    }
    return part
