"""Fixtures for the real services every integration test runs against (README.md, "Development").

Where the services come from (SERVICES_BACKEND selects; unset or ``auto``: the first that applies):
1. KAFKA_BOOTSTRAP_SERVERS and REDIS_URL, when set (``make test`` exports them after
   ``bash compose/local.sh up``; any other running broker and Redis work too);
2. containers started by testcontainers (tests/integration/containers.py) from KAFKA_IMAGE and
   REDIS_IMAGE (default the official apache/kafka and redis images; ``compose/images.sh`` builds
   local ones), when a container engine answers; ``SERVICES_BACKEND=containers`` forces this
   even when the variables are set, and fails when no engine answers;
3. otherwise the test fails with the command that starts the services. Never a skip.

Tests marked ``containers`` need the container backend (they kill, pause or disconnect a service
container): they are deselected under any other backend, and ``make test`` runs them in its
container step.

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
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from tests.integration.containers import ContainerServices

START_SERVICES = (
    "start the services with `make services-up` (or `bash compose/local.sh up`, then "
    '`eval "$(bash compose/local.sh env)"`), or run `make test`, which does both; '
    "or run them in containers: `make test-containers` (sets up a container engine and the "
    "images without any registry; compose/engine.sh, compose/images.sh)"
)
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
BACKENDS = ("auto", "local", "docker", "containers")


# -- where the services come from -------------------------------------------------------------


def _backend() -> str:
    value = os.environ.get("SERVICES_BACKEND", "") or "auto"
    if value not in BACKENDS:
        pytest.fail(f"SERVICES_BACKEND={value}? (one of {', '.join(BACKENDS)})", pytrace=False)
    return value


@functools.cache
def docker_engine_answers() -> bool:
    """True when a container engine answers a ping (an installed client alone is not enough);
    DOCKER_HOST then names it (Docker's socket or compose/engine.sh's podman service count)."""
    from tests.integration.containers import engine_answers

    return engine_answers()


def use_containers(var: str | None = None) -> bool:
    """True when containers serve this session (or, given ``var``, that service): always under
    ``SERVICES_BACKEND=containers`` (failing when no engine answers), else when ``var`` is unset
    and an engine answers (see the module docstring)."""
    backend = _backend()
    if backend == "containers":
        if not docker_engine_answers():
            pytest.fail(
                "SERVICES_BACKEND=containers but no container engine answers (DOCKER_HOST, "
                "/var/run/docker.sock, compose/engine.sh's socket): "
                "run `bash compose/engine.sh up`",
                pytrace=False,
            )
        return True
    if var is not None and os.environ.get(var):
        return False
    return backend == "auto" and docker_engine_answers()


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


def _service(var: str, default_port: int) -> str | None:
    """The service's address from ``var``, or None when containers serve this session."""
    if use_containers(var):
        return None
    value = os.environ.get(var)
    if value:
        _check_reachable(var, value, default_port)
        return value
    pytest.fail(
        f"{var} is not set and no container engine answers: {START_SERVICES}", pytrace=False
    )


@pytest.fixture(scope="session")
def container_services() -> Iterator[ContainerServices]:
    """The session's Kafka and Redis containers (each started on first use), removed at the
    end of the session: by this fixture, and by ``pytest_sessionfinish`` should it not run.
    Containers left by earlier runs whose process is gone (killed) are removed first."""
    if not use_containers():
        pytest.fail(
            "this test needs the container backend: SERVICES_BACKEND=containers "
            "(make test-containers)",
            pytrace=False,
        )
    from tests.integration.containers import ContainerServices, reap_orphans

    reaped = reap_orphans()
    if reaped:
        print(f"\nremoved test containers left by runs that are gone: {', '.join(reaped)}")
    services = ContainerServices()
    try:
        yield services
    finally:
        services.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """Bootstrap servers of a real Kafka broker, e.g. ``127.0.0.1:9092``."""
    value = _service("KAFKA_BOOTSTRAP_SERVERS", 9092)
    if value is not None:
        return value
    services: ContainerServices = request.getfixturevalue("container_services")
    return services.kafka().bootstrap


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of a real Redis server, e.g. ``redis://127.0.0.1:6379/0``."""
    value = _service("REDIS_URL", 6379)
    if value is not None:
        return value
    services: ContainerServices = request.getfixturevalue("container_services")
    return services.redis().url


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "containers: needs the container backend (kills, pauses or disconnects a service "
        "container); deselected under any other backend",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("containers") for item in items):
        return
    if os.environ.get("SERVICES_BACKEND") == "containers":
        return
    keep = [item for item in items if not item.get_closest_marker("containers")]
    dropped = [item for item in items if item.get_closest_marker("containers")]
    config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_sessionfinish(session: pytest.Session) -> None:
    # whatever happened (a fixture's teardown that never ran, an interrupted run): this process's
    # containers go (a no-op unless it created any)
    if "tests.integration.containers" in sys.modules:
        from tests.integration.containers import remove_session_containers

        remove_session_containers()


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
