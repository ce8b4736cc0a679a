"""Records the Kafka client itself cannot decode, on a real broker.

A record batch aiokafka cannot decode (a header key that is not UTF-8, a compression codec it has
no decoder for) must not stop any reader: it is rejected as ``undecodable`` by its position,
dead-lettered without bytes, skipped, and every honest record around it is delivered once.
Compressed batches come from librdkafka (confluent-kafka), a producer that is not aiokafka.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiokafka.codec
import confluent_kafka
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import ConsumerStoppedError, UnsupportedCodecError
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from signed_bus._deadletter import (
    HEADER_NOT_DECODED,
    HEADER_SOURCE_LAST_OFFSET,
    DeadLetter,
    dead_letter_headers,
    header_map,
)
from signed_bus._freshness import Freshness
from signed_bus._kafka.consumer import ConsumedMessage, VerifyingConsumer
from signed_bus._kafka.fetch import fetch_records
from signed_bus._provenance import Position, RecordFetcher
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus.errors import Undecodable
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    guard,
    keyring,
    plain_producer,
    read_all,
    signer,
    unique,
    verifier,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_PLACEHOLDER = b"signed-bus-placeholder"
# Not UTF-8 (0xff never occurs in it), same length as the placeholder.
_BAD_KEY = b"\xff\xfe" + b"x" * (len(_PLACEHOLDER) - 2)


def bad_header_batch(value: bytes) -> bytes:
    """A v2 record batch of one record whose header key is not UTF-8, with a valid CRC.

    No client writes such a key (they all take header keys as str): build the batch with a
    placeholder key of the same length, swap the bytes and recompute the CRC-32C, which covers
    everything from the attributes (byte 21) on and sits at bytes 17..20.
    """
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(
        0, timestamp=None, key=None, value=value, headers=[(_PLACEHOLDER.decode(), b"v")]
    )
    buffer = bytearray(builder.build())
    at = buffer.index(_PLACEHOLDER)
    buffer[at : at + len(_BAD_KEY)] = _BAD_KEY
    struct.pack_into(">I", buffer, 17, calc_crc32c(bytes(buffer[21:])))
    return bytes(buffer)


async def produce_raw(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Send ``batch`` as is in a ProduceRequest (acks=all); the offset the broker gave it."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 30_000, [(topic, [(partition, batch)])])
        response = await client.send(leader, request)
    finally:
        await client.close()
    ((_, partitions),) = response.topics
    ((_, error_code, offset, *_),) = partitions
    assert error_code == 0, f"the broker refused the batch: error {error_code}"
    return int(offset)


def compressed_producer(bootstrap: str, codec: str) -> confluent_kafka.Producer:
    # librdkafka sends a batch uncompressed when compression does not shrink it: values are
    # made compressible (see ``payload``) and lingered so several share one batch.
    return confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 100, "acks": -1}
    )


def flush(producer: confluent_kafka.Producer) -> None:
    assert producer.flush(30) == 0, "confluent-kafka did not deliver every record"


def payload(seq: int) -> dict[str, Any]:
    return {"seq": seq, "text": "compressible " * 200}


class Setup:
    """A one-partition topic with honest signed records around a record aiokafka cannot read."""

    def __init__(self, bootstrap: str, guard: RedisReplayGuard) -> None:
        self.bootstrap = bootstrap
        self.guard = guard
        self.ring = keyring()
        self.sign = signer(self.ring).sign

    async def topic_with_bad_header(self, unique_topic: TopicFactory) -> tuple[str, int]:
        """Offsets 0-2 honest, 3 the bad header key, 4-6 honest; all before anyone reads."""
        topic = await unique_topic("undecodable")
        async with plain_producer(self.bootstrap) as producer:
            for seq in range(3):
                await producer.send_and_wait(topic, self.sign(payload(seq), topic=topic))
            bad = await produce_raw(
                self.bootstrap, topic, 0, bad_header_batch(self.sign(payload(99), topic=topic))
            )
            for seq in range(3, 6):
                await producer.send_and_wait(topic, self.sign(payload(seq), topic=topic))
        return topic, bad

    def consumer(self, topic: str, dlq: str | None, group: str | None = None) -> VerifyingConsumer:
        return VerifyingConsumer.from_options(
            consumer_options(self.bootstrap, [topic], group=group),
            verifier=verifier(self.ring),
            guard=self.guard,
            dead_letter_topic=dlq,
            max_records=500,
        )


@pytest.fixture
async def setup(kafka_bootstrap: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Setup]:
    async with guard(redis_url, redis_prefix) as replay_guard:
        yield Setup(kafka_bootstrap, replay_guard)


async def _with_run(consumer: VerifyingConsumer, count: int) -> list[ConsumedMessage]:
    delivered: list[ConsumedMessage] = []
    done = asyncio.Event()

    async def handle(message: ConsumedMessage) -> None:
        delivered.append(message)
        if len(delivered) >= count:
            done.set()

    async with Running(consumer, handle) as running:
        waiter = asyncio.create_task(done.wait())
        assert running.task is not None
        finished, _ = await asyncio.wait(
            {waiter, running.task}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        assert running.task is not None
        if running.task in finished:
            running.task.result()  # raises what stopped the consumer
        assert waiter in finished, f"delivered {len(delivered)} of {count}"
        await consumer.commit()
    return delivered


async def _with_async_for(consumer: VerifyingConsumer, count: int) -> list[ConsumedMessage]:
    delivered: list[ConsumedMessage] = []
    async with consumer:
        async with asyncio.timeout(60):
            async for message in consumer:
                delivered.append(message)
                if len(delivered) >= count:
                    await consumer.commit()
                    break
    return delivered


async def _with_getbatch(consumer: VerifyingConsumer, count: int) -> list[ConsumedMessage]:
    delivered: list[ConsumedMessage] = []
    async with consumer:
        async with asyncio.timeout(60):
            while len(delivered) < count:
                batch = await consumer.getbatch()
                assert batch is not None
                delivered.extend(batch.messages)
                await consumer.commit_offsets(batch.offsets)
    return delivered


MODES: dict[str, Callable[[VerifyingConsumer, int], Awaitable[list[ConsumedMessage]]]] = {
    "run": _with_run,
    "async_for": _with_async_for,
    "getbatch": _with_getbatch,
}


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_bad_header_key_is_dead_lettered_and_the_records_around_it_delivered(
    setup: Setup,
    unique_topic: TopicFactory,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, bad = await setup.topic_with_bad_header(unique_topic)
    assert bad == 3
    # the broker stored it as it is, and a plain aiokafka read dies on it
    await _plain_read_raises(setup.bootstrap, topic, UnicodeDecodeError)
    dlq = await unique_topic("undecodable-dlq")
    group = unique("g")
    consumer = setup.consumer(topic, dlq, group)
    with caplog.at_level(logging.WARNING, logger="signed_bus.consumer"):
        delivered = await MODES[mode](consumer, 6)

    assert [m.offset for m in delivered] == [0, 1, 2, 4, 5, 6]
    assert [m.payload["seq"] for m in delivered] == [0, 1, 2, 3, 4, 5]  # type: ignore[index]
    assert consumer.metrics.rejected == {"undecodable": 1}
    assert consumer.metrics.dead_lettered == 1
    assert consumer.metrics.committed[(topic, 0)] == 7
    warnings = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(warnings) == 1 and "offset=3" in warnings[0], warnings

    (letter_record,) = await read_all(setup.bootstrap, dlq, 1)
    letter = DeadLetter.from_record(letter_record)
    assert (letter.reason, letter.source_topic, letter.source_partition, letter.source_offset) == (
        "undecodable",
        topic,
        0,
        3,
    )
    assert not letter.value and letter.key is None  # no bytes were ever read
    headers = header_map(letter_record.headers)
    assert headers[HEADER_NOT_DECODED] == b"1"
    assert headers[HEADER_SOURCE_LAST_OFFSET] == b"3"
    assert "UnicodeDecodeError" in letter.error

    # A consumer of the same group restarted from before the bad record does not die on it.
    await _commit_group(setup.bootstrap, group, TopicPartition(topic, 0), 2)
    again = setup.consumer(topic, None, group)
    redelivered = await _with_run(again, 4)
    assert [m.offset for m in redelivered] == [2, 4, 5, 6]
    assert again.metrics.rejected == {"undecodable": 1}
    assert again.metrics.committed[(topic, 0)] == 7


async def _plain_read_raises(bootstrap: str, topic: str, error: type[Exception]) -> None:
    plain = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await plain.start()
    try:
        with pytest.raises(error):
            async with asyncio.timeout(20):
                while True:
                    await plain.getmany(timeout_ms=500)
    finally:
        await plain.stop()


async def _commit_group(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def test_records_of_other_partitions_in_the_failing_fetch_are_not_lost(
    setup: Setup, unique_topic: TopicFactory
) -> None:
    """aiokafka drops the records it already took from other partitions when one partition's
    batch fails to decode, although their positions moved on: each must still arrive once."""
    topic = await unique_topic("undecodable", partitions=4)
    sent: dict[int, list[int]] = {}
    async with plain_producer(setup.bootstrap) as producer:
        for partition in range(4):
            for seq in range(5):
                value = setup.sign(payload(partition * 100 + seq), topic=topic)
                await producer.send_and_wait(topic, value, partition=partition)
            sent[partition] = list(range(5))
    bad_partitions = (1, 3)
    for partition in bad_partitions:
        offset = await produce_raw(
            setup.bootstrap,
            topic,
            partition,
            bad_header_batch(setup.sign(payload(-1), topic=topic)),
        )
        assert offset == 5
    async with plain_producer(setup.bootstrap) as producer:
        for partition in range(4):
            value = setup.sign(payload(partition * 100 + 5), topic=topic)
            await producer.send_and_wait(topic, value, partition=partition)

    consumer = setup.consumer(topic, None)
    delivered = await _with_run(consumer, 4 * 6)
    seqs = sorted(m.payload["seq"] for m in delivered)  # type: ignore[index]
    assert seqs == sorted(p * 100 + s for p in range(4) for s in range(6))
    assert consumer.metrics.rejected == {"undecodable": 2}
    for partition in range(4):
        offsets = [m.offset for m in delivered if m.partition == partition]
        expected = [0, 1, 2, 3, 4, 6] if partition in bad_partitions else [0, 1, 2, 3, 4, 5]
        assert offsets == expected


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_compression_codec_is_delivered_and_verified(
    setup: Setup, unique_topic: TopicFactory, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = await unique_topic(f"codec-{codec}")
    producer = compressed_producer(setup.bootstrap, codec)
    for seq in range(5):
        producer.produce(topic, setup.sign(payload(seq), topic=topic), partition=0)
    flush(producer)
    consumer = setup.consumer(topic, None)
    delivered = await _with_run(consumer, 5)
    assert [m.payload["seq"] for m in delivered] == list(range(5))  # type: ignore[index]
    assert all(m.verified.issuer == "agent-a" for m in delivered)
    assert consumer.metrics.rejected_total == 0
    # the batches really were compressed in that codec: a client without it cannot read them
    without_codec(monkeypatch, codec)
    await _plain_read_raises(setup.bootstrap, topic, UnsupportedCodecError)


def without_codec(monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    """Make this process a client without the ``codec`` decoder (aiokafka asks
    ``aiokafka.codec.has_<codec>()`` before decoding a batch)."""
    monkeypatch.setattr(aiokafka.codec, f"has_{codec}", lambda: False)


async def test_a_batch_in_a_codec_the_client_cannot_decode_is_skipped_whole(
    setup: Setup, unique_topic: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = await unique_topic("codec-missing")
    dlq = await unique_topic("codec-missing-dlq")
    async with plain_producer(setup.bootstrap) as producer:
        for seq in range(2):
            await producer.send_and_wait(topic, setup.sign(payload(seq), topic=topic))
    zstd = compressed_producer(setup.bootstrap, "zstd")
    for seq in range(10, 13):  # one batch of three records, offsets 2 to 4
        zstd.produce(topic, setup.sign(payload(seq), topic=topic), partition=0)
    flush(zstd)
    async with plain_producer(setup.bootstrap) as producer:
        for seq in range(2, 4):
            await producer.send_and_wait(topic, setup.sign(payload(seq), topic=topic))

    consumer = setup.consumer(topic, dlq)
    without_codec(monkeypatch, "zstd")
    delivered = await _with_run(consumer, 4)
    assert [m.offset for m in delivered] == [0, 1, 5, 6]
    assert consumer.metrics.rejected == {"undecodable": 1}
    assert consumer.metrics.committed[(topic, 0)] == 7
    (letter_record,) = await read_all(setup.bootstrap, dlq, 1)
    letter = DeadLetter.from_record(letter_record)
    assert (letter.reason, letter.source_offset) == ("undecodable", 2)
    assert header_map(letter_record.headers)[HEADER_SOURCE_LAST_OFFSET] == b"4"
    assert "zstd" in letter.error


async def test_tail_prints_an_undecodable_record_as_rejected_and_goes_on(
    setup: Setup, unique_topic: TopicFactory
) -> None:
    from signed_bus._cli import build_parser
    from signed_bus._cli.tail import _run

    topic, _ = await setup.topic_with_bad_header(unique_topic)
    # the arguments as the CLI parses them (its defaults: the whole window, no TLS or SASL)
    argv = ["tail", topic, "--from-beginning", "--count", "7", "--idle-timeout", "20", "--audit"]
    args = build_parser().parse_args([*argv, "--bootstrap-servers", setup.bootstrap])
    assert (args.max_age_ms, args.max_lag_ms) == (Freshness().max_age_ms, Freshness().max_lag_ms)
    out = io.StringIO()
    assert await _run(args, setup.ring, out) == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines[:7]] == [f"{topic}[0]@{n}" for n in range(7)]
    assert "REJECT undecodable" in lines[3] and "UnicodeDecodeError" in lines[3]
    assert all(" OK " in line for n, line in enumerate(lines[:7]) if n != 3)
    assert lines[-1] == "-- 7 record(s): ok=6, undecodable=1"


async def test_auditor_counts_an_undecodable_dead_letter_and_goes_on(
    setup: Setup, unique_topic: TopicFactory, kafka_bootstrap: str
) -> None:
    from consumers.auditor import Auditor, tail_dead_letters

    dlq = await unique_topic("auditor-dlq")
    letter_headers = dead_letter_headers(
        Undecodable("x", last_offset=9), topic="source", partition=0, offset=9
    )
    async with plain_producer(kafka_bootstrap) as producer:
        await producer.send_and_wait(dlq, b"", headers=letter_headers)
        await produce_raw(kafka_bootstrap, dlq, 0, bad_header_batch(b"junk"))
        await producer.send_and_wait(dlq, b"", headers=letter_headers)
    auditor = Auditor(index=None)  # type: ignore[arg-type]  # dead letters never touch it
    consumer = AIOKafkaConsumer(
        dlq,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique("auditor"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(
        tail_dead_letters(auditor, consumer, stop, logging.getLogger("test"))
    )
    try:
        deadline = time.monotonic() + 30
        while auditor.dead_letters.get("source", Counter()).get("undecodable", 0) < 2:
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, auditor.dead_letters
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await consumer.stop()
    assert auditor.dead_letters == {"source": {"undecodable": 2}, dlq: {"undecodable": 1}}


async def test_record_fetcher_answers_none_for_an_undecodable_record(
    setup: Setup, unique_topic: TopicFactory
) -> None:
    topic, bad = await setup.topic_with_bad_header(unique_topic)
    async with RecordFetcher(bootstrap_servers=setup.bootstrap) as fetcher:
        assert await fetcher.fetch(Position(topic, 0, bad)) is None
        after = await fetcher.fetch(Position(topic, 0, bad + 1))
        before = await fetcher.fetch(Position(topic, 0, bad - 1))
    assert after is not None and after.position.offset == bad + 1
    assert before is not None and before.position.offset == bad - 1


async def test_errors_that_are_not_about_a_record_still_propagate(
    setup: Setup, unique_topic: TopicFactory
) -> None:
    topic, _ = await setup.topic_with_bad_header(unique_topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=setup.bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])
    await consumer.seek_to_beginning()
    fetched = await fetch_records(consumer, timeout_ms=5_000, max_records=10)
    assert fetched
    await consumer.stop()
    with pytest.raises(ConsumerStoppedError):
        await fetch_records(consumer, timeout_ms=100, max_records=10)


async def test_a_record_its_deserializer_rejects_is_skipped_alone(
    setup: Setup, unique_topic: TopicFactory
) -> None:
    """A record that parsed but that the consumer's own deserializer rejects costs only its
    offset: the records after it in the same batch are read."""
    topic = await unique_topic("deserializer")
    async with plain_producer(setup.bootstrap) as producer:
        batch = producer.create_batch()
        for value in (b"a", b"b", b"poison", b"c", b"d"):
            batch.append(key=None, value=value, timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))

    def deserialize(value: bytes) -> bytes:
        if value == b"poison":
            raise ValueError("not for this consumer")
        return value

    consumer = AIOKafkaConsumer(
        bootstrap_servers=setup.bootstrap, enable_auto_commit=False, value_deserializer=deserialize
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning()
        values: list[bytes] = []
        skipped: list[Any] = []
        async with asyncio.timeout(30):
            while len(values) < 4:
                fetched = await fetch_records(consumer, timeout_ms=1_000, max_records=100)
                values += [r.value for r in fetched.records.get(tp, ())]
                skipped += fetched.skipped
    finally:
        await consumer.stop()
    assert values == [b"a", b"b", b"c", b"d"]
    assert [(s.offset, s.last_offset, s.error) for s in skipped] == [(2, 2, "ValueError")]
