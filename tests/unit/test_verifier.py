"""Verifier: every check, in order, with its reason code; VerifiedMessage behaviour."""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import hashlib
import json
import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from signed_bus._envelope import encode_envelope, signed_message
from signed_bus._freshness import Freshness
from signed_bus._keys import Ed25519Key, HmacKey, Keyring, generate_ed25519_key
from signed_bus._signer import Signer
from signed_bus._verifier import VerifiedMessage, Verifier
from signed_bus.errors import (
    ConfigurationError,
    Expired,
    MalformedEnvelope,
    NotYetValid,
    UnsupportedContentType,
    VerificationError,
)

NOW = 1_700_000_000_000
MAX_AGE = 300_000
SKEW = 5_000
LAG = 3_600_000  # the default max_lag_ms
WINDOW = Freshness(max_age_ms=MAX_AGE, future_skew_ms=SKEW, max_lag_ms=LAG)
SECRET = hashlib.sha256(b"test secret").digest()
TOPIC = "results"
KEY = b"req-1"
RESULT = {"label": "cat", "score": 0.5}


def make_ring() -> Keyring:
    return Keyring(
        [
            HmacKey("hs", SECRET, issuers=["agent-a", "agent-b"]),
            Ed25519Key.from_private_bytes(
                "ed", hashlib.sha256(b"ed seed").digest(), issuers=["planner"]
            ),
        ]
    )


RING = make_ring()


def signer(kid: str = "hs", issuer: str = "agent-a", *, ring: Keyring = RING) -> Signer:
    return Signer(ring, kid=kid, issuer=issuer, model="m@1", clock=lambda: NOW)


def verifier(ring: Keyring = RING, **kw: Any) -> Verifier:
    options: dict[str, Any] = {"freshness": WINDOW, "clock": lambda: NOW}
    options.update(kw)
    return Verifier(ring, **options)


def sign(kid: str = "hs", issuer: str = "agent-a", **kw: Any) -> bytes:
    options: dict[str, Any] = {"topic": TOPIC, "key": KEY}
    options.update(kw)
    return signer(kid, issuer).sign(RESULT, **options)


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(VerificationError) as caught:
        call()
    return caught.value.reason


def verify_reason(value: bytes, *, topic: str = TOPIC, key: bytes | None = KEY, **kw: Any) -> str:
    ref = kw.pop("reference_ms", None)
    return reason_of(lambda: verifier(**kw).verify(value, topic=topic, key=key, reference_ms=ref))


