"""Prometheus metrics for signed-bus (extra ``signed-bus[prometheus]``).

:func:`instrument` registers the metrics of one producer, consumer or relay in a registry
(prometheus_client's default one unless given), :func:`instrument_all` does it for every one
built afterwards. Fronts sharing a registry share its metric families (their series differ by
``topic`` and ``group``): one collector per registry over plain counters the event loop
increments without a lock, read when the registry is scraped. Names, labels and what each
counts: docs/OBSERVABILITY.md. Labels are only ``topic``, ``group``, ``reason`` (and ``verdict``
of claims, three values): never a partition, offset or key id, so the number of series stays
bounded.

Serve them with ``prometheus_client.start_http_server`` (the reference agents do when
``SIGNED_BUS_METRICS_PORT`` is set: producers/observe.py).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from signed_bus._observe import Carrier, Observer, attach, install, targets, uninstall
from signed_bus._replay.layout import ClaimVerdict
from signed_bus.errors import REASONS

if TYPE_CHECKING:
    from signed_bus._gate import ConsumedMessage, Record, Rejected, SkippedRange
    from signed_bus._replay.layout import ClaimRow
    from signed_bus.errors import VerificationError

__all__ = ["instrument", "instrument_all", "uninstrument_all"]

_TG = ("topic", "group")
_time = time.time
# Verification of one fetch, one claim call: well under a millisecond to a second.
_DURATION_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
_DURATION_BUCKETS += (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))
# Record age at delivery: milliseconds (a live pipeline) to minutes (lag, replays on purpose).
_AGE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_AGE_BUCKETS += (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))


class _Counter:
    """One counter family: a plain cell per label values, incremented on the event loop and read
    by the scrape (an int read is atomic; no lock on the hot path)."""

    __slots__ = ("cells", "doc", "labels", "name")

    def __init__(self, name: str, doc: str, labels: Sequence[str] = _TG) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.cells: dict[tuple[str, ...], list[float]] = {}

    def cell(self, *values: str) -> list[float]:
        """The cell of ``values`` (created at 0: pre-initialised series)."""
        return self.cells.setdefault(values, [0])

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for values, cell in list(self.cells.items()):
            family.add_metric(values, cell[0])
        return family


class _Histogram:
    """One histogram family: per label values, a count per bucket (not cumulative) and the sum
    (index -1); ``_count`` is derived from the buckets at scrape time, so it always equals the
    ``+Inf`` bucket."""

    __slots__ = ("bounds", "cells", "doc", "labels", "name")

    def __init__(
        self, name: str, doc: str, labels: Sequence[str], bounds: tuple[float, ...]
    ) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, tuple(labels), bounds
        self.cells: dict[tuple[str, ...], list[float]] = {}

    def cell(self, *values: str) -> list[float]:
        return self.cells.setdefault(values, [0] * (len(self.bounds) + 1))

    def observe(self, cell: list[float], value: float) -> None:
        cell[bisect_left(self.bounds, value)] += 1
        cell[-1] += value

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for values, cell in list(self.cells.items()):
            counts = list(cell)
            cumulative, total = [], 0.0
            for bound, count in zip(self.bounds, counts, strict=False):
                total += count
                cumulative.append(("+Inf" if bound == math.inf else repr(bound), total))
            family.add_metric(values, cumulative, sum_value=counts[-1])
        return family


class _Observations:
    """A counter family that counts the observations of a histogram family with the same
    labels, read from its buckets at scrape time (``signed_bus_delivered``: every delivered
    record's age is observed, so the hot path updates one cell, not two)."""

    __slots__ = ("doc", "histogram", "name")

    def __init__(self, name: str, doc: str, histogram: _Histogram) -> None:
        self.name, self.doc, self.histogram = name, doc, histogram

    def cell(self, *values: str) -> list[float]:
        return self.histogram.cell(*values)

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.histogram.labels)
        for values, cell in list(self.histogram.cells.items()):
            family.add_metric(values, sum(cell[:-1]))
        return family


