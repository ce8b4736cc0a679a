"""The replay guard after Redis lost its nonces (real Redis; the prefix's keys are deleted, what a
flush or a restart without persistence does to them): the claim script notices through its epoch
marker, the guard starts a new epoch and restores the layout record, and copies of envelopes
created before the loss are never NEW again: quarantined, or re-claimed at their first position
by a rebuild from Kafka. Each test runs over both guards."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from signed_bus._cli import main
from signed_bus._freshness import Freshness
from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._replay.epoch import epoch_key, marker_key
from signed_bus._replay.guard import ClaimRow, ClaimVerdict
from signed_bus._replay.layout import layout_key
from signed_bus.errors import ReplayStateLost
from tests.conftest import TopicFactory
from tests.integration.bus import keyring, signer, verifier
from tests.integration.guards import GUARDS, Make

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WINDOW = Freshness()
NEW, SAME, REPLAY, HELD = (
    ClaimVerdict.NEW,
    ClaimVerdict.SAME_POSITION,
    ClaimVerdict.REPLAY,
    ClaimVerdict.QUARANTINED,
)


def _now() -> int:
    return int(time.time() * 1000)


def _rows(
    count: int, *, created_at: int, topic: str = "t", first: int = 0, tag: bytes = b""
) -> list[ClaimRow]:
    return [
        ("issuer", tag + i.to_bytes(16 - len(tag), "big"), created_at, topic, 0, first + i)
        for i in range(count)
    ]


def _moved(rows: list[ClaimRow], topic: str, by: int = 1_000) -> list[ClaimRow]:
    """Copies of ``rows`` at other positions (a replay)."""
    return [(iss, nonce, at, topic, part, off + by) for iss, nonce, at, _, part, off in rows]


def _wipe(redis_url: str, prefix: str) -> int:
    """Delete every key of ``prefix``: the state a flush or an empty restart leaves."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_loss_is_detected_and_copies_from_before_it_are_never_new(
    redis_url: str, redis_prefix: str, guard: Make
) -> None:
    group_a = guard(redis_url, redis_prefix)
    group_b = guard(redis_url, redis_prefix)
    before = _rows(5, created_at=_now())
    async with group_a, group_b:
        assert await group_a.claim(before, freshness=WINDOW) == [NEW] * 5
        assert await group_b.claim(before, freshness=WINDOW) == [SAME] * 5
        assert _wipe(redis_url, redis_prefix) > 0
        copies = _moved(before, "other-topic")
        with pytest.raises(ReplayStateLost):
            await group_a.claim(copies, freshness=WINDOW)
        client = aioredis.Redis.from_url(redis_url)
        try:  # recovery restored the layout record and the marker
            assert await client.get(layout_key(redis_prefix)) == group_a.layout.encode()
            assert await client.get(marker_key(redis_prefix)) is not None
            assert await client.hget(epoch_key(redis_prefix), "state") == b"ready"
        finally:
            await client.aclose()
        # the retried batch: held back, not claimed, in the new epoch
        assert await group_a.claim(copies, freshness=WINDOW) == [HELD] * 5
        # the other group learns of the new epoch through its claim, and quarantines too
        with pytest.raises(ReplayStateLost):
            await group_b.claim(before[:2], freshness=WINDOW)
        assert await group_b.claim(before[:2], freshness=WINDOW) == [HELD] * 2
        # records created after the loss (beyond the clock skew) are claimed as ever
        later = _now() + WINDOW.future_skew_ms + 1_000
        after = _rows(3, created_at=later, first=100, tag=b"after")
        assert await group_b.claim(after, freshness=WINDOW) == [NEW] * 3
        assert await group_a.claim(_moved(after, "t"), freshness=WINDOW) == [REPLAY] * 3
    # a late group's guard starts in the new epoch and applies the same rule
    async with guard(redis_url, redis_prefix) as late:
        assert await late.claim(copies[:1] + after[:1], freshness=WINDOW) == [HELD, SAME]


