"""Relay: one hop of a multi-hop pipeline (consume -> verify -> transform -> sign -> produce ->
commit), chaining provenance.

Every output a relay signs names the digest of the input it came from in its ``parents``, so
``signed-bus trace`` can walk from a final action back to the model output it came from.

Two delivery modes, per batch of the verifying consumer (:meth:`VerifyingConsumer.getbatch`):

- at-least-once (default): transform every verified input of the batch, produce all outputs,
  wait until the broker acknowledged them, then commit the batch's offsets. A crash between
  produce and commit re-delivers the batch: nothing is lost, outputs may be produced twice
  (as new envelopes with new nonces and the same parents).
- exactly-once (``exactly_once=True``, a transactional producer): the outputs and the batch's
  offsets go into one Kafka transaction (``send_offsets_to_transaction``). Consumers of the
  output topic that read ``read_committed`` (all a :class:`VerifyingConsumer` accepts) see
  either all outputs of a batch, once, or none: an aborted or abandoned transaction delivers
  nothing downstream and its inputs are read again, from the last committed offsets.

The transform is an async callable: one verified input -> zero or more :class:`Output`. If it
raises, nothing of the batch is committed, the consumer is rewound to the batch's first offsets
(so a later :meth:`Relay.run` re-processes it) and the error propagates as
:class:`RelayTransformError`.

Rejected inputs are dead-lettered by the consumer before the batch is handed out; their offsets
are part of the batch's offsets. Dead letters are written outside the transaction (at least once).

Freshness: the transform may take long, and the batch waits for it. Once the transform returned
and before anything is produced or committed, the batch's inputs are checked for freshness again
(:meth:`VerifyingConsumer.recheck`, the verifier's own rule): an input that went stale meanwhile
(its expires_at passed, or it left the window) is rejected and dead-lettered, and the outputs the
transform made from it are not published (``RelayMetrics.expired`` counts them); the batch's
offsets are committed as usual. The broker round trips of the produce and commit that follow are
not re-checked (a published output cannot be taken back).

Rebalances (exactly-once): a partition revoked after the batch was fetched belongs to a new owner,
which reads it from the last committed offset and relays those records itself: committing our
outputs for them (and their offsets) would publish every one of them twice. So before the offsets
go into the transaction (and once more right before the commit) the relay checks that every
partition of the batch is still assigned and was not revoked since the fetch; if one was, it aborts
the transaction (nothing of the batch is published), rewinds the partitions it still owns and
carries on with the next batch (``RelayMetrics.revoked`` counts these). A rebalance between that
last check and the broker's commit can still slip through: aiokafka cannot bind the offsets to a
group generation (KIP-447).

Fencing: aiokafka sends offsets to a transaction by group id only (no group generation), so run
one relay per ``transactional_id`` and keep the id stable across restarts: a restarted relay then
fences its previous incarnation (which raises :class:`RelayFenced` and must stop) and aborts
whatever transaction it left open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced

from signed_bus._kafka.consumer import ConsumedBatch, ConsumedMessage, VerifyingConsumer
from signed_bus._kafka.producer import SignedProducer
from signed_bus._lifecycle import AsyncLifecycle
from signed_bus._text import printable
from signed_bus.errors import (
    ConfigurationError,
    RelayError,
    RelayFenced,
    RelayTransformError,
    Stopped,
)

__all__ = [
    "Output",
    "Relay",
    "RelayError",
    "RelayFenced",
    "RelayMetrics",
    "RelayTransformError",
    "Transform",
]

log = logging.getLogger("signed_bus.relay")


@dataclass(frozen=True, slots=True)
class Output:
    """One result a transform wants published (signed by the relay's producer).

    ``topic`` defaults to the relay's output topic. The parents are always the input's digest;
    ``extra_parents`` adds more (a join that used other envelopes too).
    """

    result: object
    key: bytes | None = None
    topic: str | None = None
    headers: Sequence[tuple[str, bytes]] | None = None
    expires_at: int | None = None
    extra_parents: Sequence[bytes] = ()


Transform = Callable[[ConsumedMessage], Awaitable[Iterable[Output]]]


@dataclass(slots=True)
class RelayMetrics:
    """What a relay did since it was created."""

    batches: int = 0
    inputs: int = 0
    outputs: int = 0
    empty: int = 0  # inputs the transform mapped to no output
    transactions: int = 0
    aborted: int = 0
    transform_errors: int = 0
    revoked: int = 0  # batches dropped because a partition was revoked mid-batch (exactly-once)
    expired: int = 0  # inputs that went stale while transformed: dead-lettered, outputs dropped
    by_topic: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, object]:
        return {
            "batches": self.batches,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "empty": self.empty,
            "transactions": self.transactions,
            "aborted": self.aborted,
            "transform_errors": self.transform_errors,
            "revoked": self.revoked,
            "expired": self.expired,
            "by_topic": dict(self.by_topic),
        }


class Relay(AsyncLifecycle):
    """Drives one hop: ``consumer`` -> ``transform`` -> ``producer`` (see the module docstring).

    The consumer and the producer are started and stopped by the caller. For
    ``exactly_once=True`` the producer's ``AIOKafkaProducer`` must have a ``transactional_id``
    and ``group_id`` must be the consumer's group (offsets are committed in its name).

    Lifecycle as every long-lived signed-bus object: ``start()``/``stop()`` coroutines and
    ``async with`` (:meth:`run` starts it if needed). :meth:`stop` asks :meth:`run` to return
    after the batch in hand and waits for it (from inside the transform it only asks). A
    stopped relay refuses :meth:`start`, :meth:`run` and :meth:`process` with
    :class:`~signed_bus.errors.Stopped`.
    """

    def __init__(
        self,
        consumer: VerifyingConsumer,
        producer: SignedProducer,
        transform: Transform,
        *,
        output_topic: str,
        exactly_once: bool = False,
        group_id: str | None = None,
    ) -> None:
        if exactly_once and not group_id:
            raise ConfigurationError("exactly_once needs the consumer's group_id")
        if not output_topic:
            raise ConfigurationError("output_topic is required")
        self._consumer = consumer
        self._producer = producer
        self._transform = transform
        self._output_topic = output_topic
        self._exactly_once = exactly_once
        self._group_id = group_id
        self._stopping = False
        self._stopped = False
        self._running: asyncio.Task[Any] | None = None
        self._fetching: asyncio.Future[ConsumedBatch | None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._observed: dict[int, object] = {}  # input id -> its observer token (_process)
        self.metrics = RelayMetrics()

    @property
    def consumer(self) -> VerifyingConsumer:
        return self._consumer

    @property
    def producer(self) -> SignedProducer:
        return self._producer

    @property
    def exactly_once(self) -> bool:
        return self._exactly_once

    async def start(self) -> None:
        """Nothing to build (the consumer and producer are the caller's); refuses a stopped
        relay with :class:`~signed_bus.errors.Stopped`."""
        self._check_open()

    async def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand is committed, and wait until it
        did (called from inside the transform: only ask). Idempotent.

        A fetch not handed to the transform yet is cancelled, so stopping does not wait for a
        batch held while Redis or the dead-letter topic is down: nothing of it was published or
        committed, and it is read again from the committed offsets (claims come back
        SAME_POSITION)."""
        self._stopping = True
        self._stopped = True
        running = self._running
        if running is not None and running is not asyncio.current_task():
            fetching = self._fetching
            if fetching is not None:
                fetching.cancel()
            await self._idle.wait()

    def _check_open(self) -> None:
        if self._stopped:
            raise Stopped("Relay was stopped; make a new one")

    async def run(self) -> None:
        """Relay batches until :meth:`stop`; raises :class:`RelayError` subclasses on failure."""
        self._check_open()
        if self._running is not None:
            raise RuntimeError("the relay is already running")
        self._running = asyncio.current_task()
        self._idle.clear()
        try:
            while not self._stopping:
                fetching = self._fetching = asyncio.ensure_future(self._consumer.getbatch())
                try:
                    batch = await fetching
                except asyncio.CancelledError:
                    if self._stopping and fetching.cancelled():
                        return  # stop() cancelled the fetch, not this task
                    raise
                finally:
                    self._fetching = None
                if batch is None:  # the consumer is stopping
                    return
                if not batch.offsets:
                    continue
                await self._process(batch)
        finally:
            self._running = None
            self._idle.set()

    async def process(self, batch: ConsumedBatch) -> None:
        """Transform, produce and commit one batch (the unit of :meth:`run`)."""
        self._check_open()
        await self._process(batch)

    async def _process(self, batch: ConsumedBatch) -> None:
        # One observer token per input: its span covers the transform and its outputs' sends.
        observer = self._consumer.metrics.observer
        self._observed = {id(m): observer.processing(m) for m in batch.messages}
        error: BaseException | None = None
        try:
            await self._process_observed(batch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observed, self._observed = self._observed, {}
            for token in observed.values():
                observer.finished(token, error)

    async def _process_observed(self, batch: ConsumedBatch) -> None:
        try:
            planned = await self._plan(batch)
        except Exception as exc:
            self.metrics.transform_errors += 1
            self._rewind(batch)
            raise RelayTransformError(f"the transform raised {type(exc).__name__}") from exc
        fresh = await self._consumer.recheck(batch)
        if fresh is None:  # stopped before the stale inputs' dead letters were durable
            self._rewind(batch)
            return
        if fresh is not batch:
            kept = {id(message) for message in fresh.messages}
            self.metrics.expired += len(batch.messages) - len(fresh.messages)
            planned = [(message, output) for message, output in planned if id(message) in kept]
        if self._exactly_once:
            if not await self._commit_transaction(batch, planned):
                return  # a partition was revoked: nothing of the batch was committed
        else:
            await self._commit_after_acks(batch, planned)
        metrics = self.metrics
        metrics.batches += 1
        metrics.inputs += len(batch.messages)
        metrics.outputs += len(planned)
        for _, output in planned:
            topic = output.topic or self._output_topic
            metrics.by_topic[topic] = metrics.by_topic.get(topic, 0) + 1

    async def _plan(self, batch: ConsumedBatch) -> list[tuple[ConsumedMessage, Output]]:
        planned: list[tuple[ConsumedMessage, Output]] = []
        observer = self._consumer.metrics.observer
        for message in batch.messages:
            entered = observer.enter(self._observed.get(id(message)))
            try:
                outputs = list(await self._transform(message))
            finally:
                observer.leave(entered)
            if not outputs:
                self.metrics.empty += 1
            for output in outputs:
                if not isinstance(output, Output):
                    raise TypeError("a relay transform must return Output objects")
                planned.append((message, output))
        return planned

    async def _send_all(self, planned: list[tuple[ConsumedMessage, Output]]) -> None:
        futures: list[asyncio.Future[Any]] = []
        observer = self._consumer.metrics.observer
        for message, output in planned:
            entered = observer.enter(self._observed.get(id(message)))  # parents the send span
            try:
                futures.append(
                    await self._producer.send(
                        output.topic or self._output_topic,
                        output.result,
                        key=output.key,
                        parents=(message.verified.digest, *output.extra_parents),
                        headers=output.headers,
                        expires_at=output.expires_at,
                    )
                )
            finally:
                observer.leave(entered)
        await asyncio.gather(*futures)

    async def _commit_after_acks(
        self, batch: ConsumedBatch, planned: list[tuple[ConsumedMessage, Output]]
    ) -> None:
        try:
            await self._send_all(planned)
        except BaseException:
            # Unacknowledged outputs: read the batch again (outputs may repeat, none is lost).
            self._rewind(batch)
            raise
        await self._consumer.commit_offsets(batch.offsets)

    def _lost_partitions(self, batch: ConsumedBatch) -> set[TopicPartition]:
        """The batch's partitions this relay no longer owns: not assigned now, or revoked since
        the batch was fetched (even if assigned again: the new assignment starts from the
        committed offset, so those records are fetched and relayed again)."""
        consumer = self._consumer
        assigned = consumer.consumer.assignment()
        # Filled by the consumer's rebalance listener, reset by each getbatch().
        revoked = consumer.revoked_since_fetch
        return {tp for tp in batch.offsets if tp not in assigned or tp in revoked}

    def _drop_revoked(self, batch: ConsumedBatch, lost: set[TopicPartition]) -> None:
        self.metrics.revoked += 1
        self._rewind(batch)  # the partitions still owned: read their records again
        log.warning(
            "%d partition(s) revoked during the batch; the batch is dropped, not committed",
            len(lost),
        )

    async def _commit_transaction(
        self, batch: ConsumedBatch, planned: list[tuple[ConsumedMessage, Output]]
    ) -> bool:
        """Publish the outputs and commit the offsets in one transaction. Returns False (after
        aborting) when a partition of the batch was revoked: nothing of the batch is committed."""
        kafka = self._producer.producer
        assert self._group_id is not None
        lost = self._lost_partitions(batch)
        if lost:
            self._drop_revoked(batch, lost)
            return False
        try:
            await kafka.begin_transaction()
        except IllegalOperation as exc:
            raise ConfigurationError(
                "exactly_once needs a producer built with a transactional_id"
            ) from exc
        try:
            await self._send_all(planned)
            lost = self._lost_partitions(batch)
            if not lost:
                offsets = {tp: offset for tp, offset in batch.offsets.items()}
                await kafka.send_offsets_to_transaction(offsets, self._group_id)
                lost = self._lost_partitions(batch)
            if not lost:
                await kafka.commit_transaction()
        except ProducerFenced as exc:
            self._rewind(batch)
            raise RelayFenced("another relay took over this transactional_id") from exc
        except BaseException as exc:
            self.metrics.aborted += 1
            self._rewind(batch)
            if not isinstance(exc, asyncio.CancelledError):
                # The error may quote record text (a transform's own exception).
                log.warning(
                    "transaction aborted (%s); the batch will be read again", printable(str(exc))
                )
            try:
                await kafka.abort_transaction()
            except (KafkaError, IllegalOperation) as abort_exc:
                log.warning("abort failed: %s", printable(str(abort_exc)))
            raise
        if lost:
            # Revoked while the outputs were being produced: none of them may be published.
            self.metrics.aborted += 1
            self._drop_revoked(batch, lost)
            await kafka.abort_transaction()
            return False
        self.metrics.transactions += 1
        return True

    def _rewind(self, batch: ConsumedBatch) -> None:
        """Seek back to the batch's first offsets so its records are fetched again."""
        consumer = self._consumer.consumer
        assigned = consumer.assignment()
        for tp, offset in batch.first_offsets.items():
            if tp in assigned:
                consumer.seek(TopicPartition(tp.topic, tp.partition), offset)
