"""The rotation drill (docs/OPERATIONS.md, "Rotation"): three agents sign, a consumer verifies
with a ring a KeySource keeps in step with a JWK Set served over HTTP, and every agent's key is
rotated mid-stream by editing that set. No honest record is rejected; an envelope made with an
old kid after its removal is rejected as unknown_key and dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from signed_bus import (
    DeadLetter,
    Ed25519Key,
    Keyring,
    KeySource,
    ProducerOptions,
    SignedProducer,
    Signer,
    VerifyingConsumer,
    generate_ed25519_key,
)
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    guard,
    read_all,
    verifier,
)
from tests.unit.test_keysource import JwksServer, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AGENTS = ("agent-0", "agent-1", "agent-2")
PER_PHASE = 30  # records per agent per phase


def producer(bootstrap: str, agent: str, key: Ed25519Key) -> SignedProducer:
    signer = Signer(Keyring([key]), kid=key.kid, issuer=agent, model="drill-v1")
    return SignedProducer(ProducerOptions(bootstrap_servers=bootstrap), signer=signer)


async def send_phase(producers: dict[str, SignedProducer], topic: str, phase: str) -> None:
    sent = []
    for index in range(PER_PHASE):
        for agent, signed in producers.items():
            payload = {"agent": agent, "phase": phase, "seq": index}
            sent.append(await signed.send(topic, payload, key=f"{agent}-{index}".encode()))
    await asyncio.gather(*sent)


async def test_three_agents_rotate_through_a_key_source_and_lose_nothing(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("drill", partitions=3)
    dead = await unique_topic("drill-dlq")
    old = {agent: generate_ed25519_key(f"{agent}-v1", [agent]) for agent in AGENTS}
    new = {agent: generate_ed25519_key(f"{agent}-v2", [agent]) for agent in AGENTS}
    server = JwksServer()
    server.serve(*old.values())
    source = KeySource(server.url, refresh_interval_s=0.3, unknown_kid_interval_s=0.3)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(server.close)
        await stack.enter_async_context(source)
        g = await stack.enter_async_context(guard(redis_url, redis_prefix))
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(source.keyring),
            guard=g,
            dead_letter_topic=dead,
        )
        running = await stack.enter_async_context(Running(consumer))
        old_producers = {a: producer(kafka_bootstrap, a, old[a]) for a in AGENTS}
        new_producers = {a: producer(kafka_bootstrap, a, new[a]) for a in AGENTS}
        for p in (*old_producers.values(), *new_producers.values()):
            await stack.enter_async_context(p)

        # 1. Old keys in use. 2. New keys published alongside; every verifier picks them up
        # within the refresh interval. 3. Signers switch while old-kid records are in flight.
        await send_phase(old_producers, topic, "before")
        server.serve(*old.values(), *new.values())
        await wait_until(lambda: all(k.kid in source.keyring for k in new.values()))
        await send_phase(old_producers, topic, "in flight")
        await send_phase(new_producers, topic, "after")
        honest = 3 * PER_PHASE * len(AGENTS)
        await wait_until(lambda: len(running.delivered) >= honest, within=60)

        # 4. The old keys removed once every old-kid record was consumed.
        server.serve(*new.values())
        await wait_until(lambda: not any(k.kid in source.keyring for k in old.values()))
        # An envelope made with an old kid after its removal (a leaked key, a stale agent).
        stale = await (await old_producers["agent-0"].send(topic, {"stale": True}, key=b"s"))
        await send_phase(new_producers, topic, "later")
        ends = await end_offsets(kafka_bootstrap, [topic])
        await running.caught_up(ends)

    delivered = running.delivered
    assert len(delivered) == honest + PER_PHASE * len(AGENTS)
    seen = {(m.payload["agent"], m.payload["phase"], m.payload["seq"]) for m in delivered}  # type: ignore[index]
    assert len(seen) == len(delivered)
    assert {m.verified.kid for m in delivered} == {k.kid for k in (*old.values(), *new.values())}
    assert dict(consumer.metrics.rejected) == {"unknown_key": 1}
    [letter] = [DeadLetter.from_record(r) for r in await read_all(kafka_bootstrap, dead, 1)]
    assert letter.reason == "unknown_key"
    assert (letter.source_partition, letter.source_offset) == (stale.partition, stale.offset)
