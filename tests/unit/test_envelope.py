"""Envelope v1 codec: hand-built encoding equals msgpack, strict decoding rejects the rest."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import msgpack
import pytest

from signed_bus._decode import decode_envelope, decode_header, split_envelope
from signed_bus._envelope import (
    HEADER_KEYS,
    MAX_PARENTS,
    SIGNATURE_DOMAIN,
    TAG,
    encode_envelope,
    encode_header,
    envelope_digest,
    key_digest,
    pack_bin_header,
    pack_str,
    pack_uint,
    signed_message,
)
from signed_bus.errors import MalformedEnvelope, UnsupportedVersion, VerificationError

NONCE = bytes(range(16))
DIGEST = hashlib.sha256(b"x").digest()


def header_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "alg": "HS256",
        "kid": "k1",
        "issuer": "agent-a",
        "model": "model@1",
        "content_type": "application/msgpack",
        "topic": "results",
        "key_digest": DIGEST,
        "created_at": 1_700_000_000_000,
        "nonce": NONCE,
        "parents": (),
        "expires_at": None,
    }
    fields.update(changes)
    return fields


def header_map(**changes: Any) -> dict[str, Any]:
    """The header as an ordered dict in the encoder's key order."""
    header: dict[str, Any] = {
        "alg": "HS256",
        "kid": "k1",
        "iss": "agent-a",
        "mdl": "model@1",
        "cty": "application/msgpack",
        "tpc": "results",
        "rkd": DIGEST,
        "iat": 1_700_000_000_000,
        "nce": NONCE,
        "par": [],
    }
    header.update(changes)
    return header


# -- encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"key_digest": None},
        {"parents": (DIGEST, hashlib.sha256(b"y").digest())},
        {"parents": (DIGEST,) * MAX_PARENTS},
        {"expires_at": 1_700_000_060_000},
        {"created_at": 0},
        {"created_at": 127},
        {"created_at": 2**32 - 1},
        {"created_at": 2**63 - 1},
        {"model": "m" * 31},
        {"model": "m" * 32},
        {"model": "m" * 255},
        {"issuer": "agent-\u00e9\u4e2d"},
    ],
)
def test_hand_built_header_equals_msgpack(changes: dict[str, Any]) -> None:
    fields = header_fields(**changes)
    expected = {
        "alg": fields["alg"],
        "kid": fields["kid"],
        "iss": fields["issuer"],
        "mdl": fields["model"],
        "cty": fields["content_type"],
        "tpc": fields["topic"],
        "rkd": fields["key_digest"],
        "iat": fields["created_at"],
        "nce": fields["nonce"],
        "par": list(fields["parents"]),
    }
    if fields["expires_at"] is not None:
        expected["exp"] = fields["expires_at"]
    protected = encode_header(**fields)
    assert protected == msgpack.packb(expected)
    assert decode_header(protected) == expected


@pytest.mark.parametrize("n", [0, 1, 31, 32, 255, 256, 65535, 65536, 70000])
def test_framing_primitives_equal_msgpack(n: int) -> None:
    assert pack_str("a" * n) == msgpack.packb("a" * n)
    assert pack_bin_header(n) + b"b" * n == msgpack.packb(b"b" * n)
    assert pack_uint(n) == msgpack.packb(n)


@pytest.mark.parametrize("body_len", [0, 255, 256, 65535, 65536])
def test_envelope_framing_equals_msgpack_and_splits_back(body_len: int) -> None:
    protected = encode_header(**header_fields())
    body = b"\xaa" * body_len
    value = encode_envelope(protected, body, b"s" * 32)
    assert value == msgpack.packb([TAG, protected, body, b"s" * 32])
    assert split_envelope(value) == (protected, body, b"s" * 32)


def test_signed_message_layout() -> None:
    protected, body = b"P" * 3, b"B" * 300
    expected = (
        b"signed-bus/v1 sig\x00"
        + struct.pack(">I", 13)
        + b"signed-bus/v1"
        + struct.pack(">I", 3)
        + protected
        + struct.pack(">I", 300)
        + body
    )
    assert SIGNATURE_DOMAIN == b"signed-bus/v1 sig\x00"
    assert signed_message(protected, body) == expected


