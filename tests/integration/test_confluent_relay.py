"""The exactly-once relay on confluent-kafka against a real broker: the broker fences a zombie.

Two relay instances in one group. The first reads a batch and is paused in its transform past
``max.poll.interval.ms`` (its session then ends: the group evicts it) while the second takes its
partitions and relays everything. When the first resumes, it still believes it owns the batch:
its offsets, sent with the group metadata of the fetch that read them (KIP-447), are refused
by the broker, its transaction aborts, and nothing it produced is visible to read_committed
consumers. Every input ends up with exactly one visible output.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from typing import Any

import msgpack
import pytest
from confluent_kafka import Consumer, Producer

from signed_bus._decode import split_envelope
from signed_bus._gate import ConsumedMessage
from signed_bus._kafka.producer import Outgoing
from signed_bus._keys import Keyring
from signed_bus.confluent import (
    Output,
    Relay,
    SignedProducer,
    SyncRedisReplayGuard,
    VerifyingConsumer,
)
from signed_bus.errors import ConfigurationError, RelayTransformError
from tests.conftest import TopicFactory
from tests.integration.bus import keyring, signer, unique, verifier

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

INPUTS = 20


def read_values(
    bootstrap: str, topic: str, *, committed: bool, count: int, within: float
) -> list[Any]:
    """The bodies of ``topic``'s records, read from the start (read_committed or not) until
    ``count`` came or ``within`` seconds passed, then one more poll for anything extra."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        }
    )
    consumer.subscribe([topic])
    bodies: list[Any] = []
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and len(bodies) < count:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    _, body, _ = split_envelope(message.value() or b"")
                    bodies.append(msgpack.unpackb(body))
        for message in consumer.consume(100, 2.0):
            if message.error() is None:
                _, body, _ = split_envelope(message.value() or b"")
                bodies.append(msgpack.unpackb(body))
    finally:
        consumer.close()
    return bodies


