"""signed_bus.faststream against a real broker and Redis, on both broker flavours
(faststream.kafka over aiokafka, faststream.confluent over librdkafka).

FastStream's in-memory TestKafkaBroker pins offsets and partitions, so it cannot show replay
semantics: every app here consumes from the real broker, every claim goes to the real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from faststream import Context

from producers.attacker import EXPECTED_REASONS, Captured, Forger
from signed_bus import Backoff, Keyring, Signer, Verifier, generate_ed25519_key
from signed_bus._deadletter import DeadLetter
from signed_bus._gate import ConsumedMessage
from signed_bus._kafka.consumer import VerifyingConsumer
from signed_bus._provenance import Position, ProvenanceIndex
from signed_bus._replay.guard import ClaimVerdict
from signed_bus.faststream import SignedBus, verified_batch
from tests.conftest import TopicFactory
from tests.integration.bus import (
    WINDOW,
    Running,
    consumer_options,
    end_offsets,
    guard,
    plain_producer,
    read_all,
    unique,
)
from tests.integration.fs_apps import (
    FLAVOURS,
    Result,
    broker,
    keyed,
    result,
    router,
    subscriber_options,
    wait_for,
)
from tests.integration.services import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ISSUER = "inference-agent"
#: A handler parameter's default: the verified message from FastStream's context.
SIGNED = Context("signed")


@pytest.fixture
def ring() -> Keyring:
    return Keyring(
        [
            generate_ed25519_key("inf-1", [ISSUER]),
            generate_ed25519_key("low-1", ["low-agent"]),  # the key the attacker stole
            generate_ed25519_key("plan-1", ["planner"]),
        ]
    )


def _signer(ring: Keyring, kid: str = "inf-1", issuer: str = ISSUER) -> Signer:
    return Signer(ring, kid=kid, issuer=issuer, model="incident-lm@1")


def _verifier(ring: Keyring, **kw: Any) -> Verifier:
    return Verifier(ring.public(), freshness=WINDOW, **kw)


@contextlib.asynccontextmanager
async def running(*brokers: Any) -> AsyncIterator[None]:
    for b in brokers:
        await b.start()
    try:
        yield
    finally:
        for b in brokers:
            await b.stop()


@contextlib.asynccontextmanager
async def stopping(*guards: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for g in guards:
            await g.stop()


def _letters(records: list[Any]) -> dict[tuple[str, int, int], str]:
    letters = [DeadLetter.from_record(r) for r in records]
    return {(d.source_topic, d.source_partition, d.source_offset): d.reason for d in letters}


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_typed_handlers_see_only_verified_records_and_forgeries_are_dead_lettered(
    flavour: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    ring: Keyring,
) -> None:
    topic = await unique_topic("fs-results", partitions=2)
    other = await unique_topic("fs-other", partitions=1)
    dlq = {name: await unique_topic(f"fs-dlq-{name}") for name in ("single", "batch", "plain")}
    honest = 6
    publisher = broker(flavour, kafka_bootstrap, SignedBus(signer=_signer(ring)))
    guards = [guard(redis_url, redis_prefix) for _ in range(3)]
    single_bus = SignedBus(
        verifier=_verifier(ring), guard=guards[0], dead_letter_topic=dlq["single"]
    )
    batch_bus = SignedBus(verifier=_verifier(ring), guard=guards[1], dead_letter_topic=dlq["batch"])
    single_app = broker(flavour, kafka_bootstrap, single_bus)
    batch_app = broker(flavour, kafka_bootstrap, batch_bus)
    seen: list[tuple[Result, ConsumedMessage]] = []
    batches: list[tuple[Result, ConsumedMessage]] = []

    @single_app.subscriber(topic, other, **subscriber_options(flavour, unique("g-single")))
    async def on_result(item: Result, signed: ConsumedMessage = SIGNED) -> None:
        assert isinstance(item, Result) and isinstance(item.score, float)
        seen.append((item, signed))

    @batch_app.subscriber(
        topic, other, **subscriber_options(flavour, unique("g-batch"), batch=True)
    )
    async def on_batch(items: list[Result]) -> None:
        batches.extend(zip(items, verified_batch(), strict=True))

    plain = VerifyingConsumer.from_options(
        consumer_options(kafka_bootstrap, [topic, other], auto_offset_reset="earliest"),
        verifier=_verifier(ring),
        guard=guards[2],
        dead_letter_topic=dlq["plain"],
    )
    async with (
        stopping(*guards),
        running(publisher),
        running(single_app, batch_app),
        Running(plain) as vc,
    ):
        for seq in range(honest):
            await publisher.publish(result(seq), topic, key=f"k{seq}".encode())
        await wait_for(lambda: len(seen) == honest and len(batches) == honest, "honest records")
        await vc.caught_up(await end_offsets(kafka_bootstrap, [topic]))

        # the attacker reads the honest records and writes every forgery kind the demo's has
        captured = [
            Captured(r.topic, r.partition, r.offset, r.key, r.value)
            for r in await read_all(kafka_bootstrap, topic, honest)
        ]
        victim = next(c for c in captured if c.partition == 0)
        forger = Forger(compromised=Keyring([ring.get("low-1")]))  # type: ignore[list-item]
        forged = [
            forger.forge(kind, victim, other_topic=other, other_partition=1)
            for kind in EXPECTED_REASONS
        ]
        async with plain_producer(kafka_bootstrap) as attacker:
            for f in forged:
                await attacker.send_and_wait(f.topic, f.value, key=f.key, partition=f.partition)
        letters = {
            name: _letters(await read_all(kafka_bootstrap, t, len(forged), within=60))
            for name, t in dlq.items()
        }
        await asyncio.sleep(1)  # anything delivered late would show up now

    # exactly the honest records, typed, each once, first position, in every group
    for delivered in (seen, batches):
        assert sorted(item.seq for item, _ in delivered) == list(range(honest))
        # the first group to see a record claims it NEW, the others find it at that position
        claims = {ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION}
        assert all(m.claim in claims and m.verified.issuer == ISSUER for _, m in delivered)
        # the numpy values of the producer's model arrive as the handler's float fields
        assert {item.score for item, _ in delivered} == {seq / 4 for seq in range(honest)}
        for item, _ in delivered:
            assert item.embedding == [item.seq / 2, (item.seq + 1) / 2, (item.seq + 2) / 2]
    assert sorted(m.payload["seq"] for m in vc.delivered) == list(range(honest))  # type: ignore[index]
    # every forgery dead-lettered, with the reason VerifyingConsumer gives it
    assert letters["single"] == letters["plain"] == letters["batch"]
    reasons = sorted(letters["plain"].values())
    assert len(reasons) == len(forged)
    assert reasons.count("replay") == 2  # same partition and another partition
    for kind in ("cross_topic", "unknown_key", "stolen_kid", "spoofed_issuer", "unsigned"):
        assert next(iter(EXPECTED_REASONS[kind])) in reasons
    assert single_bus.metrics.rejected_total == batch_bus.metrics.rejected_total == len(forged)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_batch_is_claimed_in_one_redis_call(
    flavour: str, kafka_bootstrap: str, unique_topic: TopicFactory, ring: Keyring, tmp_path: Path
) -> None:
    topic = await unique_topic("fs-batch", partitions=1)
    count = 200
    with RedisProcess(directory=tmp_path) as server:
        stats = aioredis.Redis.from_url(server.url)
        claims = guard(server.url, "batch")
        bus = SignedBus(verifier=_verifier(ring), guard=claims)
        app = broker(flavour, kafka_bootstrap, bus)
        publisher = broker(flavour, kafka_bootstrap, SignedBus(signer=_signer(ring)))
        sizes: list[int] = []

        @app.subscriber(topic, **subscriber_options(flavour, unique("g"), batch=True))
        async def on_batch(items: list[Result]) -> None:
            sizes.append(len(items))

        async with running(publisher):
            for start in range(0, count, 25):  # within the producer's batch buffer
                # each record signed for its own key (a wrong key digest would be rejected)
                chunk = (keyed(flavour, result(i), b"k%d" % i) for i in range(start, start + 25))
                await publisher.publish_batch(*chunk, topic=topic)
        await claims.start()  # loads the script: EVALSHA calls from here on are claims
        before = await _evalsha_calls(stats)
        async with running(app):
            await wait_for(lambda: sum(sizes) == count, "every record")
        calls = await _evalsha_calls(stats) - before
        assert bus.metrics.rejected_total == 0, bus.metrics.rejected
        await claims.stop()
        await stats.aclose()
    assert max(sizes) > 1, sizes  # real batches, not one record each
    assert calls == len(sizes), (calls, sizes)


async def _evalsha_calls(client: aioredis.Redis) -> int:
    info = await client.info("commandstats")
    return int(info.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_handler_failure_is_redelivered_not_skipped(
    flavour: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    ring: Keyring,
) -> None:
    topic = await unique_topic("fs-redeliver", partitions=1)
    claims = guard(redis_url, redis_prefix)
    app = broker(flavour, kafka_bootstrap, SignedBus(verifier=_verifier(ring), guard=claims))
    publisher = broker(flavour, kafka_bootstrap, SignedBus(signer=_signer(ring)))
    attempts: list[tuple[int, ClaimVerdict | None]] = []

    @app.subscriber(topic, **subscriber_options(flavour, unique("g")))
    async def on_result(item: Result, signed: ConsumedMessage = SIGNED) -> None:
        attempts.append((item.seq, signed.claim))
        if item.seq == 1 and len([a for a in attempts if a[0] == 1]) == 1:
            raise RuntimeError("the handler failed once")

    async with running(publisher):
        for seq in range(3):  # a str key is signed as the UTF-8 bytes the broker sends
            await publisher.publish(result(seq), topic, key=f"k-{seq}")
    async with running(app):
        await wait_for(lambda: {seq for seq, _ in attempts} == {0, 1, 2}, "every record")
        await asyncio.sleep(0.5)
    await claims.stop()
    ones = [claim for seq, claim in attempts if seq == 1]
    # the failed record came back at its own position (SAME_POSITION), nothing was skipped
    assert ones == [ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION], attempts
    assert [seq for seq, _ in attempts] == [0, 1, 1, 2]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_relay_output_of_an_input_that_expired_in_a_slow_handler_is_not_published(
    flavour: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    ring: Keyring,
) -> None:
    results = await unique_topic("fs-slow-results")
    plans = await unique_topic("fs-slow-plans")
    dlq = await unique_topic("fs-slow-dlq")
    claims = guard(redis_url, redis_prefix)
    planner = broker(
        flavour,
        kafka_bootstrap,
        SignedBus(
            signer=_signer(ring, "plan-1", "planner"),
            verifier=_verifier(ring),
            guard=claims,
            dead_letter_topic=dlq,
        ),
    )
    calls: list[int] = []

    @planner.subscriber(results, **subscriber_options(flavour, unique("g")))
    @planner.publisher(plans)
    async def plan(item: Result) -> dict[str, Any]:
        calls.append(item.seq)
        await asyncio.sleep(2.0)  # the input expires meanwhile
        return {"kind": "plan", "for": item.seq}

    expires_at = int(time.time() * 1000) + 1_500
    value = _signer(ring).sign(result(3), topic=results, expires_at=expires_at)
    async with plain_producer(kafka_bootstrap) as producer:
        await producer.send_and_wait(results, value)
    async with stopping(claims), running(planner):
        (letter,) = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dlq, 1)]
    assert (letter.reason, letter.source_offset) == ("expired", 0)
    assert calls == [3]  # the redelivered copy was expired: not handed out again
    # nothing published: neither the plan nor anything for the rejected redelivery
    assert await end_offsets(kafka_bootstrap, [plans]) == {(plans, 0): 0}


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_header_that_is_not_text_does_not_stall_the_subscriber(
    flavour: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    ring: Keyring,
) -> None:
    topic = await unique_topic("fs-headers")
    claims = guard(redis_url, redis_prefix)
    app = broker(flavour, kafka_bootstrap, SignedBus(verifier=_verifier(ring), guard=claims))
    handled: list[int] = []

    @app.subscriber(topic, **subscriber_options(flavour, unique("g")))
    async def on_result(item: Result) -> None:
        handled.append(item.seq)

    sign = _signer(ring).sign
    async with plain_producer(kafka_bootstrap) as producer:
        # headers are unsigned: anyone on the path can add one FastStream's parser cannot read
        await producer.send_and_wait(topic, sign(result(0), topic=topic), headers=[("x", b"\xff")])
        await producer.send_and_wait(topic, sign(result(1), topic=topic))
    async with stopping(claims), running(app):
        await wait_for(lambda: len(handled) >= 2, "both records", within=20)
        await asyncio.sleep(0.5)
    assert handled == [0, 1]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_records_held_while_redis_is_down_are_delivered_once_it_is_back(
    flavour: str, kafka_bootstrap: str, unique_topic: TopicFactory, ring: Keyring, tmp_path: Path
) -> None:
    topic = await unique_topic("fs-redis-down")
    publisher = broker(flavour, kafka_bootstrap, SignedBus(signer=_signer(ring)))
    async with running(publisher):
        for seq in range(3):
            await publisher.publish(result(seq), topic)
    handled: list[tuple[int, ClaimVerdict | None]] = []
    with RedisProcess(directory=tmp_path, persistent=True) as server:
        claims = guard(server.url, "down")
        await claims.start()
        server.stop()
        fast = Backoff(initial_ms=50, max_ms=200)
        bus = SignedBus(verifier=_verifier(ring), guard=claims, backoff=fast, hold_s=0.5)
        app = broker(flavour, kafka_bootstrap, bus)

        @app.subscriber(topic, **subscriber_options(flavour, unique("g")))
        async def on_result(item: Result, signed: ConsumedMessage = SIGNED) -> None:
            handled.append((item.seq, signed.claim))

        async with stopping(claims), running(app):
            await wait_for(lambda: bus.metrics.guard_retries >= 3, "the held claim to retry")
            assert handled == []  # fail closed: nothing delivered unchecked
            server.start()
            await wait_for(lambda: len(handled) >= 3, "every record")
            await asyncio.sleep(0.5)
    assert handled == [(seq, ClaimVerdict.NEW) for seq in range(3)]
    assert bus.metrics.unchecked == 0


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_signed_payload_that_misfits_the_handler_is_dead_lettered_not_redelivered(
    flavour: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    ring: Keyring,
) -> None:
    topic = await unique_topic("fs-misfit")
    dlq = await unique_topic("fs-misfit-dlq")
    claims = guard(redis_url, redis_prefix)
    bus = SignedBus(verifier=_verifier(ring), guard=claims, dead_letter_topic=dlq)
    app = broker(flavour, kafka_bootstrap, bus)
    publisher = broker(flavour, kafka_bootstrap, SignedBus(signer=_signer(ring)))
    handled: list[int] = []
    failed: list[int] = []

    @app.subscriber(topic, **subscriber_options(flavour, unique("g")))
    async def on_result(item: Result) -> None:
        if not failed:  # the handler's own ValidationError is a failure: redelivered
            failed.append(item.seq)
            Result.model_validate({"seq": "raised by the handler"})
        handled.append(item.seq)

    async with running(publisher):
        await publisher.publish({"seq": "not a number", "label": "x", "score": 1.0}, topic)
        await publisher.publish(result(1), topic)
    async with stopping(claims), running(app):
        await wait_for(lambda: handled == [1], "the record after the misfit")
        (letter,) = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dlq, 1)]
    assert failed == [1]
    assert (letter.reason, letter.source_offset) == ("malformed", 0)
    assert "parameter types" in letter.error and "not a number" not in letter.error
    assert bus.metrics.rejected == {"malformed": 1}
    assert (bus.metrics.delivered, bus.metrics.same_position) == (2, 1)  # seq 1, twice


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_relay_hop_carries_provenance_that_trace_walks(
    flavour: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    ring: Keyring,
    tmp_path: Path,
) -> None:
    results = await unique_topic("fs-relay-results")
    plans = await unique_topic("fs-relay-plans")
    claims = guard(redis_url, redis_prefix)
    planner_bus = SignedBus(
        signer=_signer(ring, "plan-1", "planner"), verifier=_verifier(ring), guard=claims
    )
    # the bus on a router: only the router's subscribers and publishers are signed-bus ones
    planner = broker(flavour, kafka_bootstrap, None)
    relay = router(flavour, planner_bus)
    publisher = broker(flavour, kafka_bootstrap, SignedBus(signer=_signer(ring)))
    consumed: list[ConsumedMessage] = []

    @relay.subscriber(results, **subscriber_options(flavour, unique("g")))
    @relay.publisher(plans)
    async def plan(item: Result, signed: ConsumedMessage = SIGNED) -> dict[str, Any]:
        consumed.append(signed)
        return {"kind": "plan", "for": item.seq, "action": "restart"}  # no digest passed

    planner.include_router(relay)
    async with running(publisher):
        await publisher.publish(result(7), results, key=b"incident-7")
    async with running(planner):
        (record,) = await read_all(kafka_bootstrap, plans, 1)
    await claims.stop()
    (source,) = consumed
    async with ProvenanceIndex.from_url(redis_url, ttl_ms=600_000, prefix=redis_prefix) as index:
        await index.record(
            [(source.verified.digest, Position(results, source.partition, source.offset))]
        )
    keyfile = tmp_path / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "SIGNED_BUS_KEYRING_FILE": str(keyfile),
    }
    where = f"{record.topic}:{record.partition}:{record.offset}"
    command = [sys.executable, "-m", "signed_bus", "trace", "--index-prefix", redis_prefix]
    trace = await asyncio.to_thread(
        subprocess.run,
        [*command, "--position", where],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert trace.returncode == 0, trace.stderr + trace.stdout
    assert "chain verified: 2 link(s)" in trace.stdout
    assert "issuer=planner" in trace.stdout and f"issuer={ISSUER}" in trace.stdout


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_every_message_of_a_batch_publish_is_signed_for_the_key_it_is_sent_with(
    flavour: str, kafka_bootstrap: str, unique_topic: TopicFactory, ring: Keyring
) -> None:
    topic = await unique_topic("fs-batch-keys", partitions=1)
    publisher = broker(flavour, kafka_bootstrap, SignedBus(signer=_signer(ring)))
    async with running(publisher):
        # a batch of one keyed message, then of two: each sent with its own key
        await publisher.publish_batch(keyed(flavour, result(0), b"order-0"), topic=topic)
        await publisher.publish_batch(
            keyed(flavour, result(1), b"order-1"),
            keyed(flavour, result(2), b"order-2"),
            topic=topic,
        )
        await publisher.publish(result(3), topic, key="order-3")
    verifier = _verifier(ring)
    sent = []
    for record in await read_all(kafka_bootstrap, topic, 4):
        verified = verifier.verify(
            record.value, topic=topic, key=record.key, reference_ms=record.timestamp
        )
        sent.append((record.key, verified.payload["seq"]))  # type: ignore[index]
    assert sent == [(b"order-%d" % seq, seq) for seq in range(4)]