def test_length_delimiting_separates_header_from_body() -> None:
    # Moving bytes from the header to the body must change the signed message.
    assert signed_message(b"ab", b"c") != signed_message(b"a", b"bc")


def test_digests() -> None:
    assert envelope_digest(b"value") == hashlib.sha256(b"value").digest()
    assert key_digest(None) is None
    assert key_digest(b"") == hashlib.sha256(b"").digest()


def test_decode_envelope_exposes_the_unverified_fields() -> None:
    protected = encode_header(**header_fields(parents=(DIGEST,), expires_at=1_700_000_000_005))
    value = encode_envelope(protected, b"body", b"s" * 32)
    env = decode_envelope(value)
    assert env.protected == protected
    assert env.body == b"body"
    assert env.signature == b"s" * 32
    assert env.digest == hashlib.sha256(value).digest()
    assert env.header.parents == (DIGEST,)
    assert env.header.expires_at == 1_700_000_000_005
    assert env.header.key_digest == DIGEST
    assert env.signed_message == signed_message(protected, b"body")


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"alg": ""}, ValueError),
        ({"kid": "k" * 256}, ValueError),
        ({"topic": 5}, TypeError),
        ({"nonce": b"x" * 15}, ValueError),
        ({"key_digest": b"x" * 31}, ValueError),
        ({"created_at": -1}, ValueError),
        ({"created_at": 2**63}, ValueError),
        ({"expires_at": 1.0}, ValueError),
        ({"parents": [b"x" * 32] * (MAX_PARENTS + 1)}, ValueError),
    ],
)
def test_encode_header_refuses_bad_fields(changes: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        encode_header(**header_fields(**changes))


# -- strict decoding: framing --------------------------------------------------------------------

VALID = encode_envelope(encode_header(**header_fields()), b"\x80", b"s" * 32)


def test_every_truncation_is_malformed() -> None:
    for end in range(len(VALID)):
        with pytest.raises(MalformedEnvelope):
            split_envelope(VALID[:end])


@pytest.mark.parametrize("extra", [b"\x00", b"\xc0", VALID])
def test_trailing_bytes_are_malformed(extra: bytes) -> None:
    with pytest.raises(MalformedEnvelope, match="trailing"):
        split_envelope(VALID + extra)


@pytest.mark.parametrize(
    "value",
    [
        b"\x91" * 5000 + b"\x90",  # deep nesting
        b"\x94" + b"\x91" * 5000 + b"\x90",
        msgpack.packb([TAG, [[[[[]]]]], b"", b""]),
        b"\xdd\xff\xff\xff\xff",  # array32 announcing 4 billion items
        b"\xc6\xff\xff\xff\xff",  # bin32 announcing 4 GiB
        b"\xc1",  # never-used msgpack byte
        msgpack.packb({"tag": TAG}),
        msgpack.packb([TAG, b"p", b"b"]),
        msgpack.packb([TAG, b"p", b"b", b"s", b"x"]),
        msgpack.packb([TAG, "p", b"b", b"s"]),
        msgpack.packb([TAG, b"p", None, b"s"]),
        msgpack.packb([TAG.encode(), b"p", b"b", b"s"]),
        msgpack.packb([1, b"p", b"b", b"s"]),
        msgpack.packb([]),
        msgpack.packb(msgpack.ExtType(1, b"x")),
        msgpack.packb(float("nan")),
        b"",
    ],
)
def test_not_an_envelope_is_malformed(value: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        split_envelope(value)


@pytest.mark.parametrize(
    "value",
    [
        msgpack.packb(["signed-bus/v2", b"p", b"b", b"s"]),
        msgpack.packb(["signed-bus/v2", b"p", b"b", b"s", b"extra"]),
        msgpack.packb(["signed-bus/v0"]),
        msgpack.packb([""]),
    ],
)
def test_other_version_tag_is_unsupported_version(value: bytes) -> None:
    with pytest.raises(UnsupportedVersion):
        split_envelope(value)


@pytest.mark.parametrize(
    "value",
    [
        # array16 instead of fixarray
        b"\xdc\x00\x04" + VALID[1:],
        # tag as str8 instead of fixstr
        b"\x94\xd9\x0d" + TAG.encode() + VALID[15:],
        # signature as bin16 instead of bin8
        VALID[:-34] + b"\xc5\x00\x20" + b"s" * 32,
        # body as bin32 instead of bin8
        encode_envelope(b"", b"", b"").replace(b"\xc4\x00", b"\xc6\x00\x00\x00\x00", 2),
    ],
)
def test_non_shortest_framing_is_malformed(value: bytes) -> None:
    # One signed triple must have one envelope encoding, hence one digest for provenance.
    with pytest.raises(MalformedEnvelope):
        split_envelope(value)


# -- strict decoding: header ---------------------------------------------------------------------


def test_header_accepts_any_key_order() -> None:
    header = header_map()
    reordered = dict(reversed(list(header.items())))
    assert decode_header(msgpack.packb(reordered)) == header


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("iat", -1),
        ("iat", 1.5),
        ("iat", 1.7e12),
        ("iat", float("nan")),
        ("iat", float("inf")),
        ("iat", float("-inf")),
        ("iat", "1700000000000"),
        ("iat", True),
        ("iat", None),
        ("iat", 2**63),
        ("iat", 2**64 - 1),
        ("iat", -(2**63)),
        ("iat", b"\x00" * 8),
        ("exp", -1),
        ("exp", 0.5),
        ("exp", float("nan")),
        ("exp", None),
        ("exp", "5"),
        ("exp", False),
        ("nce", b"\x00" * 15),
        ("nce", b"\x00" * 17),
        ("nce", b""),
        ("nce", "0123456789abcdef"),
        ("nce", None),
        ("rkd", b"\x00" * 31),
        ("rkd", b"\x00" * 33),
        ("rkd", ""),
        ("rkd", False),
        ("par", None),
        ("par", b"\x00" * 32),
        ("par", [b"\x00" * 31]),
        ("par", ["0" * 32]),
        ("par", [[b"\x00" * 32]]),
        ("par", [b"\x00" * 32] * (MAX_PARENTS + 1)),
        ("par", {"a": 1}),
        ("alg", ""),
        ("alg", None),
        ("alg", 256),
        ("alg", b"HS256"),
        ("kid", ""),
        ("kid", b"k1"),
        ("kid", ["k1"]),
        ("iss", ""),
        ("iss", 0),
        ("mdl", ""),
        ("mdl", "m" * 256),
        ("cty", ""),
        ("cty", 1.0),
        ("tpc", ""),
        ("tpc", True),
        ("tpc", msgpack.ExtType(5, b"x")),
    ],
)
def test_header_field_with_wrong_type_or_range_is_malformed(field: str, bad: object) -> None:
    with pytest.raises(MalformedEnvelope):
        decode_header(msgpack.packb(header_map(**{field: bad})))


