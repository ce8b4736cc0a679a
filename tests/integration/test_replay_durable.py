"""Durable claims (``durable_replicas``): WAIT pipelined with the claim, so a claim counts only
once a replica holds it; a failover to that replica then forgets nothing (real redis-server
processes of the test's own: a master and a replica on loopback), on both guards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from signed_bus._freshness import Freshness
from signed_bus._replay.guard import ClaimRow, ClaimVerdict
from signed_bus.errors import ReplayGuardUnavailable
from tests.integration.guards import GUARDS, Make
from tests.integration.services import HOST, RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WINDOW = Freshness()


@pytest.fixture
def pair() -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A master and its replica (asynchronous replication, as Redis always is)."""
    with RedisProcess() as master, RedisProcess() as replica:
        client = redis.Redis(host=HOST, port=replica.port)
        try:
            client.replicaof(HOST, master.port)
            deadline = time.monotonic() + 30
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never synced"
                time.sleep(0.05)
        finally:
            client.close()
        yield master, replica


def _rows(count: int, topic: str, first: int) -> list[ClaimRow]:
    now = int(time.time() * 1000)
    return [("issuer", i.to_bytes(16, "big"), now, topic, 0, first + i) for i in range(count)]


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_durable_claim_waits_for_the_replica_and_survives_a_failover(
    pair: tuple[RedisProcess, RedisProcess], guard: Make
) -> None:
    master, replica = pair
    originals = _rows(200, "t", 0)
    durable = guard(master.url, "d", durable_replicas=1, durable_timeout_ms=2_000)
    async with durable:
        for begin in range(0, 200, 20):  # 10 batches, each acknowledged by the replica
            chunk = originals[begin : begin + 20]
            assert await durable.claim(chunk, freshness=WINDOW) == [ClaimVerdict.NEW] * 20
        assert durable.durable is not None
        assert durable.durable.waits == 10 and durable.durable.short == 0
    master.kill()  # kill -9 right after the last claim: whatever was not replicated is gone
    promote = aioredis.Redis(host=HOST, port=replica.port)
    try:
        await promote.replicaof("NO", "ONE")
    finally:
        await promote.aclose()
    copies = [(i, n, c, "copy", p, o + 1_000) for i, n, c, _, p, o in originals]
    async with guard(replica.url, "d") as promoted:
        verdicts = await promoted.claim(copies, freshness=WINDOW)
    assert verdicts == [ClaimVerdict.REPLAY] * 200, "every copy of a durable claim is a replay"


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_claim_no_replica_acknowledged_is_held(
    pair: tuple[RedisProcess, RedisProcess], guard: Make
) -> None:
    master, replica = pair
    durable = guard(master.url, "h", durable_replicas=1, durable_timeout_ms=200)
    async with durable:
        assert await durable.claim(_rows(5, "t", 0), freshness=WINDOW) == [ClaimVerdict.NEW] * 5
        replica.kill()
        with pytest.raises(ReplayGuardUnavailable, match="not durable: 0 of 1"):
            await durable.claim(_rows(5, "t", 100), freshness=WINDOW)
        assert durable.durable is not None and durable.durable.short == 1
