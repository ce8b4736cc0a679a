"""Body decoding profiles (docs/ENVELOPE.md section 3): what .payload accepts and refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest

from signed_bus._keys import HmacKey, Keyring
from signed_bus._payload import (
    MAX_DEPTH,
    MAX_MSGPACK_DEPTH,
    PayloadError,
    decode_json,
    decode_msgpack,
)
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import MalformedEnvelope

TOPIC = "results"


def nested(depth: int, *, opener: bytes, closer: bytes, leaf: bytes) -> bytes:
    return opener * depth + leaf + closer * depth


ACCEPTED_JSON: list[tuple[bytes, Any]] = [
    (b'{"a": [1, 2.5, "x", null, true]}', {"a": [1, 2.5, "x", None, True]}),
    (b" \n[]\t", []),
    ('"caf\u00e9 \U0001f600"'.encode(), "caf\u00e9 \U0001f600"),
    (b'"\\ud83d\\ude00"', "\U0001f600"),  # a surrogate pair escape is one code point
    (b"123456789012345678901234567890", 123456789012345678901234567890),
    (nested(MAX_DEPTH, opener=b"[", closer=b"]", leaf=b"1"), None),
]
REFUSED_JSON: list[tuple[str, bytes]] = [
    ("nan", b"[NaN]"),
    ("infinity", b"[Infinity]"),
    ("minus-infinity", b"[-Infinity]"),
    ("overflowing-number", b"[1e400]"),
    ("utf16", '{"a": 1}'.encode("utf-16")),
    ("utf16-le-no-bom", '{"a": 1}'.encode("utf-16-le")),
    ("bom", b'\xef\xbb\xbf{"a": 1}'),
    ("invalid-utf8", b'"\xff"'),
    ("lone-surrogate-escape", b'"\\ud800"'),
    ("lone-surrogate-in-key", b'{"\\udc00": 1}'),
    ("duplicate-member", b'{"a": 1, "a": 2}'),
    ("duplicate-nested-member", b'[{"b": {"a": 1, "a": 1}}]'),
    ("too-deep", nested(MAX_DEPTH + 1, opener=b"[", closer=b"]", leaf=b"1")),
    ("very-deep", nested(100_000, opener=b"[", closer=b"]", leaf=b"")),
    ("trailing-text", b"{} {}"),
    ("empty", b""),
]


@pytest.mark.parametrize(("body", "expected"), ACCEPTED_JSON, ids=range(len(ACCEPTED_JSON)))
def test_json_profile_accepts(body: bytes, expected: Any) -> None:
    value = decode_json(body)
    if expected is not None:
        assert value == expected


@pytest.mark.parametrize(("name", "body"), REFUSED_JSON, ids=[n for n, _ in REFUSED_JSON])
def test_json_profile_refuses(name: str, body: bytes) -> None:
    assert name
    with pytest.raises(PayloadError):
        decode_json(body)


ACCEPTED_MSGPACK: list[tuple[bytes, Any]] = [
    (msgpack.packb({"a": [1, b"x", None]}), {"a": [1, b"x", None]}),
    (msgpack.packb({"one": 1, b"k": 3, b"one": 2}), {"one": 1, b"k": 3, b"one": 2}),
    # a repeated key keeps its last value (msgpack's own rule, free on the hot path)
    (b"\x82\xa1a\x01\xa1a\x02", {"a": 2}),
    (msgpack.packb(msgpack.Timestamp(1, 2)), msgpack.Timestamp(1, 2)),
    (msgpack.packb(msgpack.ExtType(5, b"raw")), msgpack.ExtType(5, b"raw")),
    (nested(MAX_MSGPACK_DEPTH, opener=b"\x91", closer=b"", leaf=b"\x01"), None),
    (nested(MAX_MSGPACK_DEPTH - 1, opener=b"\x81\xa1k", closer=b"", leaf=b"\x80"), None),
]
REFUSED_MSGPACK: list[tuple[str, bytes]] = [
    ("trailing-bytes", msgpack.packb(1) + b"\x01"),
    ("truncated", msgpack.packb([1, 2])[:-1]),
    ("invalid-utf8-str", b"\xa1\xff"),
    ("utf8-encoded-surrogate", b"\xa3\xed\xa0\x80"),
    ("array-key", b"\x81\x91\x01\x02"),
    ("map-key", b"\x81\x80\x02"),
    ("nil-key", b"\x81\xc0\x02"),
    ("bool-key", b"\x81\xc3\x02"),
    ("float-key", b"\x81\xcb" + b"\x00" * 8 + b"\x02"),
    ("int-key", b"\x81\x01\x02"),
    ("too-deep", nested(MAX_MSGPACK_DEPTH + 1, opener=b"\x91", closer=b"", leaf=b"\x01")),
    ("too-deep-maps", nested(MAX_MSGPACK_DEPTH, opener=b"\x81\xa1k", closer=b"", leaf=b"\x80")),
    ("very-deep", b"\x91" * 100_000 + b"\x01"),
    ("reserved-type-byte", b"\xc1"),
    ("empty", b""),
]


@pytest.mark.parametrize(("body", "expected"), ACCEPTED_MSGPACK, ids=range(len(ACCEPTED_MSGPACK)))
def test_msgpack_profile_accepts(body: bytes, expected: Any) -> None:
    value = decode_msgpack(body)
    if expected is not None:
        assert value == expected


def test_msgpack_floats_are_taken_as_they_are() -> None:
    value = decode_msgpack(msgpack.packb([math.nan, math.inf, -math.inf, 0.5]))
    assert isinstance(value, list)
    assert math.isnan(value[0]) and value[1:] == [math.inf, -math.inf, 0.5]


@pytest.mark.parametrize(("name", "body"), REFUSED_MSGPACK, ids=[n for n, _ in REFUSED_MSGPACK])
def test_msgpack_profile_refuses(name: str, body: bytes) -> None:
    assert name
    with pytest.raises(PayloadError):
        decode_msgpack(body)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", b) for _, b in REFUSED_JSON]
    + [("application/msgpack", b) for _, b in REFUSED_MSGPACK],
)
def test_verified_message_reports_a_profile_breach_as_malformed_payload(
    content_type: str, body: bytes
) -> None:
    ring = Keyring([HmacKey("k", b"s" * 32, issuers=["agent"])])
    signer = Signer(ring, kid="k", issuer="agent", model="m")
    value = signer.sign_bytes(body, content_type=content_type, topic=TOPIC)
    msg = Verifier(ring).verify(value, topic=TOPIC, key=None)
    with pytest.raises(MalformedEnvelope) as caught:
        _ = msg.payload
    assert caught.value.reason == "malformed"
    assert msg.body == body  # the verified bytes stay readable


def test_json_profile_matches_the_standard_library_on_plain_documents() -> None:
    document = {"request": "req-42", "scores": [0.5, 1e-3], "nested": {"k": [True, None]}}
    body = json.dumps(document).encode()
    assert decode_json(body) == json.loads(body) == document


def test_without_the_c_unpacker_the_msgpack_depth_is_walked_to_the_same_limit() -> None:
    from signed_bus._payload import _check_tree

    deepest: list[object] = []
    for _ in range(MAX_MSGPACK_DEPTH - 1):
        deepest = [deepest]
    _check_tree(deepest, text=False, max_depth=MAX_MSGPACK_DEPTH)
    with pytest.raises(PayloadError, match="deeper"):
        _check_tree([deepest], text=False, max_depth=MAX_MSGPACK_DEPTH)


def test_a_large_body_decodes_with_the_collector_paused_and_restored() -> None:
    import gc

    calls: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            calls.append(info["generation"])

    many = b"\xdd" + (300_000).to_bytes(4, "big") + b"\x90" * 300_000  # 300,000 empty arrays
    gc.callbacks.append(count)
    try:
        assert len(decode_msgpack(many)) == 300_000  # type: ignore[arg-type]
        # Collections no longer run every 700 allocations (about 400 here): at most the one or
        # two that follow once the collector is back on.
        assert len(calls) <= 2, len(calls)
        with pytest.raises(PayloadError):
            decode_msgpack(many + b"\x01")
        with pytest.raises(PayloadError):
            decode_json(b"[" + b"[]," * 30_000 + b"NaN]")
    finally:
        gc.callbacks.remove(count)
    assert gc.isenabled()
