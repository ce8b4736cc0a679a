"""Known-answer vectors (tests/vectors/*.json): the library must match them byte for byte.

Each positive vector is checked twice: against the library (sign reproduces the envelope,
verify accepts it) and against the spec in docs/ENVELOPE.md using only hashlib/hmac,
cryptography and msgpack, so a change in the library cannot silently move both sides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from signed_bus._envelope import SIGNATURE_DOMAIN, TAG
from signed_bus._freshness import Freshness
from signed_bus._keys import Keyring
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import ConfigurationError, VerificationError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


KEYS_TEXT = (VECTORS / "keys.json").read_text()
KEY_ENTRIES = {entry["kid"]: entry for entry in json.loads(KEYS_TEXT)["keys"]}
POSITIVE = load("positive.json")
NEGATIVE = load("negative.json")
REFUSED_KEYS = load("refused-keys.json")


def ring() -> Keyring:
    return Keyring.from_json(KEYS_TEXT, source="tests/vectors/keys.json")


def b64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unhex(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


def freshness(options: dict[str, Any]) -> Freshness:
    """The window a vector's ``verify`` options name (field names as in the JSON files)."""
    return Freshness(
        max_age_ms=options["max_age_ms"],
        future_skew_ms=options["future_skew_ms"],
        max_lag_ms=options["max_lag_ms"],
    )


def verifier(options: dict[str, Any]) -> Verifier:
    return Verifier(
        ring(),
        freshness=freshness(options),
        max_envelope_bytes=options["max_envelope_bytes"],
        audit=options["audit"],
        # The consumer's clock also bounds freshness (max_age + max_lag back, skew ahead).
        clock=lambda: options["now_ms"],
    )


def test_files_hold_both_algorithms_and_many_negative_cases() -> None:
    assert POSITIVE["tag"] == TAG
    assert bytes.fromhex(POSITIVE["signature_domain_hex"]) == SIGNATURE_DOMAIN
    algs = {v["header"]["alg"] for v in POSITIVE["vectors"]}
    assert algs == {"HS256", "EdDSA"}
    reasons = {v["reason"] for v in NEGATIVE["vectors"]}
    assert reasons == {
        "oversized",
        "malformed",
        "unsupported_version",
        "bad_signature",
        "wrong_topic",
        "wrong_key",
        "algorithm_mismatch",
        "unknown_key",
        "untrusted_issuer",
        "not_yet_valid",
        "expired",
    }


@pytest.mark.parametrize("vector", POSITIVE["vectors"], ids=lambda v: v["name"])
def test_library_signs_the_vector_byte_for_byte(vector: dict[str, Any]) -> None:
    sign = vector["sign"]
    nonce = bytes.fromhex(sign["nonce_hex"])
    signer = Signer(
        ring(),
        kid=sign["kid"],
        issuer=sign["issuer"],
        model=sign["model"],
        clock=lambda: sign["created_at"],
        nonce_source=lambda: nonce,
    )
    value = signer.sign_bytes(
        bytes.fromhex(sign["body_hex"]),
        content_type=sign["content_type"],
        topic=sign["topic"],
        key=unhex(sign["record_key_hex"]),
        parents=[bytes.fromhex(p) for p in sign["parents_hex"]],
        expires_at=sign["expires_at"],
    )
    assert value.hex() == vector["envelope_hex"]


@pytest.mark.parametrize("vector", POSITIVE["vectors"], ids=lambda v: v["name"])
def test_vector_matches_the_spec_without_the_library(vector: dict[str, Any]) -> None:
    value = bytes.fromhex(vector["envelope_hex"])
    protected = bytes.fromhex(vector["protected_hex"])
    signature = bytes.fromhex(vector["signature_hex"])
    body = bytes.fromhex(vector["sign"]["body_hex"])
    # Framing: a 4-array of str tag and three bins, shortest form (what msgpack.packb writes).
    assert msgpack.packb([TAG, protected, body, signature]) == value
    # Signed message: domain, then u32be length + bytes of tag, protected, body.
    message = b"".join(
        [SIGNATURE_DOMAIN]
        + [struct.pack(">I", len(part)) + part for part in (TAG.encode(), protected, body)]
    )
    assert message.hex() == vector["signed_message_hex"]
    header = msgpack.unpackb(protected)
    entry = KEY_ENTRIES[header["kid"]]
    assert header["alg"] == entry["alg"]
    if entry["alg"] == "HS256":
        assert hmac.digest(b64u(entry["secret"]), message, "sha256") == signature
    else:
        public = Ed25519PrivateKey.from_private_bytes(b64u(entry["private"])).public_key()
        public.verify(signature, message)  # raises InvalidSignature if not
    decoded = {
        k: (v.hex() if isinstance(v, bytes) else [p.hex() for p in v] if k == "par" else v)
        for k, v in header.items()
    }
    assert decoded == vector["header"]
    record_key = unhex(vector["sign"]["record_key_hex"])
    expected_rkd = None if record_key is None else hashlib.sha256(record_key).hexdigest()
    assert header["rkd"] == unhex(expected_rkd)
    assert hashlib.sha256(value).hexdigest() == vector["digest_hex"]


