"""The signing producer over ``confluent_kafka.Producer``: sign for the topic and key, then
``produce``; delivery reports come back through librdkafka's ``poll``/``flush``.

Record headers pass through unsigned: the observer hooks (:mod:`signed_bus._observe`) see
every send, one per ``produce`` and one per ``produce_batch``, and tracing adds its context to
the headers after signing, as on the aiokafka producer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from signed_bus._kafka.producer import Outgoing
from signed_bus._lifecycle import SyncLifecycle
from signed_bus._metrics import ProducerMetrics
from signed_bus._observe import NOOP, Carrier, observer_for
from signed_bus._signer import Signer
from signed_bus.errors import ConfigurationError, DeliveryFailed, Stopped

__all__ = ["SignedProducer", "producer_config"]

Headers = Sequence[tuple[str, bytes]]
DeliveryCallback = Callable[[KafkaError | None, Message], None]

# How long produce() polls for room when librdkafka's local queue is full, per attempt.
_QUEUE_FULL_POLL_S = 0.1


def producer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka producer settings with the library's defaults: ``acks=all`` and idempotence,
    so a retried batch is not written twice (both can be overridden, not idempotence alone)."""
    if not isinstance(config, Mapping):
        raise ConfigurationError("config must be a mapping of librdkafka settings")
    if not config.get("bootstrap.servers"):
        raise ConfigurationError("bootstrap.servers is required")
    built = dict(config)
    built.setdefault("enable.idempotence", True)
    built.setdefault("acks", "all")
    return built