def parts(value: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    _, protected, body, sig = msgpack.unpackb(value)
    return msgpack.unpackb(protected), body, sig


def rebuild(header: dict[str, Any], body: bytes, sig: bytes) -> bytes:
    """Re-frame a changed header with the old signature (an attacker without the key)."""
    return encode_envelope(msgpack.packb(header), body, sig)


def hs256_resign(header: dict[str, Any], body: bytes, secret: bytes = SECRET) -> bytes:
    """Re-sign a changed header with an HMAC secret (an attacker holding that secret)."""
    protected = msgpack.packb(header)
    key = HmacKey("tmp", secret, issuers=["x"])
    return encode_envelope(protected, body, key.sign(signed_message(protected, body)))


# -- happy path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kid,issuer", [("hs", "agent-a"), ("ed", "planner")])
def test_valid_envelope_verifies(kid: str, issuer: str) -> None:
    value = sign(kid, issuer)
    msg = verifier().verify(value, topic=TOPIC, key=KEY)
    assert msg.payload == RESULT
    assert msg.issuer == issuer
    assert msg.kid == kid
    assert msg.digest == hashlib.sha256(value).digest()


def test_public_ring_verifies_eddsa() -> None:
    msg = verifier(RING.public()).verify(sign("ed", "planner"), topic=TOPIC, key=KEY)
    assert msg.alg == "EdDSA"


def test_bytes_like_values_are_accepted() -> None:
    value = sign()
    v: Any = verifier()  # verify is typed for bytes; bytearray/memoryview work too
    assert v.verify(bytearray(value), topic=TOPIC, key=KEY).payload == RESULT
    assert v.verify(memoryview(value), topic=TOPIC, key=KEY).payload == RESULT


@pytest.mark.parametrize("value", [None, "text", 5])
def test_non_bytes_value_is_malformed(value: object) -> None:
    assert verify_reason(value) == "malformed"  # type: ignore[arg-type]


# -- each signed field tampered alone -------------------------------------------------------------

FIELD_TAMPERING: list[tuple[str, object, str]] = [
    # fields checked by policy before the signature report the policy reason
    ("alg", "EdDSA", "algorithm_mismatch"),
    ("alg", "none", "algorithm_mismatch"),
    ("alg", "HS512", "algorithm_mismatch"),
    ("kid", "hs-old", "unknown_key"),
    ("kid", "ed", "algorithm_mismatch"),
    ("iss", "planner", "untrusted_issuer"),
    # the rest is caught by the signature
    ("iss", "agent-b", "bad_signature"),  # the key may sign for agent-b, but did not
    ("mdl", "m@2", "bad_signature"),
    ("cty", "application/json", "bad_signature"),
    ("tpc", "other", "bad_signature"),
    ("rkd", hashlib.sha256(b"req-2").digest(), "bad_signature"),
    ("rkd", None, "bad_signature"),
    ("iat", NOW - 1, "bad_signature"),
    ("nce", b"\x00" * 16, "bad_signature"),
    ("par", [hashlib.sha256(b"p").digest()], "bad_signature"),
    ("exp", NOW + 1, "bad_signature"),
]


@pytest.mark.parametrize(("field", "new", "reason"), FIELD_TAMPERING)
def test_each_header_field_tampered_alone(field: str, new: object, reason: str) -> None:
    header, body, sig = parts(sign())
    header[field] = new
    assert verify_reason(rebuild(header, body, sig)) == reason


def test_body_tampered_is_bad_signature() -> None:
    header, _, sig = parts(sign())
    tampered = msgpack.packb({**RESULT, "label": "dog"})
    assert verify_reason(rebuild(header, tampered, sig)) == "bad_signature"


def test_body_swapped_between_envelopes_is_bad_signature() -> None:
    header, _, sig = parts(sign())
    _, other_body, _ = parts(signer().sign({"other": 1}, topic=TOPIC, key=KEY))
    assert verify_reason(rebuild(header, other_body, sig)) == "bad_signature"


def test_signature_tampered_is_bad_signature() -> None:
    header, body, sig = parts(sign())
    for index in range(len(sig)):
        flipped = sig[:index] + bytes([sig[index] ^ 0x80]) + sig[index + 1 :]
        assert verify_reason(rebuild(header, body, flipped)) == "bad_signature"


def test_tag_tampered_is_unsupported_version() -> None:
    value = sign()
    _, protected, body, sig = msgpack.unpackb(value)
    assert (
        verify_reason(msgpack.packb(["signed-bus/v2", protected, body, sig]))
        == "unsupported_version"
    )


@pytest.mark.parametrize("sig", [b"", b"\x00", b"\x00" * 31, b"\x00" * 33, b"\x00" * 64])
def test_empty_or_wrong_length_hmac_signature(sig: bytes) -> None:
    header, body, _ = parts(sign())
    assert verify_reason(rebuild(header, body, sig)) == "bad_signature"


@pytest.mark.parametrize("sig", [b"", b"\x00" * 32, b"\x00" * 63, b"\x00" * 64])
def test_empty_or_wrong_eddsa_signature(sig: bytes) -> None:
    header, body, _ = parts(sign("ed", "planner"))
    assert verify_reason(rebuild(header, body, sig)) == "bad_signature"


def test_single_byte_flips_never_verify() -> None:
    for value in (sign(), sign(parents=[hashlib.sha256(b"p").digest()], expires_at=NOW + 1)):
        v = verifier()
        for index in range(len(value)):
            for mask in (0x01, 0x80, 0xFF):
                mutated = value[:index] + bytes([value[index] ^ mask]) + value[index + 1 :]
                with pytest.raises(VerificationError):
                    v.verify(mutated, topic=TOPIC, key=KEY)


# -- policy: keys, algorithms, issuers -----------------------------------------------------------


def test_alg_none_with_empty_signature() -> None:
    header, body, _ = parts(sign())
    header["alg"] = "none"
    assert verify_reason(rebuild(header, body, b"")) == "algorithm_mismatch"


def test_unknown_kid() -> None:
    other = Keyring([HmacKey("stranger", b"s" * 32, issuers=["agent-a"])])
    value = signer("stranger", ring=other).sign(RESULT, topic=TOPIC, key=KEY)
    assert verify_reason(value) == "unknown_key"


def test_rotation_old_key_verifies_until_removed() -> None:
    ring = make_ring()
    ring.add(HmacKey("hs-next", b"n" * 32, issuers=["agent-a"]))
    old = signer("hs", ring=ring).sign(RESULT, topic=TOPIC, key=KEY)
    new = signer("hs-next", ring=ring).sign(RESULT, topic=TOPIC, key=KEY)
    v = verifier(ring)
    assert v.verify(old, topic=TOPIC, key=KEY).kid == "hs"
    assert v.verify(new, topic=TOPIC, key=KEY).kid == "hs-next"
    ring.remove("hs")  # the same verifier sees the change: no restart needed
    assert reason_of(lambda: v.verify(old, topic=TOPIC, key=KEY)) == "unknown_key"
    assert v.verify(new, topic=TOPIC, key=KEY).kid == "hs-next"


def test_issuer_the_key_may_not_sign_for_is_untrusted_even_with_valid_signature() -> None:
    header, body, _ = parts(sign())
    header["iss"] = "planner"  # a holder of the hs secret claims to be the planner
    assert verify_reason(hs256_resign(header, body)) == "untrusted_issuer"


def test_algorithm_confusion_ed25519_public_key_as_hmac_secret() -> None:
    ed = RING.get("ed")
    assert isinstance(ed, Ed25519Key)
    header, body, _ = parts(sign())
    header.update(kid="ed", iss="planner")  # alg stays HS256
    forged = hs256_resign(header, body, secret=ed.public_bytes)
    assert verify_reason(forged) == "algorithm_mismatch"
    assert verify_reason(forged, ring=RING.public()) == "algorithm_mismatch"


def test_eddsa_header_on_an_hmac_kid_is_algorithm_mismatch() -> None:
    header, body, _ = parts(sign())
    header["alg"] = "EdDSA"
    assert verify_reason(hs256_resign(header, body)) == "algorithm_mismatch"


def test_errors_carry_context_but_no_secrets() -> None:
    header, body, sig = parts(sign())
    header["mdl"] = "tampered"
    with pytest.raises(VerificationError) as caught:
        verifier().verify(rebuild(header, body, sig), topic=TOPIC, key=KEY)
    error = caught.value
    assert (error.kid, error.issuer) == ("hs", "agent-a")
    text = str(error) + repr(error) + error.message
    for secret_form in (
        SECRET.hex(),
        base64.urlsafe_b64encode(SECRET).decode().rstrip("="),
        repr(SECRET)[2:-1],
    ):
        assert secret_form not in text
    assert body.hex() not in text
    positioned = error.with_position(TOPIC, 3, 42)
    assert (positioned.topic, positioned.partition, positioned.offset) == (TOPIC, 3, 42)
    assert positioned.reason == "bad_signature"
    assert "offset=42" in str(positioned)


# -- destination ----------------------------------------------------------------------------------


def test_envelope_read_from_another_topic() -> None:
    assert verify_reason(sign(), topic="other") == "wrong_topic"


@pytest.mark.parametrize(
    ("signed_key", "record_key"),
    [(b"req-1", b"req-2"), (b"req-1", None), (None, b"req-1"), (b"", None), (None, b"")],
)
def test_envelope_with_another_record_key(
    signed_key: bytes | None, record_key: bytes | None
) -> None:
    assert verify_reason(sign(key=signed_key), key=record_key) == "wrong_key"


def test_null_and_empty_keys_verify_as_themselves() -> None:
    assert verifier().verify(sign(key=None), topic=TOPIC, key=None).payload == RESULT
    assert verifier().verify(sign(key=b""), topic=TOPIC, key=b"").payload == RESULT


# -- size cap -------------------------------------------------------------------------------------


def test_oversized_is_rejected_before_decoding() -> None:
    value = sign()
    assert verify_reason(value, max_envelope_bytes=len(value) - 1) == "oversized"
    verifier(max_envelope_bytes=len(value)).verify(value, topic=TOPIC, key=KEY)
    garbage = b"\xc1" * 2048  # not msgpack at all: the cap still answers first
    assert verify_reason(garbage, max_envelope_bytes=1024) == "oversized"
    assert verify_reason(garbage, max_envelope_bytes=4096) == "malformed"


# -- freshness ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (SKEW, None),  # created exactly future_skew after the reference: accepted
        (SKEW + 1, "not_yet_valid"),
        (-MAX_AGE, None),  # created exactly max_age before the reference: accepted
        (-MAX_AGE - 1, "expired"),
        (0, None),
    ],
)
def test_freshness_window_edges(offset: int, reason: str | None) -> None:
    value = sign()  # created at NOW
    reference = NOW - offset
    # A consumer 50 minutes behind (within max_lag): the reference alone decides.
    by_reference = verifier(clock=lambda: reference + 10 * MAX_AGE)
    by_clock = verifier(clock=lambda: reference)
    checks: list[Callable[[], object]] = [
        lambda: by_reference.verify(value, topic=TOPIC, key=KEY, reference_ms=reference),
        lambda: by_clock.verify(value, topic=TOPIC, key=KEY),
    ]
    for check in checks:
        if reason is None:
            check()
        else:
            assert reason_of(check) == reason


