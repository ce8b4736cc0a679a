"""OpenTelemetry tracing for signed-bus (extra ``signed-bus[otel]``; only the API is needed).

:func:`instrument` traces one producer, consumer, relay or FastStream bus (aiokafka or
confluent-kafka), :func:`instrument_all` every one built afterwards. Spans follow the
messaging conventions (docs/OBSERVABILITY.md):

- ``send {topic}`` (PRODUCER) per ``send`` call and per ``send_batch`` call; its context goes
  into every record's (unsigned) headers, batches included. When the official aiokafka
  instrumentation wraps ``AIOKafkaProducer.send`` it injects the context itself (its span is a
  child of ours), so this module does not: one ``traceparent`` per record, never two.
- ``process {topic}`` (CONSUMER) per delivered record, parented to the context in its headers,
  around the application's handler (``run``), the body of ``async for``, or a relay's
  transform and the sends of its outputs; ``signed_bus.*`` attributes name the issuer, key,
  model, envelope digest and claim verdict. A rejected record gets a ``process {topic}`` span
  with status ERROR and ``error.type`` = its reason code.
- A relay's output ``send`` span is a child of its input's ``process`` span and links to the
  input's producer context.

With no SDK configured the OpenTelemetry API hands out non-recording spans: nothing is recorded
and no attribute is computed.

Per record, the cost is kept to what the span needs: a delivered record whose only trace
header is the ``traceparent`` of a parent that was not sampled, under the SDK's parent-based
sampler (its default and its usual ratio setting) and the W3C propagator, gets a context whose
non-recording span is that parent's own context, checked but parsed only when something reads
it, made current by setting OpenTelemetry's context variable directly (records sharing the
parent share the context). Otherwise a lone W3C ``traceparent`` is parsed here and remembered
(the records of one batch share it), and an unsampled parent still costs no SDK call. Anything
else goes through the global propagator and the tracer. docs/OBSERVABILITY.md, "Cost".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from signed_bus import __version__
from signed_bus._observe import Carrier, Observer, attach, install, targets, uninstall
from signed_bus._otel_parents import (
    CURRENT,
    ROOT,
    Parents,
    ShortPath,
    drops_unsampled,
    get_current,
    reset_current,
    set_current,
)

if TYPE_CHECKING:
    from signed_bus._gate import ConsumedMessage, Record, Rejected, SkippedRange
    from signed_bus.errors import VerificationError

__all__ = ["instrument", "instrument_all", "uninstrument_all"]

_SYSTEM = "kafka"
# The input of a relay whose outputs are being sent: their send spans link to its context.
_INPUT_KEY = otel_context.create_key("signed_bus.input")


class _HeaderSetter(Setter[Carrier]):
    """Replaces a header of the same name (a caller's stale ``traceparent``): never two."""

    def set(self, carrier: Carrier, key: str, value: str) -> None:
        carrier[:] = [(name, v) for name, v in carrier if name != key]
        carrier.append((key, value.encode("latin-1")))


_SETTER = _HeaderSetter()


class Tracing(Observer):
    """Spans for one front (``group``: its consumer group, None for a producer)."""

    __slots__ = (
        "_drops_unsampled",
        "_entered",
        "_entered_token",
        "_fast",
        "_group",
        "_names",
        "_open",
        "_parents",
        "_short",
        "_tracer",
        "_unsampled",
        "_unsampled_parent",
    )

    def __init__(
        self, group: str | None, *, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        self._group = group
        self._open: object = None  # the token of the message async for handed out
        # or, on the short path of an unsampled parent, the context made current and its token
        self._entered: otel_context.Context | None = None
        self._entered_token: Any = None
        self._tracer = trace.get_tracer("signed_bus", __version__, tracer_provider=tracer_provider)
        self._parents = Parents()
        self._names: dict[str, str] = {}  # topic -> "process {topic}"
        self._drops_unsampled = drops_unsampled(self._tracer)
        # the last non-recording span made for an unsampled parent, and that parent
        self._unsampled: Any = None
        self._unsampled_parent: trace.SpanContext | None = None
        self._short = ShortPath()
        self._fast = False  # set per fetch by received()

    # -- producing -------------------------------------------------------------------------

    def send(self, topic: str, carriers: Sequence[Carrier], *, client_injects: bool) -> object:
        current = otel_context.get_current()
        link = otel_context.get_value(_INPUT_KEY, current)
        links = [Link(link)] if isinstance(link, trace.SpanContext) else None
        span = self._tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, links=links)
        if span.is_recording():
            attributes: dict[str, str | int] = {
                "messaging.system": _SYSTEM,
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
            }
            if len(carriers) != 1:
                attributes["messaging.batch.message_count"] = len(carriers)
            span.set_attributes(attributes)
        context = trace.set_span_in_context(span, current)
        if not client_injects:
            # Formatted once, copied into every record of a batch.
            injected: Carrier = []
            propagate.inject(injected, context=context, setter=_SETTER)
            names = {name for name, _ in injected}
            for carrier in carriers:
                if carrier:  # a caller's header of the same name is replaced, never doubled
                    carrier[:] = [(name, v) for name, v in carrier if name not in names]
                carrier.extend(injected)
        # Current while the client sends: its own instrumentation's span is a child of ours.
        return span, _attach(context), None

    def sent(self, token: object, error: BaseException | None) -> None:
        if token is None:  # sent before this observer was attached
            return
        span, attached, _ = _parts(token)
        _detach(attached)
        _end(span, error)

    # -- consuming -------------------------------------------------------------------------

    def handing(self, message: ConsumedMessage) -> object:
        if self._fast:
            context = self._short.context(message.record.headers)
            if context is not None:
                return _NOTHING_TO_END, _attach(context), None
        span, remote = self._process(message)
        return span, _attach(trace.set_span_in_context(span)), remote

    def processing(self, message: ConsumedMessage) -> object:
        span, remote = self._process(message)
        return span, None, remote

    def iterating(self, message: ConsumedMessage) -> ConsumedMessage:
        # per record of async for: handing and finishing inlined
        if self._entered is not None or self._open is not None:
            self.iterated()
        if self._fast:
            context = self._short.context(message.record.headers)
            if context is not None:
                self._entered_token = set_current(context)  # CURRENT: _fast
                self._entered = context
                return message
        span, remote = self._process(message)
        self._open = span, _attach(trace.set_span_in_context(span)), remote
        return message

    def iterated(self) -> None:
        entered = self._entered
        if entered is not None:  # the short path: no span to end
            self._entered = None
            if get_current() is entered:  # see _detach; CURRENT: _fast
                try:
                    reset_current(self._entered_token)
                except ValueError:
                    otel_context.detach(self._entered_token)
            return
        token = self._open
        if token is not None:
            self._open = None
            _close(token)

    def received(
        self,
        records: Mapping[Any, Sequence[Record]],
        skipped: Sequence[SkippedRange[Any]],
        seconds: float,
    ) -> None:
        # Checked once per fetch: whether its records may take the short path of an unsampled
        # parent (the default runtime context, a parent-based sampler, the W3C propagator).
        self._fast = CURRENT is not None and self._drops_unsampled and self._parents.w3c()

    def enter(self, token: object) -> object:
        if token is None:
            return None
        span, _, remote = _parts(token)
        context = trace.set_span_in_context(span)
        if remote is not None:
            context = otel_context.set_value(_INPUT_KEY, remote, context)
        return span, _attach(context), None

    def leave(self, entered: object) -> None:
        if entered is not None:
            _detach(_parts(entered)[1])

    def finished(self, token: object, error: BaseException | None) -> None:
        if token is None:  # handed out before this observer was attached
            return
        span, attached, _ = _parts(token)
        _detach(attached)
        if span is not _NOTHING_TO_END:
            _end(span, error)

    def rejected(self, rejections: Sequence[Rejected]) -> None:
        for record, error in rejections:
            headers: Sequence[tuple[str, bytes]] = getattr(record, "headers", None) or ()
            span = self._start(record.topic, *self._parents.extract(headers))
            if span.is_recording():
                span.set_attributes({**self._position(record), **_verification(error)})
                span.set_status(Status(StatusCode.ERROR, error.reason))
            span.end()

    def _process(self, message: ConsumedMessage) -> tuple[Any, trace.SpanContext | None]:
        parent, remote = self._parents.extract(message.headers)
        span = self._start(message.topic, parent, remote)
        if span is self._unsampled:
            return span, remote
        if span.is_recording():  # one call: each attribute set alone takes the span's lock
            attributes = self._position(message.record)
            verified = message.verified
            claim = message.claim
            attributes["signed_bus.issuer"] = verified.issuer
            attributes["signed_bus.kid"] = verified.kid
            attributes["signed_bus.model"] = verified.model
            attributes["signed_bus.digest"] = verified.digest.hex()
            attributes["signed_bus.claim"] = claim.value if claim is not None else "none"
            attributes["signed_bus.verification.result"] = "verified"
            span.set_attributes(attributes)
        return span, remote

    def _start(
        self,
        topic: str,
        parent: otel_context.Context | None,
        remote: trace.SpanContext | None,
    ) -> Any:
        """The ``process`` span of a record whose headers hold ``parent`` (``remote``: its
        span context when valid). A child of an unsampled remote parent is not recorded under
        a parent-based sampler: its span is the parent's context itself, non-recording (what
        the SDK hands out for a disabled tracer), so the records it leads to stay unsampled
        in the same trace, without the SDK's sampling call and span ids."""
        if remote is not None and self._drops_unsampled and not remote.trace_flags.sampled:
            if remote is not self._unsampled_parent:  # the records of a batch share it
                self._unsampled_parent = remote
                self._unsampled = trace.NonRecordingSpan(remote)
            return self._unsampled
        if parent is None and remote is not None:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(remote), ROOT)
        name = self._names.get(topic)
        if name is None:
            name = self._names[topic] = f"process {topic}"
        return self._tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER)

    def _position(self, record: Record | SkippedRange[Any]) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        }
        if self._group is not None:
            attributes["messaging.consumer.group.name"] = self._group
        return attributes


