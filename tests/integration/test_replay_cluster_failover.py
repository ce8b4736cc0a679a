"""The replay guard on a Redis Cluster with replicas (3 masters, 1 replica each; real processes
from tests/integration/clusters.py, one cluster for the module): kill -9 of the master owning
the busiest slot right after claims, its replica promoted, then copies of the records claimed
just before: with durable claims none is delivered and no honest record is lost. Over both
guards, each on a cluster of its own (a failover leaves the promoted master without a replica,
and durable claims in its slots would rightly hold)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from signed_bus._freshness import Freshness
from signed_bus._replay import ClaimRow, ClaimVerdict, bucket_key
from signed_bus.errors import ReplayGuardUnavailable
from tests.integration.bus import unique
from tests.integration.clusters import RedisClusterProcesses
from tests.integration.guards import GUARDS, Guard, Make

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

WINDOW = Freshness()
BATCH = 200


@pytest.fixture
def cluster() -> Iterator[RedisClusterProcesses]:
    with RedisClusterProcesses(masters=3, replicas=1) as started:
        yield started


def _batch(created_at: int, first: int) -> list[ClaimRow]:
    return [
        ("issuer", os.urandom(16), created_at, "results", first % 3, first + i)
        for i in range(BATCH)
    ]


async def _claim_retrying(
    guard: Guard, rows: list[ClaimRow], within: float = 30
) -> list[ClaimVerdict]:
    """Claim as a consumer does: hold and retry while the cluster is unavailable."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await guard.claim(rows, freshness=WINDOW)
        except ReplayGuardUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("guard", GUARDS)
async def test_durable_claims_survive_kill_9_of_the_busiest_master(
    cluster: RedisClusterProcesses, guard: Make
) -> None:
    prefix = unique("failover")
    now = int(time.time() * 1000)
    claimed: list[ClaimRow] = []
    durable = guard(cluster.url, prefix, cluster=True, durable_replicas=1, durable_timeout_ms=1_000)
    async with durable:
        # a steady load into one time bucket: its slot is the busiest one
        for i in range(10):
            rows = _batch(now, i * BATCH)
            assert await durable.claim(rows, freshness=WINDOW) == [ClaimVerdict.NEW] * BATCH
            claimed.extend(rows)
        assert durable.durable is not None
        waits, short = durable.durable.waits, durable.durable.short
    busiest = key_slot(bucket_key(prefix, now // 1_000, 0))
    victim = cluster.master_of(busiest)
    cluster.kill(victim)  # right after the last acknowledged claim
    promoted = cluster.wait_promoted(victim)
    assert promoted != victim and cluster.role(promoted) == "master"

    copies = [(i, n, c, "results.copy", p, o + 100_000) for i, n, c, _, p, o in claimed]
    async with guard(cluster.url, prefix, cluster=True) as after:
        verdicts = [
            v
            for begin in range(0, len(copies), BATCH)
            for v in await _claim_retrying(after, copies[begin : begin + BATCH])
        ]
        delivered = sum(v.deliver for v in verdicts)
        # the originals are still bound to their own positions: no honest record lost
        again = await _claim_retrying(after, claimed[:BATCH])
    print(
        f"\nredis cluster failover: {len(claimed)} durable claims ({waits} WAITs, {short} short), "
        f"master {victim} killed, replica {promoted} promoted; copies delivered: {delivered}"
    )
    assert delivered == 0, f"{delivered} copies of durably claimed records passed as new"
    assert again == [ClaimVerdict.SAME_POSITION] * BATCH
    assert waits == 10 and short == 0