class _Families(Collector):
    """The metric families of one registry (a custom collector over plain cells)."""

    def __init__(self) -> None:
        self.sent = _Counter(
            "signed_bus_sent", "Records signed and handed to the Kafka client.", ("topic",)
        )
        self.records = _Counter(
            "signed_bus_records",
            "Records fetched for verification (a range of offsets the client could not decode "
            "counts as one).",
        )
        age = _Histogram(
            "signed_bus_record_age_seconds",
            "Age of a record when it is handed to the application (now - its signed created_at).",
            _TG,
            _AGE_BUCKETS,
        )
        self.delivered = _Observations(
            "signed_bus_delivered", "Verified records handed to the application.", age
        )
        self.rejected = _Counter(
            "signed_bus_rejected", "Rejected records by reason code.", ("topic", "group", "reason")
        )
        self.dead_letters = _Counter(
            "signed_bus_dead_letters", "Dead letters the broker acknowledged."
        )
        self.dead_letters_dropped = _Counter(
            "signed_bus_dead_letters_dropped",
            "Rejected records whose dead letter fit the dead-letter topic in no form.",
        )
        self.claims = _Counter(
            "signed_bus_claims",
            "Replay guard verdicts: new, same_position (delivered), replay (rejected).",
            ("topic", "group", "verdict"),
        )
        self.guard_unavailable = _Counter(
            "signed_bus_guard_unavailable",
            "Claim calls that failed (Redis unavailable): the batch was held or failed open.",
            ("group",),
        )
        self.fail_open = _Counter(
            "signed_bus_fail_open",
            "Records delivered without a replay check (fail_open during a guard outage).",
        )
        self.verify = _Histogram(
            "signed_bus_verify_duration_seconds",
            "Time to verify one fetched batch of records.",
            ("group",),
            _DURATION_BUCKETS,
        )
        self.claim = _Histogram(
            "signed_bus_claim_duration_seconds",
            "Time of one claim call to the replay guard (one per batch).",
            ("group",),
            _DURATION_BUCKETS,
        )
        self.age = age

    def collect(self) -> Iterator[Metric]:
        for family in vars(self).values():
            yield family.collect()


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    with _lock:
        families = _by_registry.get(registry)
        if families is None:
            families = _by_registry[registry] = _Families()
            registry.register(families)
        return families