def test_timestamp_ext_type_is_malformed() -> None:
    header = header_map()
    header["iat"] = msgpack.Timestamp(1_700_000_000)
    with pytest.raises(MalformedEnvelope):
        decode_header(msgpack.packb(header, datetime=False))


def test_invalid_utf8_text_is_malformed() -> None:
    protected = msgpack.packb(header_map(kid="KID"))
    with pytest.raises(MalformedEnvelope):
        decode_header(protected.replace(b"\xa3KID", b"\xa3\xff\xfe\xfd"))


@pytest.mark.parametrize("key", [*HEADER_KEYS[:-1]])
def test_missing_header_key_is_malformed(key: str) -> None:
    header = header_map()
    del header[key]
    with pytest.raises(MalformedEnvelope):
        decode_header(msgpack.packb(header))


@pytest.mark.parametrize("extra", [{"xyz": 1}, {"ALG": "HS256"}, {b"alg": "x"}, {1: 1}])
def test_unknown_header_key_is_malformed(extra: dict[Any, Any]) -> None:
    header: dict[Any, Any] = header_map()
    header.update(extra)
    with pytest.raises(MalformedEnvelope):
        decode_header(msgpack.packb(header))


def test_unknown_key_in_place_of_exp_is_malformed() -> None:
    header = header_map()
    header["exq"] = 5
    with pytest.raises(MalformedEnvelope):
        decode_header(msgpack.packb(header))


def test_duplicate_header_key_is_malformed() -> None:
    protected = bytearray(msgpack.packb(header_map()))
    protected[0] += 1  # 11 entries announced ...
    protected += msgpack.packb("tpc") + msgpack.packb("other")  # ... the 11th repeats "tpc"
    with pytest.raises(MalformedEnvelope, match="duplicate"):
        decode_header(bytes(protected))


