"""Part 7: confluent-kafka (librdkafka), raw against signed, in the same run.

Each signed variant runs on both envelope paths (native and pure Python, :mod:`.paths`) against
the one raw baseline of the same run. Produce: one ``confluent_kafka.Producer`` (acks=all,
idempotence, librdkafka's default linger) serves every variant; raw ``produce`` of the
msgpack-encoded result against :class:`signed_bus.confluent.SignedProducer` (HS256) on the same
producer, each timed from the first ``produce`` to the end of ``flush``. Consume: a raw
``Consumer`` (the settings the verifying consumer enforces: no auto commit, read_committed)
decoding each value and committing each batch in the background, against
:class:`signed_bus.confluent.VerifyingConsumer` with the sync replay guard (a private
redis-server unless ``private_redis`` is off), each on a new group. Consume rates are timed
from the first record handed out to the last, counting the records after the first batch (the
group join and the first fetch are left out of both). Variants alternate for
``config.repeats`` rounds (every other round in reverse order); the best round of each counts.

librdkafka costs far less per record than aiokafka, so signing and verifying take a larger
share of each record here than in parts 1 and 2: the ratios say so, honestly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgpack
from confluent_kafka import Consumer, Producer

from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import bench_topics, unique_name
from signed_bus.bench.paths import bench_paths, built_on, on_path_of
from signed_bus.bench.payloads import inference_results
from signed_bus.bench.prefixes import bench_prefix
from signed_bus.bench.redis_server import private_redis_url
from signed_bus.bench.results import PartResult, Row, Target
from signed_bus.confluent import SignedProducer, SyncRedisReplayGuard, VerifyingConsumer
from signed_bus.confluent._records import consumer_config

__all__ = ["measure_confluent"]

#: The raw baseline, then HS256 on each envelope path ("hs256-native", "hs256-pure").
_VARIANTS = ("raw", *(f"hs256-{path}" for path in bench_paths()))
MAX_RECORDS = 500
_WARMUP = 200


def _producer_config(config: BenchConfig) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": "bench",
        "acks": "all",
        "enable.idempotence": True,
    }


def _consumer_config(config: BenchConfig) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.bootstrap_servers,
        "group.id": unique_name("group"),
        "client.id": "bench",
    }


def _produce_rate(produce: Any, flush: Any, topic: str, results: Sequence[object]) -> float:
    start = time.perf_counter()
    for result in results:
        produce(topic, result)
    if flush(60) != 0:
        raise RuntimeError("records still queued after 60 s")
    return len(results) / (time.perf_counter() - start)


def _raw_consume(config: BenchConfig, topic: str, count: int) -> float:
    consumer = Consumer(consumer_config(_consumer_config(config)))
    consumer.subscribe([topic])
    unpackb = msgpack.unpackb
    try:
        seen = 0
        first_batch = 0
        start = 0.0
        while seen < count:
            messages = consumer.consume(MAX_RECORDS, 1.0)
            if not messages:
                continue
            if not start:
                start = time.perf_counter()
                first_batch = len(messages)
            for message in messages:
                unpackb(message.value())
            seen += len(messages)
            consumer.commit(asynchronous=True)
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()
    return _after_first_batch(seen, first_batch, elapsed)


def _verified_consume(
    config: BenchConfig, topic: str, count: int, verifier: Verifier, guard: SyncRedisReplayGuard
) -> tuple[float, int]:
    consumer = VerifyingConsumer(
        _consumer_config(config),
        [topic],
        verifier=verifier,
        guard=guard,
        max_records=MAX_RECORDS,
    )
    with consumer:
        seen = 0
        first_batch = 0
        start = 0.0
        for message in consumer:
            message.payload  # noqa: B018 - decode the result, as the raw consumer does
            if not start:
                start = time.perf_counter()
                first_batch = consumer.metrics.records
            seen += 1
            if seen >= count:
                break
        elapsed = time.perf_counter() - start
        rejected = consumer.metrics.rejected_total
    return _after_first_batch(seen, first_batch, elapsed), rejected


def _after_first_batch(seen: int, first_batch: int, elapsed: float) -> float:
    """Records per second after the first batch (a run that fits in one batch, as in the
    smallest mode, counts them all: no figure worth quoting then)."""
    counted = seen - first_batch if seen > first_batch else seen
    return counted / max(elapsed, 1e-6)


def _alternating(variants: Sequence[str], round_: int) -> Sequence[str]:
    """Every other round in reverse order, so no variant always runs first or after another."""
    return variants if round_ % 2 == 0 else variants[::-1]


def _run(config: BenchConfig, topics: dict[str, str], guard_url: str) -> dict[str, Any]:
    count = config.messages
    results = inference_results(count, size=config.payload_bytes)
    warmup = inference_results(_WARMUP, size=config.payload_bytes, seed=7)
    keyring = bench_keyring()
    producer = Producer(_producer_config(config))
    packb = msgpack.packb

    def raw_produce(topic: str, result: object) -> None:
        while True:
            try:
                producer.produce(topic, packb(result))
                return
            except BufferError:
                producer.poll(0.1)

    produces: dict[str, Any] = {"raw": raw_produce}
    verifiers: dict[str, Verifier] = {}
    for path in bench_paths():
        with built_on(path):
            signer = Signer(keyring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
            verifiers[f"hs256-{path}"] = Verifier(keyring, freshness=config.freshness)
        produces[f"hs256-{path}"] = SignedProducer(producer, signer=signer).produce
    produce_rates: dict[str, list[float]] = {v: [] for v in _VARIANTS}
    for variant, produce in produces.items():
        with on_path_of(variant):
            _produce_rate(produce, producer.flush, topics[variant], warmup)
    for round_ in range(config.repeats):
        for variant in _alternating(_VARIANTS, round_):
            with on_path_of(variant):
                produce_rates[variant].append(
                    _produce_rate(produces[variant], producer.flush, topics[variant], results)
                )
    # every round wrote `count` records per topic: each consume round reads the first `count`
    consume_rates: dict[str, list[float]] = {v: [] for v in _VARIANTS}
    rejected = {variant: 0 for variant in _VARIANTS}
    for round_ in range(config.repeats):
        for variant in _alternating(_VARIANTS, round_):
            if variant == "raw":
                consume_rates["raw"].append(_raw_consume(config, topics["raw"], count))
                continue
            prefix = bench_prefix()
            with (
                on_path_of(variant),
                SyncRedisReplayGuard.from_url(guard_url, prefix=prefix) as guard,
            ):
                rate, bad = _verified_consume(
                    config, topics[variant], count, verifiers[variant], guard
                )
            consume_rates[variant].append(rate)
            rejected[variant] += bad
    return {"produce": produce_rates, "consume": consume_rates, "rejected": rejected}


async def measure_confluent(config: BenchConfig) -> PartResult:
    part = PartResult(name="confluent", title="6. confluent-kafka: raw vs signed")
    async with (
        bench_topics(config, _VARIANTS) as topics,
        private_redis_url(config.redis_url, enabled=config.private_redis) as (url, private),
    ):
        runs = await asyncio.to_thread(_run, config, topics, url)
    produce = {v: max(rates) for v, rates in runs["produce"].items()}
    consume = {v: max(rates) for v, rates in runs["consume"].items()}
    unit = "msg/s"
    part.rows = [
        Row(
            "confluent",
            f"HS256 signed produce, {path}",
            unit,
            produce["raw"],
            produce[f"hs256-{path}"],
            "raw confluent",
        )
        for path in bench_paths()
    ] + [
        Row(
            "confluent",
            f"HS256 verified + guard, {path}",
            unit,
            consume["raw"],
            consume[f"hs256-{path}"],
            "raw confluent",
        )
        for path in bench_paths()
    ]
    for row, path in zip(part.rows[len(bench_paths()) :], bench_paths(), strict=True):
        bad = runs["rejected"][f"hs256-{path}"]
        if bad:  # on the variant's own row
            row.note = f"{bad} records rejected during timed runs: investigate"
    # the targets are the default path's: native where it is installed
    by_label = {row.measurement: row for row in part.rows}
    path = bench_paths()[0]
    part.targets = [
        Target(
            f"confluent HMAC signed produce vs raw ({path})",
            by_label[f"HS256 signed produce, {path}"].ratio,
            ">=",
            0.90,
            "x",
        ),
        Target(
            f"confluent HMAC verified consume with guard vs raw ({path})",
            by_label[f"HS256 verified + guard, {path}"].ratio,
            ">=",
            0.75,
            "x",
        ),
    ]
    part.details = {
        "messages": config.messages,
        "payload_bytes": config.payload_bytes,
        "max_records": MAX_RECORDS,
        "produce_rounds_msg_per_s": runs["produce"],
        "consume_rounds_msg_per_s": runs["consume"],
        "estimator": (
            "best of interleaved rounds (every other one reversed); consume timed after the "
            "first batch"
        ),
        "producer": "one confluent_kafka.Producer for every variant: acks=all, idempotence",
        "paths": list(bench_paths()),
        "guard_redis": "private redis-server" if private else url,
        "topics": topics,
    }
    return part