@pytest.mark.parametrize("vector", POSITIVE["vectors"], ids=lambda v: v["name"])
def test_library_verifies_the_vector(vector: dict[str, Any]) -> None:
    options = vector["verify"]
    msg = verifier(options).verify(
        bytes.fromhex(vector["envelope_hex"]),
        topic=options["topic"],
        key=unhex(options["record_key_hex"]),
        reference_ms=options["reference_ms"],
    )
    sign = vector["sign"]
    assert msg.body.hex() == sign["body_hex"]
    assert msg.kid == sign["kid"]
    assert msg.issuer == sign["issuer"]
    assert msg.model == sign["model"]
    assert msg.topic == sign["topic"]
    assert msg.content_type == sign["content_type"]
    assert msg.created_at == sign["created_at"]
    assert msg.expires_at == sign["expires_at"]
    assert msg.nonce.hex() == sign["nonce_hex"]
    assert [p.hex() for p in msg.parents] == sign["parents_hex"]
    assert msg.digest.hex() == vector["digest_hex"]
    assert msg.alg == vector["header"]["alg"]


@pytest.mark.parametrize("vector", NEGATIVE["vectors"], ids=lambda v: v["name"])
def test_negative_vector_fails_with_its_reason(vector: dict[str, Any]) -> None:
    options = vector["verify"]
    with pytest.raises(VerificationError) as caught:
        verifier(options).verify(
            bytes.fromhex(vector["envelope_hex"]),
            topic=options["topic"],
            key=unhex(options["record_key_hex"]),
            reference_ms=options["reference_ms"],
        )
    assert caught.value.reason == vector["reason"]


