"""Keys and keyrings: construction rules, file/env round trips, file modes, secrecy."""

from __future__ import annotations

import base64
import copy
import json
import pickle
from pathlib import Path

import pytest

from signed_bus._keys import (
    EDDSA,
    HS256,
    Ed25519Key,
    HmacKey,
    Key,
    Keyring,
    generate_ed25519_key,
    generate_hmac_key,
)
from signed_bus.errors import BadSignature, ConfigurationError

SECRET = bytes(range(32))
SECRET_B64 = base64.urlsafe_b64encode(SECRET).rstrip(b"=").decode()


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forms_of(raw: bytes) -> list[str]:
    """Every way a secret could leak into text: base64 (both alphabets, padded or not) and hex."""
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return [std, std.rstrip("="), url, url.rstrip("="), raw.hex(), raw.hex().upper()]


def assert_no_secret(text: str, raw: bytes) -> None:
    for form in forms_of(raw):
        assert form not in text
    # Also no long fragment of the base64url form (a truncated secret is still a leak).
    b64 = b64u(raw)
    for start in range(0, len(b64) - 12):
        assert b64[start : start + 12] not in text


def write(path: Path, document: object, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(document))
    path.chmod(mode)
    return path


def hmac_entry(kid: str = "k1", secret: str = SECRET_B64, **extra: object) -> dict[str, object]:
    return {"kid": kid, "alg": HS256, "issuers": ["agent-a"], "secret": secret, **extra}


# -- key construction -----------------------------------------------------------------------------


def test_hmac_sign_verify_round_trip() -> None:
    key = HmacKey("k1", SECRET, issuers=["agent-a"])
    sig = key.sign(b"message")
    assert len(sig) == 32
    key.verify(b"message", sig)
    with pytest.raises(BadSignature) as info:
        key.verify(b"messagf", sig)
    assert info.value.kid == "k1"
    with pytest.raises(BadSignature):
        key.verify(b"message", sig[:-1])
    with pytest.raises(BadSignature):
        key.verify(b"message", b"")


def test_hmac_signature_is_standard_hmac_sha256() -> None:
    import hashlib
    import hmac

    key = HmacKey("k1", SECRET, issuers=["agent-a"])
    # The precomputed keyed state must not carry anything over between messages.
    for message in (b"", b"a", b"b" * 1000, b"a"):
        assert key.sign(message) == hmac.new(SECRET, message, hashlib.sha256).digest()


@pytest.mark.parametrize("length", [0, 1, 16, 31])
def test_short_hmac_secret_rejected(length: int) -> None:
    with pytest.raises(ConfigurationError, match="at least 32"):
        HmacKey("k1", b"x" * length, issuers=["agent-a"])


def test_hmac_secret_must_be_bytes() -> None:
    with pytest.raises(ConfigurationError):
        HmacKey("k1", "x" * 40, issuers=["agent-a"])  # type: ignore[arg-type]


def test_ed25519_private_signs_public_verifies() -> None:
    key = generate_ed25519_key("e1", ["agent-b"])
    assert key.can_sign and key.has_secret
    sig = key.sign(b"message")
    assert len(sig) == 64
    public = key.public()
    assert not public.can_sign and not public.has_secret
    public.verify(b"message", sig)
    with pytest.raises(BadSignature):
        public.verify(b"other", sig)
    with pytest.raises(BadSignature):
        public.verify(b"message", sig[:10])
    with pytest.raises(ConfigurationError, match="cannot sign"):
        public.sign(b"message")
    assert public.public() is public
    assert Ed25519Key.from_public_bytes("e1", key.public_bytes, issuers=["agent-b"]) == public


def test_ed25519_raw_lengths_checked() -> None:
    with pytest.raises(ConfigurationError):
        Ed25519Key.from_private_bytes("e1", b"\x01" * 31, issuers=["a"])
    with pytest.raises(ConfigurationError):
        Ed25519Key.from_public_bytes("e1", b"\x01" * 33, issuers=["a"])
    with pytest.raises(ConfigurationError):
        Ed25519Key("e1", issuers=["a"])


