"""A compressed record batch that decompresses to far more than it weighs, on a real broker.

Zeros compress by ~32,000:1 in zstd, ~1,000:1 in gzip, ~250:1 in lz4 and ~21:1 in snappy: a batch
the broker accepts with its default limits decompresses to hundreds of MiB, and aiokafka would
decompress it whole before any record reaches the verifier. The bounded decoders stop it at the
cap (64 MiB): the consumer, in its own process so that its memory can be measured, dead-letters
the batch as ``undecodable`` and delivers the honest records before and after it (those after it
compressed in the same codec, by librdkafka: the bounded decoders read honest batches exactly,
which the last test checks record by record against aiokafka's own decoders).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import sys
from pathlib import Path

import confluent_kafka
import pytest

from signed_bus._deadletter import (
    HEADER_NOT_DECODED,
    HEADER_SOURCE_LAST_OFFSET,
    DeadLetter,
    header_map,
)
from signed_bus._kafka import codecs
from signed_bus._kafka.codecs import MAX_DECOMPRESSED_BATCH_BYTES
from tests.conftest import TopicFactory
from tests.integration.bus import keyring, plain_producer, read_all, signer, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("_bomb_worker.py")
MIB = 1024 * 1024
BOMB_RECORDS = 192  # of 1 MiB of zeros each: 192 MiB in one batch, three times the cap
# Snappy's ratio on zeros (~21:1) keeps a batch within the broker's default 1 MiB under the cap,
# so its topic takes larger batches; the others are accepted with the broker's defaults.
TOPIC_CONFIG = {"snappy": {"max.message.bytes": str(16 * MIB)}}
_READER_MODULES = [importlib.import_module(name) for name in codecs._MODULES]


def _bomb(bootstrap: str, topic: str, codec: str) -> None:
    """BOMB_RECORDS zero-filled values of 1 MiB in one batch compressed with ``codec``."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 1_000,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000_000,
            "message.max.bytes": 1_000_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "acks": -1,
        }
    )
    zeros = bytes(MIB)
    for _ in range(BOMB_RECORDS):
        producer.produce(topic, zeros, partition=0)
    assert producer.flush(60) == 0, "confluent-kafka did not deliver the batch"


def _honest_compressed(bootstrap: str, topic: str, codec: str, values: list[bytes]) -> None:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 100, "acks": -1}
    )
    for value in values:
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0


@pytest.mark.parametrize("codec", ["zstd", "gzip", "lz4", "snappy"])
async def test_a_decompression_bomb_is_dead_lettered_within_bounded_memory(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    codec: str,
) -> None:
    ring = keyring()
    sign = signer(ring).sign
    topic = await unique_topic(f"bomb-{codec}", config=TOPIC_CONFIG.get(codec))
    dlq = await unique_topic(f"bomb-{codec}-dlq")
    text = "compressible " * 200
    async with plain_producer(kafka_bootstrap) as producer:  # offsets 0-2, uncompressed
        for seq in range(3):
            await producer.send_and_wait(topic, sign({"seq": seq, "text": text}, topic=topic))
    await asyncio.to_thread(_bomb, kafka_bootstrap, topic, codec)  # offsets 3-194
    after = [sign({"seq": seq, "text": text}, topic=topic) for seq in range(3, 6)]
    await asyncio.to_thread(_honest_compressed, kafka_bootstrap, topic, codec, after)
    first_bomb, last_bomb = 3, 3 + BOMB_RECORDS - 1
    end = last_bomb + 4

    env = {**os.environ, "SIGNED_BUS_KEYRING": ring.to_json()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), kafka_bootstrap, topic, dlq, unique("g-bomb"), redis_url,
        redis_prefix, str(end),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=150)
    assert proc.returncode == 0, (proc.returncode, stderr.decode(errors="replace")[-3000:])
    result = json.loads(stdout)

    growth = (result["rss_peak_kib"] - result["rss_before_kib"]) * 1024
    print(f"{codec}: the consumer grew by {growth / MIB:.0f} MiB")  # shown by pytest -s
    assert growth < MAX_DECOMPRESSED_BATCH_BYTES + 64 * MIB, (
        f"the consumer grew by {growth / MIB:.0f} MiB reading a {codec} bomb"
    )
    assert result["stopped"] is None, result["stopped"]
    assert result["offsets"] == [0, 1, 2, last_bomb + 1, last_bomb + 2, last_bomb + 3]
    assert result["seqs"] == [0, 1, 2, 3, 4, 5]
    assert result["rejected"] == {"undecodable": 1}  # the whole batch, as one range
    assert result["dead_lettered"] == 1

    (letter_record,) = await read_all(kafka_bootstrap, dlq, 1)
    letter = DeadLetter.from_record(letter_record)
    assert (letter.reason, letter.source_topic, letter.source_offset) == (
        "undecodable",
        topic,
        first_bomb,
    )
    headers = header_map(letter_record.headers)
    assert headers[HEADER_NOT_DECODED] == b"1"
    assert headers[HEADER_SOURCE_LAST_OFFSET] == str(last_bomb).encode()
    assert "CorruptRecordException" in letter.error
    assert f"cap of {MAX_DECOMPRESSED_BATCH_BYTES} bytes" in letter.error
    assert not letter.value and letter.key is None


async def _read_plain(bootstrap: str, topic: str, count: int) -> list[tuple[object, ...]]:
    records = await read_all(bootstrap, topic, count)
    return [(r.offset, r.key, r.value, tuple(r.headers)) for r in records]


@pytest.mark.parametrize("codec", ["zstd", "gzip", "lz4", "snappy"])
async def test_honest_librdkafka_batches_read_exactly_as_aiokafka_reads_them(
    kafka_bootstrap: str,
    unique_topic: TopicFactory,
    codec: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every record of librdkafka-compressed batches (small and large, random and compressible
    values, keys, headers, empty values) reads the same through the bounded decoders as through
    aiokafka's own."""
    topic = await unique_topic(f"codec-same-{codec}")
    rng = random.Random(codec)
    values = [
        b"",
        b"x",
        rng.randbytes(900_000),
        b"compressible " * 70_000,
        *(
            rng.randbytes(rng.randrange(1, 5_000)) + bytes(rng.randrange(0, 50_000))
            for _ in range(60)
        ),
    ]

    def produce() -> None:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "compression.type": codec,
                "linger.ms": 200,
                "acks": -1,
            }
        )
        for n, value in enumerate(values):
            producer.produce(
                topic, value, key=f"k{n}".encode() if n % 2 else None, partition=0,
                headers=[("h", rng.randbytes(8))] if n % 3 else None,
            )  # fmt: skip
        assert producer.flush(30) == 0

    await asyncio.to_thread(produce)
    bounded = await _read_plain(kafka_bootstrap, topic, len(values))
    assert [value for _, _, value, _ in bounded] == values
    assert codecs.installed_modules()  # that read went through the bounded decoders
    for module in _READER_MODULES:
        for name, original in codecs.AIOKAFKA_DECODERS.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, original)
    assert codecs.installed_modules() == []
    assert await _read_plain(kafka_bootstrap, topic, len(values)) == bounded
