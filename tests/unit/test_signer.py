"""Signer: what it puts in the envelope, and what it refuses to sign."""

from __future__ import annotations

import hashlib
import os

import msgpack
import pytest

from signed_bus._decode import decode_envelope
from signed_bus._envelope import CONTENT_TYPE_MSGPACK
from signed_bus._keys import Keyring, generate_ed25519_key, generate_hmac_key
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import ConfigurationError

NOW = 1_700_000_000_000
NONCE = bytes(range(16))


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return Keyring(
        [
            generate_hmac_key("hmac-1", ["agent-a"]),
            generate_ed25519_key("ed-1", ["agent-a", "agent-b"]),
        ]
    )


def make_signer(ring: Keyring, kid: str = "hmac-1", **kw: object) -> Signer:
    options: dict[str, object] = {
        "issuer": "agent-a",
        "model": "resnet-50@3",
        "clock": lambda: NOW,
        "nonce_source": lambda: NONCE,
    }
    options.update(kw)
    return Signer(ring, kid=kid, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("kid", ["hmac-1", "ed-1"])
def test_sign_then_verify_round_trip(ring: Keyring, kid: str) -> None:
    result = {"label": "cat", "score": 0.97, "ids": [1, 2, 3]}
    value = make_signer(ring, kid).sign(result, topic="results", key=b"req-7")
    msg = Verifier(ring, clock=lambda: NOW).verify(value, topic="results", key=b"req-7")
    assert msg.payload == result
    assert msg.body == msgpack.packb(result)
    assert (msg.issuer, msg.model, msg.kid, msg.alg) == (
        "agent-a",
        "resnet-50@3",
        kid,
        ring.get(kid).alg,  # type: ignore[union-attr]
    )
    assert msg.created_at == NOW
    assert msg.nonce == NONCE
    assert msg.content_type == CONTENT_TYPE_MSGPACK
    assert msg.digest == hashlib.sha256(value).digest()


def test_header_carries_every_field(ring: Keyring) -> None:
    parent = hashlib.sha256(b"upstream").digest()
    value = make_signer(ring).sign_bytes(
        b"\x01\x02",
        content_type="application/octet-stream",
        topic="plans",
        key=b"k",
        parents=[parent],
        expires_at=NOW + 60_000,
    )
    env = decode_envelope(value)
    header = env.header
    assert header.alg == "HS256"
    assert header.kid == "hmac-1"
    assert header.issuer == "agent-a"
    assert header.model == "resnet-50@3"
    assert header.content_type == "application/octet-stream"
    assert header.topic == "plans"
    assert header.key_digest == hashlib.sha256(b"k").digest()
    assert header.created_at == NOW
    assert header.nonce == NONCE
    assert header.parents == (parent,)
    assert header.expires_at == NOW + 60_000
    assert env.body == b"\x01\x02"


def test_null_key_has_no_key_digest(ring: Keyring) -> None:
    env = decode_envelope(make_signer(ring).sign({}, topic="t"))
    assert env.header.key_digest is None
    assert env.header.expires_at is None


def test_fresh_nonce_per_message_by_default(ring: Keyring) -> None:
    signer = Signer(ring, kid="hmac-1", issuer="agent-a", model="m")
    nonces = {decode_envelope(signer.sign(1, topic="t")).header.nonce for _ in range(2000)}
    assert len(nonces) == 2000


def test_unknown_kid_is_a_configuration_error(ring: Keyring) -> None:
    with pytest.raises(ConfigurationError):
        Signer(ring, kid="nope", issuer="agent-a", model="m")


def test_issuer_the_key_may_not_sign_for_is_refused(ring: Keyring) -> None:
    with pytest.raises(ConfigurationError):
        Signer(ring, kid="hmac-1", issuer="agent-b", model="m")


def test_public_key_cannot_sign(ring: Keyring) -> None:
    with pytest.raises(ConfigurationError):
        Signer(ring.public(), kid="ed-1", issuer="agent-a", model="m")


@pytest.mark.parametrize("model", ["", "x" * 256, 5])
def test_bad_model_is_refused(ring: Keyring, model: object) -> None:
    with pytest.raises(ConfigurationError):
        Signer(ring, kid="hmac-1", issuer="agent-a", model=model)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"topic": ""}, ValueError),
        ({"topic": "t", "key": "text"}, TypeError),
        ({"topic": "t", "parents": [b"short"]}, ValueError),
        ({"topic": "t", "parents": b"\x00" * 32}, TypeError),
        ({"topic": "t", "parents": [b"\x00" * 32] * 65}, ValueError),
        ({"topic": "t", "expires_at": -1}, ValueError),
        ({"topic": "t", "expires_at": 1.5}, ValueError),
        ({"topic": "t", "expires_at": True}, ValueError),
    ],
)
def test_bad_sign_arguments(ring: Keyring, kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        make_signer(ring).sign({}, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("clock_value", [1.5, -1, True, 2**63])
def test_bad_clock_is_refused(ring: Keyring, clock_value: object) -> None:
    with pytest.raises(ConfigurationError):
        make_signer(ring, clock=lambda: clock_value).sign({}, topic="t")


@pytest.mark.parametrize("nonce", [b"", b"x" * 15, b"x" * 17, "x" * 16])
def test_bad_nonce_source_is_refused(ring: Keyring, nonce: object) -> None:
    with pytest.raises(ConfigurationError):
        make_signer(ring, nonce_source=lambda: nonce).sign({}, topic="t")


def test_unencodable_result_is_a_type_error(ring: Keyring) -> None:
    with pytest.raises(TypeError):
        make_signer(ring).sign(object(), topic="t")


def test_repr_has_no_key_material(ring: Keyring) -> None:
    text = repr(make_signer(ring))
    assert "hmac-1" in text
    assert "secret" not in text.lower()


@pytest.mark.parametrize("secret_len", [32, 63, 64, 65, 100])
def test_hs256_key_is_plain_hmac_sha256(secret_len: int) -> None:
    # HmacKey precomputes the padded-key states; the MAC must stay standard HMAC-SHA256.
    import hmac

    from signed_bus._keys import HmacKey

    secret = os.urandom(secret_len)
    key = HmacKey("k", secret, issuers=["a"])
    for message in (b"", b"x", os.urandom(64), os.urandom(1000)):
        expected = hmac.digest(secret, message, "sha256")
        assert key.sign(message) == expected
        key.verify(message, expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_reuse_the_parents_buffered_nonces(ring: Keyring) -> None:
    signer = Signer(ring, kid="hmac-1", issuer="agent-a", model="m")
    signer.sign(1, topic="t")  # the parent now holds unused buffered nonces
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: sign once, report the nonce, exit without running pytest teardown
        try:
            os.write(write_end, decode_envelope(signer.sign(1, topic="t")).header.nonce)
        finally:
            os._exit(0)
    os.close(write_end)
    child_nonce = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_nonce = decode_envelope(signer.sign(1, topic="t")).header.nonce
    assert len(child_nonce) == 16
    assert child_nonce != parent_nonce