def test_ed25519_mismatched_public_key_rejected() -> None:
    one, two = generate_ed25519_key("e1", ["a"]), generate_ed25519_key("e2", ["a"])
    with pytest.raises(ConfigurationError, match="does not belong"):
        Ed25519Key(
            "e1",
            issuers=["a"],
            private_key=one._private,
            public_key=two._public,
        )


def test_generated_keys() -> None:
    hmac_key = generate_hmac_key("h1", ["agent-a", "agent-b"])
    assert hmac_key.alg == HS256 and hmac_key.can_sign
    assert hmac_key.issuers == frozenset({"agent-a", "agent-b"})
    assert generate_hmac_key("h1", ["agent-a"]) != generate_hmac_key("h1", ["agent-a"])
    ed_key = generate_ed25519_key("e1", ("agent-c",))
    assert ed_key.alg == EDDSA
    assert isinstance(hmac_key, Key) and isinstance(ed_key, Key)
    assert ed_key.may_sign_for("agent-c") and not ed_key.may_sign_for("agent-a")


@pytest.mark.parametrize("kid", ["", "has space", "tab\t", "x" * 129, "é", 7, None])
def test_bad_kid_rejected(kid: object) -> None:
    with pytest.raises(ConfigurationError, match="kid"):
        HmacKey(kid, SECRET, issuers=["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("issuers", ["agent-a", b"agent-a", [], [""], ["*"], ["a", 3], ["\n"], 5])
def test_bad_issuers_rejected(issuers: object) -> None:
    with pytest.raises(ConfigurationError):
        HmacKey("k1", SECRET, issuers=issuers)  # type: ignore[arg-type]


def test_keys_are_immutable_and_not_picklable() -> None:
    key = HmacKey("k1", SECRET, issuers=["a"])
    with pytest.raises(AttributeError):
        key.kid = "k2"
    with pytest.raises(AttributeError):
        key._secret = b"y" * 32
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Keyring([key]))
    assert copy.deepcopy(key) is key
    ring_copy = copy.deepcopy(Keyring([key]))
    assert ring_copy.get("k1") is key


# -- secrecy --------------------------------------------------------------------------------------


def test_repr_and_str_show_no_material() -> None:
    hmac_key = HmacKey("k1", SECRET, issuers=["agent-a"])
    ed_key = generate_ed25519_key("e1", ["agent-b"])
    raw_private = Keyring([ed_key]).to_json()
    private = base64.urlsafe_b64decode(json.loads(raw_private)["keys"][0]["private"] + "==")
    ring = Keyring([hmac_key, ed_key])
    for text in (repr(hmac_key), str(hmac_key), f"{hmac_key}", repr(ring), str(ring)):
        assert_no_secret(text, SECRET)
        assert_no_secret(text, private)
    assert repr(hmac_key) == "HmacKey(kid='k1', alg='HS256', issuers=['agent-a'])"
    assert "verify_only=True" in repr(ed_key.public())
    assert not hasattr(hmac_key, "__dict__")  # nothing for vars() or a debugger to dump


def _load_error(tmp_path: Path, document: object) -> ConfigurationError:
    path = write(tmp_path / "keys.json", document)
    with pytest.raises(ConfigurationError) as info:
        Keyring.from_file(path)
    return info.value


@pytest.mark.parametrize(
    "make_document",
    [
        # secret under the wrong algorithm (algorithm confusion)
        lambda: {"version": 1, "keys": [hmac_entry(alg=EDDSA)]},
        # secret field alongside a public field
        lambda: {"version": 1, "keys": [hmac_entry(public=SECRET_B64)]},
        # secret with an unknown extra field
        lambda: {"version": 1, "keys": [hmac_entry(comment="x")]},
        # a field named with the secret itself
        lambda: {"version": 1, "keys": [hmac_entry(**{SECRET_B64: 1})]},  # type: ignore[arg-type]
        # bad issuers next to a secret
        lambda: {"version": 1, "keys": [hmac_entry(issuers="agent-a")]},
        # bad kid next to a secret
        lambda: {"version": 1, "keys": [hmac_entry(kid="has space")]},
        # secret truncated below 32 bytes
        lambda: {"version": 1, "keys": [hmac_entry(secret=SECRET_B64[:40])]},
        # secret with a character outside base64url
        lambda: {"version": 1, "keys": [hmac_entry(secret=SECRET_B64[:-1] + "!")]},
        # secret duplicated under two kids is fine, duplicated kid is not
        lambda: {"version": 1, "keys": [hmac_entry(), hmac_entry()]},
        # wrong version
        lambda: {"version": 2, "keys": [hmac_entry()]},
        # secret as a number list
        lambda: {"version": 1, "keys": [hmac_entry(secret=list(SECRET))]},  # type: ignore[arg-type]
    ],
)
def test_load_errors_never_contain_the_secret(tmp_path: Path, make_document: object) -> None:
    error = _load_error(tmp_path, make_document())  # type: ignore[operator]
    for text in (str(error), repr(error), f"{error}", " ".join(map(str, error.args))):
        assert_no_secret(text, SECRET)
    assert error.__cause__ is None
    assert str(tmp_path / "keys.json") in str(error)


def test_invalid_json_error_does_not_carry_the_document(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"version": 1, "keys": [{"secret": "' + SECRET_B64 + '", }]}')
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not valid JSON") as info:
        Keyring.from_file(path)
    assert_no_secret(str(info.value), SECRET)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_algorithm_confusion_ed25519_public_bytes_never_become_hmac_secret(tmp_path: Path) -> None:
    ed_key = generate_ed25519_key("e1", ["agent-a"])
    public_b64 = b64u(ed_key.public_bytes)
    # public field under HS256
    error = _load_error(
        tmp_path,
        {
            "version": 1,
            "keys": [{"kid": "e1", "alg": HS256, "issuers": ["a"], "public": public_b64}],
        },
    )
    assert "'secret'" in str(error)
    # secret field under EdDSA
    error = _load_error(
        tmp_path,
        {
            "version": 1,
            "keys": [{"kid": "e1", "alg": EDDSA, "issuers": ["a"], "secret": public_b64}],
        },
    )
    assert "'private' or 'public'" in str(error)
    # no alg, or alg none
    for alg in (None, "none", "HS512", "hs256"):
        entry: dict[str, object] = {"kid": "e1", "issuers": ["a"], "secret": SECRET_B64}
        if alg is not None:
            entry["alg"] = alg
        assert "'alg'" in str(_load_error(tmp_path, {"version": 1, "keys": [entry]}))


# -- keyring --------------------------------------------------------------------------------------


def test_keyring_add_get_remove_iterate() -> None:
    one = generate_hmac_key("k1", ["a"])
    two = generate_ed25519_key("k2", ["b"])
    ring = Keyring([one])
    ring.add(two)
    assert ring.get("k1") is one and ring["k2"] is two
    assert ring.get("missing") is None and ring.get(["unhashable"]) is None  # type: ignore[arg-type]
    assert "k1" in ring and "missing" not in ring and ["x"] not in ring
    assert list(ring) == [one, two] and len(ring) == 2 and ring.kids() == ["k1", "k2"]
    with pytest.raises(ConfigurationError, match="already"):
        ring.add(generate_hmac_key("k1", ["a"]))
    replacement = generate_hmac_key("k1", ["a"])
    ring.add(replacement, replace=True)
    assert ring.get("k1") is replacement
    ring.remove("k1")
    assert ring.get("k1") is None
    with pytest.raises(KeyError):
        ring.remove("k1")
    with pytest.raises(ConfigurationError):
        ring.add("not a key")  # type: ignore[arg-type]


def test_public_ring_drops_hmac_and_private_parts() -> None:
    ed_key = generate_ed25519_key("e1", ["b"])
    ring = Keyring([generate_hmac_key("h1", ["a"]), ed_key])
    public = ring.public()
    assert public.kids() == ["e1"]
    assert not public.has_secrets and ring.has_secrets
    only = public["e1"]
    assert not only.can_sign
    only.verify(b"m", ed_key.sign(b"m"))
    document = json.loads(public.to_json())
    assert set(document["keys"][0]) == {"kid", "alg", "issuers", "public"}
