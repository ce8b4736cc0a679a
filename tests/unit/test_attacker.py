"""Every forgery the attacker makes is rejected by a verifier, for the reason it is meant to hit.

Replays are byte-identical copies that verify: dropping them is the replay guard's job, which the
integration tests and the demo exercise against Redis.
"""

from __future__ import annotations

import random

import pytest

from producers.attacker import ATTACK_KINDS, Captured, Forger, plan_round
from signed_bus._keys import Keyring, generate_ed25519_key
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import VerificationError

RESULT = {"kind": "inference_result", "prompt_id": "p-1", "output": "restart auth: ok."}


@pytest.fixture
def setup() -> tuple[Keyring, Forger, Captured]:
    inference = generate_ed25519_key("inference-agent-1", ["inference-agent"])
    telemetry = generate_ed25519_key("telemetry-1", ["telemetry-agent"])
    pipeline = Keyring([inference.public(), telemetry.public()])
    honest = Signer(
        Keyring([inference]), kid="inference-agent-1", issuer="inference-agent", model="lm@1"
    )
    value = honest.sign(RESULT, topic="results", key=b"p-1")
    captured = Captured("results", 1, 17, b"p-1", value)
    forger = Forger(compromised=Keyring([telemetry]), rng=random.Random(7))
    return pipeline, forger, captured


def _reason(pipeline: Keyring, topic: str, key: bytes | None, value: bytes) -> str | None:
    try:
        Verifier(pipeline).verify(value, topic=topic, key=key)
    except VerificationError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("kind", ["unknown_key", "stolen_kid", "spoofed_issuer", "unsigned"])
def test_forged_results_are_rejected_for_their_reason(
    setup: tuple[Keyring, Forger, Captured], kind: str
) -> None:
    pipeline, forger, captured = setup
    forgery = forger.forge(kind, captured)
    assert forgery.topic == "results"
    reason = _reason(pipeline, forgery.topic, forgery.key, forgery.value)
    assert reason in forgery.expected_reasons, (kind, reason)


def test_bit_flips_never_verify(setup: tuple[Keyring, Forger, Captured]) -> None:
    pipeline, forger, captured = setup
    reasons = set()
    for _ in range(200):
        forgery = forger.forge("bit_flip", captured)
        assert forgery.value != captured.value
        reason = _reason(pipeline, forgery.topic, forgery.key, forgery.value)
        assert reason in forgery.expected_reasons
        reasons.add(reason)
    assert "bad_signature" in reasons and "malformed" in reasons


def test_cross_topic_copy_is_wrong_topic(setup: tuple[Keyring, Forger, Captured]) -> None:
    pipeline, forger, captured = setup
    forgery = forger.forge("cross_topic", captured, other_topic="plans")
    assert forgery.value == captured.value and forgery.topic == "plans"
    assert _reason(pipeline, "plans", forgery.key, forgery.value) == "wrong_topic"


def test_replays_are_exact_copies(setup: tuple[Keyring, Forger, Captured]) -> None:
    pipeline, forger, captured = setup
    same = forger.forge("replay", captured)
    other = forger.forge("replay_other_partition", captured, other_partition=0)
    assert same.value == other.value == captured.value
    assert same.partition == 1 and other.partition == 0
    # Authentic bytes: only the replay guard can tell a copy from the original.
    assert _reason(pipeline, "results", captured.key, captured.value) is None


def test_forged_payload_carries_the_attackers_content(
    setup: tuple[Keyring, Forger, Captured],
) -> None:
    _, forger, captured = setup
    forgery = forger.forge("spoofed_issuer", captured)
    forged = Captured("results", 0, 0, forgery.key, forgery.value)
    payload = forged.payload()
    assert isinstance(payload, dict)
    assert payload["prompt_id"] == "p-1" and "attacker" in str(payload["output"])
    assert forged.header()["iss"] == "inference-agent"
    assert forged.header()["kid"] == "telemetry-1"


def test_a_round_covers_every_kind(setup: tuple[Keyring, Forger, Captured]) -> None:
    _, _, captured = setup
    attacks = plan_round(captured, topics=["results", "plans"], partitions={"results": 3})
    kinds = [a.kind for a in attacks]
    assert sorted(kinds) == sorted(ATTACK_KINDS)
    assert attacks[1].other_partition == 2 and attacks[2].other_topic == "plans"
    single = [a.kind for a in plan_round(captured, topics=["results"], partitions={})]
    assert "replay_other_partition" not in single and "cross_topic" not in single


def test_compromised_ring_must_hold_one_signing_key() -> None:
    with pytest.raises(ValueError):
        Forger(compromised=Keyring([generate_ed25519_key("a", ["x"]).public()]))
