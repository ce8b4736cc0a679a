"""Guard shards that follow the planned rate: one layout per prefix whatever each guard's rate,
and a WARNING once the observed rate outgrows the shards (docs/OPERATIONS.md, "Sizing")."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest

from signed_bus._freshness import Freshness
from signed_bus._replay import Claim, ClaimVerdict, RedisReplayGuard, core
from signed_bus.errors import ConfigurationError
from tests.integration.guards import GUARDS, Guard, Make

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WINDOW = Freshness()
T0 = 1_767_225_600_000


def _claims(count: int, *, created_at: int, offset: int = 0, salt: bytes = b"") -> list[Claim]:
    return [
        Claim(
            issuer="agent",
            nonce=hashlib.sha256(salt + i.to_bytes(4, "big")).digest()[:16],
            created_at=created_at,
            topic="results",
            partition=0,
            offset=offset + i,
        )
        for i in range(count)
    ]


async def test_guards_sized_by_rate_share_a_prefix_with_its_first_layout(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = RedisReplayGuard.from_url(redis_url, prefix=redis_prefix, peak_rate=500)
    faster = RedisReplayGuard.from_url(redis_url, prefix=redis_prefix, peak_rate=5_000)
    assert (first.shards, faster.shards) == (8, 79)
    async with first, faster:
        assert faster.shards == 8  # adopted: both put every nonce in the same hash
        assert faster.layout == first.layout == "v1 bucket_ms=1000 shards=8"
        assert "wants 79" in caplog.text  # and says the prefix is sized for less
        claims = _claims(50, created_at=T0)
        assert await first.claim(claims, freshness=WINDOW) == [ClaimVerdict.NEW] * 50
        moved = [c._replace(offset=c.offset + 1_000) for c in claims]
        assert await faster.claim(moved, freshness=WINDOW) == [ClaimVerdict.REPLAY] * 50
        assert await faster.claim(claims, freshness=WINDOW) == [ClaimVerdict.SAME_POSITION] * 50
    # Explicit shards are still checked strictly, as every other layout field.
    pinned = RedisReplayGuard.from_url(redis_url, prefix=redis_prefix, shards=79)
    with pytest.raises(ConfigurationError, match="layout mismatch"):
        await pinned.start()
    await pinned.stop()
    with pytest.raises(ConfigurationError, match="not both"):
        RedisReplayGuard.from_url(redis_url, prefix=redis_prefix, shards=8, peak_rate=500)


async def _checked(guard: Guard) -> None:
    """Wait for the async guard's background shard check (the sync one checks in the claim)."""
    task = getattr(guard, "_check_task", None)
    if task is not None:
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_rate_the_shards_do_not_suit_is_warned_about_once(
    redis_url: str,
    redis_prefix: str,
    guard: Make,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(core, "SHARD_CHECK_EVERY_S", 0.0)
    caplog.set_level(logging.WARNING, logger="signed_bus.replay")
    async with guard(redis_url, redis_prefix, shards=1) as g:
        # 1,000 nonces in one 1 s bucket with one shard: 1,000/s into a layout sized for 64/s
        await g.claim(_claims(1_000, created_at=T0), freshness=WINDOW)
        await _checked(g)  # the bucket before: empty
        assert "hash-max-listpack-entries" not in caplog.text
        # the next bucket's claim checks the full one before it
        await g.claim(_claims(1, created_at=T0 + 1_000, salt=b"b"), freshness=WINDOW)
        await _checked(g)
        assert "holds 1000 nonces" in caplog.text
        assert "peak_rate=1000 (or shards=16)" in caplog.text
        caplog.clear()
        await g.claim(_claims(1, created_at=T0 + 2_000, salt=b"c"), freshness=WINDOW)
        await asyncio.sleep(0.1)
        assert "holds" not in caplog.text  # once per guard
