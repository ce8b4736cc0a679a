"""The process span's parent, read from a record's headers: the W3C fast path agrees with the
global propagator, and an unsampled parent costs no SDK span under a parent-based sampler
while any other sampler still decides."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import format_span_id, format_trace_id

from signed_bus import ClaimVerdict, Keyring, Signer, Verifier, generate_hmac_key
from signed_bus._gate import ConsumedMessage
from signed_bus._observe import Carrier
from signed_bus.otel import Tracing

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
SPAN = 0xB7AD6B7169203331


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def message(headers: list[tuple[str, bytes]], offset: int = 0) -> ConsumedMessage:
    ring = Keyring([generate_hmac_key("k1", ["agent"])])
    value = Signer(ring, kid="k1", issuer="agent", model="m").sign({"n": offset}, topic="t")
    verified = Verifier(ring).verify(value, topic="t", key=None)
    record = _Record("t", 0, offset, verified.created_at, 0, None, value, headers)
    return ConsumedMessage(verified, record, ClaimVerdict.NEW)


def traceparent(flags: str, trace_id: int = TRACE, span_id: int = SPAN) -> bytes:
    return f"00-{format_trace_id(trace_id)}-{format_span_id(span_id)}-{flags}".encode()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


def tracing(exporter: InMemorySpanExporter, sampler: Sampler) -> Tracing:
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing("g", tracer_provider=provider)


def handled(observer: Tracing, headers: list[tuple[str, bytes]]) -> trace.SpanContext:
    """Hand a message to a handler that sends one record; the context the send carried."""
    token = observer.handing(message(headers))
    carrier: Carrier = []
    sent = observer.send("out", [carrier], client_injects=False)
    observer.sent(sent, None)
    observer.finished(token, None)
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached
    context = propagate.extract({name: value.decode() for name, value in carrier})
    return trace.get_current_span(context).get_span_context()


@pytest.mark.parametrize("flags", ["01", "00"])
@pytest.mark.parametrize("sampler", [ALWAYS_ON, ParentBased(ALWAYS_ON)], ids=["on", "parent"])
def test_the_process_span_continues_the_records_trace_as_the_sampler_decides(
    exporter: InMemorySpanExporter, flags: str, sampler: Sampler
) -> None:
    observer = tracing(exporter, sampler)
    sent = handled(observer, [("traceparent", traceparent(flags))])
    recorded = flags == "01" or sampler is ALWAYS_ON
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sent.trace_id == TRACE  # the next hop is in the record's trace either way
    assert sent.trace_flags.sampled is recorded
    if recorded:
        process = spans["process t"]
        assert process.parent is not None and process.parent.is_remote
        assert (process.parent.trace_id, process.parent.span_id) == (TRACE, SPAN)
        assert sent.span_id == spans["send out"].context.span_id
    else:  # nothing recorded, not even the send: an unsampled trace stays unsampled
        assert spans == {}


def test_records_of_one_batch_share_a_parent_and_each_gets_its_own_span(
    exporter: InMemorySpanExporter,
) -> None:
    observer = tracing(exporter, ParentBased(TraceIdRatioBased(0.01)))
    shared = [("app", b"x"), ("traceparent", traceparent("01"))]
    for offset in range(3):
        observer.finished(observer.handing(message(list(shared), offset)), None)
    spans = exporter.get_finished_spans()
    assert len(spans) == 3 and len({s.context.span_id for s in spans}) == 3
    assert all(s.parent is not None and s.parent.span_id == SPAN for s in spans)
    offsets = {s.attributes["messaging.kafka.offset"] for s in spans if s.attributes}
    assert offsets == {0, 1, 2}


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", traceparent("01").upper())],  # not lowercase hex: invalid
        [("traceparent", traceparent("01", trace_id=0))],  # an all-zero trace id
        [("traceparent", b"01-" + traceparent("01")[3:] + b"-extra")],  # a future version
        [("traceparent", traceparent("01")), ("tracestate", b"vendor=1")],
        [("traceparent", traceparent("00")), ("traceparent", traceparent("01", span_id=7))],
        [("app", b"no trace context")],
    ],
    ids=["uppercase", "zero-trace", "version-01", "tracestate", "twice", "none"],
)
def test_the_parent_is_what_the_global_propagator_extracts(
    exporter: InMemorySpanExporter, headers: list[tuple[str, bytes]]
) -> None:
    observer = tracing(exporter, ALWAYS_ON)
    observer.finished(observer.handing(message(headers)), None)
    (span,) = exporter.get_finished_spans()
    carrier = {name: value.decode() for name, value in reversed(headers)}  # the first wins
    expected = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    if expected.is_valid:
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == (expected.trace_id, expected.span_id)
        assert span.parent.trace_state == expected.trace_state
        assert span.context.trace_id == expected.trace_id
    else:
        assert span.parent is None  # a root span


def test_a_rejected_record_is_parented_through_the_same_path(
    exporter: InMemorySpanExporter,
) -> None:
    from signed_bus.errors import BadSignature

    observer = tracing(exporter, ParentBased(ALWAYS_ON))
    record = message([("traceparent", traceparent("01"))]).record
    observer.rejected([(record, BadSignature("forged", kid="k1", issuer="agent"))])
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == SPAN
    assert span.attributes is not None and span.attributes["error.type"] == "bad_signature"


def test_each_record_continues_its_own_trace_when_parents_alternate(
    exporter: InMemorySpanExporter,
) -> None:
    observer = tracing(exporter, ParentBased(ALWAYS_ON))
    parents = [("00", 1), ("00", 1), ("01", 2), ("00", 1), ("00", 3), ("01", 2)]
    for flags, trace_id in parents:
        sent = handled(observer, [("traceparent", traceparent(flags, trace_id=trace_id))])
        assert sent.trace_id == trace_id
        assert sent.trace_flags.sampled is (flags == "01")
    spans = exporter.get_finished_spans()
    assert len(spans) == 4 and {s.context.trace_id for s in spans} == {2}