@pytest.mark.parametrize(
    "protected",
    [
        b"",
        msgpack.packb(list(header_map().values())),
        msgpack.packb(None),
        msgpack.packb(header_map()) + b"\x00",
        msgpack.packb(header_map())[:-1],
        b"\x8a" + b"\x91" * 3000,
    ],
)
def test_header_that_is_not_one_map_is_malformed(protected: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        decode_header(protected)


def test_decode_errors_are_verification_errors() -> None:
    assert issubclass(MalformedEnvelope, VerificationError)
    assert issubclass(UnsupportedVersion, VerificationError)
    with pytest.raises(MalformedEnvelope):
        decode_envelope(None)  # type: ignore[arg-type]


def test_header_map_must_be_a_fixmap() -> None:
    # 10 entries as map16 (0xde 0x000a): valid msgpack, but not the shortest form.
    protected = msgpack.packb(header_map())
    assert protected[0] == 0x8A
    with pytest.raises(MalformedEnvelope):
        decode_header(b"\xde\x00\x0a" + protected[1:])


@pytest.mark.parametrize(
    "longer",
    [
        # kid "k1" as str 8 instead of fixstr
        lambda p: p.replace(b"\xa3kid\xa2k1", b"\xa3kid\xd9\x02k1"),
        # nonce as bin 16 instead of bin 8
        lambda p: p.replace(b"\xa3nce\xc4\x10", b"\xa3nce\xc5\x00\x10"),
        # par as array 16 of zero items instead of fixarray
        lambda p: p.replace(b"\xa3par\x90", b"\xa3par\xdc\x00\x00"),
        # iat as int 64 instead of uint 64
        lambda p: p.replace(b"\xa3iat\xcf", b"\xa3iat\xd3"),
    ],
    ids=["str8-text", "bin16-nonce", "array16-parents", "int64-iat"],
)
def test_header_items_must_be_in_shortest_form(longer: Any) -> None:
    protected = encode_header(**header_fields())
    changed = longer(protected)
    assert changed != protected
    assert msgpack.unpackb(changed) == msgpack.unpackb(protected)  # same meaning, other bytes
    with pytest.raises(MalformedEnvelope, match="shortest form"):
        decode_header(changed)


def test_expiry_before_creation_is_malformed_and_never_signed() -> None:
    created = header_fields()["created_at"]
    decode_header(encode_header(**header_fields(expires_at=created)))  # equal is valid
    with pytest.raises(ValueError, match="earlier than created_at"):
        encode_header(**header_fields(expires_at=created - 1))
    header = header_map()
    header["exp"] = created - 1
    with pytest.raises(MalformedEnvelope, match="earlier than 'iat'"):
        decode_header(msgpack.packb(header))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (msgpack.packb(["signed-bus/v2"]), UnsupportedVersion),
        (msgpack.packb([""]), UnsupportedVersion),
        (b"\xdd\xff\xff\xff\xff" + msgpack.packb("v9") + b"\xc1", UnsupportedVersion),
        (b"\x91\xd9\x02v2", UnsupportedVersion),  # str 8 tag, nothing read after it
        (b"\x94\xa2\xff\xfe", MalformedEnvelope),  # tag is not UTF-8
        (b"\x94\xad" + b"signed-bus/v", MalformedEnvelope),  # tag cut short
        (msgpack.packb([TAG, b"p", b"b"]), MalformedEnvelope),  # the v1 tag, 3 items
        (b"\x94\xd9\x0d" + TAG.encode() + b"\xc4\x00" * 3, MalformedEnvelope),  # str 8 v1 tag
        (msgpack.packb([1, b"p"]), MalformedEnvelope),
        (msgpack.packb([]), MalformedEnvelope),
        (msgpack.packb([b"signed-bus/v2"]), MalformedEnvelope),  # bin, not str
        (b"\xdc\x00", MalformedEnvelope),
    ],
    ids=lambda v: v.hex()[:24] if isinstance(v, bytes) else v.__name__,
)
def test_foreign_values_are_classified_by_their_first_item(
    value: bytes, error: type[Exception]
) -> None:
    with pytest.raises(VerificationError) as caught:
        split_envelope(value)
    assert type(caught.value) is error
