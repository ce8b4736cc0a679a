"""Crafted values cost no more to reject than random bytes: no decoder amplification.

Each shape of signed_bus.bench.crafted fills the 1 MiB cap; rejecting it must allocate a few
KiB at most (tracemalloc), whatever it holds. Allocation, not wall-clock time, is asserted: it
is what a parse that materialises objects cannot avoid, and it does not flake under load.
"""

from __future__ import annotations

import os
import tracemalloc

import pytest

from signed_bus._decode import decode_header
from signed_bus._envelope import MAX_PROTECTED_BYTES, encode_envelope
from signed_bus._keys import HmacKey, Keyring
from signed_bus._verifier import Verifier
from signed_bus.bench.crafted import SHAPES, crafted
from signed_bus.errors import MalformedEnvelope, VerificationError

SIZE = 1_048_576
#: A rejection may allocate its error and a small header, never a copy of the value.
MAX_ALLOCATED = 16 * 1024

REASONS = {
    "nested arrays": "unsupported_version",
    "v1 tag, nested arrays": "malformed",
    "nested arrays in a v1 header": "malformed",
    "nested maps": "unsupported_version",
    "many small ints": "unsupported_version",
    "long array of nil": "unsupported_version",
    "deep nesting": "unsupported_version",
    "ext types": "unsupported_version",
    "huge declared lengths": "malformed",
    "v1 header of maximum size": "malformed",
    "v1 junk header, maximum body": "malformed",
}


def verifier() -> Verifier:
    ring = Keyring([HmacKey("k", os.urandom(32), issuers=["agent"])])
    return Verifier(ring, max_envelope_bytes=SIZE, audit=True)


def rejection(value: bytes) -> tuple[str, int]:
    """(reason, peak bytes allocated while rejecting value)."""
    v = verifier()
    tracemalloc.start()
    try:
        with pytest.raises(VerificationError) as caught:
            v.verify(value, topic="t", key=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return caught.value.reason, peak


def test_every_shape_has_an_expected_reason() -> None:
    assert set(REASONS) == set(SHAPES)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_crafted_value_is_rejected_without_amplification(shape: str) -> None:
    value = crafted(shape, SIZE)
    assert len(value) > SIZE - 16
    reason, peak = rejection(value)
    assert reason == REASONS[shape]
    assert peak < MAX_ALLOCATED, f"{shape}: {peak} bytes allocated to reject it"


def test_random_bytes_cost_the_same_bound() -> None:
    for _ in range(8):
        reason, peak = rejection(os.urandom(SIZE))
        assert reason in {"malformed", "unsupported_version"}
        assert peak < MAX_ALLOCATED


def test_header_longer_than_any_valid_one_is_not_decoded() -> None:
    # A str of MAX_PROTECTED_BYTES + 1 bytes would decode as one object; it is refused first.
    long_header = b"\xc0" * (MAX_PROTECTED_BYTES + 1)
    with pytest.raises(MalformedEnvelope, match="longer than"):
        decode_header(long_header)
    reason, _ = rejection(encode_envelope(long_header, b"", b"\x00" * 32))
    assert reason == "malformed"
