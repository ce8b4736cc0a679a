"""ExternalKey: the signer signs through a function holding the key elsewhere (a KMS stand-in)."""

from __future__ import annotations

import pytest

from signed_bus import (
    ExternalKey,
    Keyring,
    Signer,
    Verifier,
    generate_ed25519_key,
    generate_hmac_key,
)
from signed_bus._decode import decode_envelope
from signed_bus.errors import ConfigurationError


def test_the_hook_gets_exactly_the_signed_message_of_the_envelope() -> None:
    held = generate_ed25519_key("kms-1", ["agent"])
    seen: list[bytes] = []

    def kms_sign(message: bytes) -> bytes:
        seen.append(message)
        return held.sign(message)

    key = ExternalKey(
        "kms-1", alg="EdDSA", issuers=["agent"], sign=kms_sign, public_key=held.public_bytes
    )
    assert not Keyring([key]).has_secrets
    value = Signer(Keyring([key]), kid="kms-1", issuer="agent", model="m").sign({"x": 1}, topic="t")
    envelope = decode_envelope(value)
    assert seen == [envelope.signed_message]
    assert Verifier(Keyring([held.public()])).verify(value, topic="t", key=None).kid == "kms-1"


def test_an_hmac_kms_key_signs_what_the_secret_verifies() -> None:
    held = generate_hmac_key("vault-1", ["agent"])
    key = ExternalKey("vault-1", alg="HS256", issuers=["agent"], sign=held.sign)
    value = Signer(Keyring([key]), kid="vault-1", issuer="agent", model="m").sign(1, topic="t")
    assert Verifier(Keyring([held])).verify(value, topic="t", key=None).kid == "vault-1"


def test_a_hook_signing_with_another_key_fails_at_the_signer() -> None:
    held = generate_ed25519_key("kms-1", ["agent"])
    wrong = generate_ed25519_key("other", ["agent"])
    key = ExternalKey(
        "kms-1", alg="EdDSA", issuers=["agent"], sign=wrong.sign, public_key=held.public_bytes
    )
    signer = Signer(Keyring([key]), kid="kms-1", issuer="agent", model="m")
    with pytest.raises(ConfigurationError, match="does not verify"):
        signer.sign(1, topic="t")


@pytest.mark.parametrize("returned", [b"", b"x" * 63, "text"])
def test_a_signature_of_the_wrong_shape_is_refused(returned: object) -> None:
    held = generate_ed25519_key("kms-1", ["agent"])
    key = ExternalKey(
        "kms-1",
        alg="EdDSA",
        issuers=["agent"],
        sign=lambda message: returned,  # type: ignore[arg-type,return-value]
        public_key=held.public_bytes,
    )
    with pytest.raises(ConfigurationError, match="64-byte raw signature"):
        Signer(Keyring([key]), kid="kms-1", issuer="agent", model="m").sign(1, topic="t")


def test_construction_rules_and_no_key_file() -> None:
    held = generate_ed25519_key("k", ["a"])
    with pytest.raises(ConfigurationError, match="needs its public_key"):
        ExternalKey("k", alg="EdDSA", issuers=["a"], sign=held.sign)
    with pytest.raises(ConfigurationError, match="alg must be"):
        ExternalKey("k", alg="none", issuers=["a"], sign=held.sign)
    with pytest.raises(ConfigurationError, match="no public key"):
        ExternalKey("k", alg="HS256", issuers=["a"], sign=held.sign, public_key=bytes(32))
    key = ExternalKey("k", alg="EdDSA", issuers=["a"], sign=held.sign, public_key=held.public_bytes)
    with pytest.raises(ConfigurationError, match="held elsewhere"):
        Keyring([key]).to_json()
    assert repr(key) == "ExternalKey(kid='k', alg='EdDSA', issuers=['a'])"
