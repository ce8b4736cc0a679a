"""The bounded decoders aiokafka's record readers use once signed_bus._kafka is imported.

Each returns exactly what aiokafka's own decoder returns for an honest payload, and stops a
payload that decompresses beyond the cap with CorruptRecordException, having allocated about
the cap at most. The record readers themselves (compiled and pure Python, v2 and legacy batches)
call the bounded decoders.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import aiokafka.codec
import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record import default_records, legacy_records

from signed_bus._kafka import codecs

CAP = 4 * 1024 * 1024

ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip_decode": aiokafka.codec.gzip_encode,
    "snappy_decode": aiokafka.codec.snappy_encode,
    "lz4_decode": aiokafka.codec.lz4_encode,
    "zstd_decode": aiokafka.codec.zstd_encode,
}
BOUNDED: dict[str, Callable[[Any], bytes]] = {
    "gzip_decode": codecs.gzip_decode,
    "snappy_decode": codecs.snappy_decode,
    "lz4_decode": codecs.lz4_decode,
    "zstd_decode": codecs.zstd_decode,
}
HONEST = [
    b"x",
    os.urandom(1000),
    b"compressible " * 50_000,
    os.urandom(3 * 1024 * 1024),
    bytes(CAP),  # exactly the cap
]


@pytest.fixture
def small_cap() -> Iterator[None]:
    before = codecs.max_decompressed_batch_bytes()
    codecs.set_max_decompressed_batch_bytes(CAP)
    yield
    codecs.set_max_decompressed_batch_bytes(before)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_honest_payloads_decode_as_aiokafka_does(name: str, small_cap: None) -> None:
    original = codecs.AIOKAFKA_DECODERS[name]
    assert original is not BOUNDED[name]
    for data in HONEST:
        compressed = ENCODERS[name](data)
        assert BOUNDED[name](compressed) == original(compressed) == data
        assert BOUNDED[name](memoryview(compressed)) == data


def test_gzip_concatenated_members_and_zero_padding() -> None:
    payload = aiokafka.codec.gzip_encode(b"one") + b"\x00\x00" + aiokafka.codec.gzip_encode(b"two")
    assert codecs.gzip_decode(payload) == codecs.AIOKAFKA_DECODERS["gzip_decode"](payload)
    assert codecs.gzip_decode(payload) == b"onetwo"


def test_snappy_raw_block(small_cap: None) -> None:
    """librdkafka sends snappy as one raw block, whose header states its length."""
    payload = aiokafka.codec.snappy_encode(b"abc" * 10_000, xerial_compatible=False)
    assert codecs.snappy_decode(payload) == codecs.AIOKAFKA_DECODERS["snappy_decode"](payload)
    bomb = aiokafka.codec.snappy_encode(bytes(4 * CAP), xerial_compatible=False)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRecordException, match=f"cap of {CAP} bytes"):
            codecs.snappy_decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(bomb) + (1 << 20)  # refused before decompressing anything


@pytest.mark.parametrize("name", list(ENCODERS))
def test_bomb_stops_at_the_cap_without_large_allocations(name: str, small_cap: None) -> None:
    bomb = ENCODERS[name](bytes(64 * CAP))  # 256 MiB of zeros
    assert len(bomb) < 16 * CAP
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRecordException, match=f"cap of {CAP} bytes"):
            BOUNDED[name](bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * CAP + (1 << 20), f"{name} allocated {peak} bytes"


def test_just_over_the_cap_is_refused(small_cap: None) -> None:
    for name, encode in ENCODERS.items():
        with pytest.raises(CorruptRecordException, match="cap"):
            BOUNDED[name](encode(bytes(CAP + 1)))


@pytest.mark.parametrize("name", list(ENCODERS))
def test_corrupt_payloads_raise_corrupt_record(name: str) -> None:
    compressed = ENCODERS[name](os.urandom(100_000))
    for bad in (compressed[: len(compressed) // 2], compressed[:20] + b"\x13" * 64):
        with pytest.raises(CorruptRecordException):
            BOUNDED[name](bad)


def test_cap_setter_rejects_nonsense() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            codecs.set_max_decompressed_batch_bytes(bad)  # type: ignore[arg-type]


def test_every_reader_module_calls_the_bounded_decoders() -> None:
    expected = [
        "aiokafka.codec",
        "aiokafka.record.default_records",
        "aiokafka.record.legacy_records",
        "aiokafka.record._crecords.default_records",
        "aiokafka.record._crecords.legacy_records",
        "aiokafka.protocol.message",
    ]
    assert codecs.installed_modules() == expected  # by importing signed_bus._kafka
    codecs.install()  # idempotent
    assert codecs.installed_modules() == expected
    assert legacy_records.gzip_decode is codecs.gzip_decode
    # The compiled readers are the ones aiokafka uses here: the C path is what is covered.
    assert default_records.DefaultRecordBatch.__module__ == (
        "aiokafka.record._crecords.default_records"
    )
    assert legacy_records.LegacyRecordBatch.__module__ == "aiokafka.record._crecords.legacy_records"


def _v2_batch(builder_class: Any, codec: int, values: list[bytes]) -> bytes:
    builder = builder_class(
        magic=2,
        compression_type=codec,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=None, key=None, value=value, headers=[])
    return bytes(builder.build())


def _legacy_batch(builder_class: Any, codec: int, values: list[bytes]) -> bytes:
    builder = builder_class(magic=1, compression_type=codec, batch_size=1 << 30)
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=None, key=None, value=value)
    return bytes(builder.build())


V2_READERS = [
    pytest.param(default_records.DefaultRecordBatch, id="compiled"),
    pytest.param(default_records._DefaultRecordBatchPy, id="python"),
]
LEGACY_READERS = [
    pytest.param(legacy_records.LegacyRecordBatch, id="compiled"),
    pytest.param(legacy_records._LegacyRecordBatchPy, id="python"),
]
V2_CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.mark.parametrize("reader", V2_READERS)
@pytest.mark.parametrize("codec", list(V2_CODECS))
def test_v2_reader_refuses_a_bomb_batch(reader: Any, codec: str, small_cap: None) -> None:
    values = [bytes(1 << 20)] * 64  # 64 MiB of zeros, 16 times the cap
    batch = _v2_batch(default_records._DefaultRecordBatchBuilderPy, V2_CODECS[codec], values)
    assert len(batch) < CAP
    honest = _v2_batch(
        default_records._DefaultRecordBatchBuilderPy, V2_CODECS[codec], [b"a" * 1000, b"b"]
    )
    assert [r.value for r in reader(honest)] == [b"a" * 1000, b"b"]
    tracemalloc.start()
    try:
        with pytest.raises(CorruptRecordException, match="cap"):
            list(reader(batch))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The readers copy the compressed batch themselves: about the cap beyond that.
    assert peak < CAP + (2 << 20) + 3 * len(batch)


@pytest.mark.parametrize("reader", LEGACY_READERS)
@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4"])
def test_legacy_reader_refuses_a_bomb_batch(reader: Any, codec: str, small_cap: None) -> None:
    values = [bytes(1 << 20)] * 64
    batch = _legacy_batch(legacy_records._LegacyRecordBatchBuilderPy, V2_CODECS[codec], values)
    assert len(batch) < CAP
    with pytest.raises(CorruptRecordException, match="cap"):
        list(reader(batch, 1))
