"""The signed-bus console script: keygen, export-public, inspect."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from signed_bus._cli import main
from signed_bus._keys import (
    Ed25519Key,
    HmacKey,
    Keyring,
    generate_ed25519_key,
    generate_hmac_key,
)


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


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
@pytest.mark.parametrize("append", [True, False], ids=["append", "new"])
def test_keygen_refuses_one_file_for_the_key_and_its_public_part(
    spelling: str, append: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Written to one file, the public ring would replace the new private key (or the second
    write fail after the first): refused before anything is written, however the path is
    spelt."""
    out = tmp_path / "ring.json"
    if append or spelling in ("symlink", "hardlink"):
        Keyring([generate_ed25519_key("old", ["a"])]).dump(out)
    public = {
        "same": out,
        "dot": tmp_path / "." / "ring.json",
        "symlink": tmp_path / "link.json",
        "hardlink": tmp_path / "hard.json",
    }[spelling]
    if spelling == "symlink":
        public.symlink_to(out)
    if spelling == "hardlink":
        os.link(out, public)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) if out.exists() else []
    code, stdout, stderr = run(
        capsys, "keygen", "--alg", "ed25519", "--kid", "e1", "--issuer", "a", "--out", str(out),
        "--public-out", str(public), *(["--append"] if append else []),
    )  # fmt: skip
    assert code == 2, stdout + stderr
    assert "the same file" in stderr and stdout == ""
    after = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) if out.exists() else []
    assert after == before


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
    assert code == 0 and "keygen" in stdout and "inspect" in stdout


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


# -- inspect --------------------------------------------------------------------------------------

NOW_MS = 1_750_000_000_000


