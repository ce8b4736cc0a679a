"""The replay guard against a real Redis: verdicts, one round trip, TTLs, races and outages."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from signed_bus._freshness import MAX_WINDOW_MS, Freshness
from signed_bus._replay import Claim, ClaimVerdict, RedisReplayGuard, bucket_key, nonce_shard
from signed_bus.errors import ConfigurationError, ReplayGuardUnavailable, Stopped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NEW, SAME, REPLAY = ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION, ClaimVerdict.REPLAY
MAX_AGE_MS, SKEW_MS = 300_000, 5_000
#: The window every claim here carries (a consumer's verifier's; max_lag: the default).
WINDOW = Freshness(max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS)
NOW_MS = 1_700_000_000_000


def free_port(start: int = 6390) -> int:
    for port in range(start, start + 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


def start_redis(directory: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
         "no", "--dir", str(directory), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


PRIVATE_PASSWORD = "private-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def private_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own with a password, for exact command counts, SCRIPT FLUSH and
    a blocking script, none of which may disturb the shared server."""
    port = free_port()
    directory = tmp_path_factory.mktemp("redis-private")
    proc = start_redis(directory, port, "--requirepass", PRIVATE_PASSWORD)
    try:
        yield f"redis://:{PRIVATE_PASSWORD}@127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys on the shared server are removed after."""
    name = f"test-replay-{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{name}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def guard(redis_url: str, prefix: str) -> AsyncIterator[RedisReplayGuard]:
    async with RedisReplayGuard.from_url(redis_url, prefix=prefix) as g:
        yield g


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def at(
    nonce: bytes,
    *,
    topic: str = "results",
    partition: int = 0,
    offset: int = 0,
    issuer: str = "agent-a",
    created_at: int = NOW_MS,
) -> Claim:
    return Claim(issuer, nonce, created_at, topic, partition, offset)


async def script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def top_level_commands(url: str, action: Callable[[], Awaitable[object]]) -> list[str]:
    """The commands clients sent while ``action`` ran, as MONITOR shows them (no script calls).

    INFO commandstats and total_commands_processed also count the commands a script runs.
    """
    marker = f"end-{uuid.uuid4().hex}"
    watcher, poker = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    seen: list[str] = []
    try:
        await poker.ping()  # connect (HELLO/AUTH) before watching
        async with watcher.monitor() as monitor:
            await action()
            await poker.echo(marker)
            while True:
                info = await monitor.next_command()
                if marker in info["command"]:
                    return seen
                if info["client_type"] != "lua":
                    seen.append(info["command"].split(" ", 1)[0].upper())
    finally:
        await watcher.aclose()
        await poker.aclose()


# --- verdicts -------------------------------------------------------------------------------


async def test_new_then_same_position_then_replay_elsewhere(guard: RedisReplayGuard) -> None:
    n = os.urandom(16)

    async def claim(c: Claim) -> list[ClaimVerdict]:
        return await guard.claim([c], freshness=WINDOW)

    assert await claim(at(n, offset=10)) == [NEW]
    assert await claim(at(n, offset=10)) == [SAME]  # another group, or a redelivery
    assert await claim(at(n, offset=11)) == [REPLAY]  # other offset
    assert await claim(at(n, partition=1, offset=10)) == [REPLAY]  # other partition
    assert await claim(at(n, topic="results-copy", offset=10)) == [REPLAY]  # other topic
    assert await claim(at(n, offset=10)) == [SAME]  # the original still delivers


async def test_nonces_are_issuer_scoped(guard: RedisReplayGuard) -> None:
    n = os.urandom(16)
    assert await guard.claim([at(n, issuer="agent-a", offset=1)], freshness=WINDOW) == [NEW]
    assert await guard.claim([at(n, issuer="agent-b", offset=2)], freshness=WINDOW) == [NEW]
    assert await guard.claim([at(n, issuer="agent-b", offset=3)], freshness=WINDOW) == [REPLAY]


async def test_duplicates_inside_one_batch(guard: RedisReplayGuard) -> None:
    n, m = os.urandom(16), os.urandom(16)
    verdicts = await guard.claim(
        [at(n, offset=1), at(m, offset=2), at(n, offset=3), at(n, offset=1), at(m, offset=2)],
        freshness=WINDOW,
    )
    assert verdicts == [NEW, NEW, REPLAY, SAME, SAME]


