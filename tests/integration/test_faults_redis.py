"""Fault: the replay guard's Redis stopped mid-stream and started again (issue 4, #6).

A private redis-server (tests/integration/services.py, never the shared one) is stopped while a
producer keeps sending. Fail closed (the default): the consumer holds the batch it could not
claim, delivers and commits nothing of it, retries with backoff (counted), and delivers every
record once Redis is back. Fail open: records are delivered during the outage, each counted as
unchecked and marked ``claim=None``, and checking resumes when Redis returns. A hung Redis
(SIGSTOP: connections open, no answers) times the claims out and is held the same way. Every
test runs against both consumer fronts (tests/integration/fronts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from signed_bus._kafka.consumer import Backoff, ConsumedMessage
from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import ClaimVerdict
from tests.conftest import TopicFactory
from tests.integration.bus import end_offsets, keyring, signer, unique, verifier
from tests.integration.fronts import FRONTS, Consuming, Front, Spec
from tests.integration.services import RedisProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("front", FRONTS),
]

FAST_BACKOFF = Backoff(initial_ms=50, max_ms=400)
RETRIES_WHILE_DOWN = 4

Position = tuple[int, int]


def fixed_ports(start: int, count: int = 1) -> int:
    """The first of ``count`` consecutive free loopback ports at ``start`` and up (a random
    step in, so concurrent runs spread apart). Below the ephemeral range: while a service is
    down, no outgoing connection can take its port and answer for it after the restart."""
    first = start + count * random.randrange(50)  # not security relevant
    for port in range(first, first + 100 * count, count):
        if all(_free(p) for p in range(port, port + count)):
            return port
    raise RuntimeError(f"no {count} free loopback port(s) at {start} and up")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A redis-server of this test's own at 6390 and up, persistent (it saves on stop and keeps
    its data across a restart: an outage, not a loss of state, which
    test_faults_redis_loss.py covers)."""
    with RedisProcess(fixed_ports(6390), persistent=True) as server:
        yield server


