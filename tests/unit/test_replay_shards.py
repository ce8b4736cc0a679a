"""Shards that follow the planned rate: the layout record parsed back, the sizing rule."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._replay.layout import layout_descriptor, parse_layout_descriptor
from signed_bus._replay.sizing import DEFAULT_SHARDS, compact_rate, recommended_shards
from signed_bus.errors import ConfigurationError


def test_a_layout_record_parses_back_to_its_bucket_and_shards() -> None:
    for bucket_ms, shards in ((1_000, 16), (250, 1), (60_000, 0xFFFF)):
        text = layout_descriptor(bucket_ms, shards)
        assert parse_layout_descriptor(text) == (bucket_ms, shards)
        assert parse_layout_descriptor(text.encode()) == (bucket_ms, shards)
    for bad in (None, b"", "v2 bucket_ms=1000 shards=16", "v1 shards=16 bucket_ms=1000",
                "v1 bucket_ms=1000 shards=0", "v1 bucket_ms=x shards=16", b"\xff\xfe"):  # fmt: skip
        assert parse_layout_descriptor(bad) is None


def test_the_rate_a_shard_count_suits_inverts_the_recommendation() -> None:
    for rate in (1_000, 1_500, 5_000, 10_000):
        shards = recommended_shards(rate)
        assert compact_rate(shards) >= rate > compact_rate(shards - 1)
    assert compact_rate(DEFAULT_SHARDS) == 1_024


def test_a_guard_is_sized_by_shards_or_by_peak_rate_not_both() -> None:
    client = aioredis.Redis()
    assert RedisReplayGuard(client).shards == DEFAULT_SHARDS
    assert RedisReplayGuard(client, peak_rate=1_500).shards == 24
    assert RedisReplayGuard(client, peak_rate=5_000, bucket_ms=500).shards == 40
    assert RedisReplayGuard(client, shards=3).layout == "v1 bucket_ms=1000 shards=3"
    with pytest.raises(ConfigurationError, match="not both"):
        RedisReplayGuard(client, shards=3, peak_rate=1_000)
    with pytest.raises(ConfigurationError):
        RedisReplayGuard(client, peak_rate=-1)