class SignedProducer(SyncLifecycle):
    """Signs results with a :class:`~signed_bus.Signer` and produces them with librdkafka.

    ``kafka`` is a built ``confluent_kafka.Producer`` (yours: :meth:`stop` only flushes it) or
    a mapping of librdkafka settings (the producer is built here, idempotent with acks=all, and
    flushed by :meth:`stop`). Thread-safe as librdkafka's producer is: worker threads may share
    one. Delivery reports: pass ``on_delivery`` to :meth:`produce` and call :meth:`poll`
    regularly (as with any librdkafka producer), or use :meth:`produce_batch`, which waits for
    every report and raises :class:`DeliveryFailed` when one failed.
    """

    def __init__(self, kafka: Producer | Mapping[str, Any], *, signer: Signer) -> None:
        if isinstance(kafka, Producer):
            self._producer = kafka
            self._owned = False
        elif isinstance(kafka, Mapping):
            self._producer = Producer(producer_config(kafka))
            self._owned = True
        else:
            raise ConfigurationError("kafka must be a confluent_kafka.Producer or its settings")
        self._signer = signer
        self._closed = False
        self.metrics = ProducerMetrics(observer=observer_for(None))

    def __repr__(self) -> str:  # never the settings: they may hold a password
        return f"SignedProducer(signer={self._signer!r}, owned={self._owned})"

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def producer(self) -> Producer:
        """The underlying librdkafka producer."""
        if self._closed:
            raise Stopped("SignedProducer was stopped; make a new one")
        return self._producer

    def produce(
        self,
        topic: str,
        result: object,
        *,
        key: bytes | None = None,
        parents: Sequence[bytes] = (),
        headers: Headers | None = None,
        expires_at: int | None = None,
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Sign ``result`` for ``topic`` and ``key`` and queue it; ``on_delivery(error,
        message)`` runs from :meth:`poll` or :meth:`flush` once the broker answered. While
        librdkafka's local queue is full this polls (serving delivery reports) until it has
        room, so a loop of ``produce`` calls never fails with BufferError."""
        signer = self._signer
        seal = signer._seal_result
        if seal is not None and expires_at is None and not parents:
            value = seal(result, topic, key)  # one native call: encode, check, seal
            if type(value) is not bytes:
                value = signer._finish(value, result, topic, key)
        else:
            value = signer.sign(
                result, topic=topic, key=key, parents=parents, expires_at=expires_at
            )
        if self.metrics.observer is NOOP and not headers and not self._closed:
            # Nobody observes this front and there are no headers: no hook calls, no carrier,
            # no frames of ours between the signer and librdkafka for this record.
            try:
                if on_delivery is None:
                    self._producer.produce(
                        topic, value, key, -1 if partition is None else partition
                    )
                else:
                    self._producer.produce(
                        topic,
                        value,
                        key,
                        -1 if partition is None else partition,
                        on_delivery=on_delivery,
                    )
            except BufferError:  # the local queue is full: poll for room, as _produce does
                self._produce(topic, value, key, [], partition, on_delivery)
                return
            self.metrics.signed += 1
            return
        self._queue(topic, value, key, headers, partition, on_delivery)

    def produce_bytes(
        self,
        topic: str,
        body: bytes,
        *,
        content_type: str,
        key: bytes | None = None,
        parents: Sequence[bytes] = (),
        headers: Headers | None = None,
        expires_at: int | None = None,
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Like :meth:`produce` for a body already encoded by the caller."""
        value = self._signer.sign_bytes(
            body,
            content_type=content_type,
            topic=topic,
            key=key,
            parents=parents,
            expires_at=expires_at,
        )
        self._queue(topic, value, key, headers, partition, on_delivery)

    def _queue(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Headers | None,
        partition: int | None,
        on_delivery: DeliveryCallback | None,
    ) -> None:
        carrier: Carrier = list(headers) if headers else []
        observer = self.metrics.observer
        token = observer.send(topic, (carrier,), client_injects=False)
        try:
            self._produce(topic, value, key, carrier, partition, on_delivery)
        except BaseException as exc:
            observer.sent(token, exc)
            raise
        observer.sent(token, None)

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        carrier: Carrier,
        partition: int | None,
        on_delivery: DeliveryCallback | None,
    ) -> None:
        producer = self.producer
        kwargs: dict[str, Any] = {}
        if carrier:
            kwargs["headers"] = carrier
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                producer.produce(
                    topic, value, key, -1 if partition is None else partition, **kwargs
                )
            except BufferError:
                producer.poll(_QUEUE_FULL_POLL_S)
                continue
            break
        self.metrics.signed += 1

    def produce_batch(
        self, topic: str, items: Iterable[Outgoing], *, timeout: float = 60.0
    ) -> list[Message]:
        """Sign and queue every item, then wait for every delivery report (librdkafka batches
        the records per partition itself). Returns the delivered messages in order (with their
        partitions and offsets); raises :class:`DeliveryFailed` if any record failed or no
        report came within ``timeout`` seconds."""
        items = list(items)
        # one send for the batch: its trace context goes into every record's headers
        carriers: list[Carrier] = [list(item.headers) if item.headers else [] for item in items]
        observer = self.metrics.observer
        token = observer.send(topic, carriers, client_injects=False)
        try:
            delivered = self._produce_batch(topic, items, carriers, timeout)
        except BaseException as exc:
            observer.sent(token, exc)
            raise
        observer.sent(token, None)
        return delivered

    def _produce_batch(
        self, topic: str, items: list[Outgoing], carriers: list[Carrier], timeout: float
    ) -> list[Message]:
        reports: list[Message | None] = []
        errors: dict[int, KafkaError] = {}
        sign = self._signer.sign

        def report_at(index: int) -> DeliveryCallback:
            def report(error: KafkaError | None, message: Message) -> None:
                reports[index] = message
                if error is not None:
                    errors[index] = error

            return report

        for item, carrier in zip(items, carriers, strict=True):
            reports.append(None)
            value = sign(
                item.result,
                topic=topic,
                key=item.key,
                parents=item.parents,
                expires_at=item.expires_at,
            )
            self._produce(topic, value, item.key, carrier, None, report_at(len(reports) - 1))
        self.metrics.batches += 1
        self.producer.flush(timeout)
        missing = sum(1 for r in reports if r is None)
        if errors or missing:
            failed = [errors[i] for i in sorted(errors)]
            names = sorted({e.name() for e in failed})
            raise DeliveryFailed(
                f"{len(failed)} of {len(reports)} records failed ({', '.join(names) or 'none'}), "
                f"{missing} without a delivery report after {timeout}s",
                failed,
                reports,
            )
        return [r for r in reports if r is not None]

    def produce_and_wait(
        self, topic: str, result: object, *, timeout: float = 60.0, **kwargs: Any
    ) -> Message:
        """:meth:`produce` one result and wait for its delivery report (the message with its
        partition and offset); raises :class:`DeliveryFailed`."""
        return self.produce_batch(topic, [Outgoing(result, **kwargs)], timeout=timeout)[0]

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; how many callbacks ran."""
        return self.producer.poll(timeout)

    def flush(self, timeout: float = -1) -> int:
        """Wait for every queued record's delivery report; how many are still queued."""
        return self.producer.flush(timeout)

    def start(self) -> None:
        """Nothing to start (librdkafka connects on the first produce)."""
        if self._closed:
            raise Stopped("SignedProducer was stopped; make a new one")

    def stop(self, timeout: float = 30.0) -> None:
        """Flush (a producer built here, or one handed in). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._producer.flush(timeout)
