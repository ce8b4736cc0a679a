"""SignedBus: signing, verification, the replay claim and dead letters as one FastStream
middleware (docs/FASTSTREAM.md). A thin front over the sans-I/O gate
(:mod:`signed_bus._gate`), like :class:`~signed_bus._kafka.consumer.VerifyingConsumer`: the
gate verifies and settles, the shared :class:`~signed_bus._replay.guard.RedisReplayGuard`
claims (one call per consumed message or batch), rejects are dead-lettered through the broker
itself with the same reasons and headers. FastStream owns fetching, acknowledgement and
redelivery: an exception raised here (Redis or the dead-letter topic unavailable for too long)
reaches its ack policy, which with ``AckPolicy.NACK_ON_ERROR`` redelivers the message.

The observer hooks (:mod:`signed_bus._observe`, ``bus.metrics.observer``) see what the other
fronts report: verification, claims, rejections, dead letters, each single message handed to
its handler (a span from the handing until FastStream has published the handler's return
value) or each batch, and every signed publish (trace context added to its headers).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from fast_depends.exceptions import ValidationError as ArgumentsMisfit
from faststream import BaseMiddleware
from faststream._internal.context.repository import ContextRepo
from faststream.exceptions import AckMessage

from signed_bus._deadletter import Omitted
from signed_bus._envelope import MAX_PARENTS
from signed_bus._gate import (
    HELD_FOR_DEAD_LETTERS,
    HELD_FOR_GUARD,
    HELD_FOR_RELAY,
    RECHECK_AFTER_MS,
    ConsumedMessage,
    Gate,
    Record,
    Rejected,
    Settling,
)
from signed_bus._kafka.deadletters import is_too_large
from signed_bus._kafka.options import Backoff
from signed_bus._metrics import ConsumerMetrics
from signed_bus._observe import NOOP, Carrier, observer_for, timed_receive
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import (
    ConfigurationError,
    MalformedEnvelope,
    ReplayGuardUnavailable,
    ReplayStateLost,
    UnsupportedContentType,
    VerificationError,
)
from signed_bus.faststream._records import as_record, letter, readable_headers
from signed_bus.faststream._settings import guarded, rewind, subscriber_problem

__all__ = ["CONTEXT_KEY", "SignedBus", "verified_batch", "verified_message"]

log = logging.getLogger("signed_bus.consumer")

#: The FastStream context key of the verified message (a batch subscriber: the tuple of them):
#: ``signed: ConsumedMessage = Context("signed")`` in a handler's signature.
CONTEXT_KEY = "signed"

# What the running handler consumed (verified), and the digests its publishes name as parents.
_consumed: contextvars.ContextVar[tuple[ConsumedMessage, ...]] = contextvars.ContextVar(
    "signed_bus_faststream_consumed", default=()
)
# The gate that admitted them and when (its clock, ms): a publish re-checks their window.
_admitted: contextvars.ContextVar[tuple[Gate, int] | None] = contextvars.ContextVar(
    "signed_bus_faststream_admitted", default=None
)
# Set while a dead letter is published through the broker: it is not signed.
_raw_publish: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "signed_bus_faststream_raw", default=False
)


def verified_message() -> ConsumedMessage:
    """The verified message the running (single-message) handler consumed.

    Raises LookupError outside a handler of a verifying broker, or in a batch handler with
    more than one message (use :func:`verified_batch`)."""
    consumed = _consumed.get()
    if len(consumed) != 1:
        raise LookupError("no single verified message: not in a single-message signed handler")
    return consumed[0]


def verified_batch() -> tuple[ConsumedMessage, ...]:
    """The verified messages the running handler consumed, in partition and offset order
    (empty outside a handler of a verifying broker)."""
    return _consumed.get()


def payload_of(message: ConsumedMessage) -> object:
    """What the handler is given: the payload decoded per its content type, or the body bytes
    for a content type signed-bus does not decode (authentic all the same: FastStream's own
    decoding, or the handler, takes it from there). A msgpack or JSON body that does not decode
    raises MalformedEnvelope (dead-lettered as malformed)."""
    try:
        return message.payload
    except UnsupportedContentType:
        return message.body


class SignedBus:
    """One FastStream middleware that signs what the broker publishes and verifies what its
    subscribers consume: ``KafkaBroker(..., middlewares=[bus])`` (or a router's
    ``middlewares``), with ``ack_policy=AckPolicy.NACK_ON_ERROR`` on each subscriber, and
    :meth:`check` before the broker starts (``FastStream(broker, on_startup=[...])``).

    - ``signer``: signs every published message for its destination topic and record key
      (a str key is signed as its UTF-8 bytes, which is what the broker sends). Inside a
      handler of a verifying broker, every publish (the handler's return value to its
      ``@publisher``, or ``broker.publish`` from its body) names the consumed messages'
      digests as parents. None: publishes pass unsigned.
    - ``verifier`` and ``guard``: subscribers see only verified, fresh, first-position
      messages; the guard (shared by every consumer group, FastStream or not) is required
      unless the verifier audits. None: consumed messages pass unverified.
    - ``dead_letter_topic``: where rejected records go (the broker publishes them, unsigned),
      with the headers of :mod:`signed_bus._deadletter`; None drops them after logging.
    - ``fail_open``: deliver unchecked while Redis is unavailable (counted); by default the
      message is held (retrying with ``backoff``) for up to ``hold_s``, then its handler
      fails, so the ack policy redelivers it.
    """

    def __init__(
        self,
        *,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        guard: RedisReplayGuard | None = None,
        dead_letter_topic: str | None = None,
        fail_open: bool = False,
        backoff: Backoff | None = None,
        hold_s: float = 30.0,
    ) -> None:
        if signer is None and verifier is None:
            raise ConfigurationError("SignedBus needs a signer, a verifier or both")
        if verifier is None:
            if guard is not None or dead_letter_topic is not None:
                raise ConfigurationError("guard and dead_letter_topic need a verifier")
        elif verifier.audit and guard is not None:
            raise ConfigurationError("audit mode does not check replays: pass guard=None")
        elif not verifier.audit and guard is None:
            raise ConfigurationError("a replay guard is required unless the verifier audits")
        if hold_s < 0:
            raise ConfigurationError("hold_s must be >= 0")
        self._signer = signer
        self._guard = guard
        self._dead_letter_topic = dead_letter_topic
        self._backoff = backoff or Backoff()
        self._hold_s = hold_s
        # no group: one bus serves every subscriber
        self.metrics = ConsumerMetrics(observer=observer_for(None))
        self._gate = Gate(verifier, fail_open=fail_open, metrics=self.metrics) if verifier else None
        self._checked: weakref.WeakSet[Any] = weakref.WeakSet()  # subscribers found right
        self._refusals: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"SignedBus(signer={self._signer!r}, verifying={self._gate is not None}, "
            f"dead_letter_topic={self._dead_letter_topic!r})"
        )

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _Middleware:
        """FastStream builds one middleware per consumed message and per publish."""
        return _Middleware(msg, context=context, bus=self)

    # -- publishing ----------------------------------------------------------------------------

    @staticmethod
    def _sign(cmd: Any, signer: Signer) -> None:
        consumed = _consumed.get()
        if consumed:
            _recheck(consumed)
        parents = [m.verified.digest for m in consumed]
        if len(parents) > MAX_PARENTS:
            raise ConfigurationError(
                f"a batch handler that publishes names every record it consumed as a parent: "
                f"at most {MAX_PARENTS}; subscribe with max_records <= {MAX_PARENTS}"
            )
        topic = cmd.destination
        # each body is signed for the key the broker sends it with: a message's own key
        # (publish_batch of keyed messages, whatever their number), else the command's
        extra = tuple(cmd.extra_bodies or ())
        signed = [
            signer.sign(body, topic=topic, key=_key(cmd.key_for(i)), parents=parents)
            for i, body in enumerate((cmd.body, *extra))
        ]
        cmd.body, cmd.extra_bodies = signed[0], tuple(signed[1:])
        if isinstance(cmd.key, str):
            cmd.key = cmd.key.encode()

    # -- consuming -----------------------------------------------------------------------------

    def check(self, *brokers: Any) -> None:
        """Refuse (ConfigurationError) a subscriber of ``brokers`` (FastStream brokers or
        routers) that this bus guards and whose settings would lose or double-deliver records
        (:func:`~signed_bus.faststream._settings.subscriber_problem`). Call it once the
        subscribers are declared and before the broker starts (``FastStream(broker,
        on_startup=[...])``): then nothing is fetched for a subscriber the bus cannot guard."""
        for subscriber in guarded(brokers, self):
            self._check(subscriber)

    def _check(self, subscriber: object) -> None:
        if subscriber is None or subscriber in self._checked:
            return
        problem = subscriber_problem(subscriber)
        if problem is not None:
            raise ConfigurationError(f"SignedBus cannot guard this subscriber: {problem}")
        self._checked.add(subscriber)

    async def _refuse(self, subscriber: object, msg: Any) -> None:
        """A subscriber started without :meth:`check`: at each of its messages, raise
        ConfigurationError if it cannot be guarded, after rewinding the message (nothing is
        claimed or acknowledged; the subscriber retries with ``backoff`` until it is stopped).
        Under ``ACK_FIRST`` the client commits on its own (librdkafka has stored the offset
        past the record before any middleware ran; an aiokafka auto-commit may run before the
        rewind): only :meth:`check` before the start keeps such a record for sure."""
        try:
            self._check(subscriber)
        except ConfigurationError as exc:
            await rewind(msg)
            attempt = self._refusals.get(subscriber, 0) + 1
            self._refusals[subscriber] = attempt
            log.error("%s: its message is left for redelivery", exc)
            await asyncio.sleep(self._backoff.delay(attempt))
            raise

    async def admit(self, raw: Sequence[Any], broker: Any) -> list[ConsumedMessage]:
        """Verify, claim and dead-letter one consumed message or batch; the messages to hand
        to the handler (raises to have FastStream redeliver, see the class docstring)."""
        gate = self._gate
        assert gate is not None
        records = [as_record(r) for r in raw]
        grouped: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            grouped.setdefault((record.topic, record.partition), []).append(record)
        batch: Settling[tuple[str, int]] = timed_receive(gate, grouped, (), self.metrics.observer)
        held = False
        if batch.verified:
            held = await self._claim(gate, batch)
        delivered: list[ConsumedMessage] = []
        late: list[Rejected] = []
        for _, _, message in batch.entries:
            if message is None:
                continue
            try:
                payload_of(message)  # decoded now: a body that does not decode is rejected
            except VerificationError as exc:
                late.append((message.record, exc))
            else:
                delivered.append(message)
        rejected = gate.take_rejected(batch) + gate.reject(late)
        if rejected:
            await self._dead_letter(rejected, broker)
            held = True
        if held and delivered:
            # the messages waited (Redis, the dead-letter topic): re-check their window
            entries: list[Any] = [((m.topic, m.partition), m.offset + 1, m) for m in delivered]
            stale = gate.recheck(entries, (), HELD_FOR_DEAD_LETTERS if rejected else HELD_FOR_GUARD)
            if stale:
                await self._dead_letter(gate.reject(stale), broker)
                delivered = [m for _, _, m in entries if m is not None]
        gate.metrics.delivered += len(delivered)
        return delivered

    async def misfit(self, message: ConsumedMessage, broker: Any) -> None:
        """Dead-letter a verified message whose payload the handler's types refused."""
        gate = self._gate
        assert gate is not None
        error = MalformedEnvelope(
            "the verified payload does not fit the handler's parameter types",
            kid=message.verified.kid,
            issuer=message.verified.issuer,
        )
        gate.metrics.delivered -= 1
        await self._dead_letter(gate.reject([(message.record, error)]), broker)

    async def _claim(self, gate: Gate, batch: Settling[tuple[str, int]]) -> bool:
        """One claim call; while Redis is unavailable, retry with backoff up to ``hold_s``
        (dropping what went stale), then raise. True if the batch was held."""
        guard = self._guard
        if guard is None:
            gate.settle(batch)
            return False
        deadline = time.monotonic() + self._hold_s
        attempt = 0
        observer = self.metrics.observer
        while True:
            rows = gate.claims(batch)
            started = time.perf_counter()
            try:
                verdicts = await guard.claim(rows, freshness=gate.freshness)
                seconds = time.perf_counter() - started
                gate.settle(batch, verdicts)
                observer.claimed(rows, verdicts, seconds)
                return attempt > 0
            except ReplayGuardUnavailable as exc:
                observer.guard_unavailable(len(rows))
                if gate.fail_open and not isinstance(exc, ReplayStateLost):  # a loss holds
                    observer.unchecked([record for _, _, record, _ in batch.verified])
                    gate.unchecked(batch, exc)
                    return attempt > 0
                attempt += 1
                gate.metrics.guard_retries += 1
                delay = self._backoff.delay(attempt)
                if time.monotonic() + delay > deadline:
                    log.warning(
                        "replay guard unavailable (%s): %d records left for redelivery",
                        exc,
                        len(batch.verified),
                    )
                    raise
                log.warning(
                    "replay guard unavailable (%s): holding %d records; retry %d in %.2fs",
                    exc,
                    len(batch.verified),
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                if gate.drop_stale(batch, HELD_FOR_GUARD) and not batch.verified:
                    return True

    async def _dead_letter(self, rejected: Sequence[Rejected], broker: Any) -> None:
        """Publish the dead letters and wait for the broker to have each; a letter too large
        leaves out the value, then the key. Raises (the message is redelivered) otherwise."""
        observer = self.metrics.observer
        observer.rejected(rejected)
        topic = self._dead_letter_topic
        if topic is None:
            return
        token = _raw_publish.set(True)
        try:
            for rejection, error in rejected:
                record = cast(Record, rejection)  # a FastStream record always decodes
                omit = Omitted.NOTHING
                while True:
                    value, key, headers = letter(record, error, omit)
                    try:
                        await broker.publish(value, topic, key=key, headers=headers)
                    except Exception as exc:
                        if omit < Omitted.VALUE_AND_KEY and _too_large(exc):
                            omit = Omitted(omit + 1)
                            continue
                        raise
                    self.metrics.dead_lettered += 1
                    observer.dead_letter_written(record, error)
                    break
        finally:
            _raw_publish.reset(token)


class _Middleware(BaseMiddleware):
    """The per-message middleware FastStream builds from a :class:`SignedBus`."""

    __slots__ = ("_admitted", "_bus", "_observed", "_token")

    def __init__(self, msg: Any, /, *, context: ContextRepo, bus: SignedBus) -> None:
        super().__init__(msg, context=context)
        self._bus = bus
        self._token: contextvars.Token[tuple[ConsumedMessage, ...]] | None = None
        self._admitted: contextvars.Token[tuple[Gate, int] | None] | None = None
        self._observed: object = None  # the observer's token of a single message

    async def on_receive(self) -> None:
        # before FastStream parses the raw message: its parsers decode every header as UTF-8
        if self._bus._gate is not None and self.msg is not None:
            readable_headers(self.msg)

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        bus = self._bus
        if bus._gate is None:
            return await call_next(msg)
        raw = msg.raw_message
        is_batch = isinstance(raw, tuple)
        await bus._refuse(self.context.get("handler_"), msg)
        delivered = await bus.admit(raw if is_batch else (raw,), self.context.get("broker"))
        if not delivered:
            # everything was rejected (and dead-lettered): acknowledged, and not returning
            # None either, which FastStream would publish to the handler's publishers
            raise AckMessage
        consumed = tuple(delivered)
        # reset in after_processed: the handler's return value is published after this returns
        self._token = _consumed.set(consumed)
        self._admitted = _admitted.set((bus._gate, bus._gate.verifier.clock()))
        observer = bus.metrics.observer
        if is_batch:  # no span: a batch is handed out whole (counted as delivered)
            observer.delivered(consumed)
        else:  # finished in after_processed, after the return value is published
            self._observed = observer.handing(consumed[0])
        payloads = [payload_of(m) for m in consumed]
        if is_batch:
            msg.body = [m.body for m in consumed]
            decoded: object = payloads
        else:
            msg.body = consumed[0].body
            decoded = payloads[0]

        async def decode(_: Any) -> object:
            return decoded

        msg.set_decoder(decode)
        msg.clear_cache()
        with self.context.scope(CONTEXT_KEY, consumed if is_batch else consumed[0]):
            try:
                return await call_next(msg)
            except ValueError as exc:
                # which record of a batch misfits is unknown: the batch is redelivered
                if is_batch or not _arguments_misfit(exc, self.context):
                    raise
                misfit = exc
        # FastStream could not validate the verified payload into the handler's parameters:
        # redelivering it would fail the same way forever, so it is dead-lettered instead
        self._finish(misfit)
        await bus.misfit(consumed[0], self.context.get("broker"))
        raise AckMessage

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        signer = self._bus._signer
        if signer is None or _raw_publish.get():
            return await call_next(cmd)
        SignedBus._sign(cmd, signer)
        observer = self._bus.metrics.observer
        if observer is NOOP:
            return await call_next(cmd)
        # the headers of a batch are shared: one carrier, one send for all its records
        carrier: Carrier = []
        count = 1 + len(cmd.extra_bodies or ())
        token = observer.send(cmd.destination, [carrier] * count, client_injects=False)
        try:
            for name, value in carrier:  # replaces a caller's header of the same name
                cmd.headers[name] = value.decode("latin-1")
            result = await call_next(cmd)
        except BaseException as exc:
            observer.sent(token, exc)
            raise
        observer.sent(token, None)
        return result

    async def after_processed(self, *exc: Any) -> bool | None:
        error = exc[1] if len(exc) > 1 and not isinstance(exc[1], AckMessage) else None
        self._finish(error)
        if self._token is not None:
            _consumed.reset(self._token)
            self._token = None
        if self._admitted is not None:
            _admitted.reset(self._admitted)
            self._admitted = None
        return False

    def _finish(self, error: BaseException | None) -> None:
        token, self._observed = self._observed, None
        if token is not None:
            self._bus.metrics.observer.finished(token, error)


def _recheck(consumed: Sequence[ConsumedMessage]) -> None:
    """Before a handler's output is signed: if the handler ran longer than RECHECK_AFTER_MS,
    the inputs it names as parents must still be fresh (the relay's rule, docs/OPERATIONS.md
    "Freshness re-checks"). A stale one fails the publish, so the handler fails and the ack
    policy redelivers the message, which the gate then dead-letters as stale."""
    admitted = _admitted.get()
    if admitted is None:
        return
    gate, at = admitted
    now = gate.verifier.clock()
    if now - at <= RECHECK_AFTER_MS:
        return
    for message in consumed:
        error = gate.stale(message.record, message.verified, now, HELD_FOR_RELAY)
        if error is not None:
            raise error.with_position(message.topic, message.partition, message.offset)


def _arguments_misfit(exc: ValueError, context: ContextRepo) -> bool:
    """True when FastStream could not validate the decoded payload into the handler's
    parameters (before the handler ran), not when the handler or its return value failed."""
    if isinstance(exc, ArgumentsMisfit):  # an app built with fast_depends' own errors
        return all(item.field_name != "return" for item in exc.error_fields)
    pydantic = sys.modules.get("pydantic")
    if pydantic is None or not isinstance(exc, pydantic.ValidationError):
        return False
    # FastStream validates the arguments with a model named after the handler function
    # (its parameters); a ValidationError the handler raised names the handler's own model
    names = set()
    for item in getattr(context.get("handler_"), "calls", None) or ():
        call = getattr(getattr(item, "handler", None), "_declared_call", None)
        names.add(getattr(call, "__name__", None))
    return exc.title in names


def _key(key: object) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError("a signed record's key must be bytes, str or None")


def _too_large(exc: BaseException) -> bool:
    if is_too_large(exc):  # aiokafka
        return True
    code = getattr(exc.args[0], "code", None) if exc.args else None
    # confluent-kafka: KafkaException(KafkaError(MSG_SIZE_TOO_LARGE = 10))
    return callable(code) and code() == 10