def _parts(token: object) -> tuple[Any, Any, trace.SpanContext | None]:
    """A token: (span, the attach token or None, the remote parent's context or None)."""
    assert isinstance(token, tuple)
    return token[0], token[1], token[2]


# The span of a token whose span needs no end (an unsampled parent's non-recording span).
_NOTHING_TO_END = trace.INVALID_SPAN


def _current() -> otel_context.Context:
    """OpenTelemetry's current context."""
    return otel_context.get_current() if CURRENT is None else CURRENT.get()


def _attach(context: otel_context.Context) -> tuple[otel_context.Context, object]:
    """Make ``context`` current; what :func:`_detach` needs to undo it."""
    if CURRENT is None:
        return context, otel_context.attach(context)
    return context, CURRENT.set(context)


def _detach(attached: Any) -> None:
    # Only where it was attached: a consumer stopped from another task finishes the message
    # async for handed out, but that task's context is not ours to change.
    if attached is None:
        return
    if CURRENT is None:
        if otel_context.get_current() is attached[0]:
            otel_context.detach(attached[1])
    elif CURRENT.get() is attached[0]:
        try:
            CURRENT.reset(attached[1])
        except ValueError:  # made in another asyncio context: as detach would, log it
            otel_context.detach(attached[1])


def _close(token: Any) -> None:
    """Finish the message of a token of :meth:`Tracing.handing` that raised nothing."""
    attached = token[1]
    if CURRENT is None:
        _detach(attached)
    elif CURRENT.get() is attached[0]:
        try:
            CURRENT.reset(attached[1])
        except ValueError:  # made in another asyncio context: as detach would, log it
            otel_context.detach(attached[1])
    span = token[0]
    if span is not _NOTHING_TO_END:
        span.end()


def _end(span: Any, error: BaseException | None) -> None:
    if error is not None and span.is_recording():
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
    span.end()


def _verification(error: VerificationError) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "signed_bus.verification.result": "rejected",
        "error.type": error.reason,
    }
    if error.issuer is not None:
        attributes["signed_bus.issuer"] = error.issuer
    if error.kid is not None:
        attributes["signed_bus.kid"] = error.kid
    return attributes


def instrument(front: object, *, tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace ``front`` from now on: a producer, consumer or relay (a relay: its consumer and
    producer), aiokafka or confluent-kafka, or a FastStream ``SignedBus``."""
    for metrics, group, _ in targets(front):
        attach(metrics, Tracing(group, tracer_provider=tracer_provider))


def _factory(group: str | None, topics: Sequence[str]) -> Observer:
    return Tracing(group)


def instrument_all() -> None:
    """Trace every producer, consumer and relay built from now on (the global tracer
    provider, as set up by the application)."""
    install(_factory)


def uninstrument_all() -> None:
    """Undo :func:`instrument_all` for fronts built from now on."""
    uninstall(_factory)
