"""A private, throw-away redis-server for measurements that read server-wide counters.

``used_memory`` and INFO commandstats count every client of a server, and other test runs
share the development Redis, so part 4 measures on its own server (same binary, loopback,
no persistence) and only falls back to the configured one when no redis-server is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

__all__ = ["private_redis_url"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_ready(url: str, process: asyncio.subprocess.Process, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}")
        client = aioredis.Redis.from_url(url)
        try:
            if await client.ping():
                return
        except (ConnectionError, OSError, aioredis.ConnectionError):
            pass
        finally:
            await client.aclose()
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"redis-server at {url} not ready after {timeout_s} s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def private_redis_url(
    fallback_url: str, *, enabled: bool = True
) -> AsyncIterator[tuple[str, bool]]:
    """Yield ``(url, private)``: a fresh redis-server's URL, or ``fallback_url`` if none runs."""
    binary = shutil.which("redis-server")
    if not enabled or binary is None:
        yield fallback_url, False
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="signed-bus-bench-redis-") as workdir:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            await _wait_ready(url, process, timeout_s=10.0)
            yield url, True
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=5.0)
                except TimeoutError:
                    process.kill()
                    await process.wait()
