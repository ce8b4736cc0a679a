"""Replay guard key layout and options, without a Redis server."""

from __future__ import annotations

import ast
import hashlib
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from signed_bus._freshness import Freshness
from signed_bus._redis_url import redact
from signed_bus._replay import (
    CLAIM_SCRIPT,
    Claim,
    ClaimPlanner,
    ClaimRow,
    ClaimVerdict,
    RedisReplayGuard,
    bucket_key,
    bucket_of,
    decode_verdicts,
    estimate_memory_bytes,
    layout,
    nonce_field,
    nonce_shard,
    position_value,
    recommended_shards,
)
from signed_bus._replay.layout import FIELD_BYTES, POSITION_BYTES, RECORD_BYTES
from signed_bus.errors import ConfigurationError

NONCE = bytes(range(16))


def make_guard(**options: object) -> RedisReplayGuard:
    return RedisReplayGuard(aioredis.Redis(), **options)  # type: ignore[arg-type]


def make_planner(
    prefix: str = "signed-bus", shards: int = 16, max_claims_per_call: int = 4_096, **options: Any
) -> ClaimPlanner:
    return ClaimPlanner(
        prefix=prefix,
        bucket_ms=1_000,
        shards=shards,
        max_claims_per_call=max_claims_per_call,
        **options,
    )


# --- field, shard, position ---------------------------------------------------------------


def test_nonce_field_is_issuer_scoped_sha256_prefix() -> None:
    expected = hashlib.sha256(b"\x00\x05alice" + NONCE).digest()[:16]
    assert nonce_field("alice", NONCE) == expected
    assert len(nonce_field("alice", NONCE)) == 16


def test_nonce_field_differs_per_issuer_and_has_no_boundary_ambiguity() -> None:
    assert nonce_field("alice", NONCE) != nonce_field("bob", NONCE)
    # the length prefix keeps issuer||nonce splits apart: ("ab", "c...") vs ("a", "bc...")
    assert nonce_field("ab", b"c" + NONCE) != nonce_field("a", b"bc" + NONCE)
    # non-ASCII issuers hash their UTF-8 bytes
    raw = "agent-é".encode()
    assert (
        nonce_field("agent-é", NONCE)
        == (hashlib.sha256(struct.pack(">H", len(raw)) + raw + NONCE).digest()[:16])
    )


def test_nonce_shard_uses_digest_bytes_outside_the_field() -> None:
    digest = hashlib.sha256(b"\x00\x05alice" + NONCE).digest()
    assert nonce_shard("alice", NONCE, 1000) == int.from_bytes(digest[16:18], "big") % 1000
    assert nonce_shard("alice", NONCE, 1) == 0


def test_nonce_shards_spread_evenly() -> None:
    counts = Counter(nonce_shard("a", i.to_bytes(16, "big"), 16) for i in range(16_000))
    assert set(counts) == set(range(16))
    assert min(counts.values()) > 800  # 1000 expected per shard


def test_position_value_known_answer_and_size() -> None:
    expected = hashlib.sha256(b"\x00\x07results" + struct.pack(">iq", 3, 42)).digest()[:8]
    assert position_value("results", 3, 42) == expected
    assert len(expected) == 8


@pytest.mark.parametrize(
    ("topic", "partition", "offset"),
    [("results", 3, 43), ("results", 4, 42), ("results-b", 3, 42), ("result", 3, 42)],
)
def test_position_value_differs_for_any_other_position(
    topic: str, partition: int, offset: int
) -> None:
    assert position_value(topic, partition, offset) != position_value("results", 3, 42)


def test_position_value_is_deterministic() -> None:
    assert position_value("t", 0, 2**62) == position_value("t", 0, 2**62)


@pytest.mark.parametrize(("partition", "offset"), [(2**31, 0), (0, 2**63), (-(2**31) - 1, 0)])
def test_position_value_rejects_out_of_range(partition: int, offset: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        position_value("t", partition, offset)


def test_overlong_issuer_and_topic_are_rejected() -> None:
    with pytest.raises(ValueError, match="issuer"):
        nonce_field("x" * 65_536, NONCE)
    with pytest.raises(ValueError, match="topic"):
        position_value("x" * 65_536, 0, 0)


# --- buckets and keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created_at", "bucket_ms", "bucket"),
    [(0, 1000, 0), (999, 1000, 0), (1000, 1000, 1), (1_700_000_000_123, 1000, 1_700_000_000),
     (-1, 1000, -1), (-1000, 1000, -1), (-1001, 1000, -2), (59_999, 60_000, 0)],
)  # fmt: skip
def test_bucket_of_floors(created_at: int, bucket_ms: int, bucket: int) -> None:
    assert bucket_of(created_at, bucket_ms) == bucket


