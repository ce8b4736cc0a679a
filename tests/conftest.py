"""Fixtures for the real services every integration test runs against (README.md, "Development").

Where the services come from, in order:
1. KAFKA_BOOTSTRAP_SERVERS and REDIS_URL, when set (``make test`` exports them after
   ``bash compose/local.sh up``; any other running broker and Redis work too);
2. testcontainers (a single-node KRaft Kafka, ``redis:7``), when a Docker engine answers;
3. otherwise the test fails with the command that starts the services. Never a skip.

Per-test isolation: ``unique_topic`` creates uuid-named topics (append-time timestamps) and
deletes them afterwards; ``redis_prefix`` hands out a unique key prefix and deletes its keys.

With SIGNED_BUS_FORBID_SKIPS=1 (``make test`` sets it) a skipped test counts as a failure, so the
suite that CI runs is the whole suite.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Protocol

import pytest

START_SERVICES = (
    "start the services with `make services-up` (or `bash compose/local.sh up`, then "
    '`eval "$(bash compose/local.sh env)"`), or run `make test`, which does both; '
    "on a machine with Docker, the fixtures start containers themselves"
)

KAFKA_IMAGE = (
    "confluentinc/cp-kafka:7.6.0"  # what testcontainers' KafkaContainer.with_kraft() drives
)
REDIS_IMAGE = "redis:7"
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


# -- where the services come from -------------------------------------------------------------


@functools.cache
def docker_engine_answers() -> bool:
    """True when a Docker engine answers a ping (an installed client alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        # a raw /_ping: the docker SDK leaks its socket when the engine is missing, which
        # filterwarnings=error would turn into an unraisable-exception failure elsewhere
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(3)
                sock.connect(host.removeprefix("unix://"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return sock.recv(64).split(b" ")[1:2] == [b"200"]
        except OSError:
            return False
    try:  # tcp://, ssh://, TLS: let the SDK speak the protocol
        import docker

        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _first_address(value: str, default_port: int) -> tuple[str, int]:
    first = value.split(",")[0].strip()
    for scheme in ("redis://", "rediss://", "PLAINTEXT://", "SSL://"):
        first = first.removeprefix(scheme)
    first = first.split("@")[-1].split("/")[0]
    host, _, port = first.rpartition(":")
    if not host:
        return first, default_port
    return host.strip("[]"), int(port)


def _check_reachable(var: str, value: str, default_port: int) -> None:
    host, port = _first_address(value, default_port)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(
            f"{var}={value} but nothing answers on {host}:{port} ({exc}): {START_SERVICES}",
            pytrace=False,
        )


def _service(var: str, default_port: int, container: str) -> str | None:
    value = os.environ.get(var)
    if value:
        _check_reachable(var, value, default_port)
        return value
    if docker_engine_answers():
        return None  # the caller starts a container
    pytest.fail(
        f"{var} is not set and no Docker engine answers ({container}): {START_SERVICES}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker, e.g. ``127.0.0.1:9092``."""
    value = _service("KAFKA_BOOTSTRAP_SERVERS", 9092, "testcontainers Kafka")
    if value is not None:
        yield value
        return
    from testcontainers.community.kafka import KafkaContainer

    kafka = KafkaContainer(KAFKA_IMAGE).with_kraft()
    kafka.start(timeout=120)
    try:
        yield kafka.get_bootstrap_server()
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server, e.g. ``redis://127.0.0.1:6379/0``."""
    value = _service("REDIS_URL", 6379, "testcontainers Redis")
    if value is not None:
        yield value
        return
    from testcontainers.community.redis import RedisContainer

    with RedisContainer(REDIS_IMAGE) as redis_container:
        host = redis_container.get_container_host_ip()
        port = redis_container.get_exposed_port(redis_container.port)
        yield f"redis://{host}:{port}/0"


# -- per-test isolation -----------------------------------------------------------------------


class TopicFactory(Protocol):
    """``await unique_topic("prefix", partitions=3, config={...})`` -> the new topic's name."""

    async def __call__(
        self,
        prefix: str = "test",
        *,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> str: ...


async def _wait_for_leaders(admin: Any, name: str, partitions: int) -> None:
    """Until every partition of ``name`` has a leader, so producing right away works."""
    for _ in range(100):
        described = await admin.describe_topics([name])
        parts = [
            p
            for t in described
            if t["topic"] == name and t["error_code"] == 0
            for p in t["partitions"]
        ]
        if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {name} has no leader for every partition after 10 s")


@pytest.fixture
async def unique_topic(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Factory for fresh topics (``<prefix>-<uuid hex>``), deleted when the test ends.

    Topics use ``message.timestamp.type=LogAppendTime`` (freshness is judged by broker append
    time, docs/ENVELOPE.md section 7) unless ``config`` overrides it.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    admin: AIOKafkaAdminClient | None = None
    created: list[str] = []

    async def make(
        prefix: str = "test",
        *,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> str:
        nonlocal admin
        if admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
        name = f"{prefix}-{uuid.uuid4().hex}"
        topic = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            topic_configs={**APPEND_TIME, **(config or {})},
        )
        response = await admin.create_topics([topic], timeout_ms=30_000)
        for entry in response.to_object()["topic_errors"]:
            if entry["error_code"]:
                error = for_code(entry["error_code"])
                raise error(f"creating topic {name}: {entry.get('error_message')}")
        created.append(name)
        await _wait_for_leaders(admin, name, partitions)
        return name

    try:
        yield make
    finally:
        if admin is not None:
            try:
                if created:
                    await admin.delete_topics(created, timeout_ms=30_000)
            finally:
                await admin.close()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A unique Redis key prefix (``test-<uuid hex>``); keys containing it are deleted after."""
    import redis.asyncio as aioredis

    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        # match anywhere: a prefix may sit inside a {hash tag}
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


# -- the whole suite runs -------------------------------------------------------------------


def _forbid_skips() -> bool:
    return os.environ.get("SIGNED_BUS_FORBID_SKIPS", "") not in ("", "0")


def _as_failure(report: Any) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped ({reason}), but SIGNED_BUS_FORBID_SKIPS is set: CI runs every test"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if _forbid_skips() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if _forbid_skips() and report.skipped:
        _as_failure(report)
    return report
