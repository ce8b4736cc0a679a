"""The aiokafka clients a :class:`~signed_bus._kafka.consumer.VerifyingConsumer` builds from its
:class:`~signed_bus._kafka.options.ConsumerOptions` and owns: the consumer (auto commit off,
``read_committed``, the group, subscribed with the rebalance listener) and, for a dead-letter
topic without a producer handed in, the dead-letter producer."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener

from signed_bus._kafka.options import ConsumerOptions
from signed_bus._kafka.producer import SignedProducer

__all__ = ["KafkaClients"]


class KafkaClients:
    """Builds, starts and stops the clients of one consumer (a handed-in dead-letter producer
    is used, never started or stopped)."""

    __slots__ = ("_consumer", "_dead_letter_owned", "_dead_letter_source", "_options")

    def __init__(
        self,
        options: ConsumerOptions,
        dead_letter_producer: AIOKafkaProducer | SignedProducer | None,
    ) -> None:
        self._options = options
        self._dead_letter_source = dead_letter_producer
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letter_owned: AIOKafkaProducer | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("VerifyingConsumer.start() has not been called")
        return self._consumer

    async def start(
        self, listener: ConsumerRebalanceListener, *, dead_letters: bool
    ) -> AIOKafkaProducer | None:
        """Start the consumer (and the dead-letter producer when ``dead_letters``); returns the
        dead-letter producer. On failure whatever started is stopped again."""
        options = self._options
        try:
            consumer = options.build()
            self._consumer = consumer
            consumer.subscribe(list(options.topics), listener=listener)
            await consumer.start()
            if not dead_letters:
                return None
            source = self._dead_letter_source
            if isinstance(source, SignedProducer):
                return source.producer
            if source is not None:
                return source
            producer = options.dead_letter_producer().build()
            self._dead_letter_owned = producer
            await producer.start()
            return producer
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        try:
            if self._consumer is not None:
                await self._consumer.stop()
        finally:
            if self._dead_letter_owned is not None:
                await self._dead_letter_owned.stop()
