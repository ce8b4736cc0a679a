"""A FastStream subscriber SignedBus cannot guard loses nothing: ``bus.check`` in the app's
startup hooks refuses it before anything is fetched, and one started without the check is refused
at its first message, which is rewound, never acknowledged; a subscriber set up right in the
same group then gets every record (real broker and Redis)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
from faststream import AckPolicy, FastStream

from signed_bus import (
    Backoff,
    ConfigurationError,
    Keyring,
    Signer,
    Verifier,
    generate_ed25519_key,
)
from signed_bus.faststream import SignedBus
from tests.conftest import TopicFactory
from tests.integration.bus import WINDOW, guard, plain_producer, unique
from tests.integration.fs_apps import FLAVOURS, broker, result, subscriber_options, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.mark.parametrize(
    ("flavour", "policy"),
    [
        ("kafka", None),  # FastStream's default, ACK_FIRST: aiokafka's auto-commit
        ("kafka", AckPolicy.MANUAL),  # no acknowledgement at all: nothing rewinds a failure
        ("confluent", AckPolicy.MANUAL),
        ("confluent", AckPolicy.ACK),  # commits after a failure
    ],
)
async def test_a_subscriber_refused_at_its_first_message_loses_nothing(
    flavour: str,
    policy: AckPolicy | None,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await unique_topic("fs-refused", partitions=1)
    group = unique("g-refused")
    ring = await _sent(kafka_bootstrap, topic)
    claims = guard(redis_url, redis_prefix)
    fast = Backoff(initial_ms=50, max_ms=200)
    verifier = Verifier(ring.public(), freshness=WINDOW)
    bus = SignedBus(verifier=verifier, guard=claims, backoff=fast)
    handled: list[tuple[str, int]] = []

    async def run(options: dict[str, Any], until: Any, what: str) -> None:
        app = broker(flavour, kafka_bootstrap, bus)

        @app.subscriber(topic, **options)
        async def on_result(item: dict[str, Any]) -> None:
            handled.append((options["ack_policy"].name, item["seq"]))

        await app.start()
        try:
            await wait_for(until, what, within=20)
        finally:
            await app.stop()

    wrong = subscriber_options(flavour, group)
    if policy is None:
        del wrong["ack_policy"]
        wrong_name = "ACK_FIRST"
    else:
        wrong["ack_policy"] = policy
        wrong_name = policy.name

    def refused() -> bool:  # again and again
        return len(_refusals(caplog)) >= 3

    with (
        caplog.at_level(logging.ERROR, logger="signed_bus.consumer"),
        contextlib.suppress(AssertionError),  # a timeout here: the asserts below say why
    ):
        await run(wrong, lambda: refused() or bool(handled), "the refusals")
    assert handled == []
    # set up right, same group: every record is still there, none was acknowledged
    right = subscriber_options(flavour, group)
    try:
        await run(right, lambda: len(handled) >= 3, "every record")
    finally:
        await claims.stop()
    assert handled == [("NACK_ON_ERROR", seq) for seq in range(3)]
    assert refused() and all(wrong_name in line for line in _refusals(caplog))
    assert bus.metrics.delivered == 3 and bus.metrics.rejected_total == 0


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot guard" in r.getMessage()]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_check_in_the_startup_hooks_refuses_before_anything_is_fetched(
    flavour: str,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    # FastStream's default ack policy: the client's auto-commit stores a record's offset as it
    # is fetched (librdkafka before any middleware runs), so only a check before the start helps
    topic = await unique_topic("fs-startup", partitions=1)
    group = unique("g-startup")
    ring = await _sent(kafka_bootstrap, topic)
    claims = guard(redis_url, redis_prefix)
    bus = SignedBus(verifier=Verifier(ring.public(), freshness=WINDOW), guard=claims)
    handled: list[int] = []

    def app(options: dict[str, Any]) -> FastStream:
        fs_broker = broker(flavour, kafka_bootstrap, bus)

        @fs_broker.subscriber(topic, **options)
        async def on_result(item: dict[str, Any]) -> None:
            handled.append(item["seq"])

        return FastStream(fs_broker, on_startup=[lambda: bus.check(fs_broker)], logger=None)

    wrong = subscriber_options(flavour, group)
    del wrong["ack_policy"]
    refused = app(wrong)
    with pytest.raises(ConfigurationError, match="ACK_FIRST"):
        await refused.start()
    await refused.stop()
    right = app(subscriber_options(flavour, group))
    await right.start()
    try:
        await wait_for(lambda: len(handled) >= 3, "every record", within=20)
    finally:
        await right.stop()
        await claims.stop()
    assert handled == [0, 1, 2]


async def _sent(bootstrap: str, topic: str) -> Keyring:
    """Three signed records on ``topic``; the ring that verifies them."""
    ring = Keyring([generate_ed25519_key("inf-1", ["inference-agent"])])
    signer = Signer(ring, kid="inf-1", issuer="inference-agent", model="m@1")
    async with plain_producer(bootstrap) as producer:
        for seq in range(3):
            await producer.send_and_wait(topic, signer.sign(result(seq), topic=topic))
    return ring
