"""The replay guard's recovery from a Redis loss where other guards, rebuilds and producers
meet it (real Kafka and Redis; a loss is the prefix's keys deleted): a rebuild verifies in
audit mode and never lets a later copy in a partition take the original's place; a guard that
saw a loss never adopts an epoch that says nothing was lost; a rebuild another process ran is
picked up at the next quarantine. Each test runs over both guards."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from signed_bus._replay.epoch import READY_SCRIPT, REBUILDING, epoch_key, parse_epoch_record
from signed_bus._replay.guard import ClaimRow, ClaimVerdict, RedisReplayGuard
from signed_bus._replay.rebuild import RebuildSource, rebuild
from signed_bus.errors import ReplayStateLost
from tests.conftest import TopicFactory
from tests.integration.bus import CREATE_TIME, WINDOW, keyring, plain_producer, signer, verifier
from tests.integration.guards import GUARDS, Guard, Make

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NEW, SAME, REPLAY, HELD = (
    ClaimVerdict.NEW,
    ClaimVerdict.SAME_POSITION,
    ClaimVerdict.REPLAY,
    ClaimVerdict.QUARANTINED,
)


def _now() -> int:
    return int(time.time() * 1000)


def _wipe(redis_url: str, prefix: str) -> None:
    """Delete every key of ``prefix``: what a flush or an empty restart leaves."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        assert keys
        client.delete(*keys)
    finally:
        client.close()


