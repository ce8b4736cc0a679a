"""Helpers for the producer/consumer integration tests (real Kafka, real Redis, no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from signed_bus._clock import Clock, system_clock
from signed_bus._freshness import Freshness
from signed_bus._kafka.consumer import ConsumedMessage, ConsumerOptions, VerifyingConsumer
from signed_bus._keys import Keyring, generate_hmac_key
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier

ISSUER = "agent-a"
KID = "k1"
MAX_AGE_MS = 300_000
SKEW_MS = 5_000
#: The verifiers' window in these tests (max_lag: the default); consumers claim nonces with it.
WINDOW = Freshness(max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS)

Position = tuple[str, int]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def keyring() -> Keyring:
    return Keyring([generate_hmac_key(KID, [ISSUER])])


def signer(ring: Keyring, *, clock: Clock = system_clock) -> Signer:
    return Signer(ring, kid=KID, issuer=ISSUER, model="model-v1", clock=clock)


#: ``unique_topic(..., config=CREATE_TIME)``: a topic with producer-set timestamps.
CREATE_TIME = {"message.timestamp.type": "CreateTime"}


def guard(redis_url: str, prefix: str, **kw: Any) -> RedisReplayGuard:
    """A guard on the test's own key prefix (the ``redis_prefix`` fixture); its retention is
    the window each claim carries (the claiming verifier's)."""
    return RedisReplayGuard.from_url(redis_url, prefix=prefix, **kw)


@contextlib.asynccontextmanager
async def plain_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[Position, int]:
    """The end offset of every partition of ``topics`` (what a caught-up group commits)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await _partitions(consumer, topic))
        ]
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    deadline = time.monotonic() + 10
    while True:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        if time.monotonic() > deadline:
            raise AssertionError(f"no metadata for {topic}")
        await asyncio.sleep(0.1)


async def read_all(bootstrap: str, topic: str, count: int, *, within: float = 30) -> list[Any]:
    """Read ``count`` records of ``topic`` from the beginning (then check nothing follows)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + within
        while len(records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(records)} of {count} records from {topic}")
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        records.extend(
            r for part in (await consumer.getmany(timeout_ms=500)).values() for r in part
        )
    finally:
        await consumer.stop()
    return records


def consumer_options(
    bootstrap: str, topics: list[str], group: str | None = None, **kw: Any
) -> ConsumerOptions:
    # Commits at every batch boundary unless a test says otherwise: Running.caught_up then
    # sees the commit at once (test_commit_interval.py tests the coalesced default).
    kw.setdefault("commit_interval_ms", 0)
    return ConsumerOptions(
        bootstrap_servers=bootstrap, group_id=group or unique("g"), topics=topics, **kw
    )


class Running:
    """A VerifyingConsumer running ``run(handler)`` in a task, collecting what it delivers."""

    def __init__(
        self,
        consumer: VerifyingConsumer,
        handler: Callable[[ConsumedMessage], Any] | None = None,
    ) -> None:
        self.consumer = consumer
        self.delivered: list[ConsumedMessage] = []
        self._extra = handler
        self.task: asyncio.Task[None] | None = None

    async def _handle(self, message: ConsumedMessage) -> None:
        self.delivered.append(message)
        if self._extra is not None:
            result = self._extra(message)
            if asyncio.iscoroutine(result):
                await result

    async def __aenter__(self) -> Running:
        await self.consumer.start()
        self.task = asyncio.create_task(self.consumer.run(self._handle))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        await self.consumer.stop()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task

    async def caught_up(self, ends: dict[Position, int], *, within: float = 60) -> None:
        """Wait until the consumer committed every partition up to ``ends``: every record
        before them was delivered or rejected (and dead-lettered)."""
        committed = self.consumer.metrics.committed
        deadline = time.monotonic() + within
        while any(committed.get(pos, 0) < end for pos, end in ends.items()):
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("the consumer stopped")
            if time.monotonic() > deadline:
                raise AssertionError(f"not caught up: committed {committed}, ends {ends}")
            await asyncio.sleep(0.05)


def per_partition(messages: Iterable[ConsumedMessage]) -> dict[Position, list[ConsumedMessage]]:
    out: dict[Position, list[ConsumedMessage]] = {}
    for m in messages:
        out.setdefault((m.topic, m.partition), []).append(m)
    return out


def verifier(ring: Keyring, *, freshness: Freshness = WINDOW, **kw: Any) -> Verifier:
    return Verifier(ring, freshness=freshness, **kw)
