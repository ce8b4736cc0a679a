"""The exactly-once relay on confluent-kafka: one hop (consume -> verify -> transform -> sign
-> produce -> commit) whose outputs and input offsets go into one Kafka transaction bound to
the consumer's group generation (KIP-447), so the broker fences a zombie.

As :mod:`signed_bus._kafka.relay` (provenance: every output names its input's digest; a
transform error rewinds the batch; the batch is re-checked for freshness after the transform;
a partition revoked since the fetch drops the batch), with one difference that matters:
``send_offsets_to_transaction`` carries the group metadata of the fetch that read the batch
(member id and generation), not the group id alone. A relay that lost its partitions without
knowing it yet (paused past ``max.poll.interval.ms`` or its session timeout while another member
took them over) is refused by the broker when it sends its offsets: its transaction aborts,
nothing it produced is visible to ``read_committed`` consumers, and the batch is the new
owner's. docs/PIPELINES.md, "Exactly-once hops".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from confluent_kafka import KafkaError, KafkaException

from signed_bus._gate import ConsumedMessage
from signed_bus._kafka.batch import ConsumedBatch
from signed_bus._kafka.relay import Output, RelayMetrics
from signed_bus._text import printable
from signed_bus.confluent._commits import partitions_of
from signed_bus.confluent._consumer import VerifyingConsumer
from signed_bus.confluent._producer import SignedProducer
from signed_bus.errors import (
    ConfigurationError,
    DeliveryFailed,
    RelayFenced,
    RelayTransformError,
    Stopped,
)

__all__ = ["Relay", "SyncRelayMetrics", "Transform"]

log = logging.getLogger("signed_bus.relay")

Transform = Callable[[ConsumedMessage], Iterable[Output]]


@dataclass(slots=True)
class SyncRelayMetrics(RelayMetrics):
    """:class:`~signed_bus.RelayMetrics` plus ``refused``: transactions the broker refused
    (the offsets' group generation was stale: this relay was a zombie), each also ``aborted``."""

    refused: int = 0

    def snapshot(self) -> dict[str, object]:
        return {**RelayMetrics.snapshot(self), "refused": self.refused}


class Relay:
    """Drives one hop on confluent-kafka: ``consumer`` -> ``transform`` -> ``producer``.

    ``transform`` is a plain callable: one verified input -> zero or more
    :class:`~signed_bus.Output`. The consumer and the producer are the caller's (started and
    closed by them). ``exactly_once=True`` needs a producer built with a ``transactional.id``
    (unique per relay instance; a restarted instance should reuse its id, which fences its
    previous incarnation): :meth:`start` initialises the transactions.

    :meth:`run` relays until :meth:`stop` (from another thread, or from the transform).
    """

    def __init__(
        self,
        consumer: VerifyingConsumer,
        producer: SignedProducer,
        transform: Transform,
        *,
        output_topic: str,
        exactly_once: bool = False,
        transaction_timeout_s: float = 30.0,
    ) -> None:
        if not output_topic:
            raise ConfigurationError("output_topic is required")
        self._consumer = consumer
        self._producer = producer
        self._transform = transform
        self._output_topic = output_topic
        self._exactly_once = exactly_once
        self._timeout = transaction_timeout_s
        self._started = False
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        self._running: int | None = None
        self._observed: dict[int, object] = {}  # input id -> its observer token (process)
        self.metrics = SyncRelayMetrics()

    @property
    def consumer(self) -> VerifyingConsumer:
        return self._consumer

    @property
    def producer(self) -> SignedProducer:
        return self._producer

    @property
    def exactly_once(self) -> bool:
        return self._exactly_once

    def start(self) -> None:
        """Initialise the producer's transactions (exactly-once): fences a previous relay with
        the same ``transactional.id`` and aborts what it left open. Idempotent."""
        if self._stopping:
            raise Stopped("Relay was stopped; make a new one")
        if self._started:
            return
        if self._exactly_once:
            try:
                self._producer.producer.init_transactions(self._timeout)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError._NOT_CONFIGURED:
                    raise ConfigurationError(
                        "exactly_once needs a producer built with a transactional.id"
                    ) from None
                raise
        self._started = True

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand, and wait for it (from inside the
        transform: only ask). Idempotent."""
        self._stopping = True
        if self._running is not None and self._running != threading.get_ident():
            self._idle.wait()

    def run(self) -> None:
        """Relay batches until :meth:`stop`; raises RelayError subclasses on failure."""
        self.start()
        if self._running is not None:
            raise RuntimeError("the relay is already running")
        self._running = threading.get_ident()
        self._idle.clear()
        try:
            while not self._stopping:
                batch = self._consumer.getbatch()
                if batch is None:
                    return
                if batch.offsets:
                    self.process(batch)
        finally:
            self._running = None
            self._idle.set()

    def process(self, batch: ConsumedBatch) -> None:
        """Transform, produce and commit one batch from the consumer's ``getbatch()``."""
        if not self._started:
            self.start()
        # One observer token per input: its span covers the transform and its outputs' sends.
        observer = self._consumer.metrics.observer
        self._observed = {id(m): observer.processing(m) for m in batch.messages}
        error: BaseException | None = None
        try:
            self._process(batch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observed, self._observed = self._observed, {}
            for token in observed.values():
                observer.finished(token, error)

    def _process(self, batch: ConsumedBatch) -> None:
        metadata = self._consumer.group_metadata
        try:
            planned = self._plan(batch)
        except Exception as exc:
            self.metrics.transform_errors += 1
            self._consumer.seek(batch.first_offsets)
            raise RelayTransformError(f"the transform raised {type(exc).__name__}") from exc
        fresh = self._consumer.recheck(batch)
        if fresh is None:
            self._consumer.seek(batch.first_offsets)
            return
        if fresh is not batch:
            kept = {id(message) for message in fresh.messages}
            self.metrics.expired += len(batch.messages) - len(fresh.messages)
            planned = [(message, output) for message, output in planned if id(message) in kept]
        if self._exactly_once:
            if not self._commit_transaction(batch, planned, metadata):
                return
        else:
            self._send_all(planned)
            self._producer.flush()
            self._consumer.commit_offsets(batch.offsets)
        metrics = self.metrics
        metrics.batches += 1
        metrics.inputs += len(batch.messages)
        metrics.outputs += len(planned)
        for _, output in planned:
            topic = output.topic or self._output_topic
            metrics.by_topic[topic] = metrics.by_topic.get(topic, 0) + 1

    def _plan(self, batch: ConsumedBatch) -> list[tuple[ConsumedMessage, Output]]:
        planned: list[tuple[ConsumedMessage, Output]] = []
        observer = self._consumer.metrics.observer
        for message in batch.messages:
            entered = observer.enter(self._observed.get(id(message)))
            try:
                outputs = list(self._transform(message))
            finally:
                observer.leave(entered)
            if not outputs:
                self.metrics.empty += 1
            for output in outputs:
                if not isinstance(output, Output):
                    raise TypeError("a relay transform must return Output objects")
                planned.append((message, output))
        return planned

    def _send_all(self, planned: list[tuple[ConsumedMessage, Output]]) -> list[KafkaError]:
        """Produce every output; the delivery errors seen (filled as reports arrive)."""
        errors: list[KafkaError] = []

        def report(error: KafkaError | None, _: object) -> None:
            if error is not None:
                errors.append(error)

        observer = self._consumer.metrics.observer
        for message, output in planned:
            entered = observer.enter(self._observed.get(id(message)))  # parents the send span
            try:
                self._producer.produce(
                    output.topic or self._output_topic,
                    output.result,
                    key=output.key,
                    parents=(message.verified.digest, *output.extra_parents),
                    headers=output.headers,
                    expires_at=output.expires_at,
                    on_delivery=report,
                )
            finally:
                observer.leave(entered)
        if not self._exactly_once:
            # at-least-once: every output acknowledged before the offsets are committed
            self._producer.flush()
            if errors:
                raise DeliveryFailed(f"{len(errors)} outputs failed", errors, [])
        return errors

    def _lost(self, batch: ConsumedBatch) -> set[TopicPartition]:
        consumer = self._consumer
        assigned = {TopicPartition(p.topic, p.partition) for p in consumer.consumer.assignment()}
        revoked = consumer.revoked_since_fetch
        return {tp for tp in batch.offsets if tp not in assigned or tp in revoked}

    def _commit_transaction(
        self, batch: ConsumedBatch, planned: list[tuple[ConsumedMessage, Output]], metadata: Any
    ) -> bool:
        """Outputs and offsets in one transaction, the offsets bound to ``metadata`` (the
        group generation the batch was read under). False (aborted, rewound) when a partition
        was revoked or the broker refused the offsets."""
        kafka = self._producer.producer
        lost = self._lost(batch)
        if lost:
            self._drop(batch, f"{len(lost)} partition(s) revoked during the batch")
            return False
        kafka.begin_transaction()
        try:
            errors = self._send_all(planned)
            kafka.send_offsets_to_transaction(partitions_of(batch.offsets), metadata, self._timeout)
            kafka.commit_transaction(self._timeout)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                self._consumer.seek(batch.first_offsets)
                raise RelayFenced(
                    f"the producer is fenced or failed ({error.name()}): another relay took "
                    "over this transactional.id"
                ) from None
            if not error.txn_requires_abort():
                self._abort(batch, error.name())
                raise
            self.metrics.refused += 1
            self._abort(batch, error.name())
            return False
        if errors:  # commit_transaction fails on a delivery error; kept as a guard
            raise DeliveryFailed(f"{len(errors)} outputs failed", errors, [])
        self.metrics.transactions += 1
        return True

    def _abort(self, batch: ConsumedBatch, why: str) -> None:
        self.metrics.aborted += 1
        log.warning(
            "transaction aborted (%s): nothing of the batch is visible to read_committed "
            "consumers; its partitions are read again by their owner",
            printable(why),
        )
        try:
            self._producer.producer.abort_transaction(self._timeout)
        except KafkaException as exc:
            log.warning("abort failed: %s", exc.args[0].name())
        self._consumer.seek(batch.first_offsets)

    def _drop(self, batch: ConsumedBatch, why: str) -> None:
        self.metrics.revoked += 1
        self._consumer.seek(batch.first_offsets)
        log.warning("%s; the batch is dropped, not committed", why)