def test_bucket_key_format() -> None:
    assert bucket_key("signed-bus", 1_700_000_000, 7) == b"signed-bus:n:{1700000000}:7"


def test_all_shards_of_a_bucket_share_one_cluster_slot() -> None:
    slots = {key_slot(bucket_key(p, 123456, s)) for p in ("a", "signed-bus") for s in range(64)}
    assert slots == {key_slot(b"123456")}
    assert key_slot(bucket_key("a", 123457, 0)) != key_slot(bucket_key("a", 123456, 0))


# --- what a script call carries -------------------------------------------------------------


def claim(i: int, *, created_at: int = 1_700_000_000_000, offset: int | None = None) -> Claim:
    return Claim(
        issuer="alice",
        nonce=i.to_bytes(16, "big"),
        created_at=created_at,
        topic="results",
        partition=i % 3,
        offset=i if offset is None else offset,
    )


def test_plan_packs_key_index_field_and_position_per_claim() -> None:
    planner = make_planner(prefix="p", shards=4)
    claims = [claim(i, created_at=1_000 * (i % 2)) for i in range(10)]
    (call,) = planner.plan(claims)
    keys = list(call.keys)
    assert call.indexes == list(range(10))
    assert len(call.blob) == 26 * 10
    for i, c in enumerate(claims):
        record = call.blob[26 * i : 26 * (i + 1)]
        key_index = int.from_bytes(record[:2], "big")
        shard = nonce_shard(c.issuer, c.nonce, 4)
        assert keys[key_index] == bucket_key("p", c.created_at // 1000, shard)
        assert record[2:18] == nonce_field(c.issuer, c.nonce)
        assert record[18:] == position_value(c.topic, c.partition, c.offset)
    assert len(keys) == len(set(keys)) <= 8  # two buckets x four shards, each named once


def test_plan_matches_the_reference_encoding_across_issuers_and_positions() -> None:
    # The plan caches hashing state per issuer and per (topic, partition): interleave them so
    # every switch between cached states is exercised, and compare with the layout functions.
    planner = make_planner(prefix="p", shards=16)
    claims = [
        Claim(
            issuer=("alice", "bob", "agent-é")[i % 3],
            nonce=i.to_bytes(16, "big"),
            created_at=1_700_000_000_000 + 700 * (i % 4),
            topic=("results", "results-b")[(i // 2) % 2],
            partition=(i // 3) % 3,
            offset=i * 1_000_003,
        )
        for i in range(60)
    ]
    for _ in range(2):  # the second pass runs on warm caches
        (call,) = planner.plan(claims)
        keys = list(call.keys)
        blob = call.blob
        for i, c in enumerate(claims):
            record = blob[26 * i : 26 * (i + 1)]
            shard = nonce_shard(c.issuer, c.nonce, 16)
            assert keys[int.from_bytes(record[:2], "big")] == bucket_key(
                "p", c.created_at // 1000, shard
            )
            assert record[2:18] == nonce_field(c.issuer, c.nonce)
            assert record[18:] == position_value(c.topic, c.partition, c.offset)


def test_claim_is_a_named_claim_row_and_plain_tuples_plan_the_same() -> None:
    # The consumer's hot path hands the guard plain tuples in Claim's field order.
    c = claim(7, created_at=1_700_000_000_999)
    row: ClaimRow = ("alice", (7).to_bytes(16, "big"), 1_700_000_000_999, "results", 1, 7)
    assert isinstance(c, tuple) and c == row and tuple(c) == row
    assert Claim._fields == ("issuer", "nonce", "created_at", "topic", "partition", "offset")
    assert Claim(*row) == c
    claims = [claim(i, created_at=1_000 * (i % 3)) for i in range(20)]
    rows = [tuple(c) for c in claims]
    (by_claims,) = make_planner(prefix="p", shards=4).plan(claims)
    (by_rows,) = make_planner(prefix="p", shards=4).plan(rows)  # type: ignore[arg-type]
    assert (by_rows.keys, by_rows.blob, by_rows.indexes) == (
        by_claims.keys,
        by_claims.blob,
        by_claims.indexes,
    )


@pytest.mark.parametrize(("partition", "offset"), [(2**31, 0), (0, 2**63), (0, -(2**63) - 1)])
def test_plan_rejects_out_of_range_positions(partition: int, offset: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        make_planner().plan([Claim("a", NONCE, 0, "t", partition, offset)])


def test_plan_splits_batches_above_max_claims_per_call() -> None:
    calls = make_planner(max_claims_per_call=4).plan([claim(i) for i in range(10)])
    assert [c.indexes for c in calls] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_plan_groups_by_slot_on_a_cluster() -> None:
    claims = [claim(i, created_at=1_000 * (i % 5)) for i in range(50)]
    calls = make_planner(slot_of=key_slot).plan(claims)
    assert sorted(i for c in calls for i in c.indexes) == list(range(50))
    for call in calls:
        assert len({key_slot(k) for k in call.keys}) == 1
    assert len(calls) == len({key_slot(str(b).encode()) for b in range(5)})


# --- options, lifecycle, sizing -------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"bucket_ms": 0},
        {"shards": 0},
        {"shards": 70_000},
        {"max_claims_per_call": 0},
        {"max_claims_per_call": 65_536},
        {"prefix": ""},
        {"prefix": "a{b}"},
        {"prefix": "a}"},
    ],
)
def test_bad_options_raise_configuration_error(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        make_guard(**options)
    assert issubclass(ConfigurationError, ValueError)


def test_client_must_be_a_redis_asyncio_client() -> None:
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio"):
        RedisReplayGuard(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["max_age_ms", "future_skew_ms", "max_lag_ms"])
def test_the_guard_holds_no_window_of_its_own(name: str) -> None:
    # The window comes with every claim (the claiming verifier's): none to configure here.
    with pytest.raises(TypeError):
        make_guard(**{name: 1_000})
    assert not hasattr(make_guard(), name)
    assert not hasattr(make_guard(), "covers")


def test_retention_covers_max_age_max_lag_twice_the_skew_and_a_bucket() -> None:
    guard = make_guard(bucket_ms=1_000)
    window = Freshness(max_age_ms=300_000, future_skew_ms=5_000)
    assert window.max_lag_ms == 3_600_000  # the default, the Verifier's too
    assert guard.retention_ms(window) == 300_000 + 3_600_000 + 10_000 + 1_000
    short = Freshness(max_age_ms=300_000, future_skew_ms=5_000, max_lag_ms=0)
    assert guard.retention_ms(short) == 311_000
    assert make_guard(bucket_ms=60_000).retention_ms(short) == 370_000  # one bucket more
    # The TTL is not part of the layout: consumers with other windows may share a prefix.
    assert guard.layout == make_guard(bucket_ms=1_000).layout == "v1 bucket_ms=1000 shards=16"


def test_retention_follows_each_window_exactly() -> None:
    # What covers() used to check now holds by construction: every claim keeps its nonce for
    # the claiming window's retention plus one bucket, never less, whatever the window.
    guard = make_guard(bucket_ms=1_000)
    for max_age, skew, lag in ((300_000, 5_000, 60_000), (1, 0, 0), (1_000, 0, 0), (7, 3, 11)):
        window = Freshness(max_age_ms=max_age, future_skew_ms=skew, max_lag_ms=lag)
        assert guard.retention_ms(window) == max_age + lag + 2 * skew + 1_000
        assert guard.retention_ms(window) >= window.retention_ms
    # a longer window never gets a shorter retention
    base = Freshness(max_age_ms=300_000, future_skew_ms=5_000, max_lag_ms=60_000)
    for longer in (
        Freshness(max_age_ms=300_001, future_skew_ms=5_000, max_lag_ms=60_000),
        Freshness(max_age_ms=300_000, future_skew_ms=5_001, max_lag_ms=60_000),
        Freshness(max_age_ms=300_000, future_skew_ms=5_000, max_lag_ms=60_001),
    ):
        assert guard.retention_ms(longer) > guard.retention_ms(base)


def test_from_url_rejects_other_schemes() -> None:
    with pytest.raises(ConfigurationError, match="redis:// or rediss://"):
        RedisReplayGuard.from_url("http://x")


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:hunter2-secret@127.0.0.1:6379/0",
        "rediss://:hunter2-secret@127.0.0.1:6380/1",
        "redis://127.0.0.1:6379/0?password=hunter2-secret",
        "redis://hunter2-secret@127.0.0.1:6379/0",
    ],
)
async def test_url_credentials_never_show_in_repr(url: str) -> None:
    guard = RedisReplayGuard.from_url(url)
    try:
        assert "hunter2" not in repr(guard)
        assert "***" in repr(guard)
    finally:
        await guard.stop()


TRICKY_URLS = [
    # a parser ends the authority at the first '/', '?' or '#': the password would be a port
    "redis://user:pa/ss@host:6379/0",
    "redis://user:1234#secret@host/0",
    "redis://user:1234?secret@host/0",
]


@pytest.mark.parametrize("url", TRICKY_URLS)
def test_redaction_masks_up_to_the_last_at_sign(url: str) -> None:
    shown = redact(url)
    for secret in ("pa/ss", "ss", "secret", "1234"):
        assert secret not in shown
    assert shown.startswith("redis://user:***@host")


@pytest.mark.parametrize("url", TRICKY_URLS)
def test_url_with_an_unencoded_delimiter_in_the_password_is_refused(url: str) -> None:
    # redis-py would connect to host "user" with the password's start as the port.
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        RedisReplayGuard.from_url(url)
    for secret in ("pa/ss", "ss", "secret", "1234"):
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


async def test_percent_encoded_password_works_and_stays_hidden() -> None:
    guard = RedisReplayGuard.from_url("redis://user:pa%2Fss%231234@host:6379/0")
    try:
        text = repr(guard)
        for secret in ("pa", "%2F", "1234"):
            assert secret not in text.replace("prefix", "")
        assert "redis://user:***@host:6379/0" in text
    finally:
        await guard.stop()


def test_bad_url_error_names_only_the_exception_type() -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisReplayGuard.from_url("redis://host:port-1234/0")
    assert str(info.value) == (
        "bad Redis URL or option for the replay guard (redis://host:port-1234/0): ValueError"
    )


def test_bad_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisReplayGuard.from_url("redis://:hunter2-secret@127.0.0.1:notaport/0")
    assert "hunter2" not in str(info.value)
    # raised outside the handler: no __context__ carries the client's text
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_verdict_deliver() -> None:
    assert ClaimVerdict.NEW.deliver and ClaimVerdict.SAME_POSITION.deliver
    assert not ClaimVerdict.REPLAY.deliver


def test_estimate_memory_bytes() -> None:
    # 1,000 envelopes/s kept 311 s at 40 B each
    assert estimate_memory_bytes(1000, retention_ms=311_000, bytes_per_nonce=40) == 12_440_000
    # the default guard keeps a nonce max_age + max_lag + 2 skew + 1 bucket = 3,911 s
    retention = make_guard().retention_ms(Freshness())
    assert estimate_memory_bytes(1000, retention_ms=retention, bytes_per_nonce=40) == 156_440_000
    assert estimate_memory_bytes(0, retention_ms=311_000) == 0
    with pytest.raises(ConfigurationError):
        estimate_memory_bytes(-1, retention_ms=1)


def test_recommended_shards() -> None:
    assert recommended_shards(1_000) == 16  # the default layout
    assert recommended_shards(10_000) == 157
    assert recommended_shards(10_000, bucket_ms=100) == 16
    assert recommended_shards(0) == 1
    assert recommended_shards(10**12) == 0xFFFF
    with pytest.raises(ConfigurationError):
        recommended_shards(1_000, bucket_ms=0)


# --- the I/O-free layout module -------------------------------------------------------------


def test_layout_module_imports_no_asyncio_and_no_redis_client() -> None:
    # A synchronous guard on redis.Redis must reuse layout.py unchanged.
    source = Path(layout.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported  # the walk saw the imports
    for name in imported:
        assert not name.startswith(("asyncio", "redis", "aiokafka")), name
        # errors, and the native extension's loader (no I/O either)
        assert not name.startswith("signed_bus") or name in {
            "signed_bus.errors",
            "signed_bus._native",
        }, name


def test_decode_verdicts_restores_input_order_across_calls() -> None:
    calls = make_planner(max_claims_per_call=2).plan([claim(i) for i in range(5)])
    assert [c.indexes for c in calls] == [[0, 1], [2, 3], [4]]
    replies: list[object] = [b"01", "20", b"1"]  # str: a client with decode_responses=True
    assert decode_verdicts(calls, replies, 5) == [
        ClaimVerdict.NEW,
        ClaimVerdict.SAME_POSITION,
        ClaimVerdict.REPLAY,
        ClaimVerdict.NEW,
        ClaimVerdict.SAME_POSITION,
    ]
    (one,) = make_planner().plan([claim(i) for i in range(3)])
    assert decode_verdicts([one], [b"210"], 3) == [
        ClaimVerdict.REPLAY,
        ClaimVerdict.SAME_POSITION,
        ClaimVerdict.NEW,
    ]


@pytest.mark.parametrize("reply", [b"01", b"0123", b"013", 1, None, [b"0", b"1", b"2"]])
def test_decode_verdicts_refuses_a_malformed_reply(reply: object) -> None:
    (one,) = make_planner().plan([claim(i) for i in range(3)])
    assert decode_verdicts([one], [reply], 3) is None
    calls = make_planner(max_claims_per_call=2).plan([claim(i) for i in range(3)])
    assert decode_verdicts(calls, [b"01", reply], 3) is None


def test_the_claim_script_matches_the_record_size() -> None:
    assert RECORD_BYTES == 2 + FIELD_BYTES + POSITION_BYTES == 26
    assert f"local size = {RECORD_BYTES}" in CLAIM_SCRIPT
    assert "KEYS[hi * 256 + lo + 1]" in CLAIM_SCRIPT