async def until(condition: Callable[[], bool], what: str, *, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Stream:
    """Sends one signed result every few milliseconds until stopped; knows every position."""

    def __init__(self, producer: SignedProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._futures: list[asyncio.Future[Any]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def sent(self) -> int:
        return len(self._futures)

    async def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            key = f"k{seq}".encode()
            self._futures.append(await self._producer.send(self._topic, {"seq": seq}, key=key))
            seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.01)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            self._stop.set()
            await self._task

    async def more(self, count: int) -> None:
        """Wait until ``count`` more records were sent."""
        target = self.sent + count
        await until(lambda: self.sent >= target, f"{count} more records sent")

    async def positions(self) -> set[Position]:
        acked = await asyncio.gather(*self._futures)
        return {(m.partition, m.offset) for m in acked}


async def _outage_scenario(
    front: Front,
    kafka_bootstrap: str,
    unique_topic: TopicFactory,
    redis_server: RedisProcess,
    *,
    fail_open: bool,
) -> tuple[Consuming, set[Position], list[ConsumedMessage]]:
    """Stream records; stop Redis after some were delivered; keep streaming; start it again.

    Returns the running consumer (stopped), the produced positions and what it delivered
    while Redis was down (from the moment it noticed to the moment Redis was back).
    """
    ring: Keyring = keyring()
    topic = await unique_topic("redis-down", partitions=2)
    during: list[ConsumedMessage] = []
    down = False

    def note(message: ConsumedMessage) -> None:
        if down:
            during.append(message)

    spec = Spec(
        kafka_bootstrap,
        [topic],
        redis_server.url,
        unique("g"),
        verifier(ring),
        fail_open=fail_open,
        backoff=FAST_BACKOFF,
        max_records=50,
    )
    options = ProducerOptions(bootstrap_servers=kafka_bootstrap)
    async with (
        SignedProducer(options, signer=signer(ring)) as producer,
        front.consume(spec, note) as running,
    ):
        stream = Stream(producer, topic)
        async with stream.running():
            await until(lambda: len(running.delivered) >= 30, "30 deliveries first")
            await asyncio.to_thread(redis_server.stop)
            assert not redis_server.is_running()
            metrics = running.metrics
            if fail_open:
                await stream.more(30)
                await until(lambda: metrics.unchecked >= 20, "unchecked deliveries")
                down = True
                # handed to the handler after this point, not only let through the gate (which
                # counts them when the batch is fetched, before a sync front's handler has run)
                before = sum(m.claim is None for m in running.delivered)
                await stream.more(20)
                await until(
                    lambda: sum(m.claim is None for m in running.delivered) >= before + 20,
                    "more unchecked deliveries",
                )
            else:
                # The consumer noticed: it holds a batch and retries; from here on nothing
                # may be delivered or committed until Redis is back.
                await until(lambda: metrics.guard_waiting, "the consumer to hold its batch")
                down = True
                held_delivered = metrics.delivered
                held_committed = dict(metrics.committed)
                await stream.more(30)
                await until(lambda: metrics.guard_retries >= RETRIES_WHILE_DOWN, "guard retries")
                assert metrics.guard_waiting
                assert metrics.delivered == held_delivered
                assert metrics.committed == held_committed
                assert metrics.unchecked == 0
            down = False
            await asyncio.to_thread(redis_server.start)
            await stream.more(30)  # records after the outage, claimed normally again
        produced = await stream.positions()
        await running.caught_up(await end_offsets(kafka_bootstrap, [topic]), within=30)
    return running, produced, during


async def test_fail_closed_holds_everything_while_redis_is_down_then_delivers_it(
    front: Front, kafka_bootstrap: str, unique_topic: TopicFactory, redis_server: RedisProcess
) -> None:
    running, produced, during = await _outage_scenario(
        front, kafka_bootstrap, unique_topic, redis_server, fail_open=False
    )
    metrics = running.metrics
    assert during == [], "nothing delivered while the consumer knew Redis was down"
    assert all(m.claim is ClaimVerdict.NEW for m in running.delivered), "nothing unchecked"
    assert metrics.unchecked == 0 and metrics.rejected_total == 0
    assert metrics.guard_retries >= RETRIES_WHILE_DOWN and not metrics.guard_waiting
    delivered = [(m.partition, m.offset) for m in running.delivered]
    assert len(delivered) == len(set(delivered)), "each record once"
    assert set(delivered) == produced, "every honest record delivered after Redis returned"
    # at least 30 before the outage, 30 sent during it and 30 after it (more while waiting)
    assert len(produced) >= 90


async def test_fail_open_delivers_during_the_outage_and_counts_it_unchecked(
    front: Front, kafka_bootstrap: str, unique_topic: TopicFactory, redis_server: RedisProcess
) -> None:
    running, produced, during = await _outage_scenario(
        front, kafka_bootstrap, unique_topic, redis_server, fail_open=True
    )
    metrics = running.metrics
    assert during, "records flowed while Redis was down"
    assert all(m.claim is None for m in during), "delivered during the outage: unchecked"
    unchecked = [m for m in running.delivered if m.claim is None]
    assert metrics.unchecked == len(unchecked) >= len(during)
    assert metrics.guard_retries == 0 and metrics.rejected_total == 0
    # checked before the outage and again after it
    checked = [m for m in running.delivered if m.claim is not None]
    assert all(m.claim is ClaimVerdict.NEW for m in checked)
    assert running.delivered[0].claim is ClaimVerdict.NEW
    assert running.delivered[-1].claim is ClaimVerdict.NEW, "checking resumed after the outage"
    delivered = [(m.partition, m.offset) for m in running.delivered]
    assert len(delivered) == len(set(delivered)), "each record once"
    assert set(delivered) == produced


async def test_a_hung_redis_times_out_claims_and_the_held_batch_is_delivered_once(
    front: Front, kafka_bootstrap: str, unique_topic: TopicFactory, redis_server: RedisProcess
) -> None:
    """Claims time out (socket_timeout) instead of being refused; the held batch's claim may
    have run on the server after all, which the retry must still deliver."""
    ring = keyring()
    topic = await unique_topic("redis-hung", partitions=2)
    during: list[ConsumedMessage] = []
    down = False

    def note(message: ConsumedMessage) -> None:
        if down:
            during.append(message)

    spec = Spec(
        kafka_bootstrap,
        [topic],
        redis_server.url,
        unique("g"),
        verifier(ring),
        backoff=FAST_BACKOFF,
        max_records=50,
    )
    options = ProducerOptions(bootstrap_servers=kafka_bootstrap)
    async with (
        SignedProducer(options, signer=signer(ring)) as producer,
        front.consume(spec, note) as running,
    ):
        metrics = running.metrics
        stream = Stream(producer, topic)
        async with stream.running():
            await until(lambda: len(running.delivered) >= 30, "30 deliveries first")
            redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
            try:
                await until(lambda: metrics.guard_waiting, "the consumer to hold its batch")
                down = True
                held_delivered = metrics.delivered
                await until(lambda: metrics.guard_retries >= 2, "guard retries")
                assert metrics.delivered == held_delivered
                down = False
            finally:
                redis_server.resume()
            await stream.more(30)
        produced = await stream.positions()
        await running.caught_up(await end_offsets(kafka_bootstrap, [topic]), within=30)
    assert during == [], "nothing delivered while Redis hung"
    assert metrics.rejected_total == 0 and metrics.unchecked == 0
    # The claim that timed out was buffered in Redis and ran when it woke up; the retry found
    # those nonces at the same positions and delivered them (a plain set-if-absent guard
    # would have dropped the held batch as replays).
    assert metrics.same_position >= 1
    assert all(m.claim in (ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION) for m in running.delivered)
    delivered = [(m.partition, m.offset) for m in running.delivered]
    assert len(delivered) == len(set(delivered)), "each record once"
    assert set(delivered) == produced


async def test_a_consumer_stopped_while_holding_leaves_the_held_batch_to_the_group(
    front: Front, kafka_bootstrap: str, unique_topic: TopicFactory, redis_server: RedisProcess
) -> None:
    """Stopped during the outage, the consumer commits only what it delivered; the group's
    next consumer, after Redis is back, delivers the rest: nothing lost, nothing twice."""
    ring = keyring()
    topic = await unique_topic("redis-stop", partitions=2)
    group = unique("g")
    prefix = unique("p")
    options = ProducerOptions(bootstrap_servers=kafka_bootstrap)
    first = Spec(
        kafka_bootstrap,
        [topic],
        redis_server.url,
        prefix,
        verifier(ring),
        group=group,
        backoff=FAST_BACKOFF,
        max_records=20,
    )
    async with SignedProducer(options, signer=signer(ring)) as producer:
        async with front.consume(first) as running:
            stream = Stream(producer, topic)
            async with stream.running():
                await until(lambda: len(running.delivered) >= 30, "30 deliveries first")
                await asyncio.to_thread(redis_server.stop)
                await until(lambda: running.metrics.guard_waiting, "the consumer to hold")
                await stream.more(20)
            started = time.monotonic()
        assert time.monotonic() - started < 10, "stop does not wait for Redis"
        produced = await stream.positions()
    before = {(m.partition, m.offset) for m in running.delivered}
    assert len(before) == len(running.delivered) < len(produced)
    # committed: exactly up to what was delivered, per partition
    last: dict[tuple[str, int], int] = {}
    for m in running.delivered:
        last[(m.topic, m.partition)] = max(last.get((m.topic, m.partition), 0), m.offset + 1)
    assert running.metrics.committed == last

    await asyncio.to_thread(redis_server.start)
    second = Spec(kafka_bootstrap, [topic], redis_server.url, prefix, verifier(ring), group=group)
    async with front.consume(second) as rest:
        await rest.caught_up(await end_offsets(kafka_bootstrap, [topic]), within=30)
    after = {(m.partition, m.offset) for m in rest.delivered}
    assert len(after) == len(rest.delivered)
    assert after == produced - before, "the held records, and only those, come next"
    assert all(m.claim is ClaimVerdict.NEW for m in rest.delivered)
    assert rest.metrics.rejected_total == 0
