"""The reference agents tried as a new user would (subprocesses, no services needed): --help
lists the settings, a missing or bad setting is one line naming it and exit 2, and the
effective settings are logged at start without secrets."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from signed_bus import ConfigurationError, Keyring, generate_hmac_key
from tests.unit.test_keys import assert_no_secret

ROOT = Path(__file__).resolve().parents[2]
AGENTS = {
    "producers.inference_agent": "PROMPT_COUNT",
    "producers.attacker": "ATTACK_ROUNDS",
    "consumers.planner": "RESTART_LIMIT",
    "consumers.action_agent": "EXEC_TTL_S",
    "consumers.auditor": "PROVENANCE_TTL_MS",
}


def agent(module: str, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SIGNED_BUS_", "KAFKA_", "REDIS_"))
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str], module: str) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"python -m {module}: error: "), done.stderr
    return done.stderr


@pytest.mark.parametrize("module", sorted(AGENTS))
def test_help_lists_the_agents_and_the_common_settings(module: str) -> None:
    done = agent(module, "--help")
    assert done.returncode == 0, done.stderr
    for name in (AGENTS[module], "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "SIGNED_BUS_KEYRING_FILE"):
        assert name in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("module", sorted(AGENTS))
def test_a_missing_keyring_is_one_line_naming_it_and_exit_2(module: str) -> None:
    done = agent(module)
    assert done.returncode == 2
    assert "SIGNED_BUS_KEYRING_FILE" in one_line(done, module)


@pytest.mark.parametrize("module", sorted(AGENTS))
def test_a_bad_number_is_one_line_naming_it_and_exit_2(module: str, tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    Keyring([generate_hmac_key("k", ["x"])]).dump(ring)
    done = agent(module, SIGNED_BUS_KEYRING_FILE=str(ring), **{AGENTS[module]: "many"})
    assert done.returncode == 2
    assert f"{AGENTS[module]} must be" in one_line(done, module)


@pytest.mark.parametrize("module", sorted(AGENTS))
def test_an_ambiguous_redis_url_is_refused_without_its_password(
    module: str, tmp_path: Path
) -> None:
    """Every agent builds its Redis clients through the library's checked URL: a password with
    an unencoded '/' (or '#', '?': tests/unit/test_redis_url.py) is refused in one line, never
    parsed into a host and port ("Hunter2") and quoted by the client's error."""
    ring = tmp_path / "ring.json"
    Keyring([generate_hmac_key("k", ["x"])]).dump(ring)
    url = "redis://:Hunter2/Secret@127.0.0.1:6379/0"
    done = agent(module, SIGNED_BUS_KEYRING_FILE=str(ring), REDIS_URL=url)
    assert done.returncode == 2, done.stderr
    line = one_line(done, module)
    assert "REDIS_URL" in line and "ambiguous" in line
    assert "Hunter2" not in line and "Secret" not in line


def test_the_demo_refuses_an_ambiguous_redis_url_before_setting_anything_up(
    tmp_path: Path,
) -> None:
    done = agent(
        "demo.pipeline",
        "--dir",
        str(tmp_path),
        REDIS_URL="redis://:Hunter2/Secret@127.0.0.1:6379/0",
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done, "demo.pipeline")
    assert "REDIS_URL" in line and "Hunter2" not in line and "Secret" not in line
    assert list(tmp_path.iterdir()) == []  # no keys made, no agent started


def test_the_effective_settings_are_logged_without_secrets() -> None:
    key = generate_hmac_key("inference-agent-1", ["inference-agent"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = agent(
        "producers.inference_agent",
        SIGNED_BUS_KEYRING=Keyring([key]).to_json(),
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        REDIS_URL=f"redis://:hun%2Fter2@127.0.0.1:{port}/0?password=s3cr3t",
        PROMPT_COUNT="3",
    )
    settings = [line for line in done.stderr.splitlines() if "settings:" in line]
    assert len(settings) == 1, done.stderr
    line = settings[0]
    assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in line
    assert f"REDIS_URL=redis://127.0.0.1:{port}/0 " in line
    assert "PROMPT_COUNT=3" in line and "SIGNED_BUS_KID=inference-agent-1" in line
    assert "keyring=signing=['inference-agent-1']" in line
    assert "ter2" not in done.stderr and "s3cr3t" not in done.stderr
    encoded = json.loads(Keyring([key]).to_json())["keys"][0]["secret"]
    secret = base64.urlsafe_b64decode(encoded + "=")
    assert_no_secret(done.stderr, secret)


async def test_verifying_agents_follow_a_jwks_when_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from producers.common import _key_sources, load_verify_keyring, stop_key_sources
    from signed_bus import generate_ed25519_key
    from tests.unit.test_keysource import JwksServer, wait_until

    server = JwksServer()
    try:
        first = generate_ed25519_key("planner-1", ["planner"])
        server.serve(first)
        monkeypatch.setenv("SIGNED_BUS_JWKS_URL", server.url)
        monkeypatch.setenv("SIGNED_BUS_JWKS_REFRESH_S", "0.2")
        ring = await load_verify_keyring()
        assert ring.kids() == ["planner-1"] and not ring.has_secrets
        server.serve(first, generate_ed25519_key("planner-2", ["planner"]))
        await wait_until(lambda: "planner-2" in ring, within=2.0)
        server.status = 404  # an agent starting now cannot load the set: it must not start
        with pytest.raises(ConfigurationError, match="HTTP status 404"):
            await load_verify_keyring()
        assert len(_key_sources) == 1  # the one that started, to be stopped with the agent
    finally:
        await stop_key_sources()  # the test loop outlives the test: stop its refreshing
        server.close()
    assert not _key_sources
