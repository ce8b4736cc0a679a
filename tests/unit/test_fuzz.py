"""Fuzzing the verifier: whatever the bytes, the only outcome is a verified original or a
VerificationError (never another exception, never a different message that verifies).

About 25,000 cases in all; derandomized so CI runs are reproducible, no example database.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signed_bus._decode import decode_envelope
from signed_bus._envelope import HEADER_KEYS, TAG, encode_envelope, signed_message
from signed_bus._keys import Ed25519Key, HmacKey, Keyring
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import VerificationError

NOW = 1_700_000_000_000
TOPIC = "results"
KEY = b"req-1"
SECRET = hashlib.sha256(b"fuzz secret").digest()
HMAC = HmacKey("hs", SECRET, issuers=["agent"])
RING = Keyring(
    [HMAC, Ed25519Key.from_private_bytes("ed", hashlib.sha256(b"fuzz").digest(), issuers=["agent"])]
)
VERIFIER = Verifier(RING, clock=lambda: NOW)
PARENT = hashlib.sha256(b"parent").digest()


def _valid_envelopes() -> list[bytes]:
    out = []
    for kid in ("hs", "ed"):
        signer = Signer(RING, kid=kid, issuer="agent", model="m@1", clock=lambda: NOW)
        out.append(signer.sign({"label": "cat", "score": 0.5}, topic=TOPIC, key=KEY))
        out.append(
            signer.sign_bytes(
                b"x" * 300,
                content_type="application/octet-stream",
                topic=TOPIC,
                key=KEY,
                parents=[PARENT, PARENT],
                expires_at=NOW + 1000,
            )
        )
    return out


VALID = _valid_envelopes()


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def check(value: bytes) -> None:
    """The invariant: VerificationError, or the verified bytes are one of the originals."""
    try:
        msg = VERIFIER.verify(value, topic=TOPIC, key=KEY)
    except VerificationError as exc:
        assert isinstance(exc.reason, str) and exc.reason
    else:
        assert value in VALID, "a value that is not an original verified"
        assert msg.digest == hashlib.sha256(value).digest()
    with contextlib.suppress(VerificationError):  # the inspection decoder obeys the same rule
        decode_envelope(value)


@fuzz(8_000)
@given(st.binary(max_size=1024))
def test_random_bytes(value: bytes) -> None:
    check(value)


@fuzz(4_000)
@given(st.binary(max_size=512))
def test_random_bytes_after_a_v1_prefix(tail: bytes) -> None:
    check(b"\x94\xad" + TAG.encode() + tail)


def mutate(original: bytes, program: bytes) -> bytes:
    """Apply a mutation program: each 4 bytes (op, position hi, position lo, argument) flip a
    bit, set a byte, insert, delete, truncate or splice in the tail of another envelope. A plain
    byte string keeps hypothesis generation cheap and shrinking meaningful."""
    value = bytearray(original)
    for i in range(0, len(program) - 3, 4):
        op, hi, lo, arg = program[i : i + 4]
        position = (hi << 8) | lo
        at = position % len(value) if value else 0
        kind = op % 6
        if kind == 0 and value:
            value[at] ^= 1 << (arg % 8)
        elif kind == 1 and value:
            value[at] = arg
        elif kind == 2:
            value[at:at] = bytes([arg]) * (1 + op // 6 % 8)
        elif kind == 3:
            del value[at : at + 1 + arg % 8]
        elif kind == 4:
            del value[at:]
        else:
            other = VALID[arg % len(VALID)]
            value[at:] = other[position % len(other) :]
    return bytes(value)


@fuzz(10_000)
@given(st.sampled_from(VALID), st.binary(min_size=4, max_size=16))
def test_mutated_valid_envelopes(original: bytes, program: bytes) -> None:
    check(mutate(original, program))


# Header values of every msgpack type, including the awkward ones.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.lists(st.binary(min_size=31, max_size=33), max_size=3),
    st.sampled_from(["HS256", "EdDSA", "none", "hs", "ed", "agent", TOPIC, NOW, PARENT]),
)
GOOD = {
    "alg": "HS256",
    "kid": "hs",
    "iss": "agent",
    "mdl": "m@1",
    "cty": "application/msgpack",
    "tpc": TOPIC,
    "rkd": hashlib.sha256(KEY).digest(),
    "iat": NOW,
    "nce": b"n" * 16,
    "par": [],
}


@st.composite
def signed_headers(draw: st.DrawFn) -> tuple[dict[Any, Any], bytes]:
    """A header with some fields replaced, dropped or added, properly signed with HS256: only
    strict decoding stands between it and the application."""
    header: dict[Any, Any] = dict(GOOD)
    for key in draw(st.lists(st.sampled_from(HEADER_KEYS), max_size=3, unique=True)):
        action = draw(st.sampled_from(["replace", "drop"]))
        if action == "drop":
            header.pop(key, None)
        else:
            header[key] = draw(ANY_VALUE)
    if draw(st.booleans()):
        header[draw(st.one_of(st.text(max_size=4), st.integers(-5, 5), st.binary(max_size=4)))] = (
            draw(ANY_VALUE)
        )
    protected = msgpack.packb(header)
    body = msgpack.packb({"ok": True})
    value = encode_envelope(protected, body, HMAC.sign(signed_message(protected, body)))
    return header, value


def _is_text(value: object) -> bool:
    return type(value) is str and 0 < len(value.encode("utf-8", "strict")) <= 255


def _is_valid(header: dict[Any, Any]) -> bool:
    """What the verifier must accept, modelled independently of its code."""
    if set(header) not in (set(GOOD), set(GOOD) | {"exp"}):
        return False
    exact = ("alg", "kid", "iss", "tpc", "rkd")  # pinned by policy, signature and destination
    if any(type(header[k]) is not type(GOOD[k]) or header[k] != GOOD[k] for k in exact):
        return False
    iat, nce, par = header["iat"], header["nce"], header["par"]
    return (
        _is_text(header["mdl"])
        and _is_text(header["cty"])
        and type(iat) is int
        and NOW - 300_000 <= iat <= NOW + 5_000
        and type(nce) is bytes
        and len(nce) == 16
        and type(par) is list
        and len(par) <= 64
        and all(type(p) is bytes and len(p) == 32 for p in par)
        and ("exp" not in header or (type(header["exp"]) is int and NOW <= header["exp"] < 2**63))
    )


@fuzz(3_000)
@given(signed_headers())
def test_signed_headers_with_any_field_values(case: tuple[dict[Any, Any], bytes]) -> None:
    header, value = case
    try:
        msg = VERIFIER.verify(value, topic=TOPIC, key=KEY)
    except VerificationError:
        assert not _is_valid(header)
    else:
        assert _is_valid(header), f"accepted {header!r}"
        assert msg.created_at == NOW and not isinstance(msg.created_at, bool)
        assert not (isinstance(msg.created_at, float) and math.isnan(msg.created_at))
