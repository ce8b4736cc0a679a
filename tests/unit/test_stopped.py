"""One lifecycle for the replay guard, the provenance index and the record fetcher: after
stop() they refuse start() and use with Stopped, never with "Redis is down"."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from signed_bus._freshness import Freshness
from signed_bus._provenance import Position, ProvenanceIndex, RecordFetcher
from signed_bus._replay import Claim, RedisReplayGuard
from signed_bus.errors import (
    ProvenanceIndexUnavailable,
    ReplayGuardUnavailable,
    SignedBusError,
    Stopped,
)

CLAIM = Claim("a", b"\x00" * 16, 0, "t", 0, 0)
DIGEST = b"\x00" * 32


def unconnected() -> aioredis.Redis:
    # never reached: a stopped object must refuse before any I/O
    return aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)


def guard() -> RedisReplayGuard:
    return RedisReplayGuard(unconnected())


def guard_from_url() -> RedisReplayGuard:
    return RedisReplayGuard.from_url("redis://127.0.0.1:1/0")


def index() -> ProvenanceIndex:
    return ProvenanceIndex(unconnected(), ttl_ms=1_000)


def index_from_url() -> ProvenanceIndex:
    return ProvenanceIndex.from_url("redis://127.0.0.1:1/0", ttl_ms=1_000)


def fetcher() -> RecordFetcher:
    return RecordFetcher(bootstrap_servers="127.0.0.1:1")


async def claim(obj: Any) -> None:
    await obj.claim([CLAIM], freshness=Freshness())


async def claim_nothing(obj: Any) -> None:
    await obj.claim([], freshness=Freshness())


async def record(obj: Any) -> None:
    await obj.record([(DIGEST, Position("t", 0, 0))])


async def lookup(obj: Any) -> None:
    await obj.lookup(DIGEST)


async def forget(obj: Any) -> None:
    await obj.forget(DIGEST)


async def fetch(obj: Any) -> None:
    await obj.fetch(Position("t", 0, 0))


USES: list[tuple[Callable[[], Any], Callable[[Any], Awaitable[None]]]] = [
    (guard, claim),
    (guard, claim_nothing),
    (guard_from_url, claim),
    (index, record),
    (index, lookup),
    (index, forget),
    (index_from_url, lookup),
    (fetcher, fetch),
]
IDS = [f"{make.__name__}-{use.__name__}" for make, use in USES]
MAKERS = [guard, guard_from_url, index, index_from_url, fetcher]


@pytest.mark.parametrize(("make", "use"), USES, ids=IDS)
async def test_use_after_stop_raises_stopped(
    make: Callable[[], Any], use: Callable[[Any], Awaitable[None]]
) -> None:
    obj = make()
    await obj.stop()
    with pytest.raises(Stopped, match="stopped") as info:
        await use(obj)
    assert not isinstance(info.value, ReplayGuardUnavailable | ProvenanceIndexUnavailable)
    assert isinstance(info.value, SignedBusError)


@pytest.mark.parametrize("make", MAKERS, ids=[m.__name__ for m in MAKERS])
async def test_start_after_stop_raises_stopped_and_stop_is_idempotent(
    make: Callable[[], Any],
) -> None:
    obj = make()
    await obj.stop()
    await obj.stop()
    with pytest.raises(Stopped):
        await obj.start()
    with pytest.raises(Stopped):
        async with obj:
            pytest.fail("a stopped object must not be entered")


async def test_an_index_stopped_by_async_with_refuses_use() -> None:
    async with index() as idx:
        pass
    with pytest.raises(Stopped):
        await idx.lookup(DIGEST)


async def test_a_guard_that_cannot_reach_redis_is_unavailable_not_stopped() -> None:
    # the distinction the error exists for: before stop(), a Redis failure is Unavailable
    g = guard()
    with pytest.raises(ReplayGuardUnavailable) as info:
        await g.claim([CLAIM], freshness=Freshness())
    assert not isinstance(info.value, Stopped)
    await g.stop()
    with pytest.raises(Stopped):
        await g.claim([CLAIM], freshness=Freshness())