@pytest.mark.parametrize(
    ("clock", "reason"),
    [
        (NOW + MAX_AGE + LAG, None),  # exactly max_age + max_lag old by the clock: accepted
        (NOW + MAX_AGE + LAG + 1, "expired"),
    ],
)
def test_max_lag_edges_by_the_consumers_clock(clock: int, reason: str | None) -> None:
    value = sign()  # created at NOW; the reference (append time) says it is brand new
    v = verifier(clock=lambda: clock)
    assert v.freshness.max_lag_ms == LAG
    if reason is None:
        assert v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW).created_at == NOW
    else:
        with pytest.raises(Expired, match="max_age \\+ max_lag"):
            v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW)


@pytest.mark.parametrize(("lag", "ok"), [(0, True), (1, False)])
def test_max_lag_is_configurable(lag: int, ok: bool) -> None:
    value = sign()
    v = verifier(
        clock=lambda: NOW + MAX_AGE + lag, freshness=dataclasses.replace(WINDOW, max_lag_ms=0)
    )
    assert v.freshness.max_lag_ms == 0
    if ok:
        v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW)
    else:
        assert reason_of(lambda: v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW)) == (
            "expired"
        )


def test_forged_old_append_time_cannot_pass_an_old_envelope() -> None:
    # The record timestamp is unsigned: a fetch-path proxy may claim the envelope was appended
    # right after it was created. Past max_age + max_lag by the consumer's clock it is expired
    # whatever the reference says (the replay guard may have forgotten its nonce by then).
    value = sign()
    for late in (1, 10 * MAX_AGE, 100 * LAG):
        v = verifier(clock=lambda late=late: NOW + MAX_AGE + LAG + late)
        for forged in (NOW, NOW + 1, NOW + MAX_AGE):
            assert verify_reason_with(v, value, reference_ms=forged) == "expired"


