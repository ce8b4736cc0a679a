"""Part 6: what observability costs: verified consume and signed produce throughput with metrics
and tracing off and on, in the same run (docs/OBSERVABILITY.md, "Cost").

Variants, interleaved round by round so the machine's drift hits each alike:

- ``off``: no observer (the default);
- ``metrics``: :func:`signed_bus.prometheus.instrument` into a fresh registry;
- ``metrics+tracing 1%``: also :func:`signed_bus.otel.instrument` with an SDK tracer provider
  sampling 1% of the traces (parent-based, trace-id ratio: a usual production setting) into a
  batch processor whose exporter drops them;
- ``metrics+tracing``: the same, every span recorded (always-on sampling): the whole cost of
  the SDK on this side of the wire.

Consume: the same HS256 records are read from the beginning by a new group and a new replay
guard prefix each round, with ``async for`` (the process span covers the loop body), as part 2
reads them. Produce: ``send_batch`` of the same results, 500 per call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from signed_bus._kafka.consumer import VerifyingConsumer
from signed_bus._kafka.producer import Outgoing, SignedProducer
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import bench_topics, consumer_options, start_producer, wait_assigned
from signed_bus.bench.payloads import inference_results
from signed_bus.bench.redis_server import private_redis_url
from signed_bus.bench.results import PartResult, Row, Target

__all__ = ["measure_observability"]

VARIANTS = ("off", "metrics", "metrics+tracing 1%", "metrics+tracing")
MAX_RECORDS = 500
PRODUCE_CHUNK = 500

Instrument = Callable[[SignedProducer | VerifyingConsumer], Callable[[], None]]


def _instrumenter(variant: str) -> Instrument:
    """Attaches ``variant``'s observers to a front; the returned callable shuts them down."""
    if variant == "off":
        return lambda front: lambda: None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
    from prometheus_client import CollectorRegistry

    from signed_bus import otel, prometheus

    class _Dropped(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def attach(front: SignedProducer | VerifyingConsumer) -> Callable[[], None]:
        prometheus.instrument(front, registry=CollectorRegistry())
        if variant == "metrics":
            return lambda: None
        sampled = variant == "metrics+tracing 1%"
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(0.01)) if sampled else ALWAYS_ON
        )
        provider.add_span_processor(BatchSpanProcessor(_Dropped()))
        otel.instrument(front, tracer_provider=provider)
        return provider.shutdown

    return attach


async def _timed_consume(
    consumer: VerifyingConsumer, count: int, shutdown: Callable[[], None]
) -> float:
    try:
        await consumer.start()
        await wait_assigned(consumer.consumer)
        start = time.perf_counter()
        seen = 0
        async for message in consumer:
            message.payload  # noqa: B018 - decode the result, as part 2 does
            seen += 1
            if seen >= count:
                break
        elapsed = time.perf_counter() - start
    finally:
        await consumer.stop()
        shutdown()
    if consumer.metrics.rejected_total:
        raise RuntimeError(f"{consumer.metrics.rejected_total} records rejected in a timed run")
    return seen / elapsed


async def _timed_produce(producer: SignedProducer, topic: str, results: list[Any]) -> float:
    start = time.perf_counter()
    for first in range(0, len(results), PRODUCE_CHUNK):
        chunk = results[first : first + PRODUCE_CHUNK]
        await producer.send_batch(topic, [Outgoing(result) for result in chunk])
    return len(results) / (time.perf_counter() - start)


async def measure_observability(config: BenchConfig) -> PartResult:
    async with bench_topics(config, ("consume", "produce")) as topics:
        return await _measure(config, topics)


async def _measure(config: BenchConfig, topics: dict[str, str]) -> PartResult:
    part = PartResult(name="observability", title="6. observability on vs off")
    count = config.messages
    results = inference_results(count, size=config.payload_bytes)
    keyring = bench_keyring()
    signer = Signer(keyring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
    verifier = Verifier(keyring, freshness=config.freshness)
    kafka = await start_producer(config)
    consume: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    produce: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    try:
        await _timed_produce(SignedProducer(kafka, signer=signer), topics["consume"], results)
        async with private_redis_url(config.redis_url, enabled=config.private_redis) as (url, _):
            client = aioredis.Redis.from_url(url)
            try:
                for _ in range(config.repeats):
                    for variant in VARIANTS:
                        attach = _instrumenter(variant)
                        producer = SignedProducer(kafka, signer=signer)
                        shutdown = attach(producer)
                        try:
                            rate = await _timed_produce(producer, topics["produce"], results)
                        finally:
                            shutdown()
                        produce[variant].append(rate)
                        guard = RedisReplayGuard(client, prefix=f"sb-obs-{uuid.uuid4().hex[:8]}")
                        consumer = VerifyingConsumer.from_options(
                            consumer_options(config, topics["consume"]),
                            verifier=verifier,
                            guard=guard,
                            max_records=MAX_RECORDS,
                        )
                        shutdown = attach(consumer)
                        consume[variant].append(await _timed_consume(consumer, count, shutdown))
            finally:
                await client.aclose()
    finally:
        await kafka.stop()
    best_consume = {variant: max(rates) for variant, rates in consume.items()}
    best_produce = {variant: max(rates) for variant, rates in produce.items()}
    unit = "msg/s"
    part.rows = [
        Row("observability", "consume HS256 + guard, metrics", unit, best_consume["off"],
            best_consume["metrics"], "observability off"),
        Row("observability", "consume HS256 + guard, metrics + tracing 1%", unit,
            best_consume["off"], best_consume["metrics+tracing 1%"], "observability off"),
        Row("observability", "consume HS256 + guard, metrics + tracing all", unit,
            best_consume["off"], best_consume["metrics+tracing"], "observability off"),
        Row("observability", "produce send_batch HS256, metrics", unit, best_produce["off"],
            best_produce["metrics"], "observability off"),
        Row("observability", "produce send_batch HS256, metrics + tracing all", unit,
            best_produce["off"], best_produce["metrics+tracing"], "observability off"),
    ]  # fmt: skip
    part.targets = [
        Target("verified consume, metrics on vs off", part.rows[0].ratio, ">=", 0.95, "x"),
        Target(
            "verified consume, metrics + tracing 1% vs off", part.rows[1].ratio, ">=", 0.95, "x"
        ),
        Target(
            "verified consume, metrics + tracing all vs off", part.rows[2].ratio, ">=", 0.95, "x"
        ),
    ]
    part.details = {
        "messages": count,
        "max_records": MAX_RECORDS,
        "produce_chunk": PRODUCE_CHUNK,
        "consume_rounds": consume,
        "produce_rounds": produce,
        "best_consume_msg_per_s": best_consume,
        "best_produce_msg_per_s": best_produce,
        "estimator": "best of interleaved rounds",
        "tracing": "SDK TracerProvider, BatchSpanProcessor, dropping exporter; 1% or all sampled",
        "topics": topics,
    }
    return part
