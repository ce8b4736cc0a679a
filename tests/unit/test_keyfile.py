"""The key-file format (signed_bus._keyfile, docs/KEYFILE.md) through Keyring's public methods:
file and environment round trips, file modes and kinds, document shape, duplicate members."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from signed_bus._keys import HS256, HmacKey, Keyring, generate_ed25519_key, generate_hmac_key
from signed_bus.errors import ConfigurationError

SECRET = bytes(range(32))
SECRET_B64 = base64.urlsafe_b64encode(SECRET).rstrip(b"=").decode()


def assert_no_secret(text: str, raw: bytes) -> None:
    """No form of the secret (base64 either alphabet, padded or not, hex) nor a long fragment of
    its base64url form in ``text``."""
    std, url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    for form in (std, std.rstrip("="), url, url.rstrip("="), raw.hex(), raw.hex().upper()):
        assert form not in text
    b64 = url.rstrip("=")
    for start in range(0, len(b64) - 12):
        assert b64[start : start + 12] not in text


def write(path: Path, document: object, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(document))
    path.chmod(mode)
    return path


def hmac_entry(kid: str = "k1", secret: str = SECRET_B64, **extra: object) -> dict[str, object]:
    return {"kid": kid, "alg": HS256, "issuers": ["agent-a"], "secret": secret, **extra}


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
    loaders: tuple[Callable[[], Keyring], ...] = (
        lambda: Keyring.from_file(path),
        lambda: Keyring.from_json(text),
    )
    for load in loaders:
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


@pytest.mark.parametrize(
    "encoded",
    [
        '{"keys": []}'.encode("utf-16"),
        '{"keys": []}'.encode("utf-32-le"),
        b"\xef\xbb\xbf" + b'{"keys": []}',
        b'{"keys": [' + b"1" * 5_000 + b"]}",
    ],
    ids=["utf-16", "utf-32-le", "utf-8-bom", "huge-integer"],
)
def test_key_file_text_is_utf8_json_or_a_configuration_error(encoded: bytes) -> None:
    from signed_bus._keyfile import parse_json

    with pytest.raises(ConfigurationError) as caught:
        parse_json(encoded, source="keys.json")
    assert "1111" not in str(caught.value) and caught.value.__cause__ is None