def test_forged_future_append_time_cannot_pass_a_future_envelope() -> None:
    # created_at is never after the consumer's clock + skew for an honest record (signed, then
    # appended, then fetched): a reference pushed forward does not widen the future side.
    value = sign()
    v = verifier(clock=lambda: NOW - SKEW)
    assert v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW).created_at == NOW
    v = verifier(clock=lambda: NOW - SKEW - 1)
    with pytest.raises(NotYetValid, match="clock"):
        v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW)
    with pytest.raises(NotYetValid, match="clock"):
        v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW + 10 * MAX_AGE)


def verify_reason_with(v: Verifier, value: bytes, **kw: Any) -> str:
    return reason_of(lambda: v.verify(value, topic=TOPIC, key=KEY, **kw))


@pytest.mark.parametrize(
    ("reference", "clock", "reason"),
    [
        (NOW + 10, NOW, None),
        (NOW + 11, NOW, "expired"),  # expired by the reference
        (NOW, NOW + 10, None),
        (NOW, NOW + 11, "expired"),  # expired by the consumer's clock: not acted on either
        (NOW + 11, NOW + 11, "expired"),
    ],
)
def test_expires_at_edges(reference: int, clock: int, reason: str | None) -> None:
    value = sign(expires_at=NOW + 10)
    if reason is None:
        verifier(clock=lambda: clock).verify(value, topic=TOPIC, key=KEY, reference_ms=reference)
    else:
        assert verify_reason(value, reference_ms=reference, clock=lambda: clock) == reason