async def test_a_replayed_batch_is_idempotent(guard: RedisReplayGuard) -> None:
    batch = [at(os.urandom(16), partition=i % 4, offset=i) for i in range(300)]
    assert await guard.claim(batch, freshness=WINDOW) == [NEW] * 300
    assert await guard.claim(batch, freshness=WINDOW) == [SAME] * 300
    moved = [at(c.nonce, partition=c.partition, offset=c.offset + 1000) for c in batch]
    assert await guard.claim(moved, freshness=WINDOW) == [REPLAY] * 300


async def test_verdicts_keep_input_order_across_many_buckets_and_calls(
    redis_url: str, prefix: str
) -> None:
    async with RedisReplayGuard.from_url(redis_url, prefix=prefix, max_claims_per_call=64) as g:
        claims = [at(os.urandom(16), offset=i, created_at=NOW_MS + 997 * i) for i in range(500)]
        first = await g.claim(claims[::2], freshness=WINDOW)
        mixed = await g.claim(claims, freshness=WINDOW)
    assert first == [NEW] * 250
    assert mixed == [SAME if i % 2 == 0 else NEW for i in range(500)]


async def test_empty_batch_costs_nothing(guard: RedisReplayGuard) -> None:
    assert await guard.claim([], freshness=WINDOW) == []


# --- one round trip per batch ---------------------------------------------------------------


_SCRIPT_INTERNAL = {
    "cmdstat_hsetnx",
    "cmdstat_hget",
    "cmdstat_pttl",
    "cmdstat_pexpire",
    "cmdstat_get",
}


async def command_calls(client: aioredis.Redis) -> Counter[str]:
    stats = await client.info("commandstats")
    return Counter({k: int(v["calls"]) for k, v in stats.items()})


async def test_exactly_one_round_trip_per_batch(private_redis_url: str, prefix: str) -> None:
    observer = aioredis.Redis.from_url(private_redis_url)
    try:
        async with RedisReplayGuard.from_url(private_redis_url, prefix=prefix) as g:
            # (claims, buckets, script calls): 4096 claims per call, calls of one batch pipelined
            for size, buckets, scripts in (
                (1, 1, 1), (200, 1, 1), (200, 40, 1), (500, 40, 1), (4000, 7, 1), (5000, 7, 2)
            ):  # fmt: skip
                batch = [
                    at(os.urandom(16), offset=i, created_at=NOW_MS + 1000 * (i % buckets))
                    for i in range(size)
                ]
                verdicts: list[ClaimVerdict] = []

                async def run(
                    batch: list[Claim] = batch, out: list[ClaimVerdict] = verdicts
                ) -> None:
                    out.extend(await g.claim(batch, freshness=WINDOW))

                if size <= 200:  # MONITOR lines of bigger batches overflow the stream reader
                    assert await top_level_commands(private_redis_url, run) == ["EVALSHA"]
                    assert verdicts == [NEW] * size
                    continue
                before = await command_calls(observer)
                await run()
                delta = await command_calls(observer) - before
                assert verdicts == [NEW] * size
                assert delta["cmdstat_evalsha"] + delta["cmdstat_eval"] == scripts, (size, buckets)
                # commandstats also counts what the script runs; nothing else was sent
                others = {k for k in delta if k not in _SCRIPT_INTERNAL | {"cmdstat_info"}}
                assert others == {"cmdstat_evalsha"}, delta
                assert delta["cmdstat_hsetnx"] == size
    finally:
        await observer.aclose()


async def test_script_reloads_after_script_flush(private_redis_url: str, prefix: str) -> None:
    observer = aioredis.Redis.from_url(private_redis_url)
    try:
        async with RedisReplayGuard.from_url(private_redis_url, prefix=prefix) as g:
            n = os.urandom(16)
            assert await g.claim([at(n)], freshness=WINDOW) == [NEW]
            await observer.script_flush()
            assert await g.claim([at(n), at(n, offset=5)], freshness=WINDOW) == [SAME, REPLAY]
            # the pipelined path (a batch over max_claims_per_call) re-loads it too
            big = [at(os.urandom(16), offset=i) for i in range(5000)]
            await observer.script_flush()
            assert await g.claim(big, freshness=WINDOW) == [NEW] * 5000
    finally:
        await observer.aclose()


_BUSY_LUA = """
local stop = tonumber(ARGV[1])
local t = redis.call('TIME')
local started = t[1] * 1000 + math.floor(t[2] / 1000)
repeat t = redis.call('TIME') until t[1] * 1000 + math.floor(t[2] / 1000) - started >= stop
return 1
"""


