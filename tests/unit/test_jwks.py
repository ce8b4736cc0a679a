"""JWK Sets: export of public keys with their issuers, import rules (docs/KEYFILE.md)."""

from __future__ import annotations

import json

import pytest

from signed_bus import (
    ExternalKey,
    Keyring,
    Signer,
    Verifier,
    generate_ed25519_key,
    generate_hmac_key,
)
from signed_bus._keys import Ed25519Key
from signed_bus.errors import ConfigurationError
from tests.unit.test_keys import assert_no_secret, b64u


def jwk(key: Ed25519Key, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64u(key.public_bytes),
        "kid": key.kid,
        "signed_bus_issuers": sorted(key.issuers),
    }
    entry.update(extra)
    return {k: v for k, v in entry.items() if v is not None}


def test_export_then_import_verifies_what_the_private_key_signed() -> None:
    signing = generate_ed25519_key("ed-1", ["planner"])
    ring = Keyring([signing, generate_hmac_key("h-1", ["worker"])])
    text = ring.to_jwks()
    document = json.loads(text)
    assert [k["kid"] for k in document["keys"]] == ["ed-1"]  # HMAC: no public part
    assert document["keys"][0]["alg"] == "Ed25519"
    assert document["keys"][0]["signed_bus_issuers"] == ["planner"]
    assert "d" not in document["keys"][0]
    imported = Keyring.from_jwks(text)
    assert not imported.has_secrets
    value = Signer(ring, kid="ed-1", issuer="planner", model="m").sign({"a": 1}, topic="t")
    assert Verifier(imported).verify(value, topic="t", key=None).issuer == "planner"


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA", None])
def test_both_algorithm_names_and_an_absent_one_are_accepted(alg: str | None) -> None:
    key = generate_ed25519_key("k", ["a"])
    ring = Keyring.from_jwks(json.dumps({"keys": [jwk(key, alg=alg)]}))
    assert ring["k"] == key.public()


def test_a_key_without_issuers_is_refused_so_a_plain_set_cannot_widen_trust() -> None:
    key = generate_ed25519_key("k", ["a"])
    entry = jwk(key)
    del entry["signed_bus_issuers"]
    with pytest.raises(ConfigurationError, match="signed_bus_issuers"):
        Keyring.from_jwks(json.dumps({"keys": [entry]}))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"alg": "ES256"}, "'alg'"),
        ({"alg": "none"}, "'alg'"),
        ({"x": "not base64!"}, "'x'"),
        ({"x": b64u(b"\x01" + bytes(31))}, "small-order"),
        ({"signed_bus_issuers": ["*"]}, "wildcard"),
        ({"signed_bus_issuers": []}, "at least one issuer"),
        ({"kid": "has space"}, "kid"),
    ],
)
def test_malformed_ed25519_keys_refuse_the_whole_set(change: dict[str, object], match: str) -> None:
    good = generate_ed25519_key("good", ["a"])
    bad = generate_ed25519_key("bad", ["a"])
    text = json.dumps({"keys": [jwk(good), jwk(bad, **change)]})
    with pytest.raises(ConfigurationError, match=match):
        Keyring.from_jwks(text)


def test_private_material_in_a_set_is_refused_without_showing_it() -> None:
    key = generate_ed25519_key("k", ["a"])
    secret = bytes(range(32))
    with pytest.raises(ConfigurationError, match="private key material") as caught:
        Keyring.from_jwks(json.dumps({"keys": [jwk(key, d=b64u(secret))]}))
    assert_no_secret(str(caught.value), secret)


def test_keys_of_other_types_and_uses_are_skipped() -> None:
    key = generate_ed25519_key("k", ["a"])
    other = generate_ed25519_key("enc", ["a"])
    document = {
        "keys": [
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": b64u(bytes(32))},
            jwk(other, use="enc"),
            jwk(key),
        ],
        "extra": "ignored",
    }
    assert Keyring.from_jwks(json.dumps(document)).kids() == ["k"]


def test_repeated_kids_and_members_are_refused() -> None:
    key = generate_ed25519_key("k", ["a"])
    with pytest.raises(ConfigurationError, match="more than once"):
        Keyring.from_jwks(json.dumps({"keys": [jwk(key), jwk(key)]}))
    with pytest.raises(ConfigurationError, match="more than once"):
        Keyring.from_jwks('{"keys": [], "keys": []}')


def test_an_external_ed25519_key_exports_its_public_part() -> None:
    held = generate_ed25519_key("kms-1", ["agent"])
    external = ExternalKey(
        "kms-1", alg="EdDSA", issuers=["agent"], sign=held.sign, public_key=held.public_bytes
    )
    assert Keyring.from_jwks(Keyring([external]).to_jwks())["kms-1"] == held.public()
