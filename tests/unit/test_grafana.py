"""The Grafana dashboard and the Compose Prometheus config name only what signed-bus exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from signed_bus import Keyring, ProducerOptions, SignedProducer, Signer, generate_hmac_key
from signed_bus.prometheus import instrument

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "signed-bus.json"


def exposed_names() -> set[str]:
    """Every sample name the metrics collector exposes (families print HELP even when empty)."""
    registry = CollectorRegistry()
    signer = Signer(Keyring([generate_hmac_key("k", ["i"])]), kid="k", issuer="i", model="m")
    instrument(SignedProducer(ProducerOptions(bootstrap_servers="127.0.0.1:1"), signer=signer),
               registry=registry)  # fmt: skip
    text = generate_latest(registry).decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (counter|histogram)$", text, flags=re.M):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_names_an_exposed_metric() -> None:
    exposed = exposed_names()
    assert "signed_bus_rejected_total" in exposed
    assert "signed_bus_record_age_seconds_bucket" in exposed
    used = {name for expr in expressions() for name in re.findall(r"signed_bus_\w+", expr)}
    assert used and used <= exposed, sorted(used - exposed)
    # and every counter and histogram has a panel
    bases = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exposed}
    assert {re.sub(r"_(total|bucket)$", "", name) for name in used} == bases


def test_dashboard_queries_group_only_by_the_allowed_labels() -> None:
    for expr in expressions():
        for labels in re.findall(r"by \(([^)]*)\)", expr):
            names = {label.strip() for label in labels.split(",")}
            assert names <= {"topic", "group", "reason", "verdict", "le"}, expr


def test_compose_prometheus_scrapes_every_agent_service() -> None:
    config = (ROOT / "grafana" / "prometheus.yml").read_text()
    compose = (ROOT / "compose" / "docker-compose.yml").read_text()
    targets = re.findall(r"- ([a-z-]+):9464", config)
    assert sorted(targets) == ["action-agent", "auditor", "inference-agent", "planner"]
    for target in targets:
        assert f"\n  {target}:\n    profiles: [agents]" in compose
    assert "profiles: [observability]" in compose
