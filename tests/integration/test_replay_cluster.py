"""The replay guard on a real three-node Redis Cluster started for this module."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from signed_bus._freshness import Freshness
from signed_bus._replay import Claim, ClaimVerdict, RedisReplayGuard, bucket_key, nonce_shard
from signed_bus.errors import ConfigurationError, ReplayGuardUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NEW, SAME, REPLAY = ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION, ClaimVerdict.REPLAY
NOW_MS = 1_700_000_000_000
#: The window the claims here carry (a consumer's verifier's: the defaults).
WINDOW = Freshness()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    # the cluster bus listens on port + 10000
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port + 10_000))
        except OSError:
            return False
    return True


def three_free_ports() -> list[int]:
    for first in range(7000, 7300, 3):  # 7000-7002 unless something else holds them
        ports = [first, first + 1, first + 2]
        if all(port_is_free(p) for p in ports):
            return ports
    raise RuntimeError("no three free loopback ports for a Redis Cluster")


def wait_for_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


def cluster_ok(cli: str, port: int) -> bool:
    out = subprocess.run(
        [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, check=False
    ).stdout
    return "cluster_state:ok" in out


@pytest.fixture(scope="module")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server and cli, "redis-server and redis-cli must be installed"
    base: Path = tmp_path_factory.mktemp("redis-cluster")
    ports = three_free_ports()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            directory = base / str(port)
            directory.mkdir()
            args = [server, "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled",
                    "yes", "--cluster-config-file", str(directory / "nodes.conf"), "--save", "",
                    "--appendonly", "no", "--dir", str(directory)]  # fmt: skip
            procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in ports:
            wait_for_ping(port)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(cluster_ok(cli, p) for p in ports):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.2)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster_url(cluster_ports: list[int]) -> str:
    return f"redis://127.0.0.1:{cluster_ports[0]}"


@pytest.fixture
def prefix() -> str:
    return f"test-replay-cluster-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def guard(cluster_url: str, prefix: str) -> AsyncIterator[RedisReplayGuard]:
    async with RedisReplayGuard.from_url(cluster_url, cluster=True, prefix=prefix) as g:
        yield g


def at(nonce: bytes, *, offset: int, partition: int = 0, created_at: int = NOW_MS) -> Claim:
    return Claim("agent-a", nonce, created_at, "results", partition, offset)


async def script_calls_per_node(ports: list[int]) -> dict[int, int]:
    calls = {}
    for port in ports:
        node = aioredis.Redis(port=port)
        try:
            stats = await node.info("commandstats")
        finally:
            await node.aclose()
        calls[port] = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return calls


async def test_claims_over_many_buckets_get_the_right_verdicts(guard: RedisReplayGuard) -> None:
    # 600 claims over 300 one-second buckets: the keys land on every node of the cluster
    claims = [
        at(os.urandom(16), offset=i, partition=i % 3, created_at=NOW_MS + 1000 * (i % 300))
        for i in range(600)
    ]
    assert await guard.claim(claims, freshness=WINDOW) == [NEW] * 600
    assert await guard.claim(claims, freshness=WINDOW) == [SAME] * 600
    moved = [at(c.nonce, offset=c.offset + 1, partition=c.partition, created_at=c.created_at)
             for c in claims]  # fmt: skip
    assert await guard.claim(moved, freshness=WINDOW) == [REPLAY] * 600
    # mixed: verdicts come back in input order across slots and nodes
    fresh = [at(os.urandom(16), offset=i, created_at=NOW_MS + 7919 * i) for i in range(100)]
    mixed = [x for pair in zip(fresh, moved[:100], claims[:100], strict=True) for x in pair]
    assert await guard.claim(mixed, freshness=WINDOW) == [NEW, REPLAY, SAME] * 100


async def test_duplicates_inside_one_batch_on_a_cluster(guard: RedisReplayGuard) -> None:
    n = os.urandom(16)
    created = NOW_MS + 123_456
    verdicts = await guard.claim(
        [at(n, offset=1, created_at=created), at(os.urandom(16), offset=2),
         at(n, offset=9, created_at=created), at(n, offset=1, created_at=created)],
        freshness=WINDOW,
    )  # fmt: skip
    assert verdicts == [NEW, NEW, REPLAY, SAME]


async def test_one_script_call_per_slot_spread_over_the_nodes(
    guard: RedisReplayGuard, cluster_ports: list[int]
) -> None:
    claims = [at(os.urandom(16), offset=i, created_at=NOW_MS + 1000 * (i % 40)) for i in range(400)]
    slots = {key_slot(str((NOW_MS + 1000 * b) // 1000).encode()) for b in range(40)}
    before = await script_calls_per_node(cluster_ports)
    assert await guard.claim(claims, freshness=WINDOW) == [NEW] * 400
    after = await script_calls_per_node(cluster_ports)
    per_node = {p: after[p] - before[p] for p in cluster_ports}
    assert sum(per_node.values()) == len(slots)
    assert all(calls > 0 for calls in per_node.values())  # every node took part

    # one bucket -> one slot -> one round trip, as on a single node
    before = await script_calls_per_node(cluster_ports)
    one_bucket = [at(os.urandom(16), offset=i, created_at=NOW_MS + 5) for i in range(300)]
    assert await guard.claim(one_bucket, freshness=WINDOW) == [NEW] * 300
    after = await script_calls_per_node(cluster_ports)
    assert sum(after[p] - before[p] for p in cluster_ports) == 1


async def test_script_reloads_on_every_node_after_script_flush(
    guard: RedisReplayGuard, cluster_ports: list[int]
) -> None:
    claims = [at(os.urandom(16), offset=i, created_at=NOW_MS + 1000 * i) for i in range(60)]
    assert await guard.claim(claims, freshness=WINDOW) == [NEW] * 60
    for port in cluster_ports:
        node = aioredis.Redis(port=port)
        try:
            await node.script_flush()
        finally:
            await node.aclose()
    assert await guard.claim(claims, freshness=WINDOW) == [SAME] * 60


async def test_every_slot_gets_the_ttl_of_the_window_its_claims_carry(
    guard: RedisReplayGuard, cluster_ports: list[int], prefix: str
) -> None:
    # On a cluster a batch is one script call per slot, run concurrently: each call sets the
    # TTL of the window the batch carries, grows it for a larger one, never shrinks it.
    tiny = Freshness(max_age_ms=2_000, future_skew_ms=0, max_lag_ms=0)
    start = NOW_MS + 77_000_000  # buckets no other test uses
    claims = [at(os.urandom(16), offset=i, created_at=start + 1000 * (i % 12)) for i in range(48)]
    keys = {
        bucket_key(prefix, c.created_at // 1000, nonce_shard(c.issuer, c.nonce, guard.shards))
        for c in claims
    }
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    try:
        assert len({key_slot(k) for k in keys}) == 12  # one slot per bucket
        assert await guard.claim(claims, freshness=tiny) == [NEW] * 48
        ttls = [await client.pttl(k) for k in keys]
        assert all(0 < t <= guard.retention_ms(tiny) for t in ttls), ttls
        assert await guard.claim(claims, freshness=WINDOW) == [SAME] * 48
        retention = guard.retention_ms(WINDOW)
        grown = [await client.pttl(k) for k in keys]
        assert all(retention - 5_000 < t <= retention for t in grown), grown
        assert await guard.claim(claims, freshness=tiny) == [SAME] * 48
        kept = [await client.pttl(k) for k in keys]
        assert all(retention - 10_000 < t <= retention for t in kept), kept
    finally:
        await client.aclose()


async def test_layout_check_and_handed_in_client_on_a_cluster(
    cluster_ports: list[int], prefix: str
) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[1])
    try:
        async with RedisReplayGuard(client, prefix=prefix) as g:
            assert await g.claim([at(os.urandom(16), offset=1)], freshness=WINDOW) == [NEW]
        assert await client.ping()  # not closed by the guard
        odd = RedisReplayGuard(client, prefix=prefix, bucket_ms=60_000)
        with pytest.raises(ConfigurationError, match="layout mismatch"):
            await odd.start()
    finally:
        await client.aclose()


async def test_unreachable_cluster_raises_unavailable(prefix: str) -> None:
    port = next(p for p in range(7400, 7500) if port_is_free(p))
    guard = RedisReplayGuard.from_url(
        f"redis://:hunter2-secret@127.0.0.1:{port}",
        cluster=True,
        prefix=prefix,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        started = time.monotonic()
        with pytest.raises(ReplayGuardUnavailable) as info:
            await guard.claim([at(os.urandom(16), offset=1)], freshness=WINDOW)
        assert time.monotonic() - started < 5
        assert "hunter2" not in str(info.value)
    finally:
        await guard.stop()
