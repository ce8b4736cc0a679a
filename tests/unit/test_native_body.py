"""The extension's check of the encoder's map-key rule against msgpack's own reader.

``encode_payload`` refuses a body whose maps have keys other than str or bin (the decoding
profile cannot read it back). Where the extension is loaded it walks the encoded body instead of
reading it back; its answer must be the reader's on every body, and anything it is not sure of
(a truncated or overlong value, deep nesting) must be left to the reader. The extension must be
installed: this module fails, it does not skip, without it.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from signed_bus import _native

NATIVE: Any = _native.load("1")  # ConfigurationError without the extension

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=300)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20))
)
_keys = (
    st.text(max_size=40)
    | st.binary(max_size=40)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.none()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(_keys, inner, max_size=20),
    max_leaves=60,
)


def reader_accepts(body: bytes) -> bool:
    try:
        msgpack.unpackb(body, raw=True, use_list=False)
    except (ValueError, TypeError):
        return False
    return True


@settings(max_examples=600, deadline=None)
@given(_values)
def test_the_walk_answers_as_msgpacks_reader_on_every_encoded_value(value: object) -> None:
    body = msgpack.packb(value)
    verdict = NATIVE.check_map_keys(body)
    assert verdict in (0, 1)  # a body msgpack wrote is always one well-formed value
    assert (verdict == 1) == reader_accepts(body)


@settings(max_examples=600, deadline=None)
@given(_values, st.data())
def test_a_cut_or_extended_body_is_never_answered_against_the_reader(
    value: object, data: st.DataObject
) -> None:
    body = msgpack.packb(value)
    cut = data.draw(st.integers(0, len(body)))
    for mutated in (body[:cut], body + data.draw(st.binary(min_size=1, max_size=4))):
        verdict = NATIVE.check_map_keys(mutated)
        if verdict != -1:  # only a clear answer has to agree; -1 leaves it to the reader
            assert (verdict == 1) == reader_accepts(mutated), mutated


def test_deep_nesting_is_left_to_the_reader() -> None:
    body = b"\x91" * 5000 + b"\x01"
    assert NATIVE.check_map_keys(body) == -1
    assert not reader_accepts(body)
