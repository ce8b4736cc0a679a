"""The sans-I/O verification gate every signed-bus consumer drives (in the style of h11).

The gate does no I/O: it imports no Kafka client, no redis and no asyncio (a unit test asserts
it). A front (the aiokafka :class:`~signed_bus._kafka.consumer.VerifyingConsumer`, a relay,
``signed-bus tail``, later a confluent-kafka or thread front) fetches records, hands them to the
gate, sends the claim rows the gate produces to its replay guard, hands the guard's verdicts (or
"unavailable") back, dead-letters what the gate rejects and delivers what it settles. The rules
are in docs/OPERATIONS.md ("Producing and consuming", "Freshness re-checks"):

1. :meth:`Gate.receive` verifies one fetch (a mapping of partition -> records in offset order,
   plus the offset ranges the client could not decode). The freshness reference is the broker's
   append time for LogAppendTime records, else the verifier's clock. A verifier bug rejects the
   record as malformed, never stops the front.
2. :meth:`Gate.claims` gives the claim rows (plain tuples: built per record, kept cheap) for one
   ``guard.claim(rows, freshness=gate.freshness)`` call; none in audit mode.
3. :meth:`Gate.settle` takes the verdicts; :meth:`Gate.unchecked` settles without them (fail
   open); while failing closed the front holds the batch and calls :meth:`Gate.drop_stale`
   before each retry, so no record that expired while held is claimed.
4. :meth:`Gate.take_rejected` hands out the rejections (counted, in partition and offset order,
   each error positioned) for the dead-letter topic; :meth:`Gate.recheck` re-checks records that
   waited after they verified (held for the dead-letter topic, a relay's transform).
5. ``batch.entries`` is then the settled batch: one entry per record (and per skipped range),
   ``(partition, offset after it, message or None)``, in partition and offset order; a None
   message was rejected. The front commits an entry's offset once it is finished.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from signed_bus._envelope import K_IAT, K_ISS, K_NCE
from signed_bus._freshness import Freshness
from signed_bus._metrics import ConsumerMetrics
from signed_bus._verifier import BatchItem, VerifiedMessage, Verifier
from signed_bus.errors import (
    Expired,
    MalformedEnvelope,
    NotYetValid,
    Quarantined,
    ReplayDetected,
    ReplayGuardUnavailable,
    Undecodable,
    VerificationError,
)

if TYPE_CHECKING:  # the guard's module imports redis: only its types are used here
    from signed_bus._replay.guard import ClaimRow, ClaimVerdict

__all__ = [
    "HELD_FOR_DEAD_LETTERS",
    "HELD_FOR_GUARD",
    "HELD_FOR_RELAY",
    "LOG_APPEND_TIME",
    "RECHECK_AFTER_MS",
    "WAITED_IN_BATCH",
    "ConsumedMessage",
    "Entry",
    "Gate",
    "Record",
    "Rejected",
    "Settling",
    "SkippedRange",
]

log = logging.getLogger("signed_bus.consumer")

#: ``timestamp_type`` of a record whose timestamp is the broker's append time.
LOG_APPEND_TIME = 1
# What a record waited for when a re-check finds it stale (ends the rejection's message).
HELD_FOR_GUARD = "the batch was held for the replay guard (Redis unavailable)"
HELD_FOR_DEAD_LETTERS = "the batch was held for the dead-letter topic (unavailable)"
HELD_FOR_RELAY = "the relay's transform ran, before its outputs were published"
WAITED_IN_BATCH = "it waited in its batch (slow handlers, a handler failure, slow acknowledgements)"
#: A record handed out more than this long after it was verified (or last re-checked) is
#: re-checked first: a second is well inside the future skew every window allows.
RECHECK_AFTER_MS = 1_000


P = TypeVar("P", bound=Hashable)
P_co = TypeVar("P_co", bound=Hashable, covariant=True)


class Record(Protocol):
    """What the gate reads of a consumed record (aiokafka's ``ConsumerRecord`` fits; a
    confluent-kafka ``Message`` is wrapped in a small dataclass)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def timestamp_type(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class SkippedRange(Protocol[P_co]):
    """Offsets ``offset`` to ``last_offset`` the Kafka client could not decode
    (:class:`~signed_bus._kafka.fetch.Skipped`); ``tp`` is its partition key."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def last_offset(self) -> int: ...
    @property
    def error(self) -> str: ...
    @property
    def tp(self) -> P_co: ...


@dataclass(frozen=True, slots=True)
class ConsumedMessage:
    """A delivered record: the verified envelope plus where and when Kafka stored it.

    ``claim`` is the replay guard's verdict: NEW (first position seen) or SAME_POSITION (this
    record was claimed before at this very position: another group's fan-out or a redelivery);
    None when no claim was made (audit mode, or ``fail_open`` during a Redis outage).
    ``record`` is the client's record (aiokafka's ``ConsumerRecord``); its value is exactly the
    verified envelope. ``headers`` are the record's unsigned Kafka headers (tracing); never
    trust them.
    """

    # Three fields, the rest read through: built once per record, so kept small.
    verified: VerifiedMessage
    record: Record
    claim: ClaimVerdict | None

    @property
    def payload(self) -> object:
        """The decoded body (msgpack content type), decoded once."""
        return self.verified.payload

    @property
    def body(self) -> bytes:
        """The body bytes exactly as the producer signed them."""
        return self.verified.body

    @property
    def topic(self) -> str:
        return self.record.topic

    @property
    def partition(self) -> int:
        return self.record.partition

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def timestamp(self) -> int:
        """The record's Kafka timestamp (the broker's append time on a LogAppendTime topic)."""
        return self.record.timestamp

    @property
    def timestamp_type(self) -> int:
        """1 for LogAppendTime, 0 for CreateTime."""
        return self.record.timestamp_type

    @property
    def key(self) -> bytes | None:
        return self.record.key

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        """The record's Kafka headers: NOT signed (tracing adds them); never trust them."""
        return self.record.headers