def test_reference_time_beats_the_clock_within_max_lag() -> None:
    value = sign()
    lagging = NOW + 10 * MAX_AGE  # 50 minutes behind, within the default max_lag
    v = verifier(clock=lambda: lagging)
    assert reason_of(lambda: v.verify(value, topic=TOPIC, key=KEY)) == "expired"
    assert v.verify(value, topic=TOPIC, key=KEY, reference_ms=NOW).created_at == NOW
    # A clock behind the reference cannot be helped by it: an honest reference is never ahead
    # of the consumer's clock by more than the skew.
    v_past = verifier(clock=lambda: NOW - 10 * MAX_AGE)
    assert reason_of(lambda: v_past.verify(value, topic=TOPIC, key=KEY)) == "not_yet_valid"
    assert verify_reason_with(v_past, value, reference_ms=NOW) == "not_yet_valid"


def test_clock_bounds_the_reference_and_audit_reads_no_clock() -> None:
    read: list[int] = []

    def clock() -> int:
        read.append(NOW)
        return NOW

    verifier(clock=clock).verify(sign(), topic=TOPIC, key=KEY, reference_ms=NOW)
    assert read == [NOW]  # read once, even with a reference

    def no_clock() -> int:
        raise AssertionError("clock read")

    verifier(clock=no_clock, audit=True).verify(sign(), topic=TOPIC, key=KEY, reference_ms=NOW)


def test_audit_mode_ignores_freshness_but_nothing_else() -> None:
    old = sign(expires_at=NOW + 1)
    audit = verifier(audit=True)
    assert audit.audit
    for reference in (NOW + 100 * MAX_AGE, NOW - 100 * MAX_AGE):
        assert audit.verify(old, topic=TOPIC, key=KEY, reference_ms=reference).payload == RESULT
    header, body, sig = parts(old)
    header["mdl"] = "tampered"
    assert verify_reason(rebuild(header, body, sig), audit=True) == "bad_signature"
    assert verify_reason(old, topic="other", audit=True) == "wrong_topic"


# -- check order ----------------------------------------------------------------------------------


def test_signature_is_checked_before_destination_and_freshness() -> None:
    header, body, sig = parts(sign())
    header["tpc"] = "other"
    forged = rebuild(header, body, sig)
    # wrong topic AND stale AND bad signature: the signature answers first
    assert verify_reason(forged, topic="other", reference_ms=NOW + 10 * MAX_AGE) == "bad_signature"


