"""Fault: the Kafka broker restarted mid-stream (issue 4, #7).

A private broker (tests/integration/services.py; never the shared one on 9092) is restarted
while a SignedProducer keeps sending and a VerifyingConsumer keeps consuming. Both recover by
themselves: every acknowledged record is in the log once (idempotent producer) and delivered;
a record delivered twice (read again from the committed offset after the group lost its
member) comes back as SAME_POSITION, never as a replay. Runs against both consumer fronts
(tests/integration/fronts.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._kafka.topics import create_topics
from signed_bus._replay.guard import ClaimVerdict
from tests.integration.bus import end_offsets, keyring, signer, unique, verifier
from tests.integration.fronts import FRONTS, Front, Spec
from tests.integration.services import KafkaProcess
from tests.integration.test_faults_redis import FAST_BACKOFF, Stream, fixed_ports, until

NEW, SAME = ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def private_broker() -> Iterator[KafkaProcess]:
    port = fixed_ports(19_092, count=2)
    with KafkaProcess(port, port + 1) as kafka:
        yield kafka


@pytest.fixture
def broker(private_broker: KafkaProcess) -> KafkaProcess:
    """The module's broker, serving (a failed test may have left it stopped)."""
    if not private_broker.is_running():
        private_broker.start()
    return private_broker


def restart(broker: KafkaProcess) -> None:
    """Graceful: SIGTERM, controlled shutdown, start."""
    broker.restart()


def crash(broker: KafkaProcess) -> None:
    """SIGKILL (no shutdown: unflushed log, producer state from the last snapshot), a few
    seconds down, then start (log recovery)."""
    broker.kill()
    time.sleep(3)
    broker.start()


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("fault", [restart, crash], ids=["restart", "crash"])
async def test_producer_and_consumer_ride_out_a_broker_restart(
    front: Front,
    broker: KafkaProcess,
    redis_url: str,
    redis_prefix: str,
    fault: Callable[[KafkaProcess], None],
) -> None:
    ring = keyring()
    topic = unique("restart")
    await create_topics(broker.bootstrap, [topic], partitions=2)
    spec = Spec(
        broker.bootstrap,
        [topic],
        redis_url,
        redis_prefix,
        verifier(ring),
        backoff=FAST_BACKOFF,
        max_records=50,
    )
    options = ProducerOptions(bootstrap_servers=broker.bootstrap)  # idempotent by default
    async with (
        SignedProducer(options, signer=signer(ring)) as producer,
        front.consume(spec) as running,
    ):
        stream = Stream(producer, topic)
        async with stream.running():
            await until(lambda: len(running.delivered) >= 30, "30 deliveries first")
            before = stream.sent
            await asyncio.to_thread(fault, broker)
            while_down = stream.sent - before
            await stream.more(30)  # sends after the restart
        produced = await stream.positions()  # every send acknowledged: no failed future
        ends = await end_offsets(broker.bootstrap, [topic])
        await running.caught_up(ends, within=45)

    metrics = running.metrics
    assert while_down > 0, "sends went on while the broker was down"
    assert sum(ends.values()) == len(produced) == stream.sent, "each record in the log once"
    assert metrics.rejected_total == 0, f"no replay false positive: {metrics.rejected}"
    assert metrics.unchecked == 0
    seen = Counter((m.partition, m.offset) for m in running.delivered)
    assert set(seen) == produced, "every acknowledged record delivered"
    # At most one NEW per position; any other delivery of it (read again from the committed
    # offset after a rebalance) is SAME_POSITION. A batch claimed and then revoked before it
    # was delivered is first delivered as SAME_POSITION too.
    new = Counter((m.partition, m.offset) for m in running.delivered if m.claim is NEW)
    assert max(new.values()) == 1
    assert all(m.claim in (NEW, SAME) for m in running.delivered)
    assert metrics.same_position == sum(1 for m in running.delivered if m.claim is SAME)
