"""Crafted record values of a given size, built to make a verifier's decoder work hard.

Shared by ``benchmarks/bench_reject.py`` (what rejecting each costs against random bytes of the
same size) and the unit tests (each is rejected with the right reason, at bounded cost). Every
shape fills ``size`` bytes exactly; none is signed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from signed_bus._envelope import TAG, encode_envelope

__all__ = ["SHAPES", "crafted", "random_value"]

_V1_PREFIX: Final = b"\x94" + bytes([0xA0 | len(TAG)]) + TAG.encode()
_OTHER_TAG: Final = b"\xad" + b"signed-bus/v2"


def _fill(head: bytes, unit: bytes, size: int, pad: bytes = b"\xc0") -> bytes:
    """head, then unit repeated, then pad bytes up to exactly size."""
    count = (size - len(head)) // len(unit)
    body = head + unit * count
    return body + pad * (size - len(body))


def _tree(size: int, leaf: bytes, node: int = 0x94) -> bytes:
    """A full tree of 4-item fixarrays (or 2-entry fixmaps for node=0x82) in preorder, leaves
    ``leaf``, as large as fits in ``size`` bytes: every container is within any item limit a
    decoder may set (an envelope is a 4-array), so only an object count stops it."""
    width = 4
    out = bytearray()

    def build(depth: int) -> None:
        if depth == 0:
            out.extend(leaf)
            return
        out.append(node)
        for _ in range(width):
            build(depth - 1)

    depth = 1
    while (width ** (depth + 1)) * len(leaf) < size:
        depth += 1
    build(depth - 1)
    return bytes(out)


def _v1(protected: bytes, body: bytes = b"", sig: bytes = b"\x00" * 32) -> bytes:
    return encode_envelope(protected, body, sig)


def _other_version(inner: bytes, size: int) -> bytes:
    """[ "signed-bus/v2", <inner>, <inner>, ... ] filling size: another version's framing."""
    head = b"\xdd" + (0xFFFFFFFF).to_bytes(4, "big") + _OTHER_TAG
    return _fill(head, inner, size)


def nested_arrays(size: int) -> bytes:
    # [tag-v2, T, T, T] with T a tree of 15-item arrays ending in empty arrays.
    tree = _tree(size // 4, b"\x90")
    return _fill(b"\x94" + _OTHER_TAG, tree, size)


def v1_tag_nested_arrays(size: int) -> bytes:
    # The v1 tag, then trees of small arrays where the bins should be.
    return _fill(_V1_PREFIX, _tree(size // 4, b"\x90"), size)


def nested_arrays_as_v1_header(size: int) -> bytes:
    # Correct v1 framing whose protected header is a tree of small arrays.
    room = size - len(_v1(b"", b"")) - 4
    return _v1(_fill(b"", _tree(room, b"\x90"), room))


def nested_maps(size: int) -> bytes:
    tree = _tree(size // 4, b"\x00", node=0x82)
    return _fill(b"\x94" + _OTHER_TAG, tree, size)


def small_ints(size: int) -> bytes:
    return _fill(b"\x94" + _OTHER_TAG, _tree(size // 4, b"\x01"), size)


def nil_arrays(size: int) -> bytes:
    # array32 of nils right after a foreign tag: one long flat array.
    return _other_version(b"\xc0", size)


def deep_nesting(size: int) -> bytes:
    return _fill(b"\x94" + _OTHER_TAG, b"\x91", size, pad=b"\x90")


def ext_items(size: int) -> bytes:
    # fixext 1 items (type 5) in small arrays: an object per 3 bytes.
    return _fill(b"\x94" + _OTHER_TAG, _tree(size // 4, b"\xd4\x05\x00"), size)


def huge_declared_lengths(size: int) -> bytes:
    # The framing announces 4 GiB items; the value ends long before.
    return _fill(_V1_PREFIX + b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", size)


def v1_header_of_max_size(size: int) -> bytes:
    # Correct v1 framing, a protected header as large as the value allows (a long str).
    room = size - len(_v1(b"", b"")) - 8
    text = b"x" * (room - 5)
    return _v1(b"\xdb" + len(text).to_bytes(4, "big") + text)


def v1_body_of_max_size(size: int) -> bytes:
    # A valid-looking v1 framing with a large body: the header decodes no further than its size.
    protected = b"\x81\xa3alg\xa5HS256"
    room = size - len(_v1(protected, b"")) - 4
    return _v1(protected, b"\x00" * room)


SHAPES: Final[dict[str, Callable[[int], bytes]]] = {
    "nested arrays": nested_arrays,
    "v1 tag, nested arrays": v1_tag_nested_arrays,
    "nested arrays in a v1 header": nested_arrays_as_v1_header,
    "nested maps": nested_maps,
    "many small ints": small_ints,
    "long array of nil": nil_arrays,
    "deep nesting": deep_nesting,
    "ext types": ext_items,
    "huge declared lengths": huge_declared_lengths,
    "v1 header of maximum size": v1_header_of_max_size,
    "v1 junk header, maximum body": v1_body_of_max_size,
}


def crafted(shape: str, size: int) -> bytes:
    value = SHAPES[shape](size)
    assert len(value) <= size, (shape, len(value), size)
    return value


def random_value(size: int) -> bytes:
    return os.urandom(size)
