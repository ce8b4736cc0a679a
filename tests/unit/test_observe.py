"""The observer hooks without services: lazy imports, the tee, and the agents' metrics port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

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
        ("a", "sent", "a-token"),
        ("b", "sent", "b-token"),
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
    assert calls[-2:] == [("a", "sent", "a-token"), ("b", "sent", None)]
