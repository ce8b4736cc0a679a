"""SignedBus refuses FastStream subscribers whose settings would lose or double-deliver records."""

from __future__ import annotations

from typing import Any

import pytest
from faststream import AckPolicy

from signed_bus.faststream._bus import subscriber_problem


class Subscriber:
    """The two settings SignedBus reads from a FastStream subscriber."""

    def __init__(self, ack_policy: AckPolicy, connection_args: dict[str, Any] | None) -> None:
        self.ack_policy = ack_policy
        if connection_args is not None:
            self._connection_args = connection_args


@pytest.mark.parametrize("policy", [AckPolicy.NACK_ON_ERROR, AckPolicy.MANUAL])
def test_at_least_once_read_committed_subscribers_are_accepted(policy: AckPolicy) -> None:
    assert subscriber_problem(Subscriber(policy, {"isolation_level": "read_committed"})) is None
    # faststream.confluent keeps no aiokafka options: librdkafka reads committed by default
    assert subscriber_problem(Subscriber(policy, None)) is None


@pytest.mark.parametrize("policy", [AckPolicy.ACK_FIRST, AckPolicy.ACK, AckPolicy.REJECT_ON_ERROR])
def test_an_ack_policy_that_acknowledges_failures_is_refused(policy: AckPolicy) -> None:
    problem = subscriber_problem(Subscriber(policy, {"isolation_level": "read_committed"}))
    assert problem is not None and "NACK_ON_ERROR" in problem


@pytest.mark.parametrize("options", [{}, {"isolation_level": "read_uncommitted"}])
def test_an_aiokafka_subscriber_reading_uncommitted_records_is_refused(
    options: dict[str, Any],
) -> None:
    problem = subscriber_problem(Subscriber(AckPolicy.NACK_ON_ERROR, options))
    assert problem is not None and "read_committed" in problem