class Instance:
    """One relay instance (its own consumer in the group, its own transactional producer) in a
    thread."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        group: str,
        topic: str,
        out: str,
        guard: SyncRedisReplayGuard,
        ring: Keyring,
    ) -> None:
        self.name = name
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.consumer = VerifyingConsumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "session.timeout.ms": 6_000,
                "heartbeat.interval.ms": 1_000,
                "max.poll.interval.ms": 7_000,
            },
            [topic],
            verifier=verifier(ring),
            guard=guard,
            timeout_s=0.2,
        )
        self.producer = SignedProducer(
            Producer(
                {
                    "bootstrap.servers": bootstrap,
                    "transactional.id": unique(f"relay-{name}"),
                    "transaction.timeout.ms": 60_000,
                }
            ),
            signer=signer(ring),
        )
        self.relay = Relay(
            self.consumer, self.producer, self.transform, output_topic=out, exactly_once=True
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def transform(self, message: ConsumedMessage) -> Iterable[Output]:
        self.entered.set()
        self.release.wait()
        payload = message.payload
        assert isinstance(payload, dict)
        return [Output({"seq": payload["seq"], "by": self.name})]

    def _run(self) -> None:
        try:
            self.consumer.start()
            self.relay.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.release.set()
        self.relay.stop()
        self.thread.join(30)
        self.consumer.stop()
        self.producer.stop()


async def test_a_zombie_relay_is_fenced_by_the_broker_and_every_input_has_one_output(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("eos-in", partitions=2)
    out = await unique_topic("eos-out", partitions=2)
    await asyncio.to_thread(zombie_scenario, kafka_bootstrap, redis_url, redis_prefix, topic, out)


def zombie_scenario(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, topic: str, out: str
) -> None:
    ring = keyring()
    with SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)) as p:
        p.produce_batch(topic, [Outgoing({"seq": i}, key=b"%d" % i) for i in range(INPUTS)])
    group = unique("relays")
    with SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as guard:
        zombie = Instance("zombie", kafka_bootstrap, group, topic, out, guard, ring)
        zombie.release.clear()  # its first transform blocks until released
        zombie.thread.start()
        assert zombie.entered.wait(30), "the first relay never got a batch"
        heir = Instance("heir", kafka_bootstrap, group, topic, out, guard, ring)
        heir.thread.start()
        try:
            # the group evicts the paused relay; the heir relays every input
            outputs = read_values(kafka_bootstrap, out, committed=True, count=INPUTS, within=60)
            assert sorted(o["seq"] for o in outputs) == list(range(INPUTS))
            zombie.release.set()  # the zombie resumes and tries to commit its batch
            deadline = time.monotonic() + 30
            while zombie.relay.metrics.aborted == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            zombie.stop()
            heir.stop()
    assert zombie.error is None and heir.error is None
    # the broker refused the zombie's offsets: its transaction aborted, nothing committed
    assert zombie.relay.metrics.refused == 1 and zombie.relay.metrics.aborted == 1
    assert zombie.relay.metrics.transactions == 0
    visible = read_values(kafka_bootstrap, out, committed=True, count=INPUTS, within=10)
    assert sorted(o["seq"] for o in visible) == list(range(INPUTS))
    assert {o["by"] for o in visible} == {"heir"}
    # ... though it signed and produced outputs for its whole batch inside the transaction
    assert zombie.producer.metrics.signed >= 1


def test_exactly_once_needs_a_transactional_producer(kafka_bootstrap: str, redis_url: str) -> None:
    ring = keyring()
    with SyncRedisReplayGuard.from_url(redis_url, prefix=unique("p")) as guard:
        consumer = VerifyingConsumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": unique("g")},
            ["t"],
            verifier=verifier(ring),
            guard=guard,
        )
        with SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)) as p:
            relay = Relay(consumer, p, lambda m: [], output_topic="o", exactly_once=True)
            with pytest.raises(ConfigurationError, match="transactional"):
                relay.start()


async def test_an_at_least_once_relay_chains_provenance_and_a_transform_error_rewinds(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, unique_topic: TopicFactory
) -> None:
    topic = await unique_topic("alo-in")
    out = await unique_topic("alo-out")
    await asyncio.to_thread(
        at_least_once_scenario, kafka_bootstrap, redis_url, redis_prefix, topic, out
    )


def at_least_once_scenario(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, topic: str, out: str
) -> None:
    ring = keyring()
    with SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)) as p:
        p.produce_batch(topic, [Outgoing({"seq": i}) for i in range(10)])
    failed = False
    inputs: dict[int, bytes] = {}

    def transform(message: ConsumedMessage) -> Iterable[Output]:
        nonlocal failed
        payload = message.payload
        assert isinstance(payload, dict)
        if payload["seq"] == 5 and not failed:
            failed = True
            raise ValueError("a transform bug")
        inputs[payload["seq"]] = message.verified.digest
        return [Output({"seq": payload["seq"]})]

    group = unique("g")
    with SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix) as guard:
        consumer = VerifyingConsumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": group},
            [topic],
            verifier=verifier(ring),
            guard=guard,
            timeout_s=0.2,
        )
        with (
            consumer,
            SignedProducer({"bootstrap.servers": kafka_bootstrap}, signer=signer(ring)) as producer,
        ):
            relay = Relay(consumer, producer, transform, output_topic=out)
            with pytest.raises(RelayTransformError):
                relay.run()
            assert relay.metrics.transform_errors == 1 and relay.metrics.outputs == 0
            # the batch was rewound: the next run relays all of it (claims: SAME_POSITION)
            stopper = threading.Thread(target=lambda: _stop_after(relay, 10))
            stopper.start()
            relay.run()
            stopper.join()
    assert relay.metrics.outputs == 10
    # every output names its input's digest
    reader = VerifyingConsumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": unique("reader")},
        [out],
        verifier=verifier(ring),
        guard=SyncRedisReplayGuard.from_url(redis_url, prefix=redis_prefix),
        timeout_s=0.2,
    )
    seen: dict[int, tuple[bytes, ...]] = {}
    with reader:
        for message in reader:
            payload = message.payload
            assert isinstance(payload, dict)
            seen[payload["seq"]] = tuple(message.verified.parents)
            if len(seen) == 10:
                break
    assert seen == {seq: (digest,) for seq, digest in inputs.items()}


def _stop_after(relay: Relay, outputs: int) -> None:
    deadline = time.monotonic() + 30
    while relay.metrics.outputs < outputs and time.monotonic() < deadline:
        time.sleep(0.05)
    relay.stop()
