"""A delivered record's parent context, for :mod:`signed_bus.otel` (OpenTelemetry API only).

:class:`Parents` reads the parent context in a record's headers: a lone W3C ``traceparent``
is parsed here (the last one remembered), anything else goes through the global propagator.
:class:`ShortPath` makes the context of a record whose parent was not sampled, under a
parent-based sampler: the header checked with bytes operations only and parsed when something
reads it. :data:`CURRENT` is the context variable behind OpenTelemetry's default runtime
context, which that path sets directly.
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import Sequence
from contextvars import ContextVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter

__all__ = [
    "CURRENT",
    "ROOT",
    "TRACEPARENT",
    "Parents",
    "ShortPath",
    "drops_unsampled",
    "get_current",
    "reset_current",
    "set_current",
]


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [
            value.decode("latin-1") for name, value in carrier if name == key and value is not None
        ]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [name for name, _ in carrier]


_GETTER = _HeaderGetter()
ROOT = otel_context.Context()
_NO_STATE = trace.TraceState()  # immutable: shared by every parent without a tracestate
# The headers the W3C propagators read (trace context and baggage: the default global one).
_W3C = frozenset({"traceparent", "tracestate", "baggage"})
# A version 00 traceparent exactly as the W3C propagator accepts it (lowercase hex).
TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# The shape of a version 00 traceparent: every lowercase hex digit read as "x".
_HEX_AS_X = bytes(
    ord("x") if byte in b"0123456789abcdef" else byte if byte == ord("-") else ord("!")
    for byte in range(256)
)
_SHAPE = b"xx-" + b"x" * 32 + b"-" + b"x" * 16 + b"-xx"
_ZERO_TRACE_ID, _ZERO_SPAN_ID = b"0" * 32, b"0" * 16
# By byte value: true for the last hex digit of flags whose sampled bit (the lowest) is clear.
_UNSAMPLED_FLAGS = tuple(byte in b"02468ace" for byte in range(256))
_ZERO = ord("0")

_new = object.__new__
# Reference counts of the last context and span when only ShortPath.context holds them (its
# attribute, its local variable, the argument of getrefcount; the span: also the context).
_refs = (
    sys.getrefcount if sys.implementation.name == "cpython" and sys.version_info < (3, 14) else None
)
_CONTEXT_REFS, _SPAN_REFS = 3, 4
# Weak references do not count in getrefcount: a span or context weakly held (a weak-keyed
# registry, a weakref.ref kept for later) must not change under its holder either.
_weakrefs = weakref.getweakrefcount
_Context = otel_context.Context
# The key a context holds its current span under (taken from the API, not its private name).
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())))


def _runtime_variable() -> ContextVar[otel_context.Context] | None:
    """The context variable behind OpenTelemetry's current context when its runtime context is
    the default one (``contextvars``): setting it is what ``attach`` does, without two calls
    in between. None for another runtime context: the public functions are used."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime).__name__ != "ContextVarsRuntimeContext":
        return None
    variable = getattr(runtime, "_current_context", None)
    return variable if isinstance(variable, ContextVar) else None


CURRENT = _runtime_variable()
# Its methods, bound once for the per-record hooks of the short path, which only runs when
# CURRENT is not None (a stand-in variable otherwise: never set, nothing reads it).
_VARIABLE = CURRENT if CURRENT is not None else ContextVar("signed_bus.unused")
get_current, set_current, reset_current = _VARIABLE.get, _VARIABLE.set, _VARIABLE.reset


class Parents:
    """The parent context in a record's headers, and its span context when valid (a relay
    links its outputs to it). A lone ``traceparent`` under the default W3C propagator is
    parsed here and the last one remembered; anything else goes through the propagator."""

    __slots__ = ("_context", "_raw", "_remote", "_textmap", "_w3c")

    def __init__(self) -> None:
        self._textmap: object = None
        self._w3c = False
        self._raw: bytes | None = None
        self._context: otel_context.Context | None = None
        self._remote: trace.SpanContext | None = None

    def extract(
        self, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[otel_context.Context | None, trace.SpanContext | None]:
        """(parent context, its valid remote span context): (None, None) for no headers (the
        current context is the parent); (None, remote) when the context is ``remote`` alone
        (made when needed, see ``Tracing._start``)."""
        if not headers:
            return None, None
        raw = _lone_traceparent(headers) if self.w3c() else None
        if raw is not None:
            if raw == self._raw:
                return self._context, self._remote
            match = TRACEPARENT.fullmatch(raw)
            if match is not None:
                trace_id, span_id = int(match[1], 16), int(match[2], 16)
                remote = None
                context: otel_context.Context | None = otel_context.Context()  # a root span
                if trace_id and span_id:
                    flags = trace.TraceFlags(int(match[3], 16))
                    remote = trace.SpanContext(
                        trace_id, span_id, is_remote=True, trace_flags=flags, trace_state=_NO_STATE
                    )
                    context = None  # made from ``remote`` only if a span is started with it
                self._raw, self._context, self._remote = raw, context, remote
                return context, remote
        context = propagate.extract(headers, getter=_GETTER)
        remote = trace.get_current_span(context).get_span_context()
        return context, remote if remote.is_valid else None

    def w3c(self) -> bool:
        """True while the global propagator reads only the W3C headers (the default)."""
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:  # set up once per global propagator
            fields = textmap.fields
            self._w3c = "traceparent" in fields and fields <= _W3C
            self._textmap, self._raw = textmap, None
        return self._w3c


class _UnsampledParent(trace.NonRecordingSpan):
    """The ``process`` span of a record whose parent was not sampled, under a parent-based
    sampler that drops such children: non-recording, its span context the parent's own (what
    the handler's sends continue, unsampled, in the same trace). ``raw`` is the parent's
    ``traceparent``, already checked; it is parsed only when something reads the span context
    (a send, any OpenTelemetry instrumentation), not for every record."""

    _parsed: trace.SpanContext | None = None
    _raw: bytes  # set by ShortPath.context, which makes these without calling __init__

    def get_span_context(self) -> trace.SpanContext:
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = _remote(self._raw)
        return parsed

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self.get_span_context()!r})"


