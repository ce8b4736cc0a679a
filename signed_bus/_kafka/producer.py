"""SignedProducer: sign each result into an envelope, then hand it to aiokafka's producer.

Record headers pass through unsigned. Tracing instrumentation adds headers (``traceparent``)
after the producer signed, so they cannot be covered; nothing that must be trusted travels there.
What must be trusted goes in the result (the envelope's body) or the envelope's protected header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import RecordMetadata

from signed_bus._lifecycle import AsyncLifecycle, start_kafka_client
from signed_bus._metrics import ProducerMetrics
from signed_bus._observe import NOOP, observer_for
from signed_bus._signer import Signer
from signed_bus.errors import ConfigurationError, Stopped

__all__ = ["KAFKA_SECURITY_OPTIONS", "Outgoing", "ProducerOptions", "SignedProducer"]

Headers = Sequence[tuple[str, bytes]]

#: aiokafka keyword arguments accepted in ``security=`` of the options dataclasses.
KAFKA_SECURITY_OPTIONS = frozenset(
    {
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)


def check_security(security: Mapping[str, Any]) -> None:
    unknown = sorted(set(security) - KAFKA_SECURITY_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown Kafka security option(s): {', '.join(unknown)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProducerOptions:
    """How :class:`SignedProducer` builds its own ``AIOKafkaProducer``.

    ``security`` passes connection security straight to aiokafka (``security_protocol``,
    ``ssl_context``, ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``, ...);
    it is kept out of ``repr`` because it may hold a password.

    ``max_batch_size`` (bytes per record batch, 256 KiB) only matters while records queue
    behind the request in flight (``linger_ms=0`` sends a lone record at once): then one round
    trip carries up to this much. 256 KiB instead of aiokafka's 16 KiB or a former 64 KiB:
    fewer, larger requests cost less client CPU per record (docs/PERFORMANCE.md), and a batch
    still fits the broker's default 1 MiB ``max.message.bytes`` with room. Lower it for topics
    whose ``max.message.bytes`` is smaller.
    """

    bootstrap_servers: str | Sequence[str]
    client_id: str | None = None
    linger_ms: int = 0
    acks: int | str = "all"
    enable_idempotence: bool = True
    max_batch_size: int = 262_144
    compression_type: str | None = None
    request_timeout_ms: int = 40_000
    security: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_security(self.security)
        if self.enable_idempotence and self.acks not in ("all", -1):
            raise ConfigurationError("enable_idempotence requires acks='all'")
        if self.linger_ms < 0 or self.max_batch_size <= 0 or self.request_timeout_ms <= 0:
            raise ConfigurationError(
                "linger_ms must be >= 0, max_batch_size and request_timeout_ms > 0"
            )

    def build(self) -> AIOKafkaProducer:
        """A new, unstarted producer (needs a running event loop, as aiokafka does)."""
        servers = (
            self.bootstrap_servers
            if isinstance(self.bootstrap_servers, str)
            else list(self.bootstrap_servers)
        )
        return AIOKafkaProducer(
            bootstrap_servers=servers,
            client_id=self.client_id,
            linger_ms=self.linger_ms,
            acks=self.acks,
            enable_idempotence=self.enable_idempotence,
            max_batch_size=self.max_batch_size,
            compression_type=self.compression_type,
            request_timeout_ms=self.request_timeout_ms,
            **dict(self.security),
        )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One result of :meth:`SignedProducer.send_batch`, with what ``send`` takes per record."""

    result: object
    key: bytes | None = None
    parents: Sequence[bytes] = ()
    headers: Headers | None = None
    expires_at: int | None = None


