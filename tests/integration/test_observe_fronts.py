"""The confluent-kafka front and the FastStream middleware report through the same observer
hooks as the aiokafka front, on a real broker and Redis: a confluent consumer's Prometheus
counters are its own counts, one trace crosses an aiokafka producer, a FastStream planner, a
confluent relay and a confluent consumer, and a rejected record's span names its reason on
both fronts."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from signed_bus import ClaimVerdict, Outgoing, Output, ProducerOptions, otel, prometheus
from signed_bus import SignedProducer as AioProducer
from signed_bus._gate import ConsumedMessage
from signed_bus.confluent import Relay, SignedProducer, SyncRedisReplayGuard, VerifyingConsumer
from signed_bus.errors import REASONS
from signed_bus.faststream import SignedBus
from tests.conftest import TopicFactory
from tests.integration.bus import end_offsets, guard, keyring, read_all, signer, unique, verifier
from tests.integration.fronts import CONFLUENT, Spec, confluent_config
from tests.integration.fs_apps import FLAVOURS, broker, subscriber_options, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROMPTS = 3
_TRACEPARENT = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        provider.shutdown()


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.instrumentation_scope is not None and s.instrumentation_scope.name == "signed_bus"
    ]


class _ListSetter(Setter[list[tuple[str, bytes]]]):
    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode()))


class Threaded:
    """A confluent consumer's ``run`` or a relay's ``run`` in a plain thread."""

    def __init__(self, run: Callable[[], None], stop: Callable[[], None]) -> None:
        self._run, self._stop = run, stop
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop)
        await asyncio.to_thread(self._thread.join, 30)
        if self.error is not None:
            raise self.error


async def test_a_confluent_consumer_and_producer_count_what_their_own_counters_count(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("observed-sync", partitions=2)
    dead = await unique_topic("observed-sync-dlq")
    ring = keyring()
    sign = signer(ring)
    copied = sign.sign({"n": "copied"}, topic=topic)
    flipped = bytearray(sign.sign({"n": "flipped"}, topic=topic))
    flipped[-1] ^= 1
    group = unique("observed-sync")
    registry = CollectorRegistry()
    prometheus.instrument_all(registry=registry)  # every front built from now on
    try:
        with SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=sign) as producer:
            items = [Outgoing({"n": n}, key=b"k%d" % n) for n in range(5)]
            await asyncio.to_thread(producer.produce_batch, topic, items)
        raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await raw.start()
        try:
            for value in (copied, copied, bytes(flipped), b"\x93garbage"):
                await raw.send_and_wait(topic, value, partition=0)
        finally:
            await raw.stop()
        spec = Spec(
            kafka_bootstrap,
            [topic],
            redis_url,
            redis_prefix,
            verifier(ring),
            group=group,
            dead_letter_topic=dead,
        )
        async with CONFLUENT.consume(spec) as running:
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    finally:
        prometheus.uninstrument_all(registry=registry)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    counted = running.metrics
    at = {"topic": topic, "group": group}
    assert counted.records == 9 and counted.delivered == 6
    assert sample("signed_bus_sent_total", topic=topic) == producer.metrics.signed == 5
    assert sample("signed_bus_records_total", **at) == counted.records
    assert sample("signed_bus_delivered_total", **at) == counted.delivered
    assert sample("signed_bus_dead_letters_total", **at) == counted.dead_lettered == 3
    assert sample("signed_bus_dead_letters_dropped_total", **at) == 0
    for reason in REASONS:
        got = sample("signed_bus_rejected_total", reason=reason, **at)
        assert got == counted.rejected.get(reason, 0), reason
    assert {r: n for r, n in counted.rejected.items() if n} == {
        "replay": 1,
        "bad_signature": 1,
        "malformed": 1,
    }
    verdicts = {
        v.value: sample("signed_bus_claims_total", verdict=v.value, **at) for v in ClaimVerdict
    }
    assert verdicts == {"new": 6, "same_position": 0, "replay": 1, "quarantined": 0}
    assert sample("signed_bus_record_age_seconds_count", **at) == counted.delivered
    assert (sample("signed_bus_verify_duration_seconds_count", group=group) or 0) >= 1
    assert (sample("signed_bus_claim_duration_seconds_count", group=group) or 0) >= 1


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_one_trace_crosses_aiokafka_faststream_and_confluent_hops(
    flavour: str,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    """inference (aiokafka send) -> planner (FastStream) -> executor (confluent relay) ->
    action (confluent consumer), one trace per prompt."""
    provider, exporter = spans
    results = await unique_topic("fs-results")
    plans = await unique_topic("fs-plans")
    actions = await unique_topic("fs-actions")
    ring = keyring()
    run = uuid.uuid4().hex[:8]
    claims = guard(redis_url, redis_prefix)
    planner_bus = SignedBus(signer=signer(ring), verifier=verifier(ring), guard=claims)
    otel.instrument(planner_bus, tracer_provider=provider)
    planner = broker(flavour, kafka_bootstrap, planner_bus)

    @planner.subscriber(results, **subscriber_options(flavour, f"planner-{run}"))
    @planner.publisher(plans)
    async def plan(item: dict[str, Any]) -> dict[str, Any]:
        return {"plan": item["prompt"]}

    sync_guard = SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix)
    relay_in = VerifyingConsumer(
        confluent_config(kafka_bootstrap, f"executor-{run}", **{"auto.offset.reset": "earliest"}),
        [plans],
        verifier=verifier(ring),
        guard=sync_guard,
    )
    relay_out = SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring))

    def execute(message: ConsumedMessage) -> Iterable[Output]:
        assert isinstance(message.payload, dict)
        return [Output({"do": message.payload["plan"]})]

    relay = Relay(relay_in, relay_out, execute, output_topic=actions)
    otel.instrument(relay, tracer_provider=provider)
    action_group = f"action-{run}"
    action = VerifyingConsumer(
        confluent_config(kafka_bootstrap, action_group, **{"auto.offset.reset": "earliest"}),
        [actions],
        verifier=verifier(ring),
        guard=sync_guard,
    )
    otel.instrument(action, tracer_provider=provider)
    done: list[ConsumedMessage] = []
    relay_in.start()
    action.start()
    relaying = Threaded(relay.run, relay.stop)
    acting = Threaded(lambda: action.run(done.append), action.stop)
    try:
        async with AioProducer(
            ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
        ) as inference:
            otel.instrument(inference, tracer_provider=provider)
            for prompt in range(PROMPTS):  # one send (one trace) per prompt
                await inference.send_and_wait(results, {"prompt": prompt})
        await planner.start()
        try:
            await wait_for(lambda: len(done) == PROMPTS, "the actions", within=90)
        finally:
            await planner.stop()
    finally:
        await relaying.stop()
        await acting.stop()
        relay_in.stop()
        relay_out.stop()
        sync_guard.stop()
        await claims.stop()
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in ours(exporter):
        by_trace.setdefault(span.context.trace_id, []).append(span)
    hops = [
        f"send {results}",
        f"process {results}",
        f"send {plans}",
        f"process {plans}",
        f"send {actions}",
        f"process {actions}",
    ]
    assert len(by_trace) == PROMPTS
    for trace_spans in by_trace.values():
        by_name = {s.name: s for s in trace_spans}
        assert sorted(by_name) == sorted(hops) and len(trace_spans) == len(hops)
        for parent, child in itertools.pairwise(hops):
            up = by_name[child].parent
            assert up is not None and up.span_id == by_name[parent].context.span_id, child
        kinds = [by_name[name].kind for name in hops]
        assert kinds == [SpanKind.PRODUCER, SpanKind.CONSUMER] * 3
        attributes = dict(by_name[f"process {actions}"].attributes or {})
        assert attributes["messaging.consumer.group.name"] == action_group
        assert attributes["signed_bus.claim"] == "new"
        assert attributes["signed_bus.verification.result"] == "verified"
        planned = dict(by_name[f"process {results}"].attributes or {})
        assert (
            planned["signed_bus.issuer"] == "agent-a"
            and len(str(planned["signed_bus.digest"])) == 64
        )
        # the relay's output send links to its input's producer context
        link = by_name[f"send {actions}"].links[0]
        assert link.context.span_id == by_name[f"send {plans}"].context.span_id


async def test_a_rejected_record_names_its_reason_on_the_confluent_and_faststream_fronts(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    provider, exporter = spans
    topic = await unique_topic("fs-flipped")
    ring = keyring()
    value = bytearray(signer(ring).sign({"x": 1}, topic=topic))
    value[-1] ^= 0x01
    with provider.get_tracer("test").start_as_current_span("attacker") as attacker:
        headers: list[tuple[str, bytes]] = []
        propagate.inject(headers, setter=_ListSetter())
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()
    try:
        await raw.send_and_wait(topic, bytes(value), headers=headers)
    finally:
        await raw.stop()
    # the confluent consumer
    sync_guard = SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix)
    consumer = VerifyingConsumer(
        confluent_config(kafka_bootstrap, unique("g"), **{"auto.offset.reset": "earliest"}),
        [topic],
        verifier=verifier(ring),
        guard=sync_guard,
    )
    otel.instrument(consumer, tracer_provider=provider)
    consumer.start()
    running = Threaded(lambda: consumer.run(lambda m: None), consumer.stop)
    # the FastStream subscriber
    claims = guard(redis_url, redis_prefix)
    bus = SignedBus(verifier=verifier(ring), guard=claims)
    otel.instrument(bus, tracer_provider=provider)
    app = broker("kafka", kafka_bootstrap, bus)

    @app.subscriber(topic, **subscriber_options("kafka", unique("g")))
    async def handle(item: dict[str, Any]) -> None:
        raise AssertionError("a forged record reached the handler")

    try:
        await app.start()
        try:
            await wait_for(
                lambda: (
                    consumer.metrics.rejected.get("bad_signature", 0) == 1
                    and bus.metrics.rejected.get("bad_signature", 0) == 1
                ),
                "both rejections",
            )
        finally:
            await app.stop()
    finally:
        await running.stop()
        sync_guard.stop()
        await claims.stop()
    rejected = [s for s in ours(exporter) if s.name == f"process {topic}"]
    assert len(rejected) == 2  # one per front
    for span in rejected:
        assert span.status.status_code is StatusCode.ERROR
        attributes = dict(span.attributes or {})
        assert attributes["error.type"] == "bad_signature"
        assert attributes["signed_bus.verification.result"] == "rejected"
        assert span.parent is not None
        assert span.parent.span_id == attacker.get_span_context().span_id


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_batches_of_both_fronts_carry_one_traceparent_per_record(
    flavour: str,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    kafka_bootstrap: str,
    unique_topic: TopicFactory,
) -> None:
    provider, exporter = spans
    topic = await unique_topic("batches", partitions=2)
    ring = keyring()
    stale = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
    with SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)) as producer:
        otel.instrument(producer, tracer_provider=provider)
        items = [Outgoing({"n": n}, key=b"k%d" % n) for n in range(3)]
        items.append(Outgoing({"n": 3}, headers=[("traceparent", stale), ("app", b"y")]))
        await asyncio.to_thread(producer.produce_batch, topic, items)
    bus = SignedBus(signer=signer(ring))
    otel.instrument(bus, tracer_provider=provider)
    app = broker(flavour, kafka_bootstrap, bus)
    await app.start()
    try:
        await app.publish_batch({"n": 4}, {"n": 5}, topic=topic, headers={"traceparent": "x"})
    finally:
        await app.stop()
    sends = {
        s.context.trace_id: s
        for s in ours(exporter)
        if s.name == f"send {topic}" and s.kind is SpanKind.PRODUCER
    }
    assert len(sends) == 2  # one span per batch call
    assert {(s.attributes or {}).get("messaging.batch.message_count") for s in sends.values()} == {
        4,
        2,
    }
    records = await read_all(kafka_bootstrap, topic, 6)
    by_trace: dict[int, int] = {}
    for record in records:
        (parent,) = [value for name, value in record.headers if name == "traceparent"]
        assert _TRACEPARENT.fullmatch(parent), parent  # the stale and the bogus one replaced
        trace_id = int(parent.split(b"-")[1], 16)
        by_trace[trace_id] = by_trace.get(trace_id, 0) + 1
    assert {trace_id: count for trace_id, count in by_trace.items()} == {
        trace_id: (s.attributes or {})["messaging.batch.message_count"]
        for trace_id, s in sends.items()
    }


async def test_a_confluent_loop_body_runs_inside_its_records_process_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    provider, exporter = spans
    topic = await unique_topic("sync-loop")
    ring = keyring()
    async with AioProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
    ) as producer:
        otel.instrument(producer, tracer_provider=provider)
        await producer.send_batch(topic, [Outgoing({"n": n}) for n in range(3)])

    def loop() -> dict[int, int]:
        current: dict[int, int] = {}  # offset -> the span current in the loop body
        with SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as sync_guard:
            config = confluent_config(kafka_bootstrap, **{"auto.offset.reset": "earliest"})
            consumer = VerifyingConsumer(config, [topic], verifier=verifier(ring), guard=sync_guard)
            otel.instrument(consumer, tracer_provider=provider)
            consumer.start()
            try:
                for message in consumer:
                    current[message.offset] = trace.get_current_span().get_span_context().span_id
                    if len(current) == 3:
                        break
            finally:
                consumer.stop()
        return current

    current = await asyncio.to_thread(loop)
    (send,) = (s for s in ours(exporter) if s.name == f"send {topic}")
    processed = {
        int(str((s.attributes or {})["messaging.kafka.offset"])): s
        for s in ours(exporter)
        if s.name == f"process {topic}"
    }
    # each body ran in its record's span, ended when the next record was asked for; the
    # body that broke out of the loop leaves its span open
    assert sorted(processed) == [0, 1]
    for offset, span in processed.items():
        assert current[offset] == span.context.span_id
        assert span.parent is not None and span.parent.span_id == send.context.span_id
