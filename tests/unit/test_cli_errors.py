"""The CLI as a user meets it when something is wrong: one line on stderr, a documented exit
code, no traceback, no warning about unclosed clients (subprocesses, no services needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import signed_bus
from signed_bus import Keyring, generate_ed25519_key


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SIGNED_BUS_", "KAFKA_", "REDIS_"))
    }
    # ResourceWarnings (an unclosed consumer) are shown, as a developer's Python shows them.
    environment.update(PYTHONWARNINGS="default", **env)
    return subprocess.run(
        [sys.executable, "-m", "signed_bus", *argv],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    assert "Unclosed" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("signed-bus: error: "), done.stderr
    return done.stderr


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    Keyring([generate_ed25519_key("k1", ["agent"])]).dump(path)
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["tail", "some-topic"],
        ["trace", "--position", "some-topic:0:0"],
        ["dlq", "stats", "some-dlq"],
        ["dlq", "show", "some-dlq", "--json"],
        ["dlq", "redrive", "some-dlq", "--reason", "expired"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_an_unreachable_broker_is_one_line_and_exit_3(command: list[str], keyfile: Path) -> None:
    servers = f"127.0.0.1:{closed_port()}"
    done = cli(*command, "--bootstrap-servers", servers, SIGNED_BUS_KEYRING_FILE=str(keyfile))
    assert done.returncode == 3
    assert f"Kafka at {servers} is unreachable" in one_line(done)


def test_an_unreachable_redis_is_one_line_and_exit_3() -> None:
    # guard status talks to Redis only, so no Kafka is needed for the answer to be Redis's
    port = closed_port()
    done = cli(
        "guard",
        "status",
        REDIS_URL=f"redis://user:hunter2@127.0.0.1:{port}/0?password=hunter3",
    )
    assert done.returncode == 3
    line = one_line(done)
    assert f"Redis at redis://127.0.0.1:{port}/0 is unreachable" in line
    assert "hunter2" not in line and "hunter3" not in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tail", "t"], "no key ring"),
        (["inspect", "-"], "no key ring"),
        (["dlq", "redrive", "d"], "choose the letters"),
        (["dlq", "redrive", "d", "--reason", "bad_signature"], "cannot be redriven"),
        (["tail", "t", "--security-protocol", "SASL_SSL"], "needs --sasl-mechanism"),
        (["tail", "t", "--ssl-cafile", "/ca.pem"], "need --security-protocol SSL"),
        (
            ["tail", "t", "--security-protocol", "SSL", "--ssl-cafile", "/nonexistent/ca.pem"],
            "cannot build the TLS context",
        ),
        (["trace", "--position", "t:0:0", "--redis-ssl-ca-certs", "/ca.pem"], "rediss://"),
        (["export-public", "/nonexistent/ring.json"], "cannot open key file"),
    ],
)
def test_usage_and_configuration_errors_are_one_line_and_exit_2(
    argv: list[str], expected: str, keyfile: Path
) -> None:
    extra = {} if expected == "no key ring" else {"SIGNED_BUS_KEYRING_FILE": str(keyfile)}
    done = cli(*argv, **extra)
    assert done.returncode == 2
    assert expected in one_line(done)


@pytest.fixture
def envelope(tmp_path: Path, keyfile: Path) -> Path:
    from signed_bus import Signer

    signer = Signer(Keyring.from_file(keyfile), kid="k1", issuer="agent", model="m")
    path = tmp_path / "one.envelope"
    path.write_bytes(signer.sign({"n": 1}, topic="t", key=b"order-1"))
    return path


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (["--key-hex", "zz"], "--key-hex is not hex"),
        (["--key-hex", "abc"], "--key-hex is not hex"),
        (["--key", "order-1", "--key-hex", "6f"], "not allowed with argument"),
        ([], "pass --key or --key-hex"),
    ],
    ids=["not-hex", "odd-length", "both", "none"],
)
def test_trace_refuses_a_bad_record_key_before_connecting(
    key: list[str], expected: str, keyfile: Path, envelope: Path
) -> None:
    """Checked before anything connects: nothing listens on the broker's or Redis's port, so a
    check made after connecting would exit 3."""
    port = closed_port()
    done = cli(
        "trace",
        "--file",
        str(envelope),
        *key,
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        "--redis-url",
        f"redis://127.0.0.1:{port}/0",
        SIGNED_BUS_KEYRING_FILE=str(keyfile),
    )
    assert done.returncode == 2
    if expected.startswith("not allowed"):  # argparse's own usage message
        assert expected in done.stderr and "Traceback" not in done.stderr
    else:
        assert expected in one_line(done)


@pytest.mark.parametrize(
    ("raised", "code", "expected"),
    [
        ("KafkaConnectionError", 3, "Kafka at 10.9.8.7:9092 is unreachable (KafkaConnectionError)"),
        ("NodeNotReadyError", 3, "Kafka at 10.9.8.7:9092 is unreachable (NodeNotReadyError)"),
        ("KafkaTimeoutError", 3, "Kafka at 10.9.8.7:9092 is unreachable (KafkaTimeoutError)"),
        ("RequestTimedOutError", 3, "is unreachable (RequestTimedOutError)"),
        ("TopicAuthorizationFailedError", 1, "Kafka at 10.9.8.7:9092 failed: Topic"),
        ("KafkaError", 1, "Kafka at 10.9.8.7:9092 failed: KafkaError"),
    ],
)
def test_a_kafka_error_after_connecting_is_one_line_and_a_documented_code(
    raised: str,
    code: int,
    expected: str,
    keyfile: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A command that connected and then met a Kafka error (a broker gone mid-run, a request
    refused) ends with one line and the code the docs give, whichever command it was."""
    import aiokafka.errors

    from signed_bus._cli import guard, main

    def fails(args: object) -> int:
        raise getattr(aiokafka.errors, raised)("secret-looking detail")

    monkeypatch.setattr(guard, "_rebuild", fails)
    argv = ["guard", "rebuild", "t", "--keyring", str(keyfile)]
    assert main([*argv, "--bootstrap-servers", "10.9.8.7:9092"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("signed-bus: error: "), err
    assert expected in err and "secret-looking detail" not in err


def test_a_sasl_password_is_taken_from_the_environment_only(keyfile: Path) -> None:
    servers = f"127.0.0.1:{closed_port()}"
    argv = ["tail", "t", "--bootstrap-servers", servers, "--security-protocol", "SASL_PLAINTEXT"]
    argv += ["--sasl-mechanism", "PLAIN", "--sasl-plain-username", "svc"]
    missing = cli(*argv, SIGNED_BUS_KEYRING_FILE=str(keyfile))
    assert missing.returncode == 2
    assert "KAFKA_SASL_PLAIN_PASSWORD" in one_line(missing)
    given = cli(*argv, SIGNED_BUS_KEYRING_FILE=str(keyfile), KAFKA_SASL_PLAIN_PASSWORD="pw-9x")
    assert given.returncode == 3 and "pw-9x" not in given.stderr


def test_version_and_help_list_every_command() -> None:
    version = cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"signed-bus {signed_bus.__version__}"
    listed = cli("--help")
    assert listed.returncode == 0
    for command in ("keygen", "export-public", "import-jwks", "inspect", "trace", "tail", "dlq"):
        assert command in listed.stdout
    for action in ("stats", "show", "redrive"):
        assert action in cli("dlq", "--help").stdout
