"""Keys and keyrings: construction rules, file/env round trips, file modes, secrecy."""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import stat
import subprocess
import sys
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
        key.kid = "k2"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        key._secret = b"y" * 32  # type: ignore[misc]
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
        lambda: {"version": 1, "keys": [hmac_entry(**{SECRET_B64: 1})]},
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
        lambda: {"version": 1, "keys": [hmac_entry(secret=list(SECRET))]},
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


def test_file_round_trip_mode_0600(tmp_path: Path) -> None:
    ring = Keyring(
        [
            generate_hmac_key("h1", ["agent-a"]),
            generate_ed25519_key("e1", ["agent-b", "agent-c"]),
            generate_ed25519_key("e2", ["agent-d"]).public(),
        ]
    )
    path = tmp_path / "ring.json"
    ring.dump(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["ring.json"]  # no temporary file left behind
    loaded = Keyring.from_file(path)
    assert list(loaded) == list(ring)
    message = b"payload"
    for key in ring:
        if key.can_sign:
            loaded[key.kid].verify(message, key.sign(message))
            key.verify(message, loaded[key.kid].sign(message))
    assert loaded["h1"].sign(message) == ring["h1"].sign(message)


def test_dump_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    Keyring([generate_hmac_key("h1", ["a"])]).dump(path)
    with pytest.raises(ConfigurationError, match="already exists"):
        Keyring([generate_hmac_key("h2", ["a"])]).dump(path)
    assert Keyring.from_file(path).kids() == ["h1"]
    Keyring([generate_hmac_key("h2", ["a"])]).dump(path, overwrite=True)
    assert Keyring.from_file(path).kids() == ["h2"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["ring.json"]


def test_dump_refuses_readable_mode_for_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="refusing"):
        Keyring([generate_hmac_key("h1", ["a"])]).dump(tmp_path / "x.json", mode=0o644)
    assert not (tmp_path / "x.json").exists()
    public_path = tmp_path / "public.json"
    Keyring([generate_ed25519_key("e1", ["a"])]).public().dump(public_path, mode=0o644)
    assert Keyring.from_file(public_path).kids() == ["e1"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_with_secrets_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "ring.json", {"version": 1, "keys": [hmac_entry()]}, mode)
    with pytest.raises(ConfigurationError) as info:
        Keyring.from_file(path)
    message = str(info.value)
    assert str(path) in message and f"{mode:04o}" in message
    assert_no_secret(message, SECRET)


def test_public_only_file_may_be_0644(tmp_path: Path) -> None:
    public = generate_ed25519_key("e1", ["a"]).public()
    path = tmp_path / "public.json"
    path.write_text(Keyring([public]).to_json())
    path.chmod(0o644)
    assert Keyring.from_file(path)["e1"] == public


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_file_writable_by_others_refused_even_if_public(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "public.json"
    path.write_text(Keyring([generate_ed25519_key("e1", ["a"]).public()]).to_json())
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match="writable"):
        Keyring.from_file(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot open"):
        Keyring.from_file(tmp_path / "absent.json")
    tmp_path.chmod(0o700)
    with pytest.raises(ConfigurationError, match="regular file"):
        Keyring.from_file(tmp_path)


def test_env_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = Keyring([generate_hmac_key("h1", ["a"]), generate_ed25519_key("e1", ["b"])])
    monkeypatch.setenv("SIGNED_BUS_KEYRING", ring.to_json())
    assert list(Keyring.from_env()) == list(ring)
    monkeypatch.setenv("OTHER_RING", ring.public().to_json())
    assert Keyring.from_env("OTHER_RING").kids() == ["e1"]


def test_env_missing_or_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGNED_BUS_KEYRING", raising=False)
    with pytest.raises(ConfigurationError, match="SIGNED_BUS_KEYRING"):
        Keyring.from_env()
    monkeypatch.setenv(
        "SIGNED_BUS_KEYRING", '{"version": 1, "keys": [' + json.dumps(hmac_entry(alg="x")) + "]}"
    )
    with pytest.raises(ConfigurationError) as info:
        Keyring.from_env()
    assert "environment variable SIGNED_BUS_KEYRING" in str(info.value)
    assert_no_secret(str(info.value), SECRET)


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"keys": []},
        {"version": True, "keys": []},
        {"version": 1},
        {"version": 1, "keys": {}},
        {"version": 1, "keys": [], "extra": 1},
        {"version": 1, "keys": ["k1"]},
    ],
)
def test_document_shape_errors(document: object) -> None:
    with pytest.raises(ConfigurationError):
        Keyring.from_json(json.dumps(document))


