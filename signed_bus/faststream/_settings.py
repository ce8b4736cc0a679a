"""Which FastStream subscribers :class:`~signed_bus.faststream.SignedBus` can guard, and what
it does with one it cannot.

The bus relies on the subscriber's ack policy to redeliver what it fails (a message held while
Redis is down, a dead letter that could not be written, a handler failure), and on aiokafka
reading only committed records. A subscriber set up otherwise would lose or double-deliver
records, so :meth:`SignedBus.check <signed_bus.faststream.SignedBus.check>` refuses it before
anything is fetched; one that was started unchecked is refused at its first message, and that
message is rewound rather than acknowledged (:func:`rewind`; docs/FASTSTREAM.md says the one
case this cannot save).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from faststream import AckPolicy

from signed_bus.faststream._records import as_record

__all__ = ["SAFE_ACK_POLICIES", "guarded", "rewind", "subscriber_problem"]

#: The ack policies that keep delivery at-least-once: a message whose handler failed, or whose
#: hold while Redis was down ran out, is rewound and delivered again, never acknowledged.
#: ``MANUAL`` is not one: FastStream installs no acknowledgement under it, so a failure is
#: neither acknowledged nor rewound, and the next manual ``ack`` commits past it.
SAFE_ACK_POLICIES = frozenset({AckPolicy.NACK_ON_ERROR})


def subscriber_problem(subscriber: object) -> str | None:
    """Why ``subscriber`` cannot run under SignedBus, or None.

    Its ack policy must be ``AckPolicy.NACK_ON_ERROR``: under FastStream's default
    (``ACK_FIRST``, the client's auto-commit), ``ACK`` or ``REJECT_ON_ERROR`` a failed message is
    committed anyway, and under ``MANUAL`` nothing rewinds it, so a message held while Redis is
    down, or one whose dead letter could not be written, would be lost. A ``faststream.kafka``
    subscriber must read ``isolation_level="read_committed"`` (aiokafka reads uncommitted
    records by default): a copy inside an aborted transaction would otherwise claim its nonce and
    reach the handler, and the retried output too. (librdkafka, under ``faststream.confluent``,
    reads committed records by default.)
    """
    policy = getattr(subscriber, "ack_policy", None)
    if policy is not None and policy not in SAFE_ACK_POLICIES:
        return (
            f"its ack_policy is {getattr(policy, 'name', policy)}: use "
            "ack_policy=AckPolicy.NACK_ON_ERROR so that a failure is redelivered, not lost"
        )
    options = getattr(subscriber, "_connection_args", None)  # faststream.kafka's consumer options
    if not isinstance(options, Mapping) and type(subscriber).__module__.startswith(
        "faststream.kafka"
    ):
        # an aiokafka subscriber whose options this FastStream version keeps elsewhere or
        # otherwise: its isolation level cannot be read, so it cannot be shown to read
        # committed records
        return (
            "its consumer options cannot be read (a FastStream version signed-bus does not "
            "know): the isolation level must be shown to be read_committed"
        )
    if isinstance(options, Mapping):
        level = options.get("isolation_level", "read_uncommitted")
        if level != "read_committed":
            return (
                f'it reads isolation_level={level!r}: use isolation_level="read_committed" so '
                "that a record of an aborted transaction never claims a nonce"
            )
    return None


def guarded(brokers: tuple[Any, ...], bus: object) -> Iterator[Any]:
    """The subscribers of ``brokers`` (brokers or routers, their included routers too) whose
    middlewares hold ``bus``."""
    for broker in brokers:
        for subscriber in getattr(broker, "subscribers", ()):
            if any(m is bus for m in getattr(subscriber, "_broker_middlewares", ())):
                yield subscriber


async def rewind(message: Any) -> None:
    """Seek every partition of a consumed FastStream message (or batch) back to its first
    record: the consumer fetches it again, and no commit passes it (neither the ack policy's,
    which finds the message already answered, nor the client's auto-commit, which commits the
    consumer's position)."""
    if getattr(message, "committed", True) is None:  # an ackable message: FastStream rewinds it
        await message.nack()
        return
    raw = message.raw_message
    first: dict[tuple[str, int], int] = {}
    for record in map(as_record, raw if isinstance(raw, tuple) else (raw,)):
        at = (record.topic, record.partition)
        first[at] = min(record.offset, first.get(at, record.offset))
    consumer = message.consumer
    confluent = callable(getattr(raw[0] if isinstance(raw, tuple) else raw, "topic", None))
    for (topic, partition), offset in first.items():
        if confluent:  # faststream.confluent's consumer: an async seek
            await consumer.seek(topic=topic, partition=partition, offset=offset)
        else:
            from aiokafka import TopicPartition  # faststream.kafka runs on aiokafka

            consumer.seek(TopicPartition(topic, partition), offset)
