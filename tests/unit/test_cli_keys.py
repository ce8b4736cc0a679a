"""``signed-bus export-public`` / ``import-jwks`` driven as a user does, in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from signed_bus import Keyring, Signer, generate_ed25519_key, generate_hmac_key
from tests.unit.test_keys import assert_no_secret


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signed_bus", *argv],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_export_public_of_hmac_keys_only_says_so_and_writes_nothing(tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    key = generate_hmac_key("h1", ["worker"])
    Keyring([key]).dump(ring)
    out = tmp_path / "pub.json"
    done = cli("export-public", str(ring), "--out", str(out))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "no public key to export" in done.stderr
    assert "HMAC" in done.stderr
    assert not out.exists()
    assert done.stdout == ""


def test_export_as_jwks_then_import_gives_the_public_ring(tmp_path: Path) -> None:
    ring_file, jwks, back = tmp_path / "ring.json", tmp_path / "jwks.json", tmp_path / "back.json"
    ed = generate_ed25519_key("ed1", ["planner", "actor"])
    Keyring([ed, generate_hmac_key("h1", ["worker"])]).dump(ring_file)
    done = cli("export-public", str(ring_file), "--format", "jwks", "--out", str(jwks))
    assert done.returncode == 0, done.stderr
    assert "left out 1 HMAC key" in done.stderr
    assert stat.S_IMODE(jwks.stat().st_mode) == 0o644
    private = json.loads(ring_file.read_text())["keys"][0]["private"]
    assert_no_secret(jwks.read_text(), base64.urlsafe_b64decode(private + "="))
    assert json.loads(jwks.read_text())["keys"][0]["signed_bus_issuers"] == ["actor", "planner"]
    done = cli("import-jwks", str(jwks), "--out", str(back))
    assert done.returncode == 0, done.stderr
    assert Keyring.from_file(back)["ed1"] == ed.public()
    piped = cli("import-jwks", "-", stdin=jwks.read_text())
    assert piped.returncode == 0 and Keyring.from_json(piped.stdout)["ed1"] == ed.public()


def test_import_of_a_plain_jwks_is_refused_in_one_line(tmp_path: Path) -> None:
    document = json.loads(Keyring([generate_ed25519_key("k", ["a"])]).to_jwks())
    del document["keys"][0]["signed_bus_issuers"]
    jwks = tmp_path / "plain.json"
    jwks.write_text(json.dumps(document))
    done = cli("import-jwks", str(jwks))
    assert done.returncode == 2
    assert done.stderr.startswith("signed-bus: error: ") and done.stderr.count("\n") == 1
    assert "signed_bus_issuers" in done.stderr and "Traceback" not in done.stderr


def test_inspect_finds_its_ring_by_the_one_lookup_order(tmp_path: Path) -> None:
    key = generate_ed25519_key("ed1", ["agent"])
    ring_file = tmp_path / "ring.json"
    Keyring([key.public()]).dump(ring_file, mode=0o644)
    envelope = tmp_path / "value.bin"
    envelope.write_bytes(
        Signer(Keyring([key]), kid="ed1", issuer="agent", model="m").sign(1, topic="t")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNED_BUS_")}
    for extra in ({"SIGNED_BUS_KEYRING_FILE": str(ring_file)}, {}):
        argv = ["inspect", str(envelope), "--topic", "t"]
        if not extra:
            argv += ["--keyring", str(ring_file)]
        done = subprocess.run(
            [sys.executable, "-m", "signed_bus", *argv],
            capture_output=True,
            text=True,
            env={**env, **extra, "SIGNED_BUS_KEYRING": "{not a ring}"},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "verdict: OK" in done.stdout
