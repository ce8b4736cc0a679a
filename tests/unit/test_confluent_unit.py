"""signed_bus.confluent without services: settings it refuses, reprs without secrets, what a
librdkafka message becomes for the gate, and that importing signed_bus leaves confluent_kafka
and the sync guard's client unimported."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from signed_bus import Freshness, Keyring, Verifier, generate_hmac_key
from signed_bus.confluent import SignedProducer, SyncRedisReplayGuard, VerifyingConsumer
from signed_bus.confluent._records import consumer_config
from signed_bus.errors import ConfigurationError, Stopped

SECRET = "hunter2-not-in-any-repr"


def _verifier() -> Verifier:
    return Verifier(
        Keyring([generate_hmac_key("k1", ["agent-a"])]),
        freshness=Freshness(max_age_ms=60_000, future_skew_ms=1_000),
    )


def test_importing_signed_bus_does_not_import_confluent_kafka() -> None:
    code = (
        "import sys, signed_bus;"
        "names = ('confluent_kafka', 'signed_bus.confluent');"
        "print(','.join(m for m in names if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("enable.auto.commit", True),
        ("enable.auto.offset.store", "true"),
        ("isolation.level", "read_uncommitted"),
    ],
)
def test_settings_that_would_break_at_least_once_or_the_replay_rule_are_refused(
    setting: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        consumer_config({"bootstrap.servers": "x:1", "group.id": "g", setting: value})


def test_the_consumer_settings_are_forced_and_a_group_is_required() -> None:
    built = consumer_config({"bootstrap.servers": "x:1", "group.id": "g"})
    assert built["enable.auto.commit"] is False and built["enable.auto.offset.store"] is False
    assert built["isolation.level"] == "read_committed"
    assert built["auto.offset.reset"] == "earliest"
    with pytest.raises(ConfigurationError, match=r"group\.id"):
        consumer_config({"bootstrap.servers": "x:1"})


def test_a_consumer_needs_a_guard_unless_it_audits_and_never_shows_its_settings() -> None:
    config = {"bootstrap.servers": "x:1", "group.id": "g", "sasl.password": SECRET}
    with pytest.raises(ConfigurationError, match="replay guard"):
        VerifyingConsumer(config, ["t"], verifier=_verifier())
    guard = SyncRedisReplayGuard(redis.Redis(), prefix="p")
    consumer = VerifyingConsumer(config, ["t"], verifier=_verifier(), guard=guard)
    assert SECRET not in repr(consumer)
    with pytest.raises(RuntimeError, match="start"):
        consumer.getbatch()
    consumer.stop()
    with pytest.raises(Stopped):
        consumer.start()


def test_the_producer_never_shows_its_settings() -> None:
    ring = Keyring([generate_hmac_key("k1", ["agent-a"])])
    from signed_bus import Signer

    producer = SignedProducer(
        {"bootstrap.servers": "127.0.0.1:1", "sasl.password": SECRET, "sasl.username": "u"},
        signer=Signer(ring, kid="k1", issuer="agent-a", model="m"),
    )
    assert SECRET not in repr(producer)
    producer.stop(timeout=0)
    with pytest.raises(Stopped):
        producer.produce("t", {"a": 1})


def test_the_sync_guard_refuses_the_settings_the_async_one_refuses() -> None:
    with pytest.raises(ConfigurationError, match="shards"):
        SyncRedisReplayGuard(redis.Redis(), shards=0)
    with pytest.raises(ConfigurationError, match="prefix"):
        SyncRedisReplayGuard(redis.Redis(), prefix="a{b}")
    with pytest.raises(ConfigurationError, match="freshness window"):
        SyncRedisReplayGuard.from_url("redis://localhost/0", max_age_ms=1)
    guard = SyncRedisReplayGuard.from_url(f"redis://user:{SECRET}@localhost:1/0")
    assert SECRET not in repr(guard)