def test_destination_is_checked_before_freshness() -> None:
    assert verify_reason(sign(), topic="other", reference_ms=NOW + 10 * MAX_AGE) == "wrong_topic"


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"max_envelope_bytes": -1},
        {"max_envelope_bytes": True},
        {"max_envelope_bytes": None},
        {"freshness": 300_000},
        {"freshness": {"max_age_ms": 300_000}},
    ],
)
def test_bad_options_are_configuration_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Verifier(RING, **kw)


@pytest.mark.parametrize(
    "window",
    [
        {"max_age_ms": -1},
        {"future_skew_ms": 1.5},
        {"max_lag_ms": -1},
        {"max_lag_ms": 1.5},
        {"max_lag_ms": None},
    ],
)
def test_a_bad_window_is_a_configuration_error(window: dict[str, Any]) -> None:
    # The window is one Freshness value: a bad number fails before any Verifier holds it.
    with pytest.raises(ConfigurationError):
        Verifier(RING, freshness=Freshness(**window))


@pytest.mark.parametrize("name", ["max_age_ms", "future_skew_ms", "max_lag_ms"])
def test_the_window_numbers_are_no_verifier_options(name: str) -> None:
    # One window, held once: the verifier takes no loose numbers that could disagree with it.
    with pytest.raises(TypeError):
        Verifier(RING, **{name: 1_000})  # type: ignore[arg-type]
    assert not hasattr(Verifier(RING), name)


def test_the_default_window_is_freshness_default() -> None:
    v = Verifier(RING)
    assert v.freshness == Freshness()
    assert (v.freshness.max_age_ms, v.freshness.future_skew_ms, v.freshness.max_lag_ms) == (
        MAX_AGE,
        SKEW,
        LAG,
    )
    assert verifier().freshness is WINDOW


def test_keyring_is_required() -> None:
    with pytest.raises(ConfigurationError):
        Verifier({"hs": SECRET})  # type: ignore[arg-type]


def test_verifier_repr_has_no_key_material() -> None:
    text = repr(verifier())
    assert SECRET.hex() not in text
    assert "keys=2" in text
    assert f"max_lag_ms={LAG}" in text
    assert repr(WINDOW) in text


@pytest.mark.parametrize("key", ["req-1", 1, ["req-1"]])
def test_non_bytes_record_key_is_a_configuration_error(key: object) -> None:
    # The key is the caller's (e.g. a key deserializer left on): a loud caller bug, not a
    # verification failure to dead-letter, and never a bare TypeError.
    with pytest.raises(ConfigurationError, match="record key must be bytes") as caught:
        verifier().verify(sign(), topic=TOPIC, key=key)  # type: ignore[arg-type]
    assert not isinstance(caught.value, VerificationError)


@pytest.mark.parametrize("key", [bytearray(KEY), memoryview(KEY)])
def test_bytes_like_record_keys_are_accepted(key: bytes) -> None:
    assert verifier().verify(sign(), topic=TOPIC, key=key).payload == RESULT


# -- VerifiedMessage ------------------------------------------------------------------------------


def verified(value: bytes | None = None) -> VerifiedMessage:
    return verifier().verify(value or sign(), topic=TOPIC, key=KEY)


def test_payload_is_decoded_once() -> None:
    msg = verified()
    first = msg.payload
    assert first == RESULT
    assert msg.payload is first


def test_json_payload() -> None:
    s = signer()
    value = s.sign_bytes(
        json.dumps(RESULT).encode(), content_type="application/json", topic=TOPIC, key=KEY
    )
    assert verified(value).payload == RESULT


def test_unknown_content_type_payload_raises_but_body_is_available() -> None:
    value = signer().sign_bytes(b"\x00raw", content_type="image/png", topic=TOPIC, key=KEY)
    msg = verified(value)
    assert msg.body == b"\x00raw"
    with pytest.raises(UnsupportedContentType):
        _ = msg.payload


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xc1", "application/msgpack"),
        (b"\x01\x02", "application/msgpack"),
        (b"{", "application/json"),
    ],
)
def test_authentic_but_undecodable_body_is_malformed_payload(
    body: bytes, content_type: str
) -> None:
    msg = verified(signer().sign_bytes(body, content_type=content_type, topic=TOPIC, key=KEY))
    with pytest.raises(MalformedEnvelope) as caught:
        _ = msg.payload
    assert caught.value.reason == "malformed"
    assert "body does not decode" in str(caught.value)


