"""Traces across hops on a real broker and Redis, with the SDK's in-memory exporter.

The demo's shape in one process: an inference producer, a planner relay (exactly-once, as the
demo's planner) and an action consumer. Every test runs with the official aiokafka
instrumentation off and on: one ``traceparent`` per record either way, never two.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from opentelemetry.propagators.textmap import Setter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from signed_bus import (
    ConsumedMessage,
    Keyring,
    Outgoing,
    Output,
    ProducerOptions,
    Relay,
    SignedProducer,
    Signer,
    Verifier,
    VerifyingConsumer,
    generate_hmac_key,
    otel,
)
from signed_bus._replay.guard import RedisReplayGuard
from tests.integration.bus import Running, consumer_options, end_offsets, read_all

pytestmark = pytest.mark.integration

PROMPTS = 4


@pytest.fixture(params=[False, True], ids=["plain", "aiokafka-instrumented"])
def spans(request: pytest.FixtureRequest) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider exporting to memory; the aiokafka instrumentation on or off."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = AIOKafkaInstrumentor()
    if request.param:
        instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        if request.param:
            instrumentor.uninstrument()
        provider.shutdown()


def ring() -> Keyring:
    return Keyring(
        [
            generate_hmac_key("inference-1", ["inference-agent"]),
            generate_hmac_key("planner-1", ["planner"]),
        ]
    )


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The spans signed-bus made (not the aiokafka instrumentation's)."""
    return [
        s
        for s in exporter.get_finished_spans()
        if s.instrumentation_scope is not None and s.instrumentation_scope.name == "signed_bus"
    ]


def traceparents(record: Any) -> list[bytes]:
    return [value for name, value in record.headers if name == "traceparent"]


@pytest.fixture
async def topics(unique_topic: Any) -> AsyncIterator[tuple[str, str]]:
    yield await unique_topic("results", partitions=2), await unique_topic("plans", partitions=2)


async def test_one_trace_per_prompt_across_both_hops(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    topics: tuple[str, str],
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    provider, exporter = spans
    instrumented = hasattr(AIOKafkaProducer.send, "__wrapped__")
    results, plans = topics
    keys = ring()
    run = uuid.uuid4().hex[:8]
    guard = RedisReplayGuard.from_url(redis_url, prefix=redis_prefix)
    await guard.start()
    inference = SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap),
        signer=Signer(keys, kid="inference-1", issuer="inference-agent", model="lm@1"),
    )
    otel.instrument(inference, tracer_provider=provider)
    planner_group = f"planner-{run}"
    planner_in = VerifyingConsumer.from_options(
        consumer_options(kafka_bootstrap, [results], planner_group),
        verifier=Verifier(keys),
        guard=guard,
    )
    kafka = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, transactional_id=f"t-{run}"
    )
    planner_out = SignedProducer(
        kafka, signer=Signer(keys, kid="planner-1", issuer="planner", model="rules@1")
    )

    async def plan(message: ConsumedMessage) -> Iterable[Output]:
        return [Output({"plan": message.payload}, key=message.key)]

    relay = Relay(
        planner_in,
        planner_out,
        plan,
        output_topic=plans,
        exactly_once=True,
        group_id=planner_group,
    )
    otel.instrument(relay, tracer_provider=provider)
    action_group = f"action-{run}"
    action = VerifyingConsumer.from_options(
        consumer_options(kafka_bootstrap, [plans], action_group),
        verifier=Verifier(keys),
        guard=guard,
    )
    otel.instrument(action, tracer_provider=provider)
    await kafka.start()
    await planner_in.start()
    relaying = asyncio.create_task(relay.run())
    try:
        async with inference, Running(action) as acting:
            for n in range(PROMPTS):
                await inference.send_and_wait(results, {"prompt": n}, key=f"p{n}".encode())
            deadline = time.monotonic() + 60
            while len(acting.delivered) < PROMPTS:
                assert not relaying.done(), relaying
                assert time.monotonic() < deadline, f"{len(acting.delivered)} actions"
                await asyncio.sleep(0.1)
    finally:
        await relay.stop()
        await relaying
        await planner_in.stop()
        await kafka.stop()
        await guard.stop()

    # every plan record carries exactly one traceparent, with the instrumentation or without
    for record in await read_all(kafka_bootstrap, plans, PROMPTS):
        assert len(traceparents(record)) == 1, record.headers
    for record in await read_all(kafka_bootstrap, results, PROMPTS):
        assert len(traceparents(record)) == 1, record.headers

    everything = {s.context.span_id: s for s in exporter.get_finished_spans()}
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in ours(exporter):
        by_trace.setdefault(span.context.trace_id, []).append(span)
    assert len(by_trace) == PROMPTS  # one trace per prompt
    scopes = {s.instrumentation_scope.name for s in everything.values() if s.instrumentation_scope}
    assert any("aiokafka" in name for name in scopes) == instrumented

    def ancestors(span: ReadableSpan) -> list[str]:
        names = []
        parent = span.parent
        while parent is not None and parent.span_id in everything:
            found = everything[parent.span_id]
            if found.instrumentation_scope and found.instrumentation_scope.name == "signed_bus":
                names.append(found.name)
            parent = found.parent
        return names

    for trace_spans in by_trace.values():
        names = sorted(s.name for s in trace_spans)
        assert names == sorted(
            [f"send {results}", f"process {results}", f"send {plans}", f"process {plans}"]
        ), names
        (acted,) = (s for s in trace_spans if s.name == f"process {plans}")
        # action process <- planner send <- planner process <- inference send
        assert ancestors(acted) == [f"send {plans}", f"process {results}", f"send {results}"]
        assert acted.kind is SpanKind.CONSUMER
        attributes = dict(acted.attributes or {})
        assert attributes["messaging.system"] == "kafka"
        assert attributes["messaging.destination.name"] == plans
        assert attributes["messaging.consumer.group.name"] == action_group
        assert attributes["signed_bus.issuer"] == "planner"
        assert attributes["signed_bus.kid"] == "planner-1"
        assert attributes["signed_bus.model"] == "rules@1"
        assert attributes["signed_bus.claim"] == "new"
        assert len(str(attributes["signed_bus.digest"])) == 64
        # the planner's output send links to its input's producer context
        (planned,) = (s for s in trace_spans if s.name == f"send {plans}")
        (inferred,) = (s for s in trace_spans if s.name == f"send {results}")
        assert planned.links and planned.links[0].context.trace_id == inferred.context.trace_id


