"""The services as containers (SERVICES_BACKEND=containers, ``make test-containers``): a signed
round trip through them, and faults done to the containers themselves.

- Redis paused (cgroup freezer: the server is alive, its connections open, nothing answers) or
  taken off its network (a cut link): the fail-closed consumer holds its batch, retries, and
  delivers everything once when Redis answers again.
- Kafka killed (SIGKILL of the container) and the same container started again: producer and
  consumer ride it out, every acknowledged record delivered, no replay false positive.

And the harness's own clean-up (no Ryuk): a container left by a run whose process is gone is
removed when the next run starts containers; a live run's containers are not.

``make test`` runs this file in its container step with tests/integration/test_attacks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections import Counter

import pytest

from signed_bus._kafka.consumer import ConsumedMessage, VerifyingConsumer
from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._kafka.topics import create_topics
from signed_bus._replay.guard import ClaimVerdict
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    guard,
    keyring,
    signer,
    unique,
    verifier,
)
from tests.integration.containers import (
    LABEL,
    OWNER,
    OWNER_LABEL,
    ContainerServices,
    KafkaContainer,
    reap_orphans,
)
from tests.integration.test_faults_redis import FAST_BACKOFF, Stream, until

NEW, SAME = ClaimVerdict.NEW, ClaimVerdict.SAME_POSITION

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.timeout(180)]


async def test_signed_round_trip_through_the_service_containers(
    container_services: ContainerServices,
    kafka_bootstrap: str,
    redis_url: str,
    unique_topic: TopicFactory,
    redis_prefix: str,
) -> None:
    # the session's services are the containers, on loopback ports of their own
    assert kafka_bootstrap == container_services.kafka().bootstrap
    assert redis_url == container_services.redis().url
    assert container_services.kafka().wrapped.status == "running"
    ring = keyring()
    topic = await unique_topic("containers", partitions=2)
    payloads = [{"seq": i, "text": f"result {i}"} for i in range(200)]
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]), verifier=verifier(ring), guard=g
        )
        async with (
            SignedProducer(
                ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
            ) as producer,
            Running(consumer) as running,
        ):
            for i, payload in enumerate(payloads):
                await producer.send(topic, payload, key=f"k{i}".encode())
            await producer.flush()
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]))
    assert sorted(m.payload["seq"] for m in running.delivered) == list(range(200))  # type: ignore[index]
    assert all(m.claim is NEW for m in running.delivered)
    assert consumer.metrics.rejected_total == 0


@pytest.mark.parametrize("fault", ["pause", "disconnect"])
async def test_a_redis_container_that_stops_answering_holds_the_batch_then_delivers_it_once(
    container_services: ContainerServices,
    kafka_bootstrap: str,
    unique_topic: TopicFactory,
    fault: str,
) -> None:
    redis = await asyncio.to_thread(container_services.private_redis)
    stop, resume = {
        "pause": (redis.pause, redis.unpause),
        "disconnect": (redis.disconnect, redis.connect),
    }[fault]
    ring = keyring()
    topic = await unique_topic("redis-paused", partitions=2)
    during: list[ConsumedMessage] = []
    paused = False

    def note(message: ConsumedMessage) -> None:
        if paused:
            during.append(message)

    async with guard(redis.url, unique("g")) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka_bootstrap, [topic]),
            verifier=verifier(ring),
            guard=g,
            backoff=FAST_BACKOFF,
            max_records=50,
        )
        metrics = consumer.metrics
        async with (
            SignedProducer(
                ProducerOptions(bootstrap_servers=kafka_bootstrap), signer=signer(ring)
            ) as producer,
            Running(consumer, note) as running,
        ):
            stream = Stream(producer, topic)
            async with stream.running():
                await until(lambda: len(running.delivered) >= 30, "30 deliveries first")
                await asyncio.to_thread(stop)
                try:
                    await until(lambda: metrics.guard_waiting, "the consumer to hold its batch")
                    paused = True
                    held = metrics.delivered
                    await until(lambda: metrics.guard_retries >= 2, "guard retries")
                    assert metrics.delivered == held, "nothing delivered while Redis hung"
                    paused = False
                finally:
                    await asyncio.to_thread(resume)
                await stream.more(30)
            produced = await stream.positions()
            await running.caught_up(await end_offsets(kafka_bootstrap, [topic]), within=30)
    assert during == [], "nothing delivered while Redis did not answer"
    assert metrics.rejected_total == 0 and metrics.unchecked == 0
    assert all(m.claim in (NEW, SAME) for m in running.delivered)
    delivered = [(m.partition, m.offset) for m in running.delivered]
    assert len(delivered) == len(set(delivered)), "each record once"
    assert set(delivered) == produced


def _crash(kafka: KafkaContainer) -> None:
    kafka.kill()
    time.sleep(3)
    kafka.start()


async def test_producer_and_consumer_ride_out_a_killed_kafka_container(
    container_services: ContainerServices, redis_url: str, redis_prefix: str
) -> None:
    kafka = await asyncio.to_thread(container_services.private_kafka)
    ring = keyring()
    topic = unique("killed")
    await create_topics(kafka.bootstrap, [topic], partitions=2)
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            consumer_options(kafka.bootstrap, [topic]),
            verifier=verifier(ring),
            guard=g,
            backoff=FAST_BACKOFF,
            max_records=50,
        )
        options = ProducerOptions(bootstrap_servers=kafka.bootstrap)
        async with (
            SignedProducer(options, signer=signer(ring)) as producer,
            Running(consumer) as running,
        ):
            stream = Stream(producer, topic)
            async with stream.running():
                await until(lambda: len(running.delivered) >= 30, "30 deliveries first")
                before = stream.sent
                await asyncio.to_thread(_crash, kafka)
                while_down = stream.sent - before
                # the clients reconnect with backoff: a loaded machine may take a while
                target = stream.sent + 30
                await until(lambda: stream.sent >= target, "30 sends after the restart", within=90)
            produced = await stream.positions()
            ends = await end_offsets(kafka.bootstrap, [topic])
            await running.caught_up(ends, within=60)
    metrics = consumer.metrics
    assert while_down > 0, "sends went on while the broker was down"
    assert sum(ends.values()) == len(produced) == stream.sent, "each record in the log once"
    assert metrics.rejected_total == 0, f"no replay false positive: {metrics.rejected}"
    assert {(m.partition, m.offset) for m in running.delivered} == produced
    new = Counter((m.partition, m.offset) for m in running.delivered if m.claim is NEW)
    assert max(new.values()) == 1
    assert all(m.claim in (NEW, SAME) for m in running.delivered)


def test_containers_of_a_run_that_is_gone_are_reaped_and_live_ones_kept(
    container_services: ContainerServices,
) -> None:
    import docker

    gone = subprocess.Popen(["true"])  # a pid that no longer runs once reaped below
    gone.wait()
    client = docker.from_env(timeout=60)
    image = container_services.redis_image
    made = {}
    try:
        for who, owner in (
            ("orphan", f"{socket.gethostname()}:{gone.pid}"),
            ("live", OWNER),
        ):
            made[who] = client.containers.create(
                image, ["true"], labels={LABEL: "1", OWNER_LABEL: owner}
            )
        reaped = reap_orphans()
        names = {c.name for c in client.containers.list(all=True, filters={"label": LABEL})}
        assert made["orphan"].name in reaped
        assert made["orphan"].name not in names
        assert made["live"].name in names, "a live run's container is left alone"
        assert made["live"].name not in reaped
    finally:
        for container in made.values():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        client.close()
