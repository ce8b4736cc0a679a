"""The process span's parent, read from a record's headers: the W3C fast path agrees with the
global propagator, and an unsampled parent costs no SDK span under a parent-based sampler
while any other sampler still decides."""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import format_span_id, format_trace_id

from signed_bus import ClaimVerdict, Keyring, Signer, Verifier, generate_hmac_key
from signed_bus._gate import ConsumedMessage
from signed_bus._observe import Carrier, Tee
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


# -- the short path of an unsampled parent (records of a fetch, after received) -----------------


def fetched(observer: Tracing) -> Tracing:
    """``observer`` as a consumer's: a fetch was verified (the short path is checked per fetch)."""
    observer.received({}, (), 0.0)
    return observer


def carried(observer: Tracing, headers: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """What a handler's send (ours and another instrumentation's inject) carries, and what was
    exported, for a record with ``headers``."""
    token = observer.handing(message(headers))
    ours: Carrier = []
    sent = observer.send("out", [ours], client_injects=False)
    observer.sent(sent, None)
    theirs: dict[str, str] = {}
    propagate.inject(theirs)  # another instrumentation, from the current context
    observer.finished(token, None)
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached
    return dict(ours)["traceparent"], theirs["traceparent"].encode()


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", traceparent("00"))],
        [("traceparent", traceparent("02"))],  # another flag, not sampled
        [("app", b"x"), ("traceparent", traceparent("00"))],
        [("traceparent", traceparent("01"))],
        [("traceparent", traceparent("00").upper())],
        [("traceparent", traceparent("00", trace_id=0))],
        [("traceparent", traceparent("00", span_id=0))],
        [("traceparent", b"01-" + traceparent("00")[3:] + b"-extra")],
        [("traceparent", traceparent("00")), ("tracestate", b"vendor=1")],
        [("traceparent", traceparent("00")), ("traceparent", traceparent("01", span_id=7))],
        [("traceparent", traceparent("00")[:-1])],
        [("app", b"no trace context")],
    ],
    ids=[
        "unsampled",
        "flags-02",
        "with-app-header",
        "sampled",
        "uppercase",
        "zero-trace",
        "zero-span",
        "version-01",
        "tracestate",
        "twice",
        "truncated",
        "none",
    ],
)
def test_the_short_path_continues_exactly_what_the_general_path_continues(
    headers: list[tuple[str, bytes]],
) -> None:
    short, general = InMemorySpanExporter(), InMemorySpanExporter()
    sampler = ParentBased(TraceIdRatioBased(0.0))  # new roots never sampled: deterministic

    def fields(traceparents: tuple[bytes, bytes]) -> list[tuple[bytes, ...]]:
        """Trace id (the record's, or a new one) and flags; and the span id where it is not
        random: the current span's (what another instrumentation injects) when nothing
        recorded it. Both carriers are in one trace."""
        ours, theirs = (value.split(b"-") for value in traceparents)
        assert ours[1] == theirs[1]
        mine = ours[1] == format_trace_id(TRACE).encode()
        return [
            (b"record's" if mine else b"new", ours[3], b""),
            (b"record's" if mine else b"new", theirs[3], theirs[2] if theirs[3] == b"00" else b""),
        ]

    by_short = fields(carried(fetched(tracing(short, sampler)), headers))
    by_general = fields(carried(tracing(general, sampler), headers))
    assert by_short == by_general
    assert [s.name for s in short.get_finished_spans()] == [
        s.name for s in general.get_finished_spans()
    ]
    if headers == [("traceparent", traceparent("00"))]:  # the parent itself, unsampled
        assert by_short[1] == (b"record's", b"00", traceparent("00")[36:52])


def test_an_unsampled_parent_is_current_unparsed_and_shared_by_its_batch(
    exporter: InMemorySpanExporter,
) -> None:
    observer = fetched(tracing(exporter, ParentBased(TraceIdRatioBased(0.01))))
    shared = [("traceparent", traceparent("00"))]
    contexts = []
    for offset in range(3):
        token = observer.handing(message(list(shared), offset))
        contexts.append(otel_context.get_current())
        span = trace.get_current_span()
        assert not span.is_recording()
        observer.finished(token, None)
    assert contexts[0] is contexts[1] is contexts[2]  # one context for the batch's parent
    parent = span.get_span_context()
    assert (parent.trace_id, parent.span_id, parent.trace_flags.sampled) == (TRACE, SPAN, False)
    assert parent.is_remote and "NonRecordingSpan" in repr(span)
    assert exporter.get_finished_spans() == ()


