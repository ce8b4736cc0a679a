"""The two consumer fronts the attack and fault suites run against, behind one test harness:
the aiokafka :class:`~signed_bus.VerifyingConsumer` (a task on the test's loop) and the
confluent-kafka :class:`~signed_bus.confluent.VerifyingConsumer` (``run()`` in a plain thread,
with the sync replay guard). Tests take a ``front`` parameter (``FRONTS``) and drive either the
same way: what they assert is the same for both."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from signed_bus._gate import ConsumedMessage
from signed_bus._kafka.consumer import VerifyingConsumer
from signed_bus._kafka.options import Backoff
from signed_bus._metrics import ConsumerMetrics
from signed_bus._verifier import Verifier
from signed_bus.confluent import SyncRedisReplayGuard
from signed_bus.confluent import VerifyingConsumer as SyncConsumer
from tests.integration.bus import Position, Running, consumer_options, guard, unique


class Consuming(Protocol):
    """A consumer running ``run(handler)``, collecting what it delivers."""

    delivered: list[ConsumedMessage]
    metrics: ConsumerMetrics

    def alive(self) -> bool: ...

    async def assigned(self, partitions: int) -> None:
        """Wait until the group assigned ``partitions`` partitions and their start offsets
        are resolved (a group starting at the end of the log reads what is produced next)."""

    async def caught_up(self, ends: dict[Position, int], *, within: float = 60) -> None: ...


@dataclass(frozen=True)
class Spec:
    """What a test asks of a consumer, whatever the front."""

    bootstrap: str
    topics: list[str]
    redis_url: str
    prefix: str
    verifier: Verifier
    group: str | None = None
    dead_letter_topic: str | None = None
    # a dead-letter producer handed in, refusing requests over this many bytes
    dead_letter_max_bytes: int | None = None
    fail_open: bool = False
    max_records: int = 1_000
    backoff: Backoff | None = None
    redis_options: dict[str, Any] | None = None
    session_timeout_ms: int | None = None
    auto_offset_reset: str = "earliest"
    timeout_s: float = 1.0


class Front(Protocol):
    name: str

    def consume(
        self, spec: Spec, handler: Callable[[ConsumedMessage], Any] | None = None
    ) -> contextlib.AbstractAsyncContextManager[Consuming]: ...


class _AioRunning:
    def __init__(self, running: Running) -> None:
        self._running = running
        self.delivered = running.delivered
        self.metrics = running.consumer.metrics

    def alive(self) -> bool:
        return self._running.task is not None and not self._running.task.done()

    async def assigned(self, partitions: int) -> None:
        kafka = self._running.consumer.consumer
        for _ in range(200):
            tps = kafka.assignment()
            if len(tps) == partitions:
                for tp in tps:
                    await kafka.position(tp)
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the partitions were not assigned")

    async def caught_up(self, ends: dict[Position, int], *, within: float = 60) -> None:
        await self._running.caught_up(ends, within=within)


class AioFront:
    name = "aiokafka"

    @contextlib.asynccontextmanager
    async def consume(
        self, spec: Spec, handler: Callable[[ConsumedMessage], Any] | None = None
    ) -> AsyncIterator[Consuming]:
        extra: dict[str, Any] = {"auto_offset_reset": spec.auto_offset_reset}
        if spec.session_timeout_ms is not None:
            extra["session_timeout_ms"] = spec.session_timeout_ms
            extra["heartbeat_interval_ms"] = 1_000
        producer = None
        if spec.dead_letter_max_bytes is not None:
            producer = AIOKafkaProducer(
                bootstrap_servers=spec.bootstrap, max_request_size=spec.dead_letter_max_bytes
            )
            await producer.start()
        try:
            async with guard(spec.redis_url, spec.prefix, **(spec.redis_options or {})) as g:
                consumer = VerifyingConsumer.from_options(
                    consumer_options(spec.bootstrap, spec.topics, spec.group, **extra),
                    verifier=spec.verifier,
                    guard=None if spec.verifier.audit else g,
                    dead_letter_topic=spec.dead_letter_topic,
                    dead_letter_producer=producer,
                    fail_open=spec.fail_open,
                    max_records=spec.max_records,
                    timeout_ms=int(spec.timeout_s * 1000),
                    backoff=spec.backoff,
                )
                async with Running(consumer, handler) as running:
                    yield _AioRunning(running)
            if producer is not None:  # a producer handed in is still open
                await producer.send_and_wait(spec.topics[0], b"x")
        finally:
            if producer is not None:
                await producer.stop()


class _ThreadRunning:
    def __init__(
        self, consumer: SyncConsumer, handler: Callable[[ConsumedMessage], Any] | None
    ) -> None:
        self.consumer = consumer
        self.metrics = consumer.metrics
        self.delivered: list[ConsumedMessage] = []
        self._extra = handler
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _handle(self, message: ConsumedMessage) -> None:
        self.delivered.append(message)
        if self._extra is not None:
            self._extra(message)

    def _run(self) -> None:
        try:
            self.consumer.run(self._handle)
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self.consumer.start()
        self._thread.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.consumer.stop)
        await asyncio.to_thread(self._thread.join, 30)

    def alive(self) -> bool:
        return self._thread.is_alive()

    async def assigned(self, partitions: int) -> None:
        for _ in range(200):
            if len(self.consumer.assigned) == partitions:
                # librdkafka resolves a start offset right after the assignment and exposes no
                # way to wait for it (position() stays invalid until a record was read)
                await asyncio.sleep(2)
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the partitions were not assigned")

    async def caught_up(self, ends: dict[Position, int], *, within: float = 60) -> None:
        committed = self.metrics.committed
        deadline = time.monotonic() + within
        while any(committed.get(pos, 0) < end for pos, end in ends.items()):
            if not self._thread.is_alive():
                if self.error is not None:
                    raise self.error
                raise AssertionError("the consumer stopped")
            if time.monotonic() > deadline:
                raise AssertionError(f"not caught up: committed {committed}, ends {ends}")
            await asyncio.sleep(0.05)


def confluent_config(bootstrap: str, group: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "group.id": group or unique("g"), **extra}


class ConfluentFront:
    name = "confluent"

    @contextlib.asynccontextmanager
    async def consume(
        self, spec: Spec, handler: Callable[[ConsumedMessage], Any] | None = None
    ) -> AsyncIterator[Consuming]:
        extra: dict[str, Any] = {"auto.offset.reset": spec.auto_offset_reset}
        if spec.session_timeout_ms is not None:
            extra["session.timeout.ms"] = spec.session_timeout_ms
            extra["heartbeat.interval.ms"] = 1_000
        producer = None
        if spec.dead_letter_max_bytes is not None:
            producer = Producer(
                {
                    "bootstrap.servers": spec.bootstrap,
                    "message.max.bytes": spec.dead_letter_max_bytes,
                }
            )
        g = SyncRedisReplayGuard.from_url(
            spec.redis_url, prefix=spec.prefix, **(spec.redis_options or {})
        )
        consumer = SyncConsumer(
            confluent_config(spec.bootstrap, spec.group, **extra),
            spec.topics,
            verifier=spec.verifier,
            guard=None if spec.verifier.audit else g,
            dead_letter_topic=spec.dead_letter_topic,
            dead_letter_producer=producer,
            fail_open=spec.fail_open,
            max_records=spec.max_records,
            timeout_s=spec.timeout_s,
            backoff=spec.backoff,
        )
        running = _ThreadRunning(consumer, handler)
        try:
            await asyncio.to_thread(running.start)
            yield running
        finally:
            await running.stop()
            g.stop()
        if producer is not None:  # a producer handed in is still open
            producer.produce(spec.topics[0], b"x")
            assert producer.flush(10) == 0


AIOKAFKA = AioFront()
CONFLUENT = ConfluentFront()


def other(front: Front) -> Front:
    """The other front: groups of both kinds sharing one nonce set."""
    return CONFLUENT if front.name == AIOKAFKA.name else AIOKAFKA


FRONTS = [
    pytest.param(AIOKAFKA, id="aiokafka"),
    pytest.param(CONFLUENT, id="confluent"),
]