def test_empty_ring_and_padded_base64_accepted() -> None:
    assert len(Keyring.from_json('{"version": 1, "keys": []}')) == 0
    padded = base64.urlsafe_b64encode(SECRET).decode()
    assert padded.endswith("=")
    ring = Keyring.from_json(json.dumps({"version": 1, "keys": [hmac_entry(secret=padded)]}))
    assert ring["k1"] == HmacKey("k1", SECRET, issuers=["agent-a"])


def test_written_format_is_documented_shape() -> None:
    ring = Keyring([HmacKey("k1", SECRET, issuers=["b", "a"])])
    assert json.loads(ring.to_json()) == {
        "version": 1,
        "keys": [{"kid": "k1", "alg": "HS256", "issuers": ["a", "b"], "secret": SECRET_B64}],
    }


def test_fifo_at_the_key_path_is_refused_without_waiting(tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes: run the load in a child process
    # so a regression fails on the timeout instead of hanging the suite.
    fifo = tmp_path / "ring.json"
    os.mkfifo(fifo, 0o600)
    code = "import sys; from signed_bus._keys import Keyring; Keyring.from_file(sys.argv[1])"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        pytest.fail("Keyring.from_file blocked on a FIFO")
    assert done.returncode != 0
    assert "ConfigurationError" in done.stderr and "not a regular file" in done.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "ring.json", {"version": 1, "keys": [hmac_entry()]})
    assert Keyring.from_file(path).kids() == ["k1"]  # 0600, ours: fine
    os.chown(path, 4242, -1)
    with pytest.raises(ConfigurationError, match="owned by uid 4242") as info:
        Keyring.from_file(path)
    assert str(path) in str(info.value)
    assert_no_secret(str(info.value), SECRET)
    # A public-only file too: its owner could swap the keys verifiers trust.
    public = tmp_path / "public.json"
    public.write_text(Keyring([generate_ed25519_key("e1", ["a"]).public()]).to_json())
    public.chmod(0o644)
    os.chown(public, 4242, 4242)
    with pytest.raises(ConfigurationError, match="owned by uid 4242"):
        Keyring.from_file(public)


def test_symlink_is_followed_and_its_target_checked(tmp_path: Path) -> None:
    # Kubernetes secret volumes are symlinks (key.json -> ..data/key.json): they must load, and
    # the checks apply to the file actually read.
    target = write(tmp_path / "target.json", {"version": 1, "keys": [hmac_entry()]})
    link = tmp_path / "ring.json"
    link.symlink_to(target)
    assert Keyring.from_file(link).kids() == ["k1"]
    target.chmod(0o644)
    with pytest.raises(ConfigurationError, match="0644"):
        Keyring.from_file(link)


@pytest.mark.parametrize(
    "text",
    [
        # a second "keys" member: Python's json would silently keep the last one
        '{"version": 1, "keys": [], "keys": [ENTRY]}',
        '{"version": 1, "version": 1, "keys": [ENTRY]}',
        # inside a key entry: which secret / which issuers is meant?
        '{"version": 1, "keys": [{"kid": "k1", "alg": "HS256", "issuers": ["agent-a"], '
        '"secret": "SECRET", "secret": "SECRET"}]}',
        '{"version": 1, "keys": [{"kid": "k1", "alg": "HS256", "issuers": ["agent-a"], '
        '"issuers": ["agent-b"], "secret": "SECRET"}]}',
        '{"version": 1, "keys": [{"kid": "k1", "kid": "k2", "alg": "HS256", '
        '"issuers": ["agent-a"], "secret": "SECRET"}]}',
    ],
)
def test_duplicate_json_members_are_refused(tmp_path: Path, text: str) -> None:
    text = text.replace("ENTRY", json.dumps(hmac_entry())).replace("SECRET", SECRET_B64)
    path = tmp_path / "ring.json"
    path.write_text(text)
    path.chmod(0o600)
    for load in (lambda: Keyring.from_file(path), lambda: Keyring.from_json(text)):
        with pytest.raises(ConfigurationError, match="more than once") as info:
            load()
        assert_no_secret(str(info.value), SECRET)
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_duplicate_member_with_an_unprintable_name_is_not_echoed() -> None:
    name = SECRET_B64  # a secret pasted as a member name must not end up in the message
    text = json.dumps({"version": 1, "keys": []})[:-1] + f', "{name}": 1, "{name}": 2}}'
    with pytest.raises(ConfigurationError, match="more than once") as info:
        Keyring.from_json(text)
    assert_no_secret(str(info.value), SECRET)