def test_the_current_context_values_stay_around_the_short_path(
    exporter: InMemorySpanExporter,
) -> None:
    observer = fetched(tracing(exporter, ParentBased(ALWAYS_ON)))
    outer = otel_context.attach(otel_context.set_value("app-key", "app-value"))
    try:
        token = observer.handing(message([("traceparent", traceparent("00"))]))
        assert otel_context.get_value("app-key") == "app-value"
        assert trace.get_current_span().get_span_context().trace_id == TRACE
        observer.finished(token, None)
        assert otel_context.get_value("app-key") == "app-value"
        assert trace.get_current_span() is trace.INVALID_SPAN
    finally:
        otel_context.detach(outer)


def test_async_for_switches_the_current_context_record_by_record(
    exporter: InMemorySpanExporter,
) -> None:
    observer = fetched(tracing(exporter, ParentBased(ALWAYS_ON)))
    seen = []
    for n, flags in enumerate(["00", "00", "01", "00"]):
        observer.iterated()
        observer.iterating(message([("traceparent", traceparent(flags, trace_id=n + 1))], n))
        seen.append(trace.get_current_span().get_span_context().trace_id)
    observer.iterated()
    assert seen == [1, 2, 3, 4]
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert [s.context.trace_id for s in exporter.get_finished_spans()] == [3]


def test_a_records_context_kept_by_its_body_keeps_that_records_parent(
    exporter: InMemorySpanExporter,
) -> None:
    """The short path reuses the last record's context and span for the next record only when
    nothing else holds them: a span the body kept, a context a task copied, a context read
    and kept all still read their own record's parent afterwards."""
    observer = fetched(tracing(exporter, ParentBased(ALWAYS_ON)))
    kept_span: trace.Span | None = None
    kept_task: contextvars.Context | None = None
    kept_context: otel_context.Context | None = None
    for n in range(6):
        observer.iterated()
        observer.iterating(message([("traceparent", traceparent("00", trace_id=n + 1))], n))
        if n == 1:
            kept_span = trace.get_current_span()
        elif n == 2:
            kept_task = contextvars.copy_context()  # what asyncio.create_task keeps
        elif n == 3:
            kept_context = otel_context.get_current()
    observer.iterated()
    assert kept_span is not None and kept_task is not None and kept_context is not None
    assert kept_span.get_span_context().trace_id == 2
    assert kept_task.run(trace.get_current_span).get_span_context().trace_id == 3
    assert trace.get_current_span(kept_context).get_span_context().trace_id == 4


def test_a_span_or_context_held_weakly_never_reads_a_later_records_parent(
    exporter: InMemorySpanExporter,
) -> None:
    """Weak references are not in the reference count the reuse checks: a span or context
    held only weakly (a weak-keyed registry, a ``weakref.ref``) must be left alone too: it
    reads its own record's parent while it lives."""
    observer = fetched(tracing(exporter, ParentBased(ALWAYS_ON)))
    spans: weakref.WeakKeyDictionary[trace.Span, int] = weakref.WeakKeyDictionary()
    contexts: list[tuple[int, weakref.ref[otel_context.Context]]] = []
    for n in range(5):
        observer.iterated()
        observer.iterating(message([("traceparent", traceparent("00", trace_id=n + 1))], n))
        spans[trace.get_current_span()] = n + 1
        contexts.append((n + 1, weakref.ref(otel_context.get_current())))
    observer.iterated()
    for span, trace_id in list(spans.items()):
        assert span.get_span_context().trace_id == trace_id
    for trace_id, ref in contexts:
        context = ref()
        if context is not None:
            assert trace.get_current_span(context).get_span_context().trace_id == trace_id


def test_two_tracing_observers_on_one_front_restore_the_context_they_found(
    exporter: InMemorySpanExporter,
) -> None:
    """A front instrumented twice (``instrument`` and ``instrument_all``, say) tees two
    Tracing observers: each makes a context current per record, so they must restore them in
    reverse, as nested context managers, in ``async for`` and in ``run(handler)`` alike."""
    tee = Tee(
        fetched(tracing(exporter, ParentBased(ALWAYS_ON))),
        fetched(tracing(exporter, ParentBased(ALWAYS_ON))),
    )
    before = otel_context.get_current()
    for n in range(3):
        tee.iterated()  # as the fronts' __anext__: the last record's body is done
        tee.iterating(message([("traceparent", traceparent("00", trace_id=n + 1))], n))
        assert trace.get_current_span().get_span_context().trace_id == n + 1
    tee.iterated()
    assert otel_context.get_current() is before
    token = tee.handing(message([("traceparent", traceparent("00", trace_id=9))]))
    assert trace.get_current_span().get_span_context().trace_id == 9
    tee.finished(token, None)
    assert otel_context.get_current() is before
    for _ in range(2):  # a producer's sends: each its own trace, nothing left current
        sent = tee.send("out", [[]], client_injects=False)
        assert trace.get_current_span().get_span_context().is_valid
        tee.sent(sent, None)
        assert otel_context.get_current() is before
    sends = [span for span in exporter.get_finished_spans() if span.name.startswith("send")]
    # one trace per send (the second observer's span inside the first's), none chained on
    assert len(sends) == 4 and len({span.context.trace_id for span in sends}) == 2
    assert sum(span.parent is None for span in sends) == 2