async def test_a_retry_after_a_timeout_still_delivers(private_redis_url: str, prefix: str) -> None:
    """redis-py re-sends the script after a timeout. When the first send did run, the retry
    finds the nonce at its own position: SAME_POSITION, delivered, not dropped as a replay."""
    busy, observer = (
        aioredis.Redis.from_url(private_redis_url),
        aioredis.Redis.from_url(private_redis_url),
    )
    guard = RedisReplayGuard.from_url(
        private_redis_url,
        prefix=prefix,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 20),
    )
    try:
        await guard.start()
        # the connection is open and authenticated
        await guard.claim([at(os.urandom(16))], freshness=WINDOW)
        before = await script_calls(observer)
        n = os.urandom(16)

        # Another client's script keeps Redis busy for 0.7 s. Our claim is sent meanwhile, times
        # out, and redis-py retries; Redis then runs the first send, and the retry after it.
        async def block() -> None:
            await busy.eval(_BUSY_LUA, 0, 700)

        blocker = asyncio.create_task(block())
        await asyncio.sleep(0.1)
        assert await guard.claim([at(n, offset=7)], freshness=WINDOW) == [SAME]
        await blocker
        assert await script_calls(observer) - before >= 2  # the first send ran, and the retry
        assert await guard.claim([at(n, offset=8)], freshness=WINDOW) == [REPLAY]
    finally:
        await guard.stop()
        await busy.aclose()
        await observer.aclose()


# --- TTLs -----------------------------------------------------------------------------------


def key_of(guard: RedisReplayGuard, prefix: str, claim: Claim) -> bytes:
    bucket = claim.created_at // guard.bucket_ms
    return bucket_key(prefix, bucket, nonce_shard(claim.issuer, claim.nonce, guard.shards))


async def test_buckets_expire_after_the_retention(
    guard: RedisReplayGuard, raw: aioredis.Redis, prefix: str, redis_url: str
) -> None:
    n = os.urandom(16)
    await guard.claim([at(n)], freshness=WINDOW)
    key = key_of(guard, prefix, at(n))
    assert WINDOW.max_lag_ms == 3_600_000  # the default, as the Verifier's
    retention = guard.retention_ms(WINDOW)
    assert retention == MAX_AGE_MS + WINDOW.max_lag_ms + 2 * SKEW_MS + guard.bucket_ms
    ttl = await raw.pttl(key)
    assert retention - 5_000 < ttl <= retention

    # a consumer with a shorter window never shortens it; a longer one extends it
    short = Freshness(max_age_ms=1_000, future_skew_ms=0)
    async with RedisReplayGuard.from_url(redis_url, prefix=prefix) as other:
        await other.claim([at(os.urandom(16), offset=1, created_at=NOW_MS)], freshness=short)
        assert await other.claim([at(n)], freshness=short) == [SAME]
    assert await raw.pttl(key) > retention - 5_000
    longer = dataclasses.replace(WINDOW, max_age_ms=MAX_AGE_MS * 2)
    async with RedisReplayGuard.from_url(redis_url, prefix=prefix) as other:
        assert await other.claim([at(n)], freshness=longer) == [SAME]
    assert await raw.pttl(key) > retention + 100_000


async def test_a_claims_ttl_follows_the_window_it_carries(
    guard: RedisReplayGuard, raw: aioredis.Redis, prefix: str
) -> None:
    # The guard holds no window: each claim keeps its bucket for the claimer's retention.
    tiny = Freshness(max_age_ms=1_000, future_skew_ms=0, max_lag_ms=0)
    assert guard.retention_ms(tiny) == 1_000 + guard.bucket_ms
    claim = at(os.urandom(16), created_at=NOW_MS + 31_337_000)  # a bucket no other test uses
    key = key_of(guard, prefix, claim)
    assert await guard.claim([claim], freshness=tiny) == [NEW]
    first = await raw.pttl(key)
    assert 0 < first <= 1_000 + guard.bucket_ms
    # a larger window grows it...
    assert await guard.claim([claim], freshness=WINDOW) == [SAME]
    grown = await raw.pttl(key)
    assert guard.retention_ms(WINDOW) - 5_000 < grown <= guard.retention_ms(WINDOW)
    # ... and a smaller one, claiming into the same bucket again, never shrinks it
    again = at(claim.nonce, offset=1, created_at=claim.created_at)
    assert await guard.claim([claim, again], freshness=tiny) == [SAME, REPLAY]
    assert grown - 5_000 < await raw.pttl(key) <= grown