def test_message_is_immutable() -> None:
    msg = verified()
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.body = b""
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.issuer = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del msg.body


def test_message_fields_equality_pickle_and_repr() -> None:
    parent = hashlib.sha256(b"p").digest()
    value = sign(parents=[parent], expires_at=NOW + 5)
    msg = verified(value)
    assert msg.parents == (parent,)
    assert msg.expires_at == NOW + 5
    assert msg.nonce and len(msg.nonce) == 16
    assert msg == verified(value)
    assert hash(msg) == hash(verified(value))
    assert msg != verified(sign())
    clone = pickle.loads(pickle.dumps(msg))
    assert clone == msg and clone.payload == RESULT
    assert copy.copy(msg) == msg
    text = repr(msg)
    assert msg.body.hex() not in text and "bytes>" in text
    built = VerifiedMessage(
        body=msg.body,
        content_type=msg.content_type,
        issuer=msg.issuer,
        model=msg.model,
        kid=msg.kid,
        alg=msg.alg,
        created_at=msg.created_at,
        expires_at=msg.expires_at,
        nonce=msg.nonce,
        parents=msg.parents,
        digest=msg.digest,
        topic=msg.topic,
    )
    assert built == msg


def test_ed25519_ring_from_generated_keys() -> None:
    key = generate_ed25519_key("gen", ["agent"])
    ring = Keyring([key])
    value = Signer(ring, kid="gen", issuer="agent", model="m").sign(1, topic=TOPIC)
    msg = Verifier(ring.public()).verify(value, topic=TOPIC, key=None)
    assert msg.payload == 1


def test_check_fresh_applies_exactly_the_rule_verify_applies() -> None:
    # A record verified once, checked again later: check_fresh must agree with verify at every
    # (reference, now), created_at and exp edge included.
    ring = Keyring([HmacKey("k1", b"s" * 32, issuers=["agent"])])
    max_age, skew, lag = 1_000, 100, 500
    now = [NOW]

    def verifier(**kw: Any) -> Verifier:
        return Verifier(
            ring,
            freshness=Freshness(max_age_ms=max_age, future_skew_ms=skew, max_lag_ms=lag),
            clock=lambda: now[0],
            **kw,
        )

    checked = verifier()
    edges = (-max_age - lag - 1, -max_age - lag, -max_age - 1, -max_age, 0, skew, skew + 1)
    outcomes: set[str] = set()
    for created in edges:
        for exp in (None, -1, 0, 1):
            if exp is not None and exp < created:
                continue  # exp before iat: refused at signing (docs/ENVELOPE.md)
            signer = Signer(
                ring,
                kid="k1",
                issuer="agent",
                model="m",
                clock=functools.partial(int, NOW + created),
            )
            value = signer.sign({}, topic="t", expires_at=None if exp is None else NOW + exp)
            message = verifier(audit=True).verify(value, topic="t", key=None)
            for reference in (None, NOW - lag, NOW, NOW + skew):
                for at in (NOW, NOW + 1):
                    now[0] = at
                    try:
                        checked.verify(value, topic="t", key=None, reference_ms=reference)
                        expected = "fresh"
                    except VerificationError as exc:
                        expected = exc.reason
                    try:
                        checked.check_fresh(message, reference_ms=reference, now=at)
                        got = "fresh"
                    except VerificationError as exc:
                        got = exc.reason
                    assert got == expected, (created, exp, reference, at)
                    outcomes.add(got)
    assert outcomes == {"fresh", "expired", "not_yet_valid"}
    verifier(audit=True).check_fresh(message, now=NOW + 10**9)  # audit mode: never stale