class _ConsumedDraft:
    """A ConsumedMessage under construction: the same slots in the same layout, without the
    frozen dataclass's ``__setattr__``, so :meth:`Gate.settle` writes its fields as plain
    attributes (no Python call each, nor the dataclass ``__init__`` frame) and then assigns its
    ``__class__``, which CPython allows between classes of the same layout."""

    __slots__ = ConsumedMessage.__slots__

    verified: VerifiedMessage
    record: Record
    claim: ClaimVerdict | None


# One entry per consumed record, in delivery order: (partition, offset + 1, message), where the
# message is None for a rejected record.
Entry = tuple[P, int, ConsumedMessage | None]
# A rejected record, or a range of offsets the client could not decode, with its error.
Rejected = tuple["Record | SkippedRange[Hashable]", VerificationError]


class Settling(Generic[P]):
    """One fetch between verification and delivery (see the module docstring)."""

    __slots__ = ("entries", "rejected", "skipped", "verified")

    def __init__(self) -> None:
        self.entries: list[Entry[P]] = []
        # (index in entries, partition, record, message) for every record that verified and
        # is not settled yet
        self.verified: list[tuple[int, P, Record, VerifiedMessage]] = []
        self.rejected: list[Rejected] = []
        # ranges of offsets the client could not decode (also in ``rejected``)
        self.skipped: list[SkippedRange[P]] = []