class _Stdin:
    """Stands in for sys.stdin: inspect reads raw bytes from .buffer."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, bytes, Keyring]:
    """A key file and an envelope signed with it for topic 'results' and record key b'order-1'."""
    from signed_bus._signer import Signer

    ring = Keyring([generate_hmac_key("k1", ["agent-a"])])
    path = tmp_path / "ring.json"
    ring.dump(path)
    signer = Signer(ring, kid="k1", issuer="agent-a", model="m-1", clock=lambda: NOW_MS)
    value = signer.sign({"label": "cat"}, topic="results", key=b"order-1")
    return path, value, ring


def inspect_args(path: Path, *extra: str) -> list[str]:
    return ["inspect", "--keyring", str(path), "--reference-ms", str(NOW_MS), *extra]


def test_inspect_good_envelope_from_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signed: tuple[Path, bytes, Keyring]
) -> None:
    ring_path, value, _ = signed
    envelope_path = tmp_path / "value.bin"
    envelope_path.write_bytes(value)
    code, stdout, stderr = run(
        capsys,
        *inspect_args(ring_path, str(envelope_path), "--topic", "results", "--key", "order-1"),
    )
    assert code == 0, stdout + stderr
    assert "verdict: OK" in stdout
    assert "agent-a" in stdout and "m-1" in stdout and "results" in stdout
    assert "2025-06-15T15:06:40.000Z" in stdout  # created_at in ISO form
    digest = hashlib.sha256(b"order-1").hexdigest()
    assert digest in stdout  # key digest in hex
    assert hashlib.sha256(value).hexdigest() in stdout  # envelope digest
    for secret in material(ring_path):
        assert secret not in stdout + stderr


def test_inspect_defaults_topic_to_the_header_and_says_so(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signed: tuple[Path, bytes, Keyring],
) -> None:
    ring_path, value, _ = signed
    monkeypatch.setattr(sys, "stdin", _Stdin(value))
    code, stdout, _ = run(capsys, *inspect_args(ring_path, "--key", "order-1"))
    assert code == 0 and "verdict: OK" in stdout
    assert "--topic not given" in stdout


def test_inspect_stdin_hex_and_json(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signed: tuple[Path, bytes, Keyring],
) -> None:
    ring_path, value, _ = signed
    text = value.hex()
    monkeypatch.setattr(sys, "stdin", _Stdin((text[:40] + "\n" + text[40:] + "\n").encode()))
    code, stdout, _ = run(
        capsys,
        *inspect_args(ring_path, "-", "--hex", "--json", "--topic", "results", "--key", "order-1"),
    )
    assert code == 0
    document = json.loads(stdout)
    assert document["verified"] is True and document["reason"] is None
    header = document["header"]
    assert header["issuer"] == "agent-a" and header["kid"] == "k1" and header["alg"] == "HS256"
    assert header["created_at"] == NOW_MS and len(bytes.fromhex(header["nonce"])) == 16
    assert header["digest"] == hashlib.sha256(value).hexdigest()


def test_inspect_tampered_envelope_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signed: tuple[Path, bytes, Keyring]
) -> None:
    ring_path, value, _ = signed
    tampered = value[:-1] + bytes([value[-1] ^ 1])  # last signature byte
    path = tmp_path / "value.bin"
    path.write_bytes(tampered)
    code, stdout, _ = run(
        capsys, *inspect_args(ring_path, str(path), "--topic", "results", "--key", "order-1")
    )
    assert code == 1
    assert "verdict: FAILED bad_signature" in stdout
    assert "agent-a" in stdout  # the header is still shown


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--topic", "other", "--key", "order-1"], "wrong_topic"),
        (["--topic", "results", "--key", "order-2"], "wrong_key"),
        (["--topic", "results"], "wrong_key"),
    ],
)
def test_inspect_destination_failures(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    signed: tuple[Path, bytes, Keyring],
    extra: list[str],
    reason: str,
) -> None:
    ring_path, value, _ = signed
    path = tmp_path / "value.bin"
    path.write_bytes(value)
    code, stdout, _ = run(capsys, *inspect_args(ring_path, str(path), *extra))
    assert code == 1 and f"verdict: FAILED {reason}" in stdout


def test_inspect_freshness_and_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signed: tuple[Path, bytes, Keyring]
) -> None:
    ring_path, value, _ = signed
    path = tmp_path / "value.bin"
    path.write_bytes(value)
    late = ["inspect", "--keyring", str(ring_path), str(path), "--key", "order-1"]
    late += ["--reference-ms", str(NOW_MS + 3_600_000)]
    code, stdout, _ = run(capsys, *late)
    assert code == 1 and "verdict: FAILED expired" in stdout
    code, stdout, _ = run(capsys, *late, "--audit")
    assert code == 0 and "verdict: OK" in stdout and "audit mode" in stdout


def test_inspect_takes_the_whole_freshness_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signed: tuple[Path, bytes, Keyring]
) -> None:
    ring_path, value, _ = signed
    path = tmp_path / "value.bin"
    path.write_bytes(value)
    base = ["inspect", "--keyring", str(ring_path), str(path), "--key", "order-1"]
    late = [*base, "--reference-ms", str(NOW_MS + 3_600_000)]  # an hour after signing
    code, stdout, _ = run(capsys, *late, "--max-age-ms", "3600000")  # exactly max_age old
    assert code == 0 and "verdict: OK" in stdout
    code, stdout, _ = run(capsys, *late, "--max-age-ms", "3599999")
    assert code == 1 and "verdict: FAILED expired" in stdout
    early = [*base, "--reference-ms", str(NOW_MS - 5_001)]  # signed 5,001 ms "in the future"
    code, stdout, _ = run(capsys, *early)  # the default skew is 5,000 ms
    assert code == 1 and "verdict: FAILED not_yet_valid" in stdout
    code, stdout, _ = run(capsys, *early, "--future-skew-ms", "5001")
    assert code == 0 and "verdict: OK" in stdout
    code, stdout, _ = run(capsys, *late, "--max-age-ms", "3600000", "--max-lag-ms", "0")
    assert code == 0 and "verdict: OK" in stdout  # one time stands for reference and clock
    code, stdout, _ = run(capsys, "inspect", "--help")
    assert code == 0
    text = " ".join(stdout.split())  # argparse wraps the help lines
    for option, default in (
        ("--max-age-ms", "300000"),
        ("--future-skew-ms", "5000"),
        ("--max-lag-ms", "3600000"),
    ):
        assert option in text and f"(default {default})" in text


@pytest.mark.parametrize("command", [["inspect"], ["tail", "some-topic"]])
def test_tail_and_inspect_parse_the_window_into_one_freshness(command: list[str]) -> None:
    from signed_bus._cli import build_parser
    from signed_bus._cli.options import freshness_from_args
    from signed_bus._freshness import Freshness

    parser = build_parser()
    assert freshness_from_args(parser.parse_args(command)) == Freshness()
    args = parser.parse_args(
        [*command, "--max-age-ms", "1000", "--future-skew-ms", "20", "--max-lag-ms", "0"]
    )
    assert freshness_from_args(args) == Freshness(max_age_ms=1000, future_skew_ms=20, max_lag_ms=0)


@pytest.mark.parametrize(
    "option",
    [
        ("--max-age-ms", "0"),
        ("--max-age-ms", "-1"),
        ("--future-skew-ms", "-1"),
        ("--max-lag-ms", "-1"),
        ("--max-lag-ms", str(2**61 + 1)),
    ],
)
def test_inspect_refuses_a_bad_window_with_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    signed: tuple[Path, bytes, Keyring],
    option: tuple[str, str],
) -> None:
    ring_path, value, _ = signed
    path = tmp_path / "value.bin"
    path.write_bytes(value)
    code, stdout, stderr = run(
        capsys, *inspect_args(ring_path, str(path), "--key", "order-1", *option)
    )
    assert code == 2 and "verdict" not in stdout
    assert option[0].lstrip("-").replace("-", "_") in stderr


def test_inspect_unknown_key_and_garbage(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signed: tuple[Path, bytes, Keyring],
) -> None:
    _, value, _ = signed
    other = tmp_path / "other.json"
    Keyring([generate_hmac_key("k2", ["agent-a"])]).dump(other)
    monkeypatch.setattr(sys, "stdin", _Stdin(value))
    code, stdout, _ = run(capsys, *inspect_args(other, "--key", "order-1"))
    assert code == 1 and "verdict: FAILED unknown_key" in stdout
    monkeypatch.setattr(sys, "stdin", _Stdin(b"\x00not an envelope"))
    code, stdout, _ = run(capsys, *inspect_args(other))
    assert code == 1 and "verdict: FAILED malformed" in stdout


def test_inspect_keyring_from_env(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signed: tuple[Path, bytes, Keyring],
) -> None:
    _, value, ring = signed
    monkeypatch.setenv("SIGNED_BUS_KEYRING", ring.to_json())
    monkeypatch.setattr(sys, "stdin", _Stdin(value))
    code, stdout, _ = run(capsys, "inspect", "--reference-ms", str(NOW_MS), "--key", "order-1")
    assert code == 0 and "verdict: OK" in stdout


def test_inspect_usage_and_config_errors_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signed: tuple[Path, bytes, Keyring],
) -> None:
    ring_path, value, _ = signed
    monkeypatch.delenv("SIGNED_BUS_KEYRING", raising=False)
    monkeypatch.setattr(sys, "stdin", _Stdin(value))
    assert run(capsys, "inspect")[0] == 2  # no keyring anywhere
    assert run(capsys, *inspect_args(ring_path, str(tmp_path / "absent.bin")))[0] == 2
    monkeypatch.setattr(sys, "stdin", _Stdin(b"zz not hex"))
    assert run(capsys, *inspect_args(ring_path, "--hex"))[0] == 2
    ring_path.chmod(0o644)
    code, _, stderr = run(capsys, *inspect_args(ring_path))
    assert code == 2 and "0644" in stderr
    assert run(capsys, "inspect", "--key", "a", "--null-key")[0] == 2


def test_inspect_ed25519_with_public_only_ring_and_escaped_header_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from signed_bus._signer import Signer

    ring_path, pub_path = tmp_path / "ring.json", tmp_path / "pub.json"
    argv = ["keygen", "--alg", "ed25519", "--kid", "e1", "--issuer", "agent-b"]
    assert run(capsys, *argv, "--out", str(ring_path), "--public-out", str(pub_path))[0] == 0
    assert stat.S_IMODE(pub_path.stat().st_mode) & 0o077 in (0o044, 0o000)  # umask decides
    signer = Signer(
        Keyring.from_file(ring_path),
        kid="e1",
        issuer="agent-b",
        model="m\x1b[31m-red",  # header text is shown to a terminal before it is trusted
        clock=lambda: NOW_MS,
    )
    path = tmp_path / "value.bin"
    path.write_bytes(signer.sign([1, 2, 3], topic="plans", key=None))
    code, stdout, _ = run(capsys, *inspect_args(pub_path, str(path), "--null-key"))
    assert code == 0 and "verdict: OK" in stdout
    assert "\x1b" not in stdout and "\\x1b" in stdout
    assert "none (null record key)" in stdout
    for secret in material(ring_path):
        assert secret not in stdout


# -- the package ----------------------------------------------------------------------------------


def test_version_option_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import signed_bus

    code, stdout, _ = run(capsys, "--version")
    assert (code, stdout) == (0, f"signed-bus {signed_bus.__version__}\n")


def test_python_dash_m_signed_bus_runs_the_cli(tmp_path: Path) -> None:
    import subprocess

    import signed_bus

    done = subprocess.run(
        [sys.executable, "-m", "signed_bus", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not the repository: the installed package answers
    )
    assert (done.returncode, done.stdout) == (0, f"signed-bus {signed_bus.__version__}\n")
    out = tmp_path / "k.keyring"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "signed_bus",
            "keygen",
            "--alg",
            "hmac",
            "--kid",
            "k1",
            "--issuer",
            "a",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Keyring.from_file(out).kids() == ["k1"]


def test_every_command_is_registered_with_plain_imports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import signed_bus._cli

    code, stdout, _ = run(capsys, "--help")
    assert code == 0
    for command in ("keygen", "export-public", "inspect", "trace", "tail", "bench"):
        assert command in stdout
    package = Path(signed_bus._cli.__file__).parent
    for module in package.glob("*.py"):
        assert "importlib" not in module.read_text(), module.name


def test_the_console_script_needs_no_bench_extra() -> None:
    import subprocess

    code = (
        "import sys; from signed_bus._cli import main; main(['keygen', '--help']);"
        "bad = [m for m in ('matplotlib', 'standardwebhooks', 'pyinstrument')"
        " if m in sys.modules]; print(','.join(bad), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stderr.strip() == ""
