"""Part 1: produce throughput, raw ``AIOKafkaProducer.send`` vs ``SignedProducer.send``.

One aiokafka producer (signed-bus's defaults: acks=all, idempotence, linger 0) serves every
variant, so the settings and the connection are the same; the signed variants hand it to a
``SignedProducer``. Each variant sends the same results, one ``send`` per record (raw encodes
each with msgpack, signed signs it into an envelope), then waits for every acknowledgement.
Variants alternate for ``config.repeats`` rounds, every other round in reverse order (no
variant always runs first or right after the same other one), each round after a full
collection (no variant inherits another's garbage); the best round of each counts. Besides
the rate, each round's CPU time of the sending thread (aiokafka's sender runs on the same event
loop) is kept per record: it moves far less with the machine's load than the wall time does.
Two more variants send values encoded or signed before the round (the results' msgpack bytes
and their HS256 envelopes): their ratio is what the envelope's larger size alone costs.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import msgpack

from signed_bus._kafka.producer import SignedProducer
from signed_bus._signer import Signer
from signed_bus.bench.codec import ED25519_KID, HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import bench_topics, producer_options, start_producer
from signed_bus.bench.paths import bench_paths, built_on, on_path_of
from signed_bus.bench.payloads import inference_results
from signed_bus.bench.profiling import profiled
from signed_bus.bench.results import PartResult, Row, Target

__all__ = ["measure_produce"]

#: Signed variants are "<alg>-<path>": each algorithm on the native and the pure-Python path.
_VARIANTS = ("raw", *(f"{alg}-{path}" for alg in ("hs256", "eddsa") for path in bench_paths()))
#: What the envelope's size alone costs: ``send`` of values encoded or signed before the round
#: (the results' msgpack bytes against their HS256 envelopes), nothing encoded or signed in it.
_SIZE_VARIANTS = ("bytes-encoded", "bytes-sealed")

Send = Callable[[str, object], Awaitable["asyncio.Future[Any]"]]
_WARMUP = 200


async def _rate(send: Send, topic: str, results: Sequence[object]) -> tuple[float, float]:
    """Records per second from the first send to the last acknowledgement, and the sending
    thread's CPU time per record in microseconds over the same span."""
    cpu = time.thread_time()
    start = time.perf_counter()
    futures = [await send(topic, result) for result in results]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    cpu = time.thread_time() - cpu
    return len(results) / elapsed, cpu / len(results) * 1e6


class _Collections:
    """Counts the cyclic collector's runs (all generations) while ``variant`` is set."""

    def __init__(self, variants: Sequence[str]) -> None:
        self.counts = {variant: 0 for variant in variants}
        self.variant: str | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and self.variant is not None:
            self.counts[self.variant] += 1


async def measure_produce(config: BenchConfig) -> PartResult:
    async with bench_topics(config, (*_VARIANTS, *_SIZE_VARIANTS)) as topics:
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

        async def bytes_send(topic: str, value: object) -> asyncio.Future[Any]:
            future: asyncio.Future[Any] = await producer.send(topic, value)
            return future

        sends: dict[str, Send] = {"raw": raw_send}
        signers: dict[str, Signer] = {}
        for alg, kid in (("hs256", HMAC_KID), ("eddsa", ED25519_KID)):
            for path in bench_paths():
                with built_on(path):
                    signer = signers[f"{alg}-{path}"] = Signer(
                        keyring, kid=kid, issuer=ISSUER, model=MODEL
                    )
                sends[f"{alg}-{path}"] = SignedProducer(producer, signer=signer).send
        inputs: dict[str, tuple[Sequence[object], Sequence[object]]] = {
            variant: (warmup, results) for variant in sends
        }
        sealer = signers[f"hs256-{bench_paths()[0]}"]
        sealed_topic = topics["bytes-sealed"]
        for variant, encode in (
            ("bytes-encoded", packb),
            ("bytes-sealed", lambda result: sealer.sign(result, topic=sealed_topic)),
        ):
            sends[variant] = bytes_send
            inputs[variant] = ([encode(r) for r in warmup], [encode(r) for r in results])
        rates: dict[str, list[float]] = {variant: [] for variant in sends}
        cpu: dict[str, list[float]] = {variant: [] for variant in sends}
        for variant, send in sends.items():
            with on_path_of(variant):
                await _rate(send, topics[variant], inputs[variant][0])
        collections = _Collections(list(sends))
        gc.callbacks.append(collections)
        try:
            for round_ in range(config.repeats):
                order = list(sends) if round_ % 2 == 0 else list(sends)[::-1]
                for variant in order:
                    gc.collect()
                    collections.variant = variant
                    with on_path_of(variant):
                        rate, per_record = await _rate(
                            sends[variant], topics[variant], inputs[variant][1]
                        )
                    collections.variant = None
                    rates[variant].append(rate)
                    cpu[variant].append(per_record)
        finally:
            gc.callbacks.remove(collections)
        # HS256 on the default path and the raw baseline, to compare the two per record
        profiles: list[Path] = []
        for variant, name in (
            (f"hs256-{bench_paths()[0]}", "produce-hs256"),
            ("raw", "produce-raw"),
        ):
            async with profiled(config, name) as written:
                if config.profile:
                    with on_path_of(variant):
                        await _rate(sends[variant], topics[variant], results)
            profiles += written
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
    part.rows.append(
        Row(
            "produce",
            "send of pre-signed envelopes (size only)",
            unit,
            best["bytes-encoded"],
            best["bytes-sealed"],
            "pre-encoded results",
        )
    )
    least_cpu = {variant: min(values) for variant, values in cpu.items()}
    part.rows += [
        Row(
            "produce",
            f"HS256 send CPU per record, {path}",
            "us/msg",
            least_cpu["raw"],
            least_cpu[f"hs256-{path}"],
            "raw aiokafka",
            better="lower",
        )
        for path in bench_paths()
    ]
    part.rows.append(
        Row(
            "produce",
            "send CPU per record, pre-signed envelopes (size only)",
            "us/msg",
            least_cpu["bytes-encoded"],
            least_cpu["bytes-sealed"],
            "pre-encoded results",
            better="lower",
        )
    )
    # the target is the default path's: native where it is installed
    part.targets = [
        Target(
            f"HMAC signed produce vs raw ({bench_paths()[0]})", part.rows[0].ratio, ">=", 0.90, "x"
        ),
    ]
    part.details = {
        "messages": config.messages,
        "payload_bytes": config.payload_bytes,
        "value_bytes": {
            variant: len(cast(bytes, inputs[variant][1][0])) for variant in _SIZE_VARIANTS
        },
        "rounds_msg_per_s": rates,
        "best_msg_per_s": best,
        "rounds_cpu_us_per_record": cpu,
        "least_cpu_us_per_record": least_cpu,
        "gc_collections_in_timed_rounds": collections.counts,
        "estimator": (
            "best of interleaved rounds, every other one in reverse order, each after "
            "gc.collect(); CPU: the sending thread's, least of the rounds"
        ),
        "producer": (
            "one AIOKafkaProducer for all variants: acks=all, idempotence, linger_ms=0, "
            f"max_batch_size={producer_options(config).max_batch_size}"
        ),
        "topics": topics,
        "profiles": [str(path) for path in profiles],
    }
    return part