def test_handlers_running_at_once_each_keep_their_records_parent(
    exporter: InMemorySpanExporter,
) -> None:
    """A handler still running holds its record's context: a handler started meanwhile (in
    another task's context) gets its own, and each reads its own record's parent."""
    observer = fetched(tracing(exporter, ParentBased(ALWAYS_ON)))
    first = observer.handing(message([("traceparent", traceparent("00", trace_id=1))], 0))
    first_context = otel_context.get_current()

    def another_task() -> otel_context.Context:
        second = observer.handing(message([("traceparent", traceparent("00", trace_id=2))], 1))
        context = otel_context.get_current()
        assert trace.get_current_span(first_context).get_span_context().trace_id == 1
        observer.finished(second, None)
        return context

    second_context = contextvars.Context().run(another_task)
    assert second_context is not first_context
    assert trace.get_current_span(second_context).get_span_context().trace_id == 2
    assert trace.get_current_span().get_span_context().trace_id == 1
    observer.finished(first, None)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert trace.get_current_span(first_context).get_span_context().trace_id == 1


def test_records_whose_context_nobody_kept_share_one_context_object(
    exporter: InMemorySpanExporter,
) -> None:
    """No context or span per record on the short path when the loop body keeps neither (the
    usual case): the last record's are updated in place (CPython: checked by reference count)."""
    observer = fetched(tracing(exporter, ParentBased(ALWAYS_ON)))
    identities, seen = set(), []
    for n in range(4):
        observer.iterated()
        observer.iterating(message([("traceparent", traceparent("00", trace_id=n + 1))], n))
        identities.add(id(otel_context.get_current()))
        seen.append(trace.get_current_span().get_span_context().trace_id)
    observer.iterated()
    assert seen == [1, 2, 3, 4]
    assert len(identities) == 1
    assert exporter.get_finished_spans() == ()


def test_the_short_path_sets_the_variable_opentelemetry_reads() -> None:
    """The default runtime context is set directly: pinned, so an OpenTelemetry that moves it
    fails here rather than silently taking the slower public calls."""
    from signed_bus._otel_parents import CURRENT

    assert CURRENT is not None
    context = otel_context.set_value("k", "v")
    token = otel_context.attach(context)
    try:
        assert CURRENT.get() is context
    finally:
        otel_context.detach(token)


def test_the_unsampled_check_agrees_with_the_propagators_reading() -> None:
    """The bytes check of the short path accepts exactly the valid, unsampled version 00
    traceparents: every one-byte change of valid ones, checked against the regular expression
    and the flags the general path reads."""
    import random

    from signed_bus._otel_parents import TRACEPARENT

    observer = fetched(tracing(InMemorySpanExporter(), ParentBased(ALWAYS_ON)))
    rng = random.Random(5)
    alphabet = b"0123456789abcdefABCDEF-xz 0"
    cases = [traceparent(flags) for flags in ("00", "01", "02", "03", "fe", "ff")]
    cases += [traceparent("00", trace_id=0), traceparent("00", span_id=0), b"", b"00"]
    cases += [traceparent("00", trace_id=1), traceparent("00", span_id=1)]  # leading zeros
    for _ in range(3000):
        changed = bytearray(rng.choice(cases[:6]))
        changed[rng.randrange(len(changed))] = rng.choice(alphabet)
        if rng.random() < 0.05:
            changed = changed[:-1] if rng.random() < 0.5 else changed + b"0"
        cases.append(bytes(changed))
    for raw in cases:
        match = TRACEPARENT.fullmatch(raw)
        expected = (
            match is not None
            and int(match[1], 16) != 0
            and int(match[2], 16) != 0
            and not int(match[3], 16) & 1
        )
        short = observer._short.context([("traceparent", raw)])
        assert (short is not None) is expected, raw
