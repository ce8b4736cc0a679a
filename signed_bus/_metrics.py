"""Counters the Kafka wrappers keep, readable by the application (and by tests).

The counters are plain attributes updated in place on the event loop, so reading them costs
nothing and needs no lock. Export them to any metrics system with :meth:`ConsumerMetrics.snapshot`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from signed_bus._observe import NOOP, Observer

__all__ = ["ConsumerMetrics", "ProducerMetrics"]


@dataclass(slots=True, eq=False)
class ConsumerMetrics:
    """What a :class:`~signed_bus._kafka.consumer.VerifyingConsumer` did since it was created.

    ``rejected`` counts rejected records by reason code (``"bad_signature"``, ``"replay"``, ...;
    ``"undecodable"`` counts ranges of offsets the Kafka client could not decode, one each, also
    counted in ``records``).
    ``same_position`` counts verified records whose nonce was already claimed at this very
    position (they are delivered): another consumer group's copy of the fan-out, or a record
    read again after a crash, a rebalance or a stop before it was committed.
    ``unchecked`` counts records delivered without a replay check (fail-open during a Redis
    outage). ``guard_waiting`` is true while a fail-closed consumer holds a batch and retries the
    replay guard; ``committed`` maps (topic, partition) to the last committed next offset.
    ``dead_letters_dropped`` counts rejected records whose dead letter fit the dead-letter topic
    in no form, not even without their value and key (logged at ERROR; their offsets are
    committed like the others).
    ``observer`` receives the same events as they happen (:mod:`signed_bus.otel`,
    :mod:`signed_bus.prometheus` attach to it); not part of the snapshot.
    """

    records: int = 0
    batches: int = 0
    delivered: int = 0
    same_position: int = 0
    unchecked: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    dead_letter_retries: int = 0
    dead_letters_dropped: int = 0
    guard_retries: int = 0
    guard_waiting: bool = False
    commits: int = 0
    commit_failures: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    observer: Observer = field(default=NOOP, repr=False)

    @property
    def rejected_total(self) -> int:
        """All rejected records, whatever the reason."""
        return sum(self.rejected.values())

    def snapshot(self) -> dict[str, object]:
        """A copy of every counter, safe to keep or serialise."""
        return {
            "records": self.records,
            "batches": self.batches,
            "delivered": self.delivered,
            "same_position": self.same_position,
            "unchecked": self.unchecked,
            "rejected": dict(self.rejected),
            "rejected_total": self.rejected_total,
            "dead_lettered": self.dead_lettered,
            "dead_letter_retries": self.dead_letter_retries,
            "dead_letters_dropped": self.dead_letters_dropped,
            "guard_retries": self.guard_retries,
            "guard_waiting": self.guard_waiting,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "committed": {f"{t}:{p}": o for (t, p), o in self.committed.items()},
        }


@dataclass(slots=True, eq=False)
class ProducerMetrics:
    """What a :class:`~signed_bus._kafka.producer.SignedProducer` signed and handed to Kafka
    (``observer``: see :class:`ConsumerMetrics`)."""

    signed: int = 0
    batches: int = 0
    observer: Observer = field(default=NOOP, repr=False)

    def snapshot(self) -> dict[str, object]:
        return {"signed": self.signed, "batches": self.batches}
