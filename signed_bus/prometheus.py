"""Prometheus metrics for signed-bus (extra ``signed-bus[prometheus]``).

:func:`instrument` registers the metrics of one producer, consumer or relay in a registry
(prometheus_client's default one unless given), :func:`instrument_all` does it for every one
built afterwards. Fronts sharing a registry share its metric families (their series differ by
``topic`` and ``group``). Names, labels and what each counts: docs/OBSERVABILITY.md. Labels are
only ``topic``, ``group``, ``reason`` (and ``verdict`` of claims, three values): never a
partition, offset or key id, so the number of series stays bounded.

Serve them with ``prometheus_client.start_http_server`` (the reference agents do when
``SIGNED_BUS_METRICS_PORT`` is set: producers/observe.py).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from signed_bus._kafka.consumer import VerifyingConsumer, options_of
from signed_bus._kafka.producer import SignedProducer
from signed_bus._kafka.relay import Relay
from signed_bus._observe import Carrier, Observer, attach, install, uninstall
from signed_bus._replay.layout import ClaimVerdict
from signed_bus.errors import REASONS

if TYPE_CHECKING:
    from signed_bus._gate import ConsumedMessage, Record, Rejected, SkippedRange
    from signed_bus._replay.layout import ClaimRow
    from signed_bus.errors import VerificationError

__all__ = ["instrument", "instrument_all", "uninstrument_all"]

Front = SignedProducer | VerifyingConsumer | Relay

_TG = ("topic", "group")
# Verification of one fetch, one claim call: well under a millisecond to a second.
_DURATION_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
_DURATION_BUCKETS += (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))
# Record age at delivery: milliseconds (a live pipeline) to minutes (lag, replays on purpose).
_AGE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_AGE_BUCKETS += (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))


class _Families:
    """The metric families of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Sequence[str] = _TG) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.sent = counter(
            "signed_bus_sent", "Records signed and handed to the Kafka client.", ("topic",)
        )
        self.records = counter(
            "signed_bus_records",
            "Records fetched for verification (a range of offsets the client could not decode "
            "counts as one).",
        )
        self.delivered = counter(
            "signed_bus_delivered", "Verified records handed to the application."
        )
        self.rejected = counter(
            "signed_bus_rejected", "Rejected records by reason code.", ("topic", "group", "reason")
        )
        self.dead_letters = counter(
            "signed_bus_dead_letters", "Dead letters the broker acknowledged."
        )
        self.dead_letters_dropped = counter(
            "signed_bus_dead_letters_dropped",
            "Rejected records whose dead letter fit the dead-letter topic in no form.",
        )
        self.claims = counter(
            "signed_bus_claims",
            "Replay guard verdicts: new, same_position (delivered), replay (rejected).",
            ("topic", "group", "verdict"),
        )
        self.guard_unavailable = counter(
            "signed_bus_guard_unavailable",
            "Claim calls that failed (Redis unavailable): the batch was held or failed open.",
            ("group",),
        )
        self.fail_open = counter(
            "signed_bus_fail_open",
            "Records delivered without a replay check (fail_open during a guard outage).",
        )
        self.verify = Histogram(
            "signed_bus_verify_duration_seconds",
            "Time to verify one fetched batch of records.",
            ("group",),
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.claim = Histogram(
            "signed_bus_claim_duration_seconds",
            "Time of one claim call to the replay guard (one per batch).",
            ("group",),
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.age = Histogram(
            "signed_bus_record_age_seconds",
            "Age of a record when it is handed to the application (now - its signed created_at).",
            _TG,
            buckets=_AGE_BUCKETS,
            registry=registry,
        )


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    with _lock:
        families = _by_registry.get(registry)
        if families is None:
            families = _by_registry[registry] = _Families(registry)
        return families


class Metrics(Observer):
    """Counts one front's events into a registry's families (``group`` "" for a producer)."""

    __slots__ = ("_age", "_delivered", "_f", "_group", "_records", "_rejected")

    def __init__(self, registry: CollectorRegistry, group: str | None, topics: Sequence[str]):
        self._f = _families(registry)
        self._group = group or ""
        # label children cached per topic: labels() costs more than the increment
        self._delivered: dict[str, Any] = {}
        self._age: dict[str, Any] = {}
        self._records: dict[str, Any] = {}
        self._rejected: dict[tuple[str, str], Any] = {}
        if group is not None:
            for topic in topics:
                self._topic(topic)
            self._f.guard_unavailable.labels(self._group)
            self._f.verify.labels(self._group)
            self._f.claim.labels(self._group)

    def _topic(self, topic: str) -> None:
        """Every series of a consumed topic, at 0 until it counts (every reason, every
        verdict), so rates and dashboards see them from the start."""
        f, group = self._f, self._group
        self._records[topic] = f.records.labels(topic, group)
        self._delivered[topic] = f.delivered.labels(topic, group)
        self._age[topic] = f.age.labels(topic, group)
        for reason in REASONS:
            self._rejected[topic, reason] = f.rejected.labels(topic, group, reason)
        for verdict in ClaimVerdict:
            f.claims.labels(topic, group, verdict.value)
        f.dead_letters.labels(topic, group)
        f.dead_letters_dropped.labels(topic, group)
        f.fail_open.labels(topic, group)

    # -- producing -------------------------------------------------------------------------

    def send(self, topic: str, carriers: Sequence[Carrier], *, client_injects: bool) -> object:
        self._f.sent.labels(topic).inc(len(carriers))
        return None

    # -- consuming -------------------------------------------------------------------------

    def received(
        self,
        records: Mapping[Any, Sequence[Record]],
        skipped: Sequence[SkippedRange[Any]],
        seconds: float,
    ) -> None:
        self._f.verify.labels(self._group).observe(seconds)
        counters = self._records
        for batch in records.values():
            if batch:
                topic = batch[0].topic
                if topic not in counters:
                    self._topic(topic)
                counters[topic].inc(len(batch))
        for unreadable in skipped:
            if unreadable.topic not in counters:
                self._topic(unreadable.topic)
            counters[unreadable.topic].inc()

    def claimed(
        self, rows: Sequence[ClaimRow], verdicts: Sequence[ClaimVerdict], seconds: float
    ) -> None:
        f, group = self._f, self._group
        f.claim.labels(group).observe(seconds)
        counts: dict[tuple[str, str], int] = {}
        for row, verdict in zip(rows, verdicts, strict=False):
            key = (row[3], verdict.value)
            counts[key] = counts.get(key, 0) + 1
        for (topic, name), count in counts.items():
            f.claims.labels(topic, group, name).inc(count)

    def guard_unavailable(self, records: int) -> None:
        self._f.guard_unavailable.labels(self._group).inc()

    def unchecked(self, records: Sequence[Record]) -> None:
        for topic, count in _by_topic(records).items():
            self._f.fail_open.labels(topic, self._group).inc(count)

    def rejected(self, rejections: Sequence[Rejected]) -> None:
        counters = self._rejected
        for record, error in rejections:
            key = (record.topic, error.reason)
            counter = counters.get(key)
            if counter is None:  # a topic not seen yet, or a reason code outside REASONS
                counter = counters[key] = self._f.rejected.labels(key[0], self._group, key[1])
            counter.inc()

    def dead_letter_written(self, record: Record, error: VerificationError) -> None:
        self._f.dead_letters.labels(record.topic, self._group).inc()

    def dead_letter_dropped(self, record: Record, error: VerificationError) -> None:
        self._f.dead_letters_dropped.labels(record.topic, self._group).inc()

    def handing(self, message: ConsumedMessage) -> object:
        topic = message.record.topic
        delivered = self._delivered.get(topic)
        if delivered is None:
            self._topic(topic)
            delivered = self._delivered[topic]
        delivered.inc()
        self._age[topic].observe(max(0.0, time.time() - message.verified.created_at / 1000))
        return None

    def iterating(self, message: ConsumedMessage) -> ConsumedMessage:
        self.handing(message)
        return message

    def delivered(self, messages: Sequence[ConsumedMessage]) -> None:
        for message in messages:
            self.handing(message)


def _by_topic(records: Iterable[Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.topic] = counts.get(record.topic, 0) + 1
    return counts


def _fronts(front: Front) -> Iterable[SignedProducer | VerifyingConsumer]:
    if isinstance(front, Relay):
        return (front.consumer, front.producer)
    return (front,)


def instrument(front: Front, *, registry: CollectorRegistry = REGISTRY) -> None:
    """Count ``front``'s events (a relay: its consumer's and producer's) into ``registry``."""
    for one in _fronts(front):
        if isinstance(one, VerifyingConsumer):
            options = options_of(one)
            observer = Metrics(registry, options.group_id, options.topics)
        else:
            observer = Metrics(registry, None, ())
        attach(one.metrics, observer)


class _Factory:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def __call__(self, group: str | None, topics: Sequence[str]) -> Observer:
        return Metrics(self.registry, group, topics)


_installed: dict[int, _Factory] = {}


def instrument_all(*, registry: CollectorRegistry = REGISTRY) -> None:
    """Count the events of every producer, consumer and relay built from now on."""
    factory = _installed.setdefault(id(registry), _Factory(registry))
    install(factory)


def uninstrument_all(*, registry: CollectorRegistry = REGISTRY) -> None:
    """Undo :func:`instrument_all` for fronts built from now on."""
    factory = _installed.pop(id(registry), None)
    if factory is not None:
        uninstall(factory)