class Metrics(Observer):
    """Counts one front's events into a registry's families (``group`` "" for a producer)."""

    __slots__ = ("_ages", "_f", "_group", "_records", "_rejected")

    def __init__(self, registry: CollectorRegistry, group: str | None, topics: Sequence[str]):
        self._f = _families(registry)
        self._group = group or ""
        # the cells of this front's hot series, per topic
        self._ages: dict[str, list[float]] = {}  # delivered records: their ages
        self._records: dict[str, list[float]] = {}
        self._rejected: dict[tuple[str, str], list[float]] = {}
        if group is not None:
            for topic in topics:
                self._topic(topic)
            self._f.guard_unavailable.cell(self._group)
            self._f.verify.cell(self._group)
            self._f.claim.cell(self._group)

    def _topic(self, topic: str) -> None:
        """Every series of a consumed topic, at 0 until it counts (every reason, every
        verdict), so rates and dashboards see them from the start."""
        f, group = self._f, self._group
        self._records[topic] = f.records.cell(topic, group)
        self._ages[topic] = f.age.cell(topic, group)  # signed_bus_delivered counts them
        for reason in REASONS:
            self._rejected[topic, reason] = f.rejected.cell(topic, group, reason)
        for verdict in ClaimVerdict:
            f.claims.cell(topic, group, verdict.value)
        f.dead_letters.cell(topic, group)
        f.dead_letters_dropped.cell(topic, group)
        f.fail_open.cell(topic, group)

    # -- producing -------------------------------------------------------------------------

    def send(self, topic: str, carriers: Sequence[Carrier], *, client_injects: bool) -> object:
        self._f.sent.cell(topic)[0] += len(carriers)
        return None

    # -- consuming -------------------------------------------------------------------------

    def received(
        self,
        records: Mapping[Any, Sequence[Record]],
        skipped: Sequence[SkippedRange[Any]],
        seconds: float,
    ) -> None:
        f = self._f
        f.verify.observe(f.verify.cell(self._group), seconds)
        cells = self._records
        for batch in records.values():
            if batch:
                topic = batch[0].topic
                if topic not in cells:
                    self._topic(topic)
                cells[topic][0] += len(batch)
        for unreadable in skipped:
            if unreadable.topic not in cells:
                self._topic(unreadable.topic)
            cells[unreadable.topic][0] += 1

    def claimed(
        self, rows: Sequence[ClaimRow], verdicts: Sequence[ClaimVerdict], seconds: float
    ) -> None:
        f, group = self._f, self._group
        f.claim.observe(f.claim.cell(group), seconds)
        # Counted in C: a batch is almost always of one topic, whose verdicts list.count finds
        # by identity (hashing an enum member, as a Counter of verdicts would, calls Python).
        topics = set(map(itemgetter(3), rows))
        if len(topics) == 1:
            (topic,) = topics
            for verdict in ClaimVerdict:
                count = verdicts.count(verdict)
                if count:
                    f.claims.cell(topic, group, verdict.value)[0] += count
            return
        counts = Counter(zip(map(itemgetter(3), rows), verdicts, strict=False))
        for (topic, verdict), count in counts.items():
            f.claims.cell(topic, group, verdict.value)[0] += count

    def guard_unavailable(self, records: int) -> None:
        self._f.guard_unavailable.cell(self._group)[0] += 1

    def unchecked(self, records: Sequence[Record]) -> None:
        for topic, count in _by_topic(records).items():
            self._f.fail_open.cell(topic, self._group)[0] += count

    def rejected(self, rejections: Sequence[Rejected]) -> None:
        cells = self._rejected
        for record, error in rejections:
            key = (record.topic, error.reason)
            cell = cells.get(key)
            if cell is None:  # a topic not seen yet, or a reason code outside REASONS
                cell = cells[key] = self._f.rejected.cell(key[0], self._group, key[1])
            cell[0] += 1

    def dead_letter_written(self, record: Record, error: VerificationError) -> None:
        self._f.dead_letters.cell(record.topic, self._group)[0] += 1

    def dead_letter_dropped(self, record: Record, error: VerificationError) -> None:
        self._f.dead_letters_dropped.cell(record.topic, self._group)[0] += 1

    def handing(self, message: ConsumedMessage) -> object:
        self.iterating(message)
        return None

    def iterating(self, message: ConsumedMessage) -> ConsumedMessage:
        # per delivered record (handing, delivered): its age observed inline, which also counts
        # it as delivered (see _Observations)
        cell = self._ages.get(message.record.topic)
        if cell is None:
            self._topic(message.record.topic)
            cell = self._ages[message.record.topic]
        age = _time() - message.verified.created_at / 1000
        if age < 0:
            age = 0.0
        cell[bisect_left(_AGE_BUCKETS, age)] += 1
        cell[-1] += age
        return message

    def delivered(self, messages: Sequence[ConsumedMessage]) -> None:
        for message in messages:
            self.handing(message)


def _by_topic(records: Iterable[Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.topic] = counts.get(record.topic, 0) + 1
    return counts


def instrument(front: object, *, registry: CollectorRegistry = REGISTRY) -> None:
    """Count ``front``'s events into ``registry``: a producer, consumer or relay (a relay: its
    consumer's and producer's), aiokafka or confluent-kafka, or a FastStream ``SignedBus``."""
    for metrics, group, topics in targets(front):
        attach(metrics, Metrics(registry, group, topics))


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