async def test_bit_flipped_record_gets_a_span_with_its_reason(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    unique_topic: Any,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    provider, exporter = spans
    topic = await unique_topic("flipped")
    keys = ring()
    signer = Signer(keys, kid="inference-1", issuer="inference-agent", model="lm@1")
    value = bytearray(signer.sign({"x": 1}, topic=topic))
    value[-1] ^= 0x01  # the last byte of the signature
    tracer = provider.get_tracer("test")
    async with (
        RedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as guard,
    ):
        with tracer.start_as_current_span("attacker") as attacker:
            headers: list[tuple[str, bytes]] = []
            propagate.inject(headers, setter=_ListSetter())
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, bytes(value), headers=headers)
        finally:
            await producer.stop()
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]), verifier=Verifier(keys), guard=guard
        )
        otel.instrument(consumer, tracer_provider=provider)
        async with Running(consumer) as running:
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    assert consumer.metrics.rejected["bad_signature"] == 1
    (span,) = (s for s in ours(exporter) if s.name == f"process {topic}")
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "bad_signature"
    assert attributes["signed_bus.verification.result"] == "rejected"
    assert attributes["messaging.kafka.offset"] == 0
    assert span.parent is not None
    assert span.parent.span_id == attacker.get_span_context().span_id


class _ListSetter(Setter[list[tuple[str, bytes]]]):
    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode()))


async def test_batch_send_carries_one_traceparent_per_record(
    spans: tuple[TracerProvider, InMemorySpanExporter], unique_topic: Any, kafka_bootstrap: str
) -> None:
    provider, exporter = spans
    topic = await unique_topic("batch", partitions=2)
    signer = Signer(ring(), kid="inference-1", issuer="inference-agent", model="lm@1")
    stale = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer
    ) as producer:
        otel.instrument(producer, tracer_provider=provider)
        items = [
            Outgoing({"n": n}, key=f"k{n}".encode(), headers=[("app", b"x")] if n % 2 else None)
            for n in range(6)
        ]
        items.append(Outgoing({"n": 6}, headers=[("traceparent", stale), ("app", b"y")]))
        await producer.send_batch(topic, items)
        # and the one-record path, where the aiokafka instrumentation (when on) injects instead
        await producer.send_and_wait(topic, {"n": 7}, headers=[("app", b"z")])
    (batch_span,) = (
        s
        for s in ours(exporter)
        if s.name == f"send {topic}"
        and s.attributes
        and s.attributes.get("messaging.batch.message_count") == 7
    )
    records = await read_all(kafka_bootstrap, topic, 8)
    assert len(records) == 8
    for record in records:
        (parent,) = traceparents(record)
        assert parent.count(b"-") == 3 and len(parent) == 55, parent
        names = [name for name, _ in record.headers]
        assert names.count("app") == (1 if record.headers and "app" in names else 0)
    batched = [r for r in records if traceparents(r)[0] != stale]
    trace_ids = {traceparents(r)[0].split(b"-")[1] for r in batched}
    assert len(trace_ids) == 2  # the batch's trace and the single send's
    expected = format(batch_span.context.trace_id, "032x").encode()
    assert sum(1 for r in records if traceparents(r)[0].split(b"-")[1] == expected) == 7
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached


async def test_async_for_span_covers_the_loop_body(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    unique_topic: Any,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    provider, exporter = spans
    topic = await unique_topic("looped")
    keys = ring()
    signer = Signer(keys, kid="inference-1", issuer="inference-agent", model="lm@1")
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer
    ) as producer:
        await producer.send_batch(topic, [Outgoing({"n": n}) for n in range(2)])
    tracer = provider.get_tracer("test")
    async with RedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as guard:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]), verifier=Verifier(keys), guard=guard
        )
        otel.instrument(consumer, tracer_provider=provider)
        async with consumer:

            async def stop_soon() -> None:
                await asyncio.sleep(0.5)
                await consumer.stop()

            stopping: asyncio.Task[None] | None = None
            async for message in consumer:
                with tracer.start_as_current_span(f"body {message.offset}"):
                    pass
                # inside the body, its process span is current and open
                assert trace.get_current_span() is not trace.INVALID_SPAN
                assert len([s for s in ours(exporter) if s.name == f"process {topic}"]) == (
                    message.offset
                )
                if message.offset == 1:
                    stopping = asyncio.create_task(stop_soon())
            assert stopping is not None
            await stopping
    processes = sorted(
        (s for s in ours(exporter) if s.name == f"process {topic}"),
        key=lambda s: str(dict(s.attributes or {})["messaging.kafka.offset"]),
    )
    assert len(processes) == 2
    bodies = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("body")}
    for process in processes:
        offset = dict(process.attributes or {})["messaging.kafka.offset"]
        body = bodies[f"body {offset}"]
        assert body.parent is not None and body.parent.span_id == process.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN
