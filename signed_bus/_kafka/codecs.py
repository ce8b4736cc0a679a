"""Bounded decompression of fetched record batches.

aiokafka decompresses every compressed record batch in full, with no limit on the output, before
any record reaches the verifier (and so before ``max_envelope_bytes``). A small batch of zeros
decompresses to thousands of times its size: about 1,000:1 for gzip, 250:1 for lz4, 21:1 for
snappy and 32,000:1 for zstd, so a ~1 MB zstd batch (the broker's default ``max.message.bytes``)
is ~32 GiB and the kernel kills the consumer, on every restart.

:func:`install` replaces the decoders aiokafka's record readers call, at decode time, by the
bounded ones here: each stops as soon as the output of one batch would exceed
:data:`MAX_DECOMPRESSED_BATCH_BYTES`, having allocated at most about that much, and raises
:class:`aiokafka.errors.CorruptRecordException` naming the cap. Because it is raised inside
aiokafka's record parser, the isolating fetch (``fetch.py``) skips that batch as an
``undecodable`` range like any other batch the client cannot decode. For every batch within the
cap the output is byte for byte what aiokafka's own decoders return.

Where aiokafka looks the decoders up: ``aiokafka.record.default_records`` and
``aiokafka.record.legacy_records`` (pure Python) and their compiled twins
``aiokafka.record._crecords.default_records`` / ``legacy_records`` each do
``from aiokafka.codec import gzip_decode, ...`` and call those module globals by name when a
batch is decompressed (Cython looks module globals up at call time), so :func:`install` rebinds
the names in those four modules, in ``aiokafka.protocol.message`` (the old message-set codec,
which the consumer does not use) and in ``aiokafka.codec`` itself for any module imported later.

The cap, 64 MiB: an honest batch is at most the broker's ``max.message.bytes`` compressed (1 MiB
by default) and real payloads compress by well under 64:1 (signed envelopes carry random nonces
and signatures and barely compress at all), so no honest batch comes near it, while the worst
case per batch read stays far from what kills a process. A deployment that raises
``max.message.bytes`` for very compressible payloads raises the cap with
:func:`set_max_decompressed_batch_bytes`.

Costs: aiokafka decodes batches one at a time, synchronously, in ``getmany()``, so a process
holds about one cap per event-loop thread at worst (a refused batch: the cap; an honest batch of
n bytes: about 2n, the output and its copy as bytes). zstd and lz4 are decompressed into a
buffer of 8 times the compressed size (at least 256 KiB) that grows fourfold, decompressing
again, until the output fits: an honest batch that compresses by more than 8:1 is decompressed
a few times over; gzip streams in 1 MiB pieces; snappy blocks state their length, checked
before decompressing.
"""

from __future__ import annotations

import importlib
import struct
import zlib
from collections.abc import Callable
from typing import Any

import aiokafka.codec
import cramjam
from aiokafka.errors import CorruptRecordException

__all__ = [
    "MAX_DECOMPRESSED_BATCH_BYTES",
    "gzip_decode",
    "install",
    "lz4_decode",
    "max_decompressed_batch_bytes",
    "set_max_decompressed_batch_bytes",
    "snappy_decode",
    "zstd_decode",
]

MAX_DECOMPRESSED_BATCH_BYTES = 64 * 1024 * 1024
"""Default cap on the decompressed bytes of one record batch."""

_cap = MAX_DECOMPRESSED_BATCH_BYTES

# aiokafka's own decoders, as imported before :func:`install` (the tests compare against them).
AIOKAFKA_DECODERS: dict[str, Callable[[Any], bytes]] = {
    name: getattr(aiokafka.codec, name)
    for name in ("gzip_decode", "snappy_decode", "lz4_decode", "zstd_decode")
}

# The modules whose globals aiokafka's batch readers call at decode time.
_MODULES = (
    "aiokafka.codec",
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
    "aiokafka.protocol.message",  # the old message-set codec; not on the fetch path
)
_NAMES = ("gzip_decode", "snappy_decode", "lz4_decode", "zstd_decode")

# First output buffer for the cramjam codecs, as a multiple of the compressed size; it grows
# fourfold (a full decompression again) until the output fits or the cap is reached.
_FIRST_RATIO = 8
_FIRST_MIN = 256 * 1024
_GROWTH = 4

# gzip output is taken in pieces of at most this many bytes.
_CHUNK = 1024 * 1024

_XERIAL_HEADER = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01"


def max_decompressed_batch_bytes() -> int:
    """The cap now in force on the decompressed bytes of one record batch."""
    return _cap


def set_max_decompressed_batch_bytes(limit: int) -> None:
    """Set the cap on the decompressed bytes of one record batch, for every consumer of this
    process, from its next decompressed batch on (default :data:`MAX_DECOMPRESSED_BATCH_BYTES`)."""
    global _cap
    if type(limit) is not int or limit < 1:
        raise ValueError("the decompressed batch cap must be a positive int")
    _cap = limit


def _too_large(codec: str, cap: int) -> CorruptRecordException:
    return CorruptRecordException(
        f"{codec} record batch decompresses to more than the cap of {cap} bytes"
    )


def gzip_decode(payload: Any) -> bytes:
    """aiokafka's gzip decoding (concatenated members, zero padding between them), bounded."""
    cap = _cap
    data = memoryview(payload).cast("B")
    pieces: list[bytes] = []
    size = 0
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = d.decompress(data, min(_CHUNK, cap + 1 - size))
            while True:
                pieces.append(chunk)
                size += len(chunk)
                if size > cap:
                    del pieces
                    raise _too_large("gzip", cap)
                if d.eof or not (d.unconsumed_tail or chunk):
                    break
                chunk = d.decompress(d.unconsumed_tail, min(_CHUNK, cap + 1 - size))
            if not d.eof:
                # All input consumed and no output pending (zlib flushes with Z_SYNC_FLUSH).
                raise CorruptRecordException(
                    "gzip record batch ended before the end-of-stream marker"
                )
        except zlib.error as exc:
            raise CorruptRecordException(f"gzip record batch does not decompress: {exc}") from None
        rest = d.unused_data.lstrip(b"\x00")
        if not rest:
            return b"".join(pieces)
        data = memoryview(rest)


def _into(codec: str, decompress_into: Callable[[Any, Any], int], data: bytes) -> bytes:
    """``decompress_into`` buffers growing up to cap + 1 bytes: the output if it fits the cap."""
    cap = _cap
    size = min(cap + 1, max(_FIRST_MIN, _FIRST_RATIO * len(data)))
    while True:
        buffer = bytearray(size)
        try:
            n = int(decompress_into(data, buffer))
        except cramjam.DecompressionError as exc:
            # Either the output did not fit ("failed to write whole buffer") or the data is
            # corrupt: only a buffer of the full cap + 1 tells.
            del buffer
            if size > cap:
                if "whole buffer" in str(exc):
                    raise _too_large(codec, cap) from None
                raise CorruptRecordException(
                    f"{codec} record batch does not decompress: {exc}"
                ) from None
            size = min(cap + 1, size * _GROWTH)
            continue
        if n > cap:
            raise _too_large(codec, cap)
        if n < size:
            return bytes(memoryview(buffer)[:n])
        # Exactly full: there may be more; retry larger (n <= cap, so size <= cap here).
        del buffer
        size = min(cap + 1, size * _GROWTH)


def zstd_decode(payload: Any) -> bytes:
    """aiokafka's zstd decoding, bounded."""
    return _into("zstd", cramjam.zstd.decompress_into, bytes(payload))


def lz4_decode(payload: Any) -> bytes:
    """aiokafka's lz4 (frame format) decoding, bounded."""
    return _into("lz4", cramjam.lz4.decompress_into, bytes(payload))


def _snappy_block(block: Any, budget: int, cap: int) -> bytes:
    """One raw snappy block, whose header states its length: refused before decompressing if
    that is more than ``budget``."""
    try:
        length = int(cramjam.snappy.decompress_raw_len(block))
        if length > budget:
            raise _too_large("snappy", cap)
        return bytes(cramjam.snappy.decompress_raw(block))
    except cramjam.DecompressionError as exc:
        raise CorruptRecordException(f"snappy record batch does not decompress: {exc}") from None


def snappy_decode(payload: Any) -> bytes:
    """aiokafka's snappy decoding (xerial framing or one raw block), bounded."""
    cap = _cap
    data = memoryview(bytes(payload))
    if len(data) <= 16 or data[:16] != _XERIAL_HEADER:
        return _snappy_block(data, cap, cap)
    out = bytearray()
    cursor = 16
    while cursor < len(data):
        if cursor + 4 > len(data):
            raise CorruptRecordException("snappy record batch: truncated xerial block length")
        (size,) = struct.unpack_from("!i", data, cursor)
        cursor += 4
        if size < 0 or cursor + size > len(data):
            raise CorruptRecordException("snappy record batch: xerial block out of bounds")
        out += _snappy_block(data[cursor : cursor + size], cap - len(out), cap)
        cursor += size
    return bytes(out)


_BOUNDED: dict[str, Callable[[Any], bytes]] = {
    "gzip_decode": gzip_decode,
    "snappy_decode": snappy_decode,
    "lz4_decode": lz4_decode,
    "zstd_decode": zstd_decode,
}


def installed_modules() -> list[str]:
    """The aiokafka modules whose decoders are the bounded ones now."""
    found = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if any(getattr(module, n, None) is _BOUNDED[n] for n in _NAMES):
            found.append(name)
    return found


def install() -> None:
    """Make every decompression aiokafka does for a reader go through the bounded decoders.

    Idempotent. Only names a module already binds are replaced (the legacy readers have no
    zstd); a compiled reader that is absent (pure-Python aiokafka) is skipped.
    """
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in _NAMES:
            if hasattr(module, attr):
                setattr(module, attr, _BOUNDED[attr])
