"""The observer hooks every signed-bus front calls: what happened at the gate and on send.

A front (the aiokafka producer, consumer and relay; the FastStream and confluent-kafka adapters
call the same hooks) holds one :class:`Observer` in its metrics object (``metrics.observer``)
and calls it at a few points: a fetch verified, a claim answered or failed, records delivered
without a claim (fail open), rejections, dead letters written or dropped, a message handed to
the application and finished, a send. The hooks take the gate's own values (records, claim
rows, verdicts, rejections, :class:`~signed_bus._gate.ConsumedMessage`), never a Kafka client's
objects, so every front can drive them. The default does nothing, so an unobserved front pays a
method call per batch and two per delivered message.

:mod:`signed_bus.otel` (spans, trace context in record headers) and :mod:`signed_bus.prometheus`
(counters, histograms) implement it; :func:`attach` chains a new observer after the ones
already attached to one front, :func:`install` gives one to every front built afterwards
(:func:`observer_for`, called by each front's constructor with its consumer group). What each
hook means for a span or a metric: docs/OBSERVABILITY.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from signed_bus._gate import ConsumedMessage, Gate, Record, Rejected, Settling, SkippedRange
    from signed_bus._replay.layout import ClaimRow, ClaimVerdict
    from signed_bus.errors import VerificationError

__all__ = [
    "NOOP",
    "Carrier",
    "Factory",
    "Observed",
    "Observer",
    "Tee",
    "attach",
    "install",
    "observed",
    "observer_for",
    "targets",
    "timed_receive",
    "uninstall",
]

#: One record's headers, as a list the send hook may add trace context to (never signed).
Carrier = list[tuple[str, bytes]]


class Observer:
    """Hooks with no effect: subclass and override the ones you need.

    Tokens: :meth:`send` and :meth:`handing` / :meth:`processing` return an object the front
    hands back to :meth:`sent` / :meth:`finished` (and :meth:`enter`); None when not needed.
    A hook must not raise: the fronts do not guard the calls (a raising hook is a bug, like a
    raising verifier).
    """

    __slots__ = ()

    # -- producing -------------------------------------------------------------------------

    def send(self, topic: str, carriers: Sequence[Carrier], *, client_injects: bool) -> object:
        """Records for ``topic`` are about to be handed to the client, one carrier (its header
        list, already holding the caller's headers) per record. ``client_injects`` is true when
        the client's own tracing instrumentation adds trace context to these records (the
        official aiokafka instrumentation wraps ``send``, not the library's batches): then the
        hook must not add it too."""
        return None

    def sent(self, token: object, error: BaseException | None) -> None:
        """The records of :meth:`send` were queued (``error`` None) or the send failed."""

    # -- consuming: the gate's outcomes ------------------------------------------------------

    def received(
        self,
        records: Mapping[Any, Sequence[Record]],
        skipped: Sequence[SkippedRange[Any]],
        seconds: float,
    ) -> None:
        """One fetch (its records by partition, and the ranges of offsets the client could not
        decode) was verified in ``seconds``; its rejections follow in :meth:`rejected`."""

    def claimed(
        self, rows: Sequence[ClaimRow], verdicts: Sequence[ClaimVerdict], seconds: float
    ) -> None:
        """The replay guard answered one claim call (rows carry the topic at index 3)."""

    def guard_unavailable(self, records: int) -> None:
        """A claim call for ``records`` records failed (Redis unavailable); the batch is held
        and retried (fail closed) or delivered unchecked (:meth:`unchecked`)."""

    def unchecked(self, records: Sequence[Record]) -> None:
        """Verified records delivered without a claim (fail open during a guard outage)."""

    def rejected(self, rejections: Sequence[Rejected]) -> None:
        """Counted, positioned rejections (each with its reason), before they are dead-lettered
        (also called when the consumer has no dead-letter topic)."""

    def dead_letter_written(self, record: Record, error: VerificationError) -> None:
        """The broker acknowledged the dead letter of a rejected record."""

    def dead_letter_dropped(self, record: Record, error: VerificationError) -> None:
        """A dead letter fit the dead-letter topic in no form (logged at ERROR, not retried)."""

    # -- consuming: delivery -----------------------------------------------------------------

    def handing(self, message: ConsumedMessage) -> object:
        """``message`` is handed to ``run``'s handler: counted as delivered; the token goes to
        :meth:`finished` when the handler returned or raised (see :func:`observed`)."""
        return None

    def iterating(self, message: ConsumedMessage) -> ConsumedMessage:
        """``async for`` hands out ``message`` (counted as delivered); returns it. The observer
        keeps what it needs until :meth:`iterated` (one loop per consumer at a time)."""
        return message

    def iterated(self) -> None:
        """The loop asked for the next message (or ended): the last one's body is done."""

    def delivered(self, messages: Sequence[ConsumedMessage]) -> None:
        """A whole batch is handed to the application (``getbatch``): counted as delivered."""

    def processing(self, message: ConsumedMessage) -> object:
        """A relay starts transforming ``message`` (already counted by :meth:`delivered`);
        its outputs are sent inside :meth:`enter` of the token, then :meth:`finished`."""
        return None

    def enter(self, token: object) -> object:
        """Make the token's context current (a relay sending one input's outputs)."""
        return None

    def leave(self, entered: object) -> None:
        """Undo :meth:`enter`."""

    def finished(self, token: object, error: BaseException | None) -> None:
        """The application (or the relay) is done with the message of ``token``."""


#: The observer of a front nobody observes.
NOOP = Observer()


class Tee(Observer):
    """Calls each of ``observers`` in turn (tokens kept per observer).

    The hooks called for every record of ``async for`` (:meth:`iterating`, :meth:`iterated`)
    call only the observers that override them, and an observer's own method directly when
    it is the only one: a tee of metrics and tracing costs no extra call per record.
    :meth:`finished` skips the observers that do not implement it.
    """

    __slots__ = ("__dict__", "observers")

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers
        iterating = [o.iterating for o in observers if _overrides(o, "iterating")]
        iterated = [o.iterated for o in observers if _overrides(o, "iterated")]
        # instance attributes shadow the methods below (a plain function is no data descriptor)
        if len(iterating) == 1:
            vars(self)["iterating"] = iterating[0]  # returns the message, as the tee does
        elif len(iterating) == 2:
            vars(self)["iterating"] = _both(*iterating)
        if len(iterated) <= 1:
            vars(self)["iterated"] = iterated[0] if iterated else NOOP.iterated
        # finished, per message of run(handler): only the observers that implement it, in
        # reverse (each may restore the context it made current, as nested managers would)
        self._finishing = [
            (n, o.finished) for n, o in enumerate(observers) if _overrides(o, "finished")
        ][::-1]

    def send(self, topic: str, carriers: Sequence[Carrier], *, client_injects: bool) -> object:
        return [o.send(topic, carriers, client_injects=client_injects) for o in self.observers]

    def sent(self, token: object, error: BaseException | None) -> None:
        # in reverse, as leave: each may restore the context current before its own send
        pairs = list(zip(self.observers, _tokens(token, len(self.observers)), strict=True))
        for o, t in reversed(pairs):
            o.sent(t, error)

    def received(
        self,
        records: Mapping[Any, Sequence[Record]],
        skipped: Sequence[SkippedRange[Any]],
        seconds: float,
    ) -> None:
        for o in self.observers:
            o.received(records, skipped, seconds)

    def claimed(
        self, rows: Sequence[ClaimRow], verdicts: Sequence[ClaimVerdict], seconds: float
    ) -> None:
        for o in self.observers:
            o.claimed(rows, verdicts, seconds)

    def guard_unavailable(self, records: int) -> None:
        for o in self.observers:
            o.guard_unavailable(records)

    def unchecked(self, records: Sequence[Record]) -> None:
        for o in self.observers:
            o.unchecked(records)

    def rejected(self, rejections: Sequence[Rejected]) -> None:
        for o in self.observers:
            o.rejected(rejections)

    def dead_letter_written(self, record: Record, error: VerificationError) -> None:
        for o in self.observers:
            o.dead_letter_written(record, error)

    def dead_letter_dropped(self, record: Record, error: VerificationError) -> None:
        for o in self.observers:
            o.dead_letter_dropped(record, error)

    def handing(self, message: ConsumedMessage) -> object:
        return [o.handing(message) for o in self.observers]

    def iterating(self, message: ConsumedMessage) -> ConsumedMessage:
        for o in self.observers:
            o.iterating(message)
        return message

    def iterated(self) -> None:
        # in reverse, as leave: each restores the context current before its own iterating
        for o in reversed(self.observers):
            o.iterated()

    def delivered(self, messages: Sequence[ConsumedMessage]) -> None:
        for o in self.observers:
            o.delivered(messages)

    def processing(self, message: ConsumedMessage) -> object:
        return [o.processing(message) for o in self.observers]

    def enter(self, token: object) -> object:
        return [
            o.enter(t)
            for o, t in zip(self.observers, _tokens(token, len(self.observers)), strict=True)
        ]

    def leave(self, entered: object) -> None:
        # in reverse, as nested context managers would
        pairs = list(zip(self.observers, _tokens(entered, len(self.observers)), strict=True))
        for o, t in reversed(pairs):
            o.leave(t)

    def finished(self, token: object, error: BaseException | None) -> None:
        tokens = _tokens(token, len(self.observers))
        for n, finish in self._finishing:
            finish(tokens[n], error)


def _overrides(observer: Observer, hook: str) -> bool:
    """True when ``observer``'s class defines ``hook`` (not :class:`Observer`'s no-op)."""
    return getattr(type(observer), hook) is not getattr(Observer, hook)


def _both(
    first: Callable[[ConsumedMessage], object], second: Callable[[ConsumedMessage], object]
) -> Callable[[ConsumedMessage], ConsumedMessage]:
    def iterating(message: ConsumedMessage) -> ConsumedMessage:
        first(message)
        second(message)
        return message

    return iterating


M = TypeVar("M", bound="ConsumedMessage")
R = TypeVar("R")
P = TypeVar("P", bound=Hashable)


def observed(
    observer: Observer, handler: Callable[[M], Awaitable[R]]
) -> Callable[[M], Awaitable[R]]:
    """``handler`` between :meth:`Observer.handing` and :meth:`Observer.finished` (itself when
    nobody observes)."""
    if observer is NOOP:
        return handler

    async def handle(message: M) -> R:
        token = observer.handing(message)
        try:
            result = await handler(message)
        except BaseException as exc:
            observer.finished(token, exc)
            raise
        observer.finished(token, None)
        return result

    return handle


def timed_receive(
    gate: Gate,
    records: Mapping[P, Sequence[Record]],
    skipped: Sequence[SkippedRange[P]],
    observer: Observer,
) -> Settling[P]:
    """``gate.receive``, timed for :meth:`Observer.received` when somebody observes."""
    if observer is NOOP:
        return gate.receive(records, skipped)
    started = time.perf_counter()
    batch = gate.receive(records, skipped)
    observer.received(records, skipped, time.perf_counter() - started)
    return batch


def _tokens(token: object, count: int) -> list[object]:
    """One token per observer; None for those attached after the hook that made ``token`` ran
    (an observer added while a front runs gets None tokens until its next message). A token
    that is not a list was made by the first observer alone, before the tee existed."""
    if isinstance(token, list):
        if len(token) == count:  # the usual case: no observer attached since
            return token
        tokens = token
    else:
        tokens = [token]
    return (tokens + [None] * count)[:count]


class Observed(Protocol):
    """What observers attach to: a front's metrics object (``front.metrics``)."""

    observer: Observer


def attach(metrics: Observed, observer: Observer) -> None:
    """Add ``observer`` to a front's metrics object, after any observer already there."""
    current = metrics.observer
    if current is NOOP:
        metrics.observer = observer
    elif isinstance(current, Tee):
        metrics.observer = Tee(*current.observers, observer)
    else:
        metrics.observer = Tee(current, observer)


# -- observers for every front built from now on ------------------------------------------------

#: Makes the observer of a new front from its consumer group and topics (None and () for a
#: producer).
Factory = Callable[[str | None, Sequence[str]], Observer]

_factories: list[Factory] = []


def install(factory: Factory) -> None:
    """Observe every front built from now on (``signed_bus.otel.instrument_all``, ...)."""
    if factory not in _factories:
        _factories.append(factory)


def uninstall(factory: Factory) -> None:
    """Stop observing fronts built from now on with ``factory`` (built ones keep theirs)."""
    if factory in _factories:
        _factories.remove(factory)


def observer_for(group: str | None, topics: Sequence[str] = ()) -> Observer:
    """The observer a new front starts with: NOOP unless factories were installed."""
    if not _factories:
        return NOOP
    observers = [factory(group, topics) for factory in _factories]
    return observers[0] if len(observers) == 1 else Tee(*observers)


def targets(front: object) -> list[tuple[Observed, str | None, Sequence[str]]]:
    """What :func:`attach` observes for ``front``, each with its consumer group and topics: a
    producer or consumer itself (aiokafka or confluent-kafka), a relay's consumer and producer,
    a FastStream :class:`~signed_bus.faststream.SignedBus` (no group: it serves every
    subscriber). The optional fronts are only looked for when their module is loaded."""
    from signed_bus._kafka.consumer import VerifyingConsumer, options_of
    from signed_bus._kafka.producer import SignedProducer
    from signed_bus._kafka.relay import Relay

    if isinstance(front, Relay):
        return targets(front.consumer) + targets(front.producer)
    if isinstance(front, VerifyingConsumer):
        options = options_of(front)
        return [(front.metrics, options.group_id, options.topics)]
    if isinstance(front, SignedProducer):
        return [(front.metrics, None, ())]
    confluent = sys.modules.get("signed_bus.confluent")
    if confluent is not None:
        if isinstance(front, confluent.Relay):
            return targets(front.consumer) + targets(front.producer)
        if isinstance(front, confluent.VerifyingConsumer):
            group, topics = sys.modules["signed_bus.confluent._consumer"].observed_as(front)
            return [(front.metrics, group, topics)]
        if isinstance(front, confluent.SignedProducer):
            return [(front.metrics, None, ())]
    faststream = sys.modules.get("signed_bus.faststream")
    if faststream is not None and isinstance(front, faststream.SignedBus):
        return [(front.metrics, None, ())]
    raise TypeError(f"not a signed-bus producer, consumer, relay or bus: {type(front).__name__}")
