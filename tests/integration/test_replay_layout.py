"""What the guard writes to a real Redis is where docs/OPERATIONS.md's recipe says it is."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from signed_bus._freshness import Freshness
from signed_bus._replay import Claim, ClaimVerdict, RedisReplayGuard
from tests.unit.test_replay_layout import position_recipe, recipe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_claims_land_where_the_recipe_says(
    redis_url: str, redis_prefix: str, raw: aioredis.Redis
) -> None:
    window = Freshness()
    async with RedisReplayGuard.from_url(redis_url, prefix=redis_prefix, shards=7) as guard:
        claims = [
            Claim(
                issuer="inference-agent",
                nonce=hashlib.sha256(bytes([i])).digest()[:16],
                created_at=1_767_225_600_000 + i * 333,
                topic="inference.results",
                partition=i % 3,
                offset=1_000 + i,
            )
            for i in range(20)
        ]
        assert await guard.claim(claims, freshness=window) == [ClaimVerdict.NEW] * 20
        retention = guard.retention_ms(window)
    for c in claims:
        key, field = recipe(redis_prefix, c.issuer, c.nonce, c.created_at, 1_000, 7)
        stored = await raw.hget(key, field)
        assert stored == position_recipe(c.topic, c.partition, c.offset)
        assert retention - 60_000 < await raw.pttl(key) <= retention
    assert await raw.get(f"{redis_prefix}:layout") == b"v1 bucket_ms=1000 shards=7"