async def test_a_pipelined_batch_carries_the_window_too(
    redis_url: str, raw: aioredis.Redis, prefix: str
) -> None:
    # Over max_claims_per_call a batch goes as several script calls in one pipeline: every one
    # of them sets the TTL of the window the batch carries.
    tiny = Freshness(max_age_ms=2_000, future_skew_ms=0, max_lag_ms=0)
    async with RedisReplayGuard.from_url(redis_url, prefix=prefix, max_claims_per_call=8) as g:
        claims = [
            at(os.urandom(16), offset=i, created_at=NOW_MS + 41_000_000 + 250 * i)
            for i in range(40)
        ]
        assert await g.claim(claims, freshness=tiny) == [NEW] * 40
        keys = {key_of(g, prefix, c) for c in claims}
        ttls = [await raw.pttl(k) for k in keys]
        assert len(keys) > 5 and all(0 < t <= g.retention_ms(tiny) for t in ttls)
        assert await g.claim(claims, freshness=WINDOW) == [SAME] * 40
        ttls = [await raw.pttl(k) for k in keys]
        assert all(g.retention_ms(WINDOW) - 5_000 < t <= g.retention_ms(WINDOW) for t in ttls)


async def test_the_largest_window_still_claims_and_expires(
    guard: RedisReplayGuard, raw: aioredis.Redis, prefix: str
) -> None:
    # Every field at its maximum: the TTL is still an exact integer for Redis's Lua, so the claim
    # succeeds and its bucket still expires (a TTL Redis refused would leave a key without one).
    widest = Freshness(
        max_age_ms=MAX_WINDOW_MS, future_skew_ms=MAX_WINDOW_MS, max_lag_ms=MAX_WINDOW_MS
    )
    claim = at(os.urandom(16), created_at=NOW_MS + 51_000_000)
    assert await guard.claim([claim], freshness=widest) == [NEW]
    ttl = await raw.pttl(key_of(guard, prefix, claim))
    assert guard.retention_ms(widest) - 5_000 < ttl <= guard.retention_ms(widest)


async def test_a_guard_refuses_window_options_and_a_missing_window(
    guard: RedisReplayGuard, redis_url: str
) -> None:
    for name in ("max_age_ms", "future_skew_ms", "max_lag_ms", "freshness"):
        with pytest.raises(ConfigurationError, match="Freshness"):
            RedisReplayGuard.from_url(redis_url, **{name: 1_000})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Freshness"):
        await guard.claim([at(os.urandom(16))], freshness=None)  # type: ignore[arg-type]


async def test_every_key_the_guard_writes_has_a_ttl(
    guard: RedisReplayGuard, raw: aioredis.Redis, prefix: str
) -> None:
    await guard.claim(
        [at(os.urandom(16), created_at=NOW_MS + 500 * i) for i in range(200)], freshness=WINDOW
    )
    keys = [k async for k in raw.scan_iter(match=f"{prefix}:n:*")]
    assert len(keys) > 16
    pipe = raw.pipeline(transaction=False)
    for k in keys:
        pipe.pttl(k)
    assert all(t > 0 for t in await pipe.execute())


# --- layout, lifecycle ----------------------------------------------------------------------


async def test_a_consumer_with_another_layout_is_refused(redis_url: str, prefix: str) -> None:
    async with RedisReplayGuard.from_url(redis_url, prefix=prefix):
        pass
    odd = RedisReplayGuard.from_url(redis_url, prefix=prefix, shards=8)
    try:
        with pytest.raises(ConfigurationError, match="layout mismatch"):
            await odd.start()
        with pytest.raises(ConfigurationError, match="layout mismatch"):
            # a claim starts the guard, and fails too
            await odd.claim([at(os.urandom(16))], freshness=WINDOW)
    finally:
        await odd.stop()


