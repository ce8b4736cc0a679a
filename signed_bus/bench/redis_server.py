"""A private, throw-away redis-server for measurements that read server-wide counters.

``used_memory`` and INFO commandstats count every client of a server, and other test runs
share the development Redis, so the Redis measurements run on a server of their own (same
binary, loopback, a free port, no persistence, a temporary directory), stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

__all__ = ["free_port", "private_redis", "private_redis_url"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_ready(url: str, process: asyncio.subprocess.Process, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    client = aioredis.Redis.from_url(url)
    try:
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"redis-server exited with code {process.returncode}")
            with contextlib.suppress(aioredis.ConnectionError, OSError):
                if await client.ping():
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"redis-server at {url} not ready after {timeout_s} s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def private_redis(*, listpack_entries: int | None = None) -> AsyncIterator[str]:
    """Start a redis-server on a free loopback port; yield its URL; stop it on exit.

    ``listpack_entries`` sets ``hash-max-listpack-entries`` (stock redis.conf: 128).
    Raises RuntimeError when no redis-server is installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="signed-bus-bench-redis-") as workdir:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", workdir]
        if listpack_entries is not None:
            args += ["--hash-max-listpack-entries", str(listpack_entries)]
        process = await asyncio.create_subprocess_exec(
            binary, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            await _wait_ready(url, process, timeout_s=10.0)
            yield url
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=5.0)
                except TimeoutError:
                    process.kill()
                    await process.wait()


@contextlib.asynccontextmanager
async def private_redis_url(
    fallback_url: str, *, enabled: bool = True
) -> AsyncIterator[tuple[str, bool]]:
    """Yield ``(url, private)``: a private server's URL, or ``fallback_url`` when disabled or
    when no redis-server is installed."""
    if not enabled or shutil.which("redis-server") is None:
        yield fallback_url, False
        return
    async with private_redis() as url:
        yield url, True
