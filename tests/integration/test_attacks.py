"""Forged, tampered, foreign and replayed records written by a plain aiokafka producer.

None may reach the application; each lands in the dead-letter topic with its reason, and the
honest records interleaved with them are all delivered, in order. Every test runs against both
consumer fronts (aiokafka and confluent-kafka: tests/integration/fronts.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import msgpack
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from signed_bus._deadletter import (
    HEADER_ERROR,
    HEADER_KEY_OMITTED,
    HEADER_KEY_SHA256,
    HEADER_REASON,
    HEADER_VALUE_OMITTED,
    DeadLetter,
    header_map,
)
from signed_bus._decode import decode_header, split_envelope
from signed_bus._envelope import encode_envelope
from signed_bus._keys import Keyring, generate_hmac_key
from signed_bus._signer import Signer
from tests.conftest import TopicFactory
from tests.integration.bus import (
    end_offsets,
    keyring,
    plain_producer,
    read_all,
    signer,
    verifier,
)
from tests.integration.fronts import FRONTS, Front, Spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.parametrize("front", FRONTS),
]

MAX_BYTES = 8_192


@dataclass(frozen=True)
class Bad:
    name: str
    value: bytes
    reason: str
    key: bytes | None = None


def flip(value: bytes, index: int, bit: int = 0) -> bytes:
    changed = bytearray(value)
    changed[index] ^= 1 << bit
    return bytes(changed)


def forgeries(topic: str, ring: Keyring) -> list[Bad]:
    sign = signer(ring).sign
    honest = sign({"seq": "victim", "action": "transfer", "amount": 10}, topic=topic)
    other = sign({"seq": "other", "action": "noop"}, topic=topic)
    protected, body, signature = split_envelope(honest)
    _, other_body, _ = split_envelope(other)
    body_at = honest.index(body)
    sig_at = len(honest) - len(signature)
    nonce_at = honest.index(decode_header(protected)["nce"])

    header = decode_header(protected)
    header["mdl"] = "a-better-model"
    edited = encode_envelope(msgpack.packb(header), body, signature)
    header = decode_header(protected)
    header["iss"] = "agent-b"
    reissued = encode_envelope(msgpack.packb(header), body, signature)

    stranger = Keyring([generate_hmac_key("k-stranger", ["agent-a"])])
    unknown_kid = Signer(stranger, kid="k-stranger", issuer="agent-a", model="m").sign(
        {"seq": "x"}, topic=topic
    )
    big = sign({"seq": "big", "blob": "y" * (2 * MAX_BYTES)}, topic=topic)

    return [
        Bad("flip in body", flip(honest, body_at + 3), "bad_signature"),
        Bad("flip in body, high bit", flip(honest, body_at + len(body) - 1, 7), "bad_signature"),
        Bad("flip in nonce", flip(honest, nonce_at + 5, 2), "bad_signature"),
        Bad("flip in signature", flip(honest, sig_at + 10), "bad_signature"),
        Bad("flip in last byte", flip(honest, len(honest) - 1, 6), "bad_signature"),
        Bad("flip in tag", flip(honest, 3), "unsupported_version"),
        Bad("flip in array header", flip(honest, 0, 0), "malformed"),
        Bad("swapped body", encode_envelope(protected, other_body, signature), "bad_signature"),
        Bad("edited header", edited, "bad_signature"),
        Bad("header claims another issuer", reissued, "untrusted_issuer"),
        Bad("unsigned msgpack", msgpack.packb({"seq": "u", "action": "transfer"}), "malformed"),
        Bad(
            "unsigned envelope-shaped", msgpack.packb(["signed-bus/v1", b"", b"", b""]), "malformed"
        ),
        Bad("garbage", b"\xc1" + os.urandom(299), "malformed"),  # 0xc1: never msgpack
        Bad("empty value", b"", "malformed"),
        Bad("oversized garbage", os.urandom(3 * MAX_BYTES), "oversized"),
        Bad("oversized signed", big, "oversized"),
        Bad("unknown kid", unknown_kid, "unknown_key"),
        Bad("signed for another topic", sign({"seq": "t"}, topic=topic + "-x"), "wrong_topic"),
        Bad("signed for another key", sign({"seq": "k"}, topic=topic, key=b"a"), "wrong_key", b"b"),
    ]


async def test_forgeries_are_dead_lettered_and_honest_records_flow_around_them(
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ring = keyring()
    topic = await unique_topic("attack", partitions=2)
    dead = await unique_topic("dlq")
    sign = signer(ring).sign
    bad = forgeries(topic, ring)
    # Honest record i and forgery i alternate on each partition, so every forgery sits
    # between two honest records.
    honest_count = 0
    written: dict[tuple[int, int], Bad] = {}
    async with plain_producer(kafka_bootstrap) as producer:
        for round_ in range(2):
            for partition in (0, 1):
                for item in bad:
                    seq = f"{partition}-{honest_count}"
                    await producer.send(topic, sign({"seq": seq}, topic=topic), partition=partition)
                    honest_count += 1
                    meta = await (
                        await producer.send(topic, item.value, key=item.key, partition=partition)
                    )
                    written[(meta.partition, meta.offset)] = item
            await producer.send(topic, sign({"seq": f"tail-{round_}"}, topic=topic), partition=0)
            honest_count += 1
        await producer.flush()
    ends = await end_offsets(kafka_bootstrap, [topic])
    assert sum(ends.values()) == honest_count + len(written)

    spec = Spec(
        kafka_bootstrap,
        [topic],
        redis_url,
        redis_prefix,
        verifier(ring, max_envelope_bytes=MAX_BYTES),
        dead_letter_topic=dead,
    )
    with caplog.at_level(logging.WARNING, logger="signed_bus.consumer"):
        async with front.consume(spec) as running:
            await running.caught_up(ends)

    # Exactly the honest records, each once, in offset order per partition.
    delivered = running.delivered
    assert len(delivered) == honest_count
    assert len({m.payload["seq"] for m in delivered}) == honest_count  # type: ignore[index]
    for partition in (0, 1):
        offsets = [m.offset for m in delivered if m.partition == partition]
        assert offsets == sorted(offsets)
    assert not any((m.partition, m.offset) in written for m in delivered)

    # Every forgery is dead-lettered once: original bytes and key, its reason, its position.
    letters = await read_all(kafka_bootstrap, dead, len(written))
    assert len(letters) == len(written)
    seen = set()
    for record in letters:
        letter = DeadLetter.from_record(record)
        position = (letter.source_partition, letter.source_offset)
        item = written[position]
        assert letter.source_topic == topic
        assert letter.reason == item.reason, item.name
        assert record.key == item.key
        assert record.value == item.value
        assert not letter.value_omitted
        headers = header_map(record.headers)
        assert headers[HEADER_REASON] == item.reason.encode()
        assert HEADER_VALUE_OMITTED not in headers
        # Nothing of the payload travels in the headers, only codes and positions.
        assert b"transfer" not in headers[HEADER_ERROR] and b"victim" not in headers[HEADER_ERROR]
        assert f"offset={letter.source_offset}".encode() in headers[HEADER_ERROR]
        seen.add(position)
    assert seen == set(written)

    expected: dict[str, int] = {}
    for item in written.values():
        expected[item.reason] = expected.get(item.reason, 0) + 1
    assert dict(running.metrics.rejected) == expected
    assert running.metrics.dead_lettered == len(written)
    # One WARNING per rejected record, none carrying payload bytes.
    rejected_logs = [r for r in caplog.records if r.getMessage().startswith("rejected record")]
    assert len(rejected_logs) == len(written)
    assert not any("transfer" in r.getMessage() for r in rejected_logs)


async def test_without_a_dead_letter_topic_rejects_are_counted_and_committed(
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    ring = keyring()
    topic = await unique_topic("nodlq")
    async with plain_producer(kafka_bootstrap) as producer:
        await producer.send(topic, b"garbage")
        await producer.send(topic, signer(ring).sign({"seq": 1}, topic=topic))
        await producer.send(topic, b"more garbage")
        await producer.flush()
    spec = Spec(kafka_bootstrap, [topic], redis_url, redis_prefix, verifier(ring))
    async with front.consume(spec) as running:
        await running.caught_up({(topic, 0): 3})
    assert [m.payload for m in running.delivered] == [{"seq": 1}]
    assert running.metrics.rejected == {"malformed": 2}
    assert running.metrics.committed == {(topic, 0): 3}


async def test_a_value_too_large_for_the_dead_letter_producer_is_omitted_not_lost(
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    ring = keyring()
    topic = await unique_topic("big")
    dead = await unique_topic("dlq")
    huge = b"\xc1" + os.urandom(20_000)
    async with plain_producer(kafka_bootstrap) as producer:
        await producer.send(topic, huge, key=b"k")
        await producer.send(topic, signer(ring).sign({"seq": 1}, topic=topic))
        await producer.flush()
    # a dead-letter producer handed in that refuses requests over 4 KiB (still open after)
    spec = Spec(
        kafka_bootstrap,
        [topic],
        redis_url,
        redis_prefix,
        verifier(ring, max_envelope_bytes=MAX_BYTES),
        dead_letter_topic=dead,
        dead_letter_max_bytes=4_096,
    )
    async with front.consume(spec) as running:
        await running.caught_up({(topic, 0): 2})
    assert [m.payload for m in running.delivered] == [{"seq": 1}]
    (record,) = await read_all(kafka_bootstrap, dead, 1)
    letter = DeadLetter.from_record(record)
    assert (letter.reason, letter.source_offset, letter.value_omitted) == ("oversized", 0, True)
    assert letter.value is None and record.value == b"" and record.key == b"k"


async def max_message_bytes(bootstrap: str, topic: str) -> int:
    """The topic's ``max.message.bytes`` (the broker's ``message.max.bytes`` unless set)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
        ((_, _, _, _, entries),) = response.resources
        return next(int(value) for name, value, *_ in entries if name == "max.message.bytes")
    finally:
        await admin.close()