class ShortPath:
    """The contexts of delivered records whose parent was not sampled (the caller checked the
    sampler, the propagator and :data:`CURRENT`); remembers the last one made."""

    __slots__ = ("_base", "_context", "_raw", "_span")

    def __init__(self) -> None:
        # the last context made, its traceparent and the context it was made on
        self._raw: bytes | None = None
        self._base: otel_context.Context | None = None
        self._context: otel_context.Context | None = None
        self._span: _UnsampledParent | None = None

    def context(self, headers: Sequence[tuple[str, bytes]] | None) -> otel_context.Context | None:
        """The context to make current for a delivered record whose only trace header is the
        ``traceparent`` of a valid parent that was not sampled, when the sampler drops the
        children of such parents: the current context with an :class:`_UnsampledParent` span
        (nothing parsed, no SDK call; the records of one batch share one context). None for
        anything else: the general path decides."""
        if not headers:
            return None
        if len(headers) == 1:
            name, raw = headers[0]
            if name != "traceparent":
                return None
        else:
            found = _lone_traceparent(headers)
            if found is None:
                return None
            raw = found
        base = get_current()  # CURRENT: see Tracing.received
        if raw == self._raw and base is self._base:
            return self._context
        # A valid parent that was not sampled, exactly as TRACEPARENT and the W3C propagator
        # read it (version 00, lowercase hex, ids not all zero), with the sampled flag clear.
        # This runs for every record: one C call for the shape, byte reads for the rest (a
        # regular expression costs more); an id is compared with zeros only when it starts
        # with one.
        if not (
            type(raw) is bytes
            and raw.translate(_HEX_AS_X) == _SHAPE
            and _UNSAMPLED_FLAGS[raw[54]]
            and raw[0] == _ZERO == raw[1]
            and (raw[3] != _ZERO or not raw.startswith(_ZERO_TRACE_ID, 3))
            and (raw[36] != _ZERO or not raw.startswith(_ZERO_SPAN_ID, 36))
        ):
            return None
        context = self._context
        span = self._span
        if (
            base is self._base
            and _refs is not None
            # each count is at least its own (the holders above): their sum is theirs only
            # when each one is (a Context emptied through dict's own methods, past its
            # immutability, would break that premise; nothing in OpenTelemetry does so)
            and _refs(context) + _refs(span) == _CONTEXT_REFS + _SPAN_REFS
            and not _weakrefs(context)
            and not _weakrefs(span)
        ):
            # Nothing but this object holds the last record's context and span (no task
            # copied the context, no code kept the span, not even weakly): they become this
            # record's.
            span._raw = raw  # type: ignore[union-attr]
            span._parsed = None  # type: ignore[union-attr]
        else:
            span = _new(_UnsampledParent)  # no __init__ frame
            span._raw = raw
            context = _Context({**base, _SPAN_KEY: span} if base else {_SPAN_KEY: span})
            self._context, self._span = context, span
        self._raw, self._base = raw, base
        return context


def _remote(raw: bytes) -> trace.SpanContext:
    """The remote span context of a ``traceparent`` that matched :data:`TRACEPARENT`."""
    match = TRACEPARENT.fullmatch(raw)
    assert match is not None
    return trace.SpanContext(
        int(match[1], 16),
        int(match[2], 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(match[3], 16)),
        trace_state=_NO_STATE,
    )


def _lone_traceparent(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    """The value of the only ``traceparent`` header when no other W3C header is there."""
    found: bytes | None = None
    for name, value in headers:
        if name in _W3C:
            if name != "traceparent" or found is not None or not isinstance(value, bytes):
                return None
            found = value
    return found


def drops_unsampled(tracer: object) -> bool:
    """True when ``tracer``'s sampler is the SDK's parent-based one and drops the children of
    an unsampled remote parent (what its description says; a custom sampler: False)."""
    sampler = getattr(tracer, "sampler", None)
    describe = getattr(sampler, "get_description", None)
    description = describe() if callable(describe) else None
    return (
        isinstance(description, str)
        and description.startswith("ParentBased{")
        and "remoteParentNotSampled:AlwaysOffSampler," in description
    )