async def _claim(guard: Guard, rows: list[ClaimRow], *, within: float = 45) -> list[ClaimVerdict]:
    """Claim ``rows``, retrying while the guard holds them (a loss noticed, a rebuild running)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await guard.claim(rows, freshness=WINDOW)
        except ReplayStateLost:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _produce(bootstrap: str, topic: str, value: bytes, *stamps: int | None) -> list[int]:
    """``value`` once per stamp (None: the broker's time) to partition 0; the offsets."""
    async with plain_producer(bootstrap) as producer:
        sent = [
            await producer.send_and_wait(topic, value, partition=0, timestamp_ms=stamp)
            for stamp in stamps
        ]
    return [metadata.offset for metadata in sent]


async def _lost(guard: Guard, row: ClaimRow) -> None:
    """The guard's next claim notices the loss."""
    with pytest.raises(ReplayStateLost):
        await guard.claim([row], freshness=WINDOW)


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_rebuild_with_a_consumers_verifier_still_reclaims_records_past_max_age(
    redis_url: str, redis_prefix: str, kafka_bootstrap: str, unique_topic: TopicFactory,
    guard: Make,
) -> None:  # fmt: skip
    ring = keyring()
    topic = await unique_topic("rebuild-age")
    created = _now() - WINDOW.max_age_ms - 60_000  # past max_age, inside max_age + max_lag
    value = signer(ring, clock=lambda: created).sign({"x": 1}, topic=topic)
    consumer = verifier(ring)  # what a consumer holds: not audit
    # a lagging consumer judges it by its LogAppendTime and accepts it
    message = consumer.verify(value, topic=topic, key=None, reference_ms=created + 60_000)
    [offset] = await _produce(kafka_bootstrap, topic, value, None)
    original: ClaimRow = (message.issuer, message.nonce, created, topic, 0, offset)
    copy: ClaimRow = (message.issuer, message.nonce, created, topic, 0, offset + 1_000)
    source = RebuildSource(kafka_bootstrap, (topic,), consumer)
    async with guard(redis_url, redis_prefix, rebuild_from=source) as group:
        # it started on an empty prefix: its own rebuild claimed the original already
        assert await _claim(group, [original]) == [SAME]
        _wipe(redis_url, redis_prefix)
        await _lost(group, original)
        # the rebuild re-claimed the original at its position: a copy is a replay
        assert await _claim(group, [copy, original]) == [REPLAY, SAME]


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_backdated_copy_in_the_same_partition_never_takes_the_originals_place(
    redis_url: str, redis_prefix: str, kafka_bootstrap: str, unique_topic: TopicFactory,
    guard: Make,
) -> None:  # fmt: skip
    ring = keyring()
    topic = await unique_topic("rebuild-backdated", config=CREATE_TIME)
    value = signer(ring).sign({"x": 1}, topic=topic)
    check = verifier(ring)
    message = check.verify(value, topic=topic, key=None)
    # the original, then a copy written later with a CreateTime a minute before it
    offsets = await _produce(kafka_bootstrap, topic, value, None, message.created_at - 60_000)
    original, copy = ((message.issuer, message.nonce, message.created_at, topic, 0, offset)
                      for offset in offsets)  # fmt: skip
    source = RebuildSource(kafka_bootstrap, (topic,), check)
    async with guard(redis_url, redis_prefix, rebuild_from=source) as group:
        assert await _claim(group, [original, copy]) == [SAME, REPLAY]  # rebuilt at start
        _wipe(redis_url, redis_prefix)
        await _lost(group, original)
        assert await _claim(group, [original, copy]) == [SAME, REPLAY]


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_guard_starting_on_the_lost_prefix_never_erases_the_loss_another_saw(
    redis_url: str, redis_prefix: str, guard: Make
) -> None:
    nonce = b"race".ljust(16, b"\0")
    created = _now()
    original: ClaimRow = ("issuer", nonce, created, "t", 0, 10)
    copies: list[ClaimRow] = [("issuer", nonce, created, "t", 0, 100 + i) for i in range(2)]
    async with guard(redis_url, redis_prefix) as running:
        assert await running.claim([original], freshness=WINDOW) == [NEW]
        _wipe(redis_url, redis_prefix)
        # another consumer starts first: it finds no state and starts the prefix afresh
        async with guard(redis_url, redis_prefix) as starting:
            assert await _claim(running, copies[:1]) == [HELD]
            # the guard that started afresh learns of the loss too
            assert await _claim(starting, copies[1:]) == [HELD]
    client = redis.Redis.from_url(redis_url)
    try:
        assert int(client.hget(epoch_key(redis_prefix), "lost_at") or 0) >= created
    finally:
        client.close()


@pytest.mark.parametrize("guard", GUARDS)
async def test_a_running_guard_picks_up_a_rebuild_another_process_ran(
    redis_url: str, redis_prefix: str, kafka_bootstrap: str, unique_topic: TopicFactory,
    guard: Make,
) -> None:  # fmt: skip
    topic = await unique_topic("rebuild-elsewhere")
    created = _now()
    first: ClaimRow = ("issuer", b"seen".ljust(16, b"\0"), created, topic, 0, 0)
    # honest records created before the loss, not consumed yet
    pending: list[ClaimRow] = [
        ("issuer", b"p%d" % i + bytes(14), created, topic, 0, 1 + i) for i in range(2)
    ]
    async with guard(redis_url, redis_prefix) as running:
        assert await running.claim([first], freshness=WINDOW) == [NEW]
        _wipe(redis_url, redis_prefix)
        await _lost(running, pending[0])
        assert await running.claim(pending[:1], freshness=WINDOW) == [HELD]
        # `signed-bus guard rebuild` (or another guard's rebuild_from) covers the topic
        async with RedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as elsewhere:
            report = await rebuild(
                elsewhere, bootstrap_servers=kafka_bootstrap, topics=[topic],
                verifier=verifier(keyring(), audit=True),
            )  # fmt: skip
        assert report.covered == [topic]
        assert await running.claim(pending[1:], freshness=WINDOW) == [NEW]


async def test_a_stopped_sync_guard_ends_its_rebuild_and_leaves_no_connection(
    redis_url: str, redis_prefix: str, kafka_bootstrap: str, unique_topic: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from signed_bus._replay import rebuild as rebuild_module
    from signed_bus._replay.sync_guard import SyncRedisReplayGuard

    read = rebuild_module._read

    async def slow_read(*args: object, **kw: object) -> object:
        await asyncio.sleep(2)  # stop() lands while the rebuild reads Kafka
        return await read(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rebuild_module, "_read", slow_read)
    topic = await unique_topic("rebuild-stop")
    source = RebuildSource(kafka_bootstrap, (topic,), verifier(keyring()))
    group = SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix, rebuild_from=source)
    await asyncio.to_thread(group.start)  # no state: it starts rebuilding in a thread
    thread = group._rebuilding
    assert thread is not None and thread.is_alive()
    await asyncio.to_thread(group.stop)
    await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive()
    client = redis.Redis.from_url(redis_url)
    try:  # the stopped guard's rebuild wrote nothing more: the epoch is still rebuilding
        assert client.hget(epoch_key(redis_prefix), "state") == b"rebuilding"
    finally:
        client.close()
    owned = group._client
    assert isinstance(owned, redis.Redis)
    pool = owned.connection_pool  # no connection was opened again after stop()
    assert not [c for c in pool._available_connections if getattr(c, "_sock", None) is not None]
    assert not pool._in_use_connections


def test_the_ready_mark_lands_only_on_the_epoch_it_names(redis_url: str, redis_prefix: str) -> None:
    """The script a guard marks its new epoch ready with, on real Redis: when another guard
    replaced the epoch meanwhile, that epoch keeps its state (rebuilding) and the reply names
    it, so the first guard learns it is not ready."""
    client = redis.Redis.from_url(redis_url)
    key = epoch_key(redis_prefix)
    try:
        client.hset(key, mapping={"epoch": "theirs", "lost_at": "5", "covered": "",
                                  "state": REBUILDING})  # fmt: skip
        reply = client.eval(READY_SCRIPT, 1, key, "mine")
        state = parse_epoch_record(reply)
        assert state is not None and state.epoch == "theirs" and not state.ready
        assert client.hget(key, "state") == REBUILDING.encode()
        state = parse_epoch_record(client.eval(READY_SCRIPT, 1, key, "theirs"))
        assert state is not None and state.epoch == "theirs" and state.ready
    finally:
        client.delete(key)
        client.close()
