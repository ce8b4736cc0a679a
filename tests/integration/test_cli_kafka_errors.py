"""The CLI meeting Kafka errors after it connected to something else (Redis): one line on
stderr, the documented exit code, never a traceback (subprocesses, real Redis)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from signed_bus import Keyring, generate_ed25519_key

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_guard_rebuild_with_kafka_unreachable_exits_3(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    keyfile = tmp_path / "public.json"
    Keyring([generate_ed25519_key("k1", ["agent"])]).public().dump(keyfile, mode=0o644)
    servers = f"127.0.0.1:{closed_port()}"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "signed_bus", "guard", "rebuild", "some-topic"),
            *("--prefix", redis_prefix, "--keyring", str(keyfile)),
            *("--bootstrap-servers", servers),
        ],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # one line: the rebuild's consumer is closed again when its start fails (no "Unclosed")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert f"signed-bus: error: Kafka at {servers} is unreachable" in done.stderr