@pytest.mark.parametrize("guard", GUARDS)
async def test_hold_mode_waits_for_a_rebuild_from_kafka_which_restores_first_positions(
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    unique_topic: TopicFactory,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    guard: Make,
) -> None:
    ring = keyring()
    topic = await unique_topic("rebuild", partitions=2)
    options = ProducerOptions(bootstrap_servers=kafka_bootstrap)
    async with SignedProducer(options, signer=signer(ring)) as producer:
        sent = [await producer.send(topic, {"seq": seq}, key=b"k%d" % seq) for seq in range(20)]
        acked = [await future for future in sent]
    check = verifier(ring)
    rows: list[ClaimRow] = []
    from aiokafka import AIOKafkaConsumer, TopicPartition

    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        for meta in acked:
            tp = TopicPartition(topic, meta.partition)
            reader.assign([tp])
            reader.seek(tp, meta.offset)
            record = (await reader.getmany(tp, timeout_ms=5_000))[tp][0]
            message = check.verify(record.value, topic=topic, key=record.key)
            rows.append(
                (
                    message.issuer,
                    message.nonce,
                    message.created_at,
                    topic,
                    meta.partition,
                    meta.offset,
                )
            )
    finally:
        await reader.stop()
    holding = guard(redis_url, redis_prefix, on_state_loss="hold")
    async with holding:
        assert await holding.claim(rows, freshness=check.freshness) == [NEW] * 20
        _wipe(redis_url, redis_prefix)
        for _ in range(2):  # held: no epoch is ready until the rebuild
            with pytest.raises(ReplayStateLost):
                await holding.claim(rows, freshness=check.freshness)
        connect = ["--prefix", redis_prefix, "--redis-url", redis_url, "--json"]
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["guard", "status", *connect]) == 1  # rebuilding
        assert json.loads(capsys.readouterr().out)["state"] == "rebuilding"
        keyfile = tmp_path / "ring.json"
        ring.dump(keyfile)  # an HMAC ring: the secret, 0600
        argv = ["guard", "rebuild", topic, "--keyring", str(keyfile), *connect,
                "--bootstrap-servers", kafka_bootstrap]  # fmt: skip
        assert await asyncio.to_thread(main, argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["covered"] == [topic] and report["failed"] == {}
        assert report["read"] == 20 and report["claimed"] == {"new": 20}
        assert await asyncio.to_thread(main, ["guard", "status", *connect]) == 0
        assert json.loads(capsys.readouterr().out)["covered"] == [topic]
        # the originals are their own first positions again; copies elsewhere are replays
        assert await holding.claim(rows, freshness=check.freshness) == [SAME] * 20
        copies = _moved(rows, topic, by=10_000)
        assert await holding.claim(copies, freshness=check.freshness) == [REPLAY] * 20
        # a topic the rebuild did not cover: its records from before the loss stay held back
        elsewhere = _moved(rows, "not-rebuilt")
        assert await holding.claim(elsewhere, freshness=check.freshness) == [HELD] * 20


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_guard_starting_on_a_prefix_with_no_state_says_so_once(
    redis_url: str, redis_prefix: str, guard: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "signed_bus.replay")
    async with guard(redis_url, redis_prefix) as first:
        assert await first.claim(_rows(2, created_at=_now()), freshness=WINDOW) == [NEW] * 2
    async with guard(redis_url, redis_prefix):  # the prefix has its state now
        pass
    warnings = [r.getMessage() for r in caplog.records if "no replay state" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert repr(redis_prefix) in warnings[0] and "signed-bus guard rebuild" in warnings[0]


@pytest.mark.parametrize("guard", GUARDS)
async def test_refuse_empty_prefix_holds_until_the_prefix_has_state(
    redis_url: str, redis_prefix: str, guard: Make
) -> None:
    refusing = guard(redis_url, redis_prefix, refuse_empty_prefix=True)
    with pytest.raises(ReplayStateLost, match="refuse_empty_prefix"):
        await refusing.__aenter__()
    rows = _rows(3, created_at=_now())
    with pytest.raises(ReplayStateLost):  # a claim starts it: refused again, the batch is held
        await refusing.claim(rows, freshness=WINDOW)
    async with guard(redis_url, redis_prefix):  # one guard without the flag starts the prefix
        pass
    assert await refusing.claim(rows, freshness=WINDOW) == [NEW] * 3
    await refusing.__aexit__(None, None, None)
