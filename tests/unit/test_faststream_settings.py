"""SignedBus refuses FastStream subscribers whose settings would lose or double-deliver records,
before the broker fetches anything for them."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from faststream import AckPolicy
from faststream.confluent import KafkaBroker as ConfluentBroker
from faststream.kafka import KafkaBroker, KafkaRouter

from signed_bus import ConfigurationError, Keyring, Verifier, generate_hmac_key
from signed_bus.faststream import SignedBus
from signed_bus.faststream._settings import subscriber_problem


class Subscriber:
    """The two settings SignedBus reads from a FastStream subscriber."""

    def __init__(self, ack_policy: AckPolicy, connection_args: dict[str, Any] | None) -> None:
        self.ack_policy = ack_policy
        if connection_args is not None:
            self._connection_args = connection_args


def test_at_least_once_read_committed_subscribers_are_accepted() -> None:
    policy = AckPolicy.NACK_ON_ERROR
    assert subscriber_problem(Subscriber(policy, {"isolation_level": "read_committed"})) is None
    # faststream.confluent keeps no aiokafka options: librdkafka reads committed by default
    assert subscriber_problem(Subscriber(policy, None)) is None


@pytest.mark.parametrize(
    "policy", [AckPolicy.ACK_FIRST, AckPolicy.ACK, AckPolicy.REJECT_ON_ERROR, AckPolicy.MANUAL]
)
def test_an_ack_policy_that_does_not_rewind_failures_is_refused(policy: AckPolicy) -> None:
    # MANUAL too: FastStream rewinds nothing under it, and the next ack commits past a failure
    problem = subscriber_problem(Subscriber(policy, {"isolation_level": "read_committed"}))
    assert problem is not None and "NACK_ON_ERROR" in problem


@pytest.mark.parametrize("options", [{}, {"isolation_level": "read_uncommitted"}])
def test_an_aiokafka_subscriber_reading_uncommitted_records_is_refused(
    options: dict[str, Any],
) -> None:
    problem = subscriber_problem(Subscriber(AckPolicy.NACK_ON_ERROR, options))
    assert problem is not None and "read_committed" in problem


def test_an_aiokafka_subscriber_whose_options_cannot_be_read_is_refused() -> None:
    """Fail closed: were a FastStream release to keep a faststream.kafka subscriber's consumer
    options elsewhere, its isolation level could not be checked, so it is refused."""
    broker = KafkaBroker("127.0.0.1:1", logger=None)
    subscriber = broker.subscriber(
        "t", group_id="g", ack_policy=AckPolicy.NACK_ON_ERROR, isolation_level="read_committed"
    )
    assert subscriber_problem(subscriber) is None
    options = subscriber._connection_args
    loose: Any = subscriber  # options of other shapes than FastStream's own
    loose._connection_args = MappingProxyType(options)  # a read-only mapping is read
    assert subscriber_problem(subscriber) is None
    loose._connection_args = MappingProxyType({**options, "isolation_level": "x"})
    assert subscriber_problem(subscriber) is not None
    for unreadable in (None, ("isolation_level", "read_committed")):
        loose._connection_args = unreadable
        problem = subscriber_problem(subscriber)
        assert problem is not None and "read_committed" in problem
    del subscriber._connection_args
    problem = subscriber_problem(subscriber)
    assert problem is not None and "read_committed" in problem


def _bus() -> SignedBus:
    ring = Keyring([generate_hmac_key("k", ["w"])])
    return SignedBus(verifier=Verifier(ring, audit=True))


async def _handle(body: object) -> None:
    pass


@pytest.mark.parametrize(
    "settings",
    [
        {},  # FastStream's default: ACK_FIRST, the client's auto-commit
        {"ack_policy": AckPolicy.MANUAL},
        {"ack_policy": AckPolicy.ACK},
        {"ack_policy": AckPolicy.NACK_ON_ERROR, "isolation_level": "read_uncommitted"},
    ],
)
def test_check_refuses_a_subscriber_before_the_broker_starts(settings: dict[str, Any]) -> None:
    bus = _bus()
    broker = KafkaBroker("127.0.0.1:1", middlewares=[bus], logger=None)
    good: dict[str, Any] = {
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "isolation_level": "read_committed",
    }
    broker.subscriber("fine", group_id="g", **good)(_handle)
    bus.check(broker)  # nothing to refuse yet
    options: dict[str, Any] = {"isolation_level": "read_committed", **settings}
    broker.subscriber("t", group_id="g", **options)(_handle)
    with pytest.raises(ConfigurationError, match="cannot guard this subscriber"):
        bus.check(broker)


def test_check_covers_the_subscribers_of_routers_and_only_those_the_bus_guards() -> None:
    bus = _bus()
    plain = KafkaBroker("127.0.0.1:1", logger=None)
    plain.subscriber("unguarded", group_id="g")(_handle)  # ACK_FIRST, but not signed-bus's
    guarded = KafkaRouter(middlewares=[bus])
    guarded.subscriber("t", group_id="g")(_handle)
    bus.check(plain)  # another broker's subscriber is not this bus's business
    plain.include_router(guarded)
    with pytest.raises(ConfigurationError, match="ACK_FIRST"):
        bus.check(plain)
    with pytest.raises(ConfigurationError, match="ACK_FIRST"):
        bus.check(guarded)


def test_check_refuses_a_confluent_subscriber_with_the_default_ack_policy() -> None:
    bus = _bus()
    broker = ConfluentBroker("127.0.0.1:1", middlewares=[bus], logger=None)
    broker.subscriber("t", group_id="g", ack_policy=AckPolicy.NACK_ON_ERROR)(_handle)
    bus.check(broker)  # librdkafka reads committed records by default
    broker.subscriber("u", group_id="g")(_handle)
    with pytest.raises(ConfigurationError, match="ACK_FIRST"):
        bus.check(broker)
