"""ProducerOptions' batch size: the default and what reaches aiokafka's producer."""

from __future__ import annotations

from signed_bus._kafka.producer import ProducerOptions


def test_the_default_batch_is_256_kib() -> None:
    options = ProducerOptions(bootstrap_servers="127.0.0.1:1")
    assert options.max_batch_size == 262_144


async def test_the_built_producer_batches_up_to_max_batch_size() -> None:
    for size in (262_144, 16_384):
        options = ProducerOptions(bootstrap_servers="127.0.0.1:1", max_batch_size=size)
        producer = options.build()
        try:
            builder = producer.create_batch()
            value = b"v" * 1_000
            appended = 0
            while builder.append(timestamp=None, key=None, value=value, headers=[]) is not None:
                appended += 1
            # each record carries a few bytes of framing: the batch holds what fits in `size`
            assert size // 1_100 <= appended <= size // 1_000, (size, appended)
        finally:
            await producer.stop()
