"""The reference agents' /metrics on a real broker and Redis: the exposition passes the checks
``promtool check metrics`` makes (Prometheus' binary is not installable here: the text is parsed
with prometheus_client's parser and the exposition rules are checked on it), and the counters
are the numbers the consumer's own counters (what the demo report prints) hold."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from producers.observe import Served, observe
from signed_bus import (
    ClaimVerdict,
    Outgoing,
    ProducerOptions,
    SignedProducer,
    VerifyingConsumer,
)
from signed_bus.errors import REASONS
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    guard,
    keyring,
    signer,
    verifier,
)

pytestmark = pytest.mark.integration

ALLOWED_LABELS = {"topic", "group", "reason", "verdict"}
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("SIGNED_BUS_METRICS_PORT", str(free_port()))
    monkeypatch.setenv("SIGNED_BUS_METRICS_ADDR", "127.0.0.1")
    handle = observe()
    try:
        yield handle
    finally:
        handle.close()


def check_exposition(text: str) -> dict[str, Any]:
    """What ``promtool check metrics`` checks, on prometheus_client's parse of ``text``;
    returns the families by name."""
    families = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"{family.name} exposed twice"
        families[family.name] = family
        assert NAME.fullmatch(family.name)
        if not family.name.startswith("signed_bus_"):
            continue
        assert family.documentation, f"{family.name} has no HELP"
        if family.type == "gauge" and family.name.endswith("_created"):
            continue  # prometheus_client's creation time of a counter or histogram series
        assert family.type in ("counter", "histogram"), family.type
        if family.type == "counter":
            assert f"# TYPE {family.name}_total counter" in text  # promtool: counters end _total
            assert not family.name.endswith("_total")  # the parser strips it from the family
        else:
            assert family.name.endswith("_seconds"), f"{family.name}: base unit in the name"
        buckets: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            assert set(labels) <= ALLOWED_LABELS, f"{sample.name} labelled {sorted(labels)}"
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in seen, f"duplicate series {key}"
            seen.add(key)
            assert not math.isnan(sample.value) and sample.value >= 0
            if family.type == "counter":
                assert sample.name in (f"{family.name}_total", f"{family.name}_created")
            elif sample.name.endswith("_bucket"):
                buckets.setdefault(tuple(sorted(labels.items())), []).append(sample)
        for series in buckets.values():
            bounds = [float(s.labels["le"]) for s in series]
            assert bounds == sorted(bounds) and bounds[-1] == math.inf
            counts = [s.value for s in series]
            assert counts == sorted(counts), "bucket counts must be cumulative"
    return families


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name]
    total = f"{name}_total" if family.type == "counter" else f"{name}_count"
    matches = [
        s.value
        for s in family.samples
        if s.name == total and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (name, labels, matches)
    return float(matches[0])


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.headers.get_content_type() == "text/plain"
            return str(r.read().decode())

    return await asyncio.to_thread(get)


async def test_metrics_pass_the_exposition_checks_and_match_the_counters(
    served: Served,
    unique_topic: Any,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    topic = await unique_topic("observed", partitions=2)
    dead = await unique_topic("observed-dlq")
    ring = keyring()
    sign = signer(ring)
    async with SignedProducer(
        ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=sign
    ) as producer:
        await producer.send_batch(topic, [Outgoing({"n": n}, key=b"k%d" % n) for n in range(5)])
        copied = sign.sign({"n": "copied"}, topic=topic)
        flipped = bytearray(sign.sign({"n": "flipped"}, topic=topic))
        flipped[-1] ^= 1
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await raw.start()
    try:
        for value_ in (copied, copied, bytes(flipped), b"\x93garbage"):
            await raw.send_and_wait(topic, value_, partition=0)
    finally:
        await raw.stop()
    async with guard(redis_url, redis_prefix) as replay_guard:
        options = consumer_options(kafka_bootstrap, [topic])
        consumer = VerifyingConsumer.from_options(
            options,
            verifier=verifier(ring),
            guard=replay_guard,
            dead_letter_topic=dead,
        )
        async with Running(consumer) as running:
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
            assert served.port is not None
            text = await scrape(served.port)
    families = check_exposition(text)
    group = options.group_id
    counted = consumer.metrics
    assert counted.records == 9 and counted.delivered == 6
    at = {"topic": topic, "group": group}
    assert value(families, "signed_bus_sent", topic=topic) == producer.metrics.signed == 5
    assert value(families, "signed_bus_records", **at) == counted.records
    assert value(families, "signed_bus_delivered", **at) == counted.delivered
    assert value(families, "signed_bus_dead_letters", **at) == counted.dead_lettered == 3
    assert value(families, "signed_bus_dead_letters_dropped", **at) == 0
    assert value(families, "signed_bus_fail_open", **at) == 0
    for reason in REASONS:  # every reason exposed, at 0 until it counts
        got = value(families, "signed_bus_rejected", reason=reason, **at)
        assert got == counted.rejected.get(reason, 0), reason
    assert {r: n for r, n in counted.rejected.items() if n} == {
        "replay": 1,
        "bad_signature": 1,
        "malformed": 1,
    }
    verdicts = {
        v.value: value(families, "signed_bus_claims", verdict=v.value, **at) for v in ClaimVerdict
    }
    assert verdicts == {"new": 6, "same_position": 0, "replay": 1, "quarantined": 0}
    assert value(families, "signed_bus_record_age_seconds", **at) == counted.delivered
    assert value(families, "signed_bus_verify_duration_seconds", group=group) >= 1
    assert value(families, "signed_bus_claim_duration_seconds", group=group) >= 1
    assert value(families, "signed_bus_guard_unavailable", group=group) == 0