class Gate:
    """Verification, claim bookkeeping and re-checks for one consumer; no I/O.

    ``metrics`` (plain counters) is updated in place: records, batches, rejections by reason,
    same-position and unchecked deliveries.
    """

    __slots__ = ("_fail_open", "_verifier", "_warned_create_time", "metrics")

    def __init__(
        self,
        verifier: Verifier,
        *,
        fail_open: bool = False,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._verifier = verifier
        self._fail_open = fail_open
        self._warned_create_time: set[str] = set()
        self.metrics = metrics if metrics is not None else ConsumerMetrics()

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def audit(self) -> bool:
        """True when the verifier audits: no freshness, no claims."""
        return self._verifier.audit

    @property
    def freshness(self) -> Freshness:
        """The window every claim carries (the guard keeps each nonce as long as it needs)."""
        return self._verifier.freshness

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    # -- 1. verify -----------------------------------------------------------------------------

    def receive(
        self, records: Mapping[P, Sequence[Record]], skipped: Sequence[SkippedRange[P]] = ()
    ) -> Settling[P]:
        """Verify every record of one fetch; reject the ranges the client could not decode."""
        batch: Settling[P] = Settling()
        entries, verified, rejected = batch.entries, batch.verified, batch.rejected
        warned = self._warned_create_time
        count = 0
        # One verify_batch call for the fetch (the native path checks Ed25519 signatures on
        # several threads); the answers are verify's own, record by record. A record's entry
        # index is its place in ``waiting`` (ranges come after every record), and its entry
        # holds its partition: no per-record bookkeeping object beyond the batch item.
        items: list[BatchItem] = []
        waiting: list[Record] = []
        add_item, add_waiting, add_entry = items.append, waiting.append, entries.append
        for tp, records_of_tp in records.items():
            count += len(records_of_tp)
            for record in records_of_tp:
                if record.timestamp_type == LOG_APPEND_TIME:
                    reference: int | None = record.timestamp
                else:
                    reference = None
                    if record.topic not in warned:
                        self._warn_create_time(record.topic)
                value = record.value
                if value is not None:
                    add_item((value, record.topic, record.key, reference))
                add_waiting(record)
                add_entry((tp, record.offset + 1, None))
        answers = iter(self._verifier.verify_batch(items))
        add_verified = verified.append
        for index, record in enumerate(waiting):
            if record.value is None:
                answer: VerifiedMessage | Exception = MalformedEnvelope("the record has no value")
            else:
                answer = next(answers)
            if answer.__class__ is VerifiedMessage or not isinstance(answer, Exception):
                add_verified((index, entries[index][0], record, answer))
            elif isinstance(answer, VerificationError):
                rejected.append((record, answer))
            else:  # a verifier bug must not stop the consumer
                name = type(answer).__name__
                log.error("the verifier raised %s", name, exc_info=answer)
                rejected.append((record, MalformedEnvelope(f"the verifier raised {name}")))
        # A range follows every record of its partition in the fetch: its entry comes last.
        for unreadable in skipped:
            count += 1
            batch.skipped.append(unreadable)
            rejected.append((unreadable, undecodable(unreadable)))
            entries.append((unreadable.tp, unreadable.last_offset + 1, None))
        self.metrics.records += count
        self.metrics.batches += 1
        return batch

    def _warn_create_time(self, topic: str) -> None:
        self._warned_create_time.add(topic)
        log.warning(
            "topic %s carries CreateTime timestamps: freshness is checked against this "
            "consumer's clock, so a lagging consumer rejects honest records as expired; "
            "create the topic with message.timestamp.type=LogAppendTime",
            topic,
        )

    # -- 2./3. claim ---------------------------------------------------------------------------

    def claims(self, batch: Settling[P]) -> list[ClaimRow]:
        """The claim rows of the records still to settle, in ``batch.verified`` order (empty in
        audit mode, where :meth:`settle` takes no verdicts)."""
        if self._verifier.audit:
            return []
        # Plain tuples, not Claim objects: built once per record, so kept cheap (the header
        # map's items rather than the message's properties: one dict read each, no call).
        rows: list[ClaimRow] = []
        add = rows.append
        for _, _, r, m in batch.verified:
            h = m._header
            add((h[K_ISS], h[K_NCE], h[K_IAT], r.topic, r.partition, r.offset))
        return rows

    def settle(
        self, batch: Settling[P], verdicts: Sequence[ClaimVerdict | None] | None = None
    ) -> None:
        """Settle the verified records with the guard's verdicts (one per claim row; None for
        audit mode): NEW and SAME_POSITION are delivered, REPLAY is rejected."""
        verified = batch.verified
        if verdicts is None:
            if not self._verifier.audit and verified:
                raise ValueError("settle needs the guard's verdicts unless the verifier audits")
            verdicts = [None] * len(verified)
        elif len(verdicts) != len(verified):
            raise ReplayGuardUnavailable("the replay guard returned a wrong number of verdicts")
        entries, rejected = batch.entries, batch.rejected
        metrics = self.metrics
        # The enum's members, taken from the verdicts themselves (its module imports redis);
        # compared by identity per record, as cheap as before the gate existed.
        kind = next((type(v) for v in verdicts if v is not None), None)
        replay = kind.REPLAY if kind is not None else None
        same = kind.SAME_POSITION if kind is not None else None
        held = kind.QUARANTINED if kind is not None else None
        for (index, tp, record, message), verdict in zip(verified, verdicts, strict=True):
            if (verdict is replay or verdict is held) and verdict is not None:
                error = _refused(verdict is held, message)
                rejected.append((record, error))
                continue
            if verdict is same and same is not None:
                metrics.same_position += 1
            # The dataclass __init__ without its frame (typed Any: it becomes the message).
            draft: Any = _ConsumedDraft()
            draft.verified = message
            draft.record = record
            draft.claim = verdict
            draft.__class__ = ConsumedMessage
            entries[index] = (tp, record.offset + 1, draft)
        verified.clear()

    def unchecked(self, batch: Settling[P], error: ReplayGuardUnavailable) -> None:
        """Fail open: settle the batch without a replay check (counted as ``unchecked``)."""
        count = len(batch.verified)
        self.metrics.unchecked += count
        log.warning(
            "replay guard unavailable (%s): delivering %d records UNCHECKED (fail_open=True)",
            error,
            count,
        )
        verified = batch.verified
        entries = batch.entries
        for index, tp, record, message in verified:
            entries[index] = (tp, record.offset + 1, ConsumedMessage(message, record, None))
        verified.clear()

    def drop_stale(self, batch: Settling[P], held_for: str = HELD_FOR_GUARD) -> int:
        """Reject the held, not yet settled records that are no longer fresh (Expired or
        NotYetValid, by the verifier's own rule); how many.

        The guard keeps a nonce for its window after the claim, which covers a record claimed
        within moments of its verification. A batch held while Redis is down breaks that: a
        copy verified at the edge of the window and claimed after the original's nonce expired
        would come back NEW, and a record whose expires_at passed must not be delivered.
        Called only after a hold, never on the hot path.
        """
        now = self._verifier.clock()
        verified = batch.verified
        kept = []
        for item in verified:
            _, _, record, message = item
            error = self.stale(record, message, now, held_for)
            if error is None:
                kept.append(item)
            else:
                batch.rejected.append((record, error))
        dropped = len(verified) - len(kept)
        if dropped:
            log.warning(
                "%d held record(s) went stale while the replay guard was unavailable: "
                "rejected, not claimed",
                dropped,
            )
            verified[:] = kept
        return dropped

    # -- 4. rejections and re-checks -------------------------------------------------------------

    def take_rejected(self, batch: Settling[P]) -> list[Rejected]:
        """Hand out (and forget) the batch's rejections: see :meth:`reject`."""
        rejected, batch.rejected = batch.rejected, []
        return self.reject(rejected)

    def reject(self, rejected: Sequence[Rejected]) -> list[Rejected]:
        """Count and log rejections; each error positioned at its record, in partition and
        offset order (replays are found after the verification failures), ready to
        dead-letter."""
        metrics = self.metrics
        positioned: list[Rejected] = []
        ordered = sorted(rejected, key=lambda item: (item[0].partition, item[0].offset))
        for record, error in ordered:
            error = error.with_position(record.topic, record.partition, record.offset)
            metrics.rejected[error.reason] += 1
            log.warning("rejected record: %s", error)
            positioned.append((record, error))
        return positioned

    def stale(
        self, record: Record, message: VerifiedMessage, now: int, held_for: str
    ) -> VerificationError | None:
        """The freshness error of a verified record that waited (``held_for``) after it
        verified, or None while it is still fresh: :meth:`Verifier.check_fresh`, the rule
        :meth:`Verifier.verify` applied, with the record's reference time."""
        if record.timestamp_type == LOG_APPEND_TIME:
            reference: int | None = record.timestamp
        else:
            reference = None
        try:
            self._verifier.check_fresh(message, reference_ms=reference, now=now)
        except (Expired, NotYetValid) as exc:
            return type(exc)(
                f"{exc.message}: it went stale while {held_for}", kid=exc.kid, issuer=exc.issuer
            )
        return None

    def recheck(
        self, entries: list[Entry[P]], revoked: Sequence[P] | set[P], held_for: str
    ) -> list[Rejected]:
        """Re-check the deliverable ``entries`` after they waited: each stale one becomes a
        rejected entry (None message) in place. Returns the new rejections, not yet counted
        (pass them to :meth:`reject`). Entries of ``revoked`` partitions are their new
        owner's and left alone."""
        now = self._verifier.clock()
        stale: list[Rejected] = []
        for index, (tp, next_offset, message) in enumerate(entries):
            if message is None or tp in revoked:
                continue
            error = self.stale(message.record, message.verified, now, held_for)
            if error is not None:
                entries[index] = (tp, next_offset, None)
                stale.append((message.record, error))
        if stale:
            log.warning(
                "%d record(s) went stale while %s: rejected, not delivered", len(stale), held_for
            )
        return stale


def undecodable(skipped: SkippedRange[Hashable]) -> Undecodable:
    """The rejection of a range of offsets the Kafka client could not decode."""
    span = (
        f"offset {skipped.offset}"
        if skipped.last_offset == skipped.offset
        else f"offsets {skipped.offset} to {skipped.last_offset} (the rest of its record batch)"
    )
    return Undecodable(
        f"the Kafka client could not decode {span}: {skipped.error}; skipped",
        last_offset=skipped.last_offset,
    )


def _refused(quarantined: bool, message: VerifiedMessage) -> VerificationError:
    """The error of a record the guard refused: a replay, or quarantined after a state loss."""
    if quarantined:
        return Quarantined(
            "created before the replay state was lost, on a topic no rebuild covered",
            kid=message.kid,
            issuer=message.issuer,
        )
    return ReplayDetected(
        "nonce already claimed at another position", kid=message.kid, issuer=message.issuer
    )