def test_generator_reproduces_the_files() -> None:
    spec = importlib.util.spec_from_file_location("vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.files().items():
        assert (VECTORS / name).read_text() == text, f"{name} is stale: run generate.py"


# -- the spec's rules, re-derived here without the library -----------------------------------


def framing_by_spec(value: bytes) -> str:
    """docs/ENVELOPE.md section 1: "v1" for the shortest-form v1 framing, else the reason."""
    tag = TAG.encode()
    if value.startswith(b"\x94\xad" + tag):
        pos = 15
        ends = []
        for _ in range(3):
            if pos >= len(value) or value[pos] not in (0xC4, 0xC5, 0xC6):
                return "malformed"
            width = {0xC4: 1, 0xC5: 2, 0xC6: 4}[value[pos]]
            n = int.from_bytes(value[pos + 1 : pos + 1 + width], "big")
            if width > 1 and n < 256 ** (width // 2):  # bin 16 below 256, bin 32 below 65536
                return "malformed"
            pos += 1 + width + n
            ends.append(n)
        return "v1" if pos == len(value) and ends[0] <= 3836 else "malformed"
    if not value or not (0x90 <= value[0] <= 0x9F or value[0] in (0xDC, 0xDD)):
        return "malformed"
    header = {0xDC: 3, 0xDD: 5}.get(value[0], 1)
    count = value[0] & 0x0F if header == 1 else int.from_bytes(value[1:header], "big")
    if count == 0 or len(value) <= header:
        return "malformed"
    kind = value[header]
    if 0xA0 <= kind <= 0xBF:
        start, n = header + 1, kind & 0x1F
    elif kind in (0xD9, 0xDA, 0xDB):
        width = {0xD9: 1, 0xDA: 2, 0xDB: 4}[kind]
        start = header + 1 + width
        n = int.from_bytes(value[header + 1 : start], "big")
    else:
        return "malformed"
    text = value[start : start + n]
    if start + n > len(value) or text == tag:
        return "malformed"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return "malformed"
    return "unsupported_version"


def freshness_by_spec(header: dict[str, Any], options: dict[str, Any]) -> str | None:
    """docs/ENVELOPE.md section 7 in exact integer arithmetic: None if fresh, else the reason."""
    if options["audit"]:
        return None
    ref, now, iat = options["reference_ms"], options["now_ms"], header["iat"]
    skew, age, lag = options["future_skew_ms"], options["max_age_ms"], options["max_lag_ms"]
    if iat > ref + skew or iat > now + skew:
        return "not_yet_valid"
    if iat < ref - age or iat < now - (age + lag):
        return "expired"
    if "exp" in header and (header["exp"] < ref or header["exp"] < now):
        return "expired"
    return None


@pytest.mark.parametrize("vector", POSITIVE["vectors"], ids=lambda v: v["name"])
def test_positive_vector_is_fresh_and_framed_by_the_spec(vector: dict[str, Any]) -> None:
    value = bytes.fromhex(vector["envelope_hex"])
    assert framing_by_spec(value) == "v1"
    header = msgpack.unpackb(bytes.fromhex(vector["protected_hex"]))
    assert msgpack.packb(header) == bytes.fromhex(vector["protected_hex"])  # shortest form
    assert "exp" not in header or header["exp"] >= header["iat"]
    assert freshness_by_spec(header, vector["verify"]) is None


@pytest.mark.parametrize("vector", NEGATIVE["vectors"], ids=lambda v: v["name"])
def test_negative_vector_framing_and_freshness_by_the_spec(vector: dict[str, Any]) -> None:
    value = bytes.fromhex(vector["envelope_hex"])
    options = vector["verify"]
    if len(value) > options["max_envelope_bytes"]:
        assert vector["reason"] == "oversized"
        return
    framing = framing_by_spec(value)
    if framing != "v1":
        assert vector["reason"] == framing
    elif vector["reason"] in {"expired", "not_yet_valid"}:
        header = msgpack.unpackb(value[17 : 17 + value[16]])
        assert freshness_by_spec(header, options) == vector["reason"]


FRESHNESS_VECTORS = [
    v
    for v in POSITIVE["vectors"] + NEGATIVE["vectors"]
    if not v["verify"]["audit"]
    and v.get("reason", "fresh") in {"fresh", "expired", "not_yet_valid"}
]


@pytest.mark.parametrize("vector", FRESHNESS_VECTORS, ids=lambda v: v["name"])
def test_freshness_check_gives_the_specs_verdict(vector: dict[str, Any]) -> None:
    # Freshness.check, the rule the verifier, the consumer's re-check and the guard's retention
    # share, against section 7 re-derived above, on the vectors' own windows and times.
    value = bytes.fromhex(vector["envelope_hex"])
    options = vector["verify"]
    assert framing_by_spec(value) == "v1"
    if "protected_hex" in vector:
        header = msgpack.unpackb(bytes.fromhex(vector["protected_hex"]))
    else:
        assert value[15] == 0xC4  # bin 8: the protected header's length is the next byte
        header = msgpack.unpackb(value[17 : 17 + value[16]])
    try:
        freshness(options).check(
            header["iat"],
            header.get("exp"),
            reference_ms=options["reference_ms"],
            now=options["now_ms"],
        )
        got = None
    except VerificationError as exc:
        got = exc.reason
    assert got == freshness_by_spec(header, options) == vector.get("reason")


def test_the_vectors_cover_every_freshness_verdict() -> None:
    reasons = {v.get("reason") for v in FRESHNESS_VECTORS}
    assert reasons == {None, "expired", "not_yet_valid"}


def test_bin32_framing_is_covered() -> None:
    framed = [bytes.fromhex(v["envelope_hex"]) for v in POSITIVE["vectors"]]
    assert any(
        b"\xc6" + len(bytes.fromhex(v["sign"]["body_hex"])).to_bytes(4, "big") in value
        for v, value in zip(POSITIVE["vectors"], framed, strict=True)
        if len(v["sign"]["body_hex"]) // 2 > 0xFFFF
    )


@pytest.mark.parametrize("key", REFUSED_KEYS["keys"], ids=lambda k: k["name"])
def test_small_order_key_is_refused(key: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="small-order"):
        Keyring.from_mapping({"version": 1, "keys": [key["entry"]]}, source="vector")


def test_forgery_under_the_identity_key_is_why_it_is_refused() -> None:
    forged = REFUSED_KEYS["forged_under_identity"]
    identity = next(k for k in REFUSED_KEYS["keys"] if k["name"] == "identity")
    public = Ed25519PublicKey.from_public_bytes(b64u(identity["entry"]["public"]))
    value = bytes.fromhex(forged["envelope_hex"])
    public.verify(value[-64:], bytes.fromhex(forged["signed_message_hex"]))  # OpenSSL accepts