async def test_a_client_handed_in_is_not_closed(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        guard = RedisReplayGuard(client, prefix=prefix)
        async with guard:
            assert await guard.claim([at(os.urandom(16))], freshness=WINDOW) == [NEW]
        await guard.stop()  # idempotent
        assert await client.ping()
        with pytest.raises(Stopped, match="stopped"):
            await guard.claim([at(os.urandom(16))], freshness=WINDOW)
    finally:
        await client.aclose()


async def test_a_client_decoding_responses_works_too(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for _ in range(2):  # the second guard reads the layout record as str
            async with RedisReplayGuard(client, prefix=prefix) as g:
                n = os.urandom(16)
                verdicts = await g.claim([at(n), at(n, offset=1), at(n)], freshness=WINDOW)
                assert verdicts == [NEW, REPLAY, SAME]
    finally:
        await client.aclose()


async def test_claims_start_the_guard_lazily(redis_url: str, prefix: str) -> None:
    guard = RedisReplayGuard.from_url(redis_url, prefix=prefix)
    try:
        n = os.urandom(16)
        verdicts = await asyncio.gather(
            guard.claim([at(n)], freshness=WINDOW), guard.claim([at(n, offset=1)], freshness=WINDOW)
        )
        assert sorted(v[0].value for v in verdicts) == ["new", "replay"]
    finally:
        await guard.stop()
        await guard.stop()


# --- failures -------------------------------------------------------------------------------


async def test_unreachable_redis_raises_quickly_without_secrets(prefix: str) -> None:
    port = free_port(6450)  # nothing listens there
    guard = RedisReplayGuard.from_url(
        f"redis://user:hunter2-secret@127.0.0.1:{port}/0",
        prefix=prefix,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 1),
    )
    try:
        started = time.monotonic()
        with pytest.raises(ReplayGuardUnavailable) as info:
            await guard.claim([at(os.urandom(16))], freshness=WINDOW)
        assert time.monotonic() - started < 3
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(info.value)
        assert "***" in str(info.value)
        with pytest.raises(ReplayGuardUnavailable):
            await guard.start()
    finally:
        await guard.stop()


async def test_a_redis_error_reply_raises_unavailable(
    guard: RedisReplayGuard, raw: aioredis.Redis, prefix: str
) -> None:
    n = os.urandom(16)
    key = bucket_key(prefix, NOW_MS // guard.bucket_ms, nonce_shard("agent-a", n, guard.shards))
    await raw.set(key, b"not a hash", px=60_000)  # WRONGTYPE inside the script
    with pytest.raises(ReplayGuardUnavailable, match="ResponseError"):
        await guard.claim([at(n)], freshness=WINDOW)


async def test_auth_from_the_url_and_a_wrong_password(private_redis_url: str, prefix: str) -> None:
    async with RedisReplayGuard.from_url(private_redis_url, prefix=prefix) as g:
        assert await g.claim([at(os.urandom(16))], freshness=WINDOW) == [NEW]
        assert PRIVATE_PASSWORD not in repr(g)
    url = private_redis_url.replace(PRIVATE_PASSWORD, "hunter2-secret")
    guard = RedisReplayGuard.from_url(url)
    try:
        with pytest.raises(ReplayGuardUnavailable) as info:
            await guard.start()
        assert "hunter2" not in str(info.value)
        assert "AuthenticationError" in str(info.value)
    finally:
        await guard.stop()


# --- two processes racing for one nonce -----------------------------------------------------

_RACER = textwrap.dedent(
    """
    import asyncio, json, sys
    import redis.asyncio as aioredis
    from signed_bus._freshness import Freshness
    from signed_bus._replay.guard import Claim, RedisReplayGuard

    async def main() -> None:
        url, prefix, me, nonces_hex, created_at = sys.argv[1:6]
        claims = [
            Claim("agent-a", bytes.fromhex(h), int(created_at), "results", int(me), i)
            for i, h in enumerate(nonces_hex.split(","))
        ]
        control = aioredis.Redis.from_url(url)
        async with RedisReplayGuard.from_url(url, prefix=prefix) as guard:
            await control.rpush(prefix + ":ready", me)
            await control.blpop([prefix + ":go"], timeout=20)
            verdicts = []
            for i in range(0, len(claims), 20):  # small batches, so the two racers interleave
                verdicts += await guard.claim(claims[i : i + 20], freshness=Freshness())
        await control.aclose()
        print(json.dumps([v.value for v in verdicts]))

    asyncio.run(main())
    """
)


async def test_two_processes_claiming_the_same_nonces_get_exactly_one_new(
    redis_url: str, raw: aioredis.Redis, prefix: str
) -> None:
    nonces = [os.urandom(16) for _ in range(300)]
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _RACER, redis_url, prefix, str(me),
            ",".join(n.hex() for n in nonces), str(NOW_MS),
            stdout=asyncio.subprocess.PIPE,
        )
        for me in (0, 1)
    ]  # fmt: skip
    for _ in racers:  # both connected, started and waiting
        assert await raw.blpop([f"{prefix}:ready"], timeout=30) is not None
    await raw.lpush(f"{prefix}:go", b"1", b"1")  # one command wakes both
    outputs = [await r.communicate() for r in racers]
    assert [r.returncode for r in racers] == [0, 0]
    first, second = (json.loads(out) for out, _ in outputs)
    # each racer claims every nonce at its own partition: one NEW, one REPLAY per nonce
    for a, b in zip(first, second, strict=True):
        assert sorted((a, b)) == ["new", "replay"]
    await raw.delete(f"{prefix}:go", f"{prefix}:ready")