class SignedProducer(AsyncLifecycle):
    """Signs results with a :class:`~signed_bus._signer.Signer` and produces them to Kafka.

    ``kafka`` is a built ``AIOKafkaProducer`` (yours: start it before sending and stop it after;
    :meth:`stop` leaves it open) or :class:`ProducerOptions` (the producer is built by
    :meth:`start` and closed by :meth:`stop`). Idempotence is on by default, so a retried batch
    is not written twice. ``start()``/``stop()`` or ``async with``; once stopped, starting or
    sending raises :class:`~signed_bus.errors.Stopped`.
    """

    def __init__(self, kafka: AIOKafkaProducer | ProducerOptions, *, signer: Signer) -> None:
        if isinstance(kafka, ProducerOptions):
            self._options: ProducerOptions | None = kafka
            self._producer: AIOKafkaProducer | None = None
        elif isinstance(kafka, AIOKafkaProducer):
            self._options = None
            self._producer = kafka
        else:
            raise ConfigurationError("kafka must be an AIOKafkaProducer or ProducerOptions")
        self._signer = signer
        self._owned = False
        self._closed = False
        self.metrics = ProducerMetrics(observer=observer_for(None))

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The underlying aiokafka producer (built by :meth:`start` when options were given)."""
        if self._closed:
            raise Stopped("SignedProducer was stopped; make a new one")
        if self._producer is None:
            raise RuntimeError("SignedProducer.start() has not been called")
        return self._producer

    async def start(self) -> None:
        if self._closed:
            raise Stopped("SignedProducer was stopped; make a new one")
        if self._options is None or self._producer is not None:
            return
        producer = self._options.build()
        await start_kafka_client(producer)
        self._producer = producer
        self._owned = True

    async def stop(self) -> None:
        """Flush and close a producer we built; a producer handed in stays open. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owned and self._producer is not None:
            await self._producer.stop()

    async def send(
        self,
        topic: str,
        result: object,
        *,
        key: bytes | None = None,
        parents: Sequence[bytes] = (),
        headers: Headers | None = None,
        expires_at: int | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Sign ``result`` for ``topic`` (and ``key``) and queue it; return the delivery future.

        Like aiokafka's ``send``: awaiting this queues the record, awaiting the returned future
        waits for the broker's acknowledgement and gives its ``RecordMetadata``. ``headers`` are
        not signed (see the module docstring).
        """
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
        producer, metrics = self._producer, self.metrics
        if metrics.observer is NOOP and producer is not None and not self._closed:
            # Nobody observes this front: no hook calls, no carrier, one frame less per record.
            metrics.signed += 1
            return await producer.send(  # type: ignore[no-any-return]
                topic,
                value,
                key=key,
                partition=partition,
                headers=(list(headers) or None) if headers else None,
            )
        return await self._send_value(topic, value, key, partition, headers)

    async def send_and_wait(
        self,
        topic: str,
        result: object,
        *,
        key: bytes | None = None,
        parents: Sequence[bytes] = (),
        headers: Headers | None = None,
        expires_at: int | None = None,
        partition: int | None = None,
    ) -> Any:
        """:meth:`send`, then wait for the broker; returns aiokafka's ``RecordMetadata``."""
        future = await self.send(
            topic,
            result,
            key=key,
            parents=parents,
            headers=headers,
            expires_at=expires_at,
            partition=partition,
        )
        return await future

    async def send_bytes(
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
    ) -> asyncio.Future[Any]:
        """Like :meth:`send` for a body already encoded by the caller (``content_type`` names
        its encoding; the verifier hands the same bytes back)."""
        value = self._signer.sign_bytes(
            body,
            content_type=content_type,
            topic=topic,
            key=key,
            parents=parents,
            expires_at=expires_at,
        )
        return await self._send_value(topic, value, key, partition, headers)

    async def _send_value(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int | None,
        headers: Headers | None,
    ) -> asyncio.Future[Any]:
        producer = self.producer
        self.metrics.signed += 1
        carrier = list(headers) if headers else []
        observer = self.metrics.observer
        token = observer.send(topic, (carrier,), client_injects=_instrumented(producer))
        try:
            future: asyncio.Future[Any] = await producer.send(
                topic, value, key=key, partition=partition, headers=carrier or None
            )
        except BaseException as exc:
            observer.sent(token, exc)
            raise
        observer.sent(token, None)
        return future

    async def send_batch(self, topic: str, items: Iterable[Outgoing]) -> list[Any]:
        """Sign many results, produce them in as few record batches as fit, wait for the broker.

        Returns one aiokafka ``RecordMetadata`` per item, in order (None for each with acks=0).
        Items go to the partitions the producer's partitioner picks (keyed items: the same
        partition as :meth:`send`), each partition's items in their order. The batches are
        built directly with aiokafka's ``create_batch``/``send_batch``: for 512-byte records on
        one local broker this measured 2-3x the throughput of one ``send`` per record followed
        by one wait (see docs/OPERATIONS.md).
        """
        items = list(items)
        # Trace context goes into every record's headers (no client instrumentation sees them).
        carriers = [list(item.headers) if item.headers else [] for item in items]
        observer = self.metrics.observer
        token = observer.send(topic, carriers, client_injects=False)
        try:
            results = await self._send_batch(topic, items, carriers)
        except BaseException as exc:
            observer.sent(token, exc)
            raise
        observer.sent(token, None)
        return results

    async def _send_batch(
        self, topic: str, items: list[Outgoing], carriers: list[list[tuple[str, bytes]]]
    ) -> list[Any]:
        producer = self.producer
        partitions = sorted(await producer.partitions_for(topic))
        choose = getattr(producer, "_partitioner", None) or _default_partitioner
        sign = self._signer.sign
        builders: dict[int, Any] = {}
        # Per item: the index of its batch in `batches` and its record offset within it.
        placed: list[tuple[int, int, int | None]] = []
        batches: list[tuple[int, Any]] = []
        open_index: dict[int, int] = {}
        futures: dict[int, asyncio.Future[Any]] = {}
        for item, headers in zip(items, carriers, strict=True):
            value = sign(
                item.result,
                topic=topic,
                key=item.key,
                parents=item.parents,
                expires_at=item.expires_at,
            )
            partition = choose(item.key, partitions, partitions)
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
                open_index[partition] = len(batches)
                batches.append((partition, builder))
            meta = builder.append(timestamp=None, key=item.key, value=value, headers=headers)
            if meta is None:  # full: submit it and start the next batch of this partition
                index = open_index[partition]
                futures[index] = await producer.send_batch(builder, topic, partition=partition)
                builder = builders[partition] = producer.create_batch()
                open_index[partition] = len(batches)
                batches.append((partition, builder))
                meta = builder.append(timestamp=None, key=item.key, value=value, headers=headers)
                if meta is None:
                    raise ValueError("a signed record does not fit in an empty batch")
            placed.append((open_index[partition], meta.offset, meta.timestamp))
        for partition, index in open_index.items():
            futures[index] = await producer.send_batch(
                builders[partition], topic, partition=partition
            )
        self.metrics.signed += len(placed)
        self.metrics.batches += 1
        acked = await asyncio.gather(*(futures[i] for i in range(len(batches))))
        results: list[Any] = []
        for index, relative, written in placed:
            base = acked[index]
            if base is None:
                results.append(None)
                continue
            # The broker returns -1 for CreateTime topics: the record keeps the time written.
            timestamp = base.timestamp if base.timestamp != -1 else written
            results.append(
                RecordMetadata(
                    base.topic,
                    base.partition,
                    base.topic_partition,
                    base.offset + relative,
                    timestamp,
                    base.timestamp_type,
                    base.log_start_offset,
                )
            )
        return results

    async def flush(self) -> None:
        """Wait until every queued record was acknowledged (or failed)."""
        await self.producer.flush()


_default_partitioner = DefaultPartitioner()


def _instrumented(producer: AIOKafkaProducer) -> bool:
    """True when tracing instrumentation wraps this producer's ``send`` (the official aiokafka
    instrumentation injects trace context itself: adding ours too would duplicate it)."""
    return hasattr(type(producer).send, "__wrapped__")
