"""The observer hooks without services: lazy imports, the tee, and the agents' metrics port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import pytest

from producers.observe import METRICS_PORT_ENV, metrics_port
from signed_bus._metrics import ConsumerMetrics
from signed_bus._observe import (
    NOOP,
    Carrier,
    Observer,
    Tee,
    attach,
    install,
    observer_for,
    uninstall,
)

if TYPE_CHECKING:
    from signed_bus._gate import ConsumedMessage
    from signed_bus._replay.layout import ClaimRow


def test_importing_signed_bus_imports_no_optional_integration() -> None:
    # Not opentelemetry itself: redis-py imports it when it is installed (its own metrics).
    code = (
        "import sys, signed_bus, signed_bus._observe;"
        "names = ('signed_bus.otel', 'signed_bus.prometheus', 'prometheus_client');"
        "print(','.join(m for m in names if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


class Recording(Observer):
    __slots__ = ("calls", "name")

    def __init__(self, name: str, calls: list[tuple[str, str, object]]) -> None:
        self.name = name
        self.calls = calls

    def send(self, topic: str, carriers: Sequence[Carrier], *, client_injects: bool) -> object:
        self.calls.append((self.name, "send", topic))
        return f"{self.name}-token"

    def sent(self, token: object, error: BaseException | None) -> None:
        self.calls.append((self.name, "sent", token))

    def enter(self, token: object) -> object:
        self.calls.append((self.name, "enter", token))
        return f"{self.name}-entered"

    def leave(self, entered: object) -> None:
        self.calls.append((self.name, "leave", entered))


def test_attach_chains_observers_and_each_gets_its_own_token() -> None:
    calls: list[tuple[str, str, object]] = []
    metrics = ConsumerMetrics()
    assert metrics.observer is NOOP
    attach(metrics, Recording("a", calls))
    attach(metrics, Recording("b", calls))
    observer = metrics.observer
    assert isinstance(observer, Tee) and len(observer.observers) == 2
    token = observer.send("t", [[]], client_injects=False)
    observer.sent(token, None)
    observer.leave(observer.enter(token))
    assert calls == [
        ("a", "send", "t"),
        ("b", "send", "t"),
        ("b", "sent", "b-token"),  # in reverse: the last one in ends first
        ("a", "sent", "a-token"),
        ("a", "enter", "a-token"),
        ("b", "enter", "b-token"),
        ("b", "leave", "b-entered"),  # in reverse, as nested context managers
        ("a", "leave", "a-entered"),
    ]


def test_installed_factories_observe_fronts_built_afterwards() -> None:
    seen: list[tuple[str | None, tuple[str, ...]]] = []

    def factory(group: str | None, topics: Sequence[str]) -> Observer:
        seen.append((group, tuple(topics)))
        return Recording(group or "producer", [])

    assert observer_for("g", ["t"]) is NOOP
    install(factory)
    try:
        observer = observer_for("g", ["t"])
        assert isinstance(observer, Recording) and observer.name == "g"
    finally:
        uninstall(factory)
    assert observer_for("g", ["t"]) is NOOP
    assert seen == [("g", ("t",))]


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "-1", "80x", "9" * 40, "1e3"])
def test_a_bad_metrics_port_names_the_variable_and_exits_2(
    raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        metrics_port({METRICS_PORT_ENV: raw})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and METRICS_PORT_ENV in err
    assert len(err) < 120  # a 40-digit value is not echoed whole


@pytest.mark.parametrize(("raw", "port"), [("", None), ("  ", None), ("9100", 9100)])
def test_the_metrics_port(raw: str, port: int | None) -> None:
    assert metrics_port({METRICS_PORT_ENV: raw}) == port
    assert metrics_port({}) is None


def test_an_observer_attached_while_a_front_runs_gets_no_token_until_its_next_message() -> None:
    calls: list[tuple[str, str, object]] = []
    metrics = ConsumerMetrics()
    attach(metrics, Recording("a", calls))
    token = metrics.observer.send("t", [[]], client_injects=False)  # before "b" is attached
    attach(metrics, Recording("b", calls))
    metrics.observer.sent(token, None)
    assert calls[-2:] == [("b", "sent", None), ("a", "sent", "a-token")]


class Iterating(Recording):
    __slots__ = ()

    def iterating(self, message: ConsumedMessage) -> ConsumedMessage:
        self.calls.append((self.name, "iterating", message))
        return message


class Iterated(Recording):
    __slots__ = ()

    def iterated(self) -> None:
        self.calls.append((self.name, "iterated", None))


@pytest.mark.parametrize("kinds", ["", "a", "b", "ab", "aab", "abab", "ba"])
def test_a_tee_calls_every_observer_that_iterates_in_order(kinds: str) -> None:
    """a: observes each record handed out by async for; b: each end of a loop body, called
    in reverse (each may restore the context it made current, as nested managers would)."""
    calls: list[tuple[str, str, object]] = []
    observers = [
        (Iterating if kind == "a" else Iterated)(f"{kind}{n}", calls)
        for n, kind in enumerate(kinds)
    ]
    tee = Tee(Recording("plain", calls), *observers)
    message = cast("ConsumedMessage", object())
    assert tee.iterating(message) is message
    tee.iterated()
    expected: list[tuple[str, str, object]] = [
        (o.name, "iterating", message) for o in observers if isinstance(o, Iterating)
    ]
    expected += [(o.name, "iterated", None) for o in observers[::-1] if isinstance(o, Iterated)]
    assert calls == expected


def test_claims_are_counted_by_topic_and_verdict() -> None:
    from prometheus_client import CollectorRegistry

    from signed_bus._replay.layout import ClaimVerdict
    from signed_bus.prometheus import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry, "g", ["a"])
    new, same, replay, held = (
        ClaimVerdict.NEW,
        ClaimVerdict.SAME_POSITION,
        ClaimVerdict.REPLAY,
        ClaimVerdict.QUARANTINED,
    )

    def rows(*topics: str) -> list[ClaimRow]:
        return [("i", b"n", 0, topic, 0, n) for n, topic in enumerate(topics)]

    metrics.claimed(rows("a", "a", "a", "a", "a"), [new, same, new, replay, held], 0.001)
    metrics.claimed(rows("a", "b", "a", "b"), [new, new, replay, same], 0.001)

    def value(topic: str, verdict: str) -> float | None:
        labels = {"topic": topic, "group": "g", "verdict": verdict}
        return registry.get_sample_value("signed_bus_claims_total", labels)

    assert [value("a", v.value) for v in ClaimVerdict] == [3, 1, 2, 1]
    assert [value("b", v.value) for v in ClaimVerdict] == [1, 1, None, None]


def test_delivered_records_are_counted_by_their_age_observations() -> None:
    """``signed_bus_delivered`` is read from the age histogram's buckets: each delivered record,
    whichever hook handed it out, counts once in both; a consumed topic starts at 0."""
    from prometheus_client import CollectorRegistry

    from signed_bus.prometheus import Metrics

    from .test_otel_parents import message

    registry = CollectorRegistry()
    metrics = Metrics(registry, "g", ["t", "idle"])
    for offset in range(3):
        metrics.iterated()
        metrics.iterating(message([], offset))
    metrics.handing(message([], 3))
    metrics.delivered([message([], 4), message([], 5)])

    def sample(name: str, topic: str) -> float | None:
        return registry.get_sample_value(name, {"topic": topic, "group": "g"})

    assert sample("signed_bus_delivered_total", "t") == 6
    assert sample("signed_bus_record_age_seconds_count", "t") == 6
    assert sample("signed_bus_delivered_total", "idle") == 0
    assert sample("signed_bus_record_age_seconds_count", "idle") == 0
    age = registry.get_sample_value(
        "signed_bus_record_age_seconds_bucket", {"topic": "t", "group": "g", "le": "+Inf"}
    )
    assert age == 6


class Finishing(Recording):
    __slots__ = ()

    def handing(self, message: ConsumedMessage) -> object:
        return f"{self.name}-handed"

    def finished(self, token: object, error: BaseException | None) -> None:
        self.calls.append((self.name, "finished", token))


def test_a_tee_finishes_each_observer_with_its_own_token() -> None:
    calls: list[tuple[str, str, object]] = []
    metrics = ConsumerMetrics()
    for observer in (Recording("a", calls), Finishing("b", calls), Recording("c", calls)):
        attach(metrics, observer)
    message = cast("ConsumedMessage", object())
    token = metrics.observer.handing(message)
    attach(metrics, Finishing("d", calls))  # attached while the message is handled
    metrics.observer.finished(token, None)
    metrics.observer.finished(metrics.observer.handing(message), None)
    assert calls == [  # in reverse: the last attached finishes first, as nested managers
        ("d", "finished", None),
        ("b", "finished", "b-handed"),
        ("d", "finished", "d-handed"),
        ("b", "finished", "b-handed"),
    ]
