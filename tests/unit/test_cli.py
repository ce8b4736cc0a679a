"""The signed-bus console script: keygen, export-public, inspect."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from signed_bus.cli import main
from signed_bus.keys import Ed25519Key, HmacKey, Keyring


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def material(path: Path) -> list[str]:
    """The base64url key material in a key file (what must never be printed)."""
    document = json.loads(path.read_text())
    return [
        entry[field]
        for entry in document["keys"]
        for field in ("secret", "private")
        if field in entry
    ]


# -- keygen ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["hmac", "ed25519"])
def test_keygen_writes_a_0600_file_the_loader_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alg: str
) -> None:
    out = tmp_path / "ring.json"
    code, stdout, stderr = run(
        capsys, "keygen", "--alg", alg, "--kid", "k1", "--issuer", "a", "--issuer", "b",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = Keyring.from_file(out)["k1"]
    assert isinstance(key, HmacKey if alg == "hmac" else Ed25519Key)
    assert key.can_sign and key.issuers == frozenset({"a", "b"})
    assert "k1" in stdout and "0600" in stdout
    secrets = material(out)
    assert secrets
    for secret in secrets:
        assert secret not in stdout and secret not in stderr
        assert secret[:12] not in stdout + stderr


def test_keygen_refuses_existing_file_without_append(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ring.json"
    assert (
        run(capsys, "keygen", "--alg", "hmac", "--kid", "k1", "--issuer", "a", "--out", str(out))[0]
        == 0
    )
    before = out.read_bytes()
    code, _, stderr = run(
        capsys, "keygen", "--alg", "hmac", "--kid", "k2", "--issuer", "a", "--out", str(out)
    )
    assert code == 2 and "--append" in stderr
    assert out.read_bytes() == before


def test_keygen_append_and_public_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, pub = tmp_path / "ring.json", tmp_path / "public.json"
    assert (
        run(capsys, "keygen", "--alg", "hmac", "--kid", "h1", "--issuer", "a", "--out", str(out))[0]
        == 0
    )
    code, stdout, _ = run(
        capsys, "keygen", "--alg", "ed25519", "--kid", "e1", "--issuer", "a", "--out", str(out),
        "--public-out", str(pub), "--append",
    )  # fmt: skip
    assert code == 0
    ring = Keyring.from_file(out)
    assert ring.kids() == ["h1", "e1"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public = Keyring.from_file(pub)
    assert public.kids() == ["e1"] and not public.has_secrets
    public["e1"].verify(b"m", ring["e1"].sign(b"m"))
    assert "public key (base64url)" in stdout
    # Appending a kid that exists is refused and leaves the file as it was.
    before = out.read_bytes()
    code, _, stderr = run(
        capsys, "keygen", "--alg", "hmac", "--kid", "h1", "--issuer", "a", "--out", str(out),
        "--append",
    )  # fmt: skip
    assert code == 2 and "already in the keyring" in stderr
    assert out.read_bytes() == before


def test_keygen_hmac_has_no_public_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(
        capsys, "keygen", "--alg", "hmac", "--kid", "h1", "--issuer", "a",
        "--out", str(tmp_path / "r.json"), "--public-out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert code == 2 and "symmetric" in stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["keygen", "--alg", "rsa", "--kid", "k", "--issuer", "a", "--out", "x"],
        ["keygen", "--alg", "hmac", "--kid", "k", "--out", "x"],
        ["keygen", "--alg", "hmac", "--kid", "bad kid", "--issuer", "a", "--out", "{dir}/x"],
        ["keygen", "--alg", "hmac", "--kid", "k", "--issuer", "*", "--out", "{dir}/x"],
        [],
        ["no-such-command"],
    ],
)
def test_keygen_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, stderr = run(capsys, *(arg.replace("{dir}", str(tmp_path)) for arg in argv))
    assert code == 2 and stderr
    assert list(tmp_path.iterdir()) == []


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "--help")
    assert code == 0 and "keygen" in stdout and "export-public" in stdout


# -- export-public --------------------------------------------------------------------------------


def test_export_public(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ring.json"
    run(capsys, "keygen", "--alg", "ed25519", "--kid", "e1", "--issuer", "a", "--out", str(out))
    run(
        capsys,
        "keygen",
        "--alg",
        "hmac",
        "--kid",
        "h1",
        "--issuer",
        "a",
        "--out",
        str(out),
        "--append",
    )
    code, stdout, stderr = run(capsys, "export-public", str(out))
    assert code == 0
    assert Keyring.from_json(stdout).kids() == ["e1"]
    assert "1 HMAC key" in stderr
    for secret in material(out):
        assert secret not in stdout + stderr
    pub = tmp_path / "pub.json"
    assert run(capsys, "export-public", str(out), "--out", str(pub))[0] == 0
    assert Keyring.from_file(pub).kids() == ["e1"]
    assert run(capsys, "export-public", str(out), "--out", str(pub))[0] == 2
    assert run(capsys, "export-public", str(out), "--out", str(pub), "--overwrite")[0] == 0


def test_export_public_refuses_a_readable_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ring.json"
    run(capsys, "keygen", "--alg", "ed25519", "--kid", "e1", "--issuer", "a", "--out", str(out))
    out.chmod(0o644)
    code, stdout, stderr = run(capsys, "export-public", str(out))
    assert code == 2 and "0644" in stderr and str(out) in stderr
    for secret in material(out):
        assert secret not in stdout + stderr