async def test_a_key_near_the_broker_limit_is_dead_lettered_without_it_and_never_stops_the_consumer(
    front: Front,
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
) -> None:
    ring = keyring()
    topic = await unique_topic("bigkey")
    dead = await unique_topic("dlq")
    limit = await max_message_bytes(kafka_bootstrap, topic)
    garbage = b"\xc1" + os.urandom(15)
    # Just under the limit with the record batch's overhead (61 bytes) and the record's own: the
    # record is accepted, while its dead letter (the same key plus the dead-letter headers) is
    # too large for the dead-letter producer (max_request_size 1 MiB) with or without its value.
    key = os.urandom(limit - 200)
    assert key and len(key) > 1_048_000
    sign = signer(ring).sign
    big = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 << 20)
    await big.start()
    try:
        for value, k in (
            (sign({"seq": 0}, topic=topic), None),
            (garbage, key),
            (sign({"seq": 1}, topic=topic), None),
            (garbage, key),  # a second one: the consumer is still running after the first
            (sign({"seq": 2}, topic=topic), None),
        ):
            await (await big.send(topic, value, key=k))
    finally:
        await big.stop()

    spec = Spec(
        kafka_bootstrap, [topic], redis_url, redis_prefix, verifier(ring), dead_letter_topic=dead
    )
    async with front.consume(spec) as running:
        await running.caught_up({(topic, 0): 5})
        assert running.alive()
    assert [m.payload for m in running.delivered] == [{"seq": 0}, {"seq": 1}, {"seq": 2}]
    assert running.metrics.rejected == {"malformed": 2}
    assert running.metrics.dead_lettered == 2 and running.metrics.dead_letters_dropped == 0

    letters = await read_all(kafka_bootstrap, dead, 2)
    assert len(letters) == 2
    for record, offset in zip(letters, (1, 3), strict=True):
        letter = DeadLetter.from_record(record)
        assert (letter.reason, letter.source_topic, letter.source_offset) == (
            "malformed",
            topic,
            offset,
        )
        assert record.key is None and record.value == b""
        assert letter.key is None and letter.value is None
        assert letter.value_omitted and letter.key_omitted
        assert letter.key_sha256 == hashlib.sha256(key).hexdigest()
        headers = header_map(record.headers)
        assert headers[HEADER_VALUE_OMITTED] == b"1" and headers[HEADER_KEY_OMITTED] == b"1"
        assert headers[HEADER_KEY_SHA256] == hashlib.sha256(key).hexdigest().encode()
