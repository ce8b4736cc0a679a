"""Envelope v1 decoding: the strict reader of a record value (spec: docs/ENVELOPE.md sections 1-3).

The framing is read by hand (a 15-byte prefix and three bin headers: nothing nested is built, so a
crafted value costs what random bytes cost); the protected header is decoded with msgpack's
limits and checked field by field. Every failure raises ``MalformedEnvelope`` (or
``UnsupportedVersion`` for another version tag), never anything else. Encoding lives in
:mod:`signed_bus._envelope`.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, NoReturn

import msgpack

from signed_bus._envelope import (
    _PREFIX_LEN,
    _TAG_BYTES,
    _VALUE_PREFIX,
    DIGEST_BYTES,
    HEADER_KEYS,
    K_ALG,
    K_CTY,
    K_EXP,
    K_IAT,
    K_ISS,
    K_KID,
    K_MDL,
    K_NCE,
    K_PAR,
    K_RKD,
    K_TPC,
    MAX_INT,
    MAX_PARENTS,
    MAX_PROTECTED_BYTES,
    MAX_TEXT_BYTES,
    NONCE_BYTES,
    envelope_digest,
    signed_message,
)
from signed_bus.errors import MalformedEnvelope, UnsupportedVersion

__all__ = [
    "Envelope",
    "Header",
    "decode_envelope",
    "decode_header",
    "decode_header_values",
    "decode_parts",
    "frame_offsets",
    "split_envelope",
]

_unpackb = msgpack.unpackb
_packb = msgpack.packb


def frame_offsets(value: bytes) -> tuple[int, int, int, int, int]:
    """Locate the three bins of a v1 value without copying them: returns (protected_start,
    protected_end, body_start, body_end, signature_start); the signature ends the value.

    Reads the framing by hand: the 15-byte prefix, three bin headers, nothing nested, so a
    crafted value costs the same few byte reads as random bytes. Raises UnsupportedVersion for
    another version tag and MalformedEnvelope for everything else that is not the shortest-form
    v1 framing with a protected header of at most ``MAX_PROTECTED_BYTES``
    (docs/ENVELOPE.md section 1).
    """
    if not value.startswith(_VALUE_PREFIX):
        _classify_foreign(value)
    # Inlined (the verifier's hot path): bin 8 directly, the wider forms through _bin_wide.
    # An index past the end is a truncated value.
    try:
        if value[_PREFIX_LEN] == 0xC4:
            p_start = _PREFIX_LEN + 2
            p_end = p_start + value[_PREFIX_LEN + 1]
        else:
            p_start, p_end = _bin_wide(value, _PREFIX_LEN)
        if p_end - p_start > MAX_PROTECTED_BYTES:
            raise MalformedEnvelope(f"protected header is longer than {MAX_PROTECTED_BYTES} bytes")
        if value[p_end] == 0xC4:
            b_start = p_end + 2
            b_end = b_start + value[p_end + 1]
        else:
            b_start, b_end = _bin_wide(value, p_end)
        if value[b_end] == 0xC4:
            s_start = b_end + 2
            s_end = s_start + value[b_end + 1]
        else:
            s_start, s_end = _bin_wide(value, b_end)
    except IndexError:
        raise MalformedEnvelope("envelope is truncated") from None
    if s_end != len(value):
        if s_end < len(value):
            raise MalformedEnvelope("trailing bytes after the envelope")
        raise MalformedEnvelope("envelope is truncated")
    return p_start, p_end, b_start, b_end, s_start


def _bin_wide(value: bytes, pos: int) -> tuple[int, int]:
    """(start, end) of the bin 16 or bin 32 whose header is at ``pos``, shortest form only."""
    kind = value[pos]
    if kind == 0xC5:
        start = pos + 3
        n = int.from_bytes(value[pos + 1 : start], "big")
        if n < 0x100:
            raise MalformedEnvelope("envelope framing is not in shortest form")
    elif kind == 0xC6:
        start = pos + 5
        n = int.from_bytes(value[pos + 1 : start], "big")
        if n < 0x10000:
            raise MalformedEnvelope("envelope framing is not in shortest form")
    else:
        raise MalformedEnvelope("envelope items 2 to 4 must be msgpack bin")
    if start > len(value):
        raise IndexError  # a length cut short: truncated, as for the bin 8 path
    return start, start + n


def split_envelope(value: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a record value into (protected, body, signature); framing checks only.

    Raises UnsupportedVersion for a msgpack array that starts with another version tag, and
    MalformedEnvelope for everything else that is not the shortest-form v1 framing.
    """
    p_start, p_end, b_start, b_end, s_start = frame_offsets(value)
    return value[p_start:p_end], value[b_start:b_end], value[s_start:]


_ARRAY_HEADERS: Final = {0xDC: 2, 0xDD: 4}  # array 16 / array 32: bytes of count
_STR_HEADERS: Final = {0xD9: 1, 0xDA: 2, 0xDB: 4}  # str 8 / 16 / 32: bytes of length


def _classify_foreign(value: bytes) -> NoReturn:
    """Explain a value that does not start with the v1 prefix. Always raises.

    The rule (docs/ENVELOPE.md section 1, "Other versions"): a msgpack array (any header form,
    at least one item) whose first item is a str (any header form) holding valid UTF-8 other
    than the v1 tag is ``unsupported_version``, whatever follows; the rest of another version's
    value is not read. Everything else is ``malformed``. Only the first item is looked at, so
    the cost does not depend on what the value holds.
    """
    size = len(value)
    if size == 0:
        raise MalformedEnvelope("value is empty")
    first = value[0]
    if 0x90 <= first <= 0x9F:
        count, pos = first & 0x0F, 1
    elif first in _ARRAY_HEADERS:
        pos = 1 + _ARRAY_HEADERS[first]
        count = int.from_bytes(value[1:pos], "big")
        if pos > size:
            raise MalformedEnvelope("value is not a msgpack envelope (truncated)")
    else:
        raise MalformedEnvelope("value is not a msgpack array")
    if count == 0 or pos >= size:
        raise MalformedEnvelope("value is not a v1 envelope [tag, protected, body, signature]")
    kind = value[pos]
    if 0xA0 <= kind <= 0xBF:
        start, n = pos + 1, kind & 0x1F
    elif kind in _STR_HEADERS:
        start = pos + 1 + _STR_HEADERS[kind]
        n = int.from_bytes(value[pos + 1 : start], "big")
    else:
        raise MalformedEnvelope("value is not a v1 envelope [tag, protected, body, signature]")
    if start + n > size:
        raise MalformedEnvelope("value is not a msgpack envelope (truncated)")
    tag = value[start : start + n]
    if tag == _TAG_BYTES:
        raise MalformedEnvelope("value is not a v1 envelope [tag, protected, body, signature]")
    try:
        tag.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEnvelope("envelope version tag is not UTF-8") from None
    # The tag is attacker-controlled text: it is not echoed into the message.
    raise UnsupportedVersion("envelope version tag is not supported")


_required_values = itemgetter(K_ALG, K_KID, K_ISS, K_MDL, K_CTY, K_TPC, K_RKD, K_IAT, K_NCE, K_PAR)
_TYPES_KEYED: Final = (str, str, str, str, str, str, bytes, int, bytes, list)
_TYPES_NULL_KEY: Final = (str, str, str, str, str, str, type(None), int, bytes, list)


def decode_header(protected: bytes) -> dict[str, Any]:
    """Decode and type-check a protected header; returns the map (``HEADER_KEYS`` keys).

    Every field is checked for its exact type (bool is not int, float is not int), length and
    range; unknown, missing and duplicate keys are rejected. Raises MalformedEnvelope only.
    """
    return decode_header_values(protected)[0]


def decode_header_values(protected: bytes) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """decode_header, also returning the values of the required keys in HEADER_KEYS order
    (alg, kid, iss, mdl, cty, tpc, rkd, iat, nce, par): the verifier's hot path."""
    if len(protected) > MAX_PROTECTED_BYTES:
        raise MalformedEnvelope(f"protected header is longer than {MAX_PROTECTED_BYTES} bytes")
    try:
        # raw=False and strict_map_key=True are msgpack's defaults (>= 1.0): str is decoded as
        # UTF-8 text, and map keys may only be str or bin. The limits and the size cap above
        # bound what a hostile header can allocate to a few thousand small objects.
        header = _unpackb(
            protected,
            max_str_len=MAX_TEXT_BYTES,
            max_bin_len=DIGEST_BYTES,
            max_array_len=MAX_PARENTS,
            max_map_len=len(HEADER_KEYS),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise MalformedEnvelope(
            f"protected header does not decode ({type(exc).__name__})"
        ) from None
    if type(header) is not dict:
        raise MalformedEnvelope("protected header is not a map")
    try:
        values = _required_values(header)
    except KeyError:
        raise MalformedEnvelope("protected header lacks a required key") from None
    size = len(header)
    if size != 10 and (size != 11 or K_EXP not in header):
        raise MalformedEnvelope("protected header has unknown keys")
    # 10 or 11 entries always fit a fixmap, so the first byte announces the entry count. A dict
    # keeps only the last of duplicate keys, so a count above len(header) means duplicates: no
    # two implementations may read different values from the same signed bytes.
    if protected[0] != 0x80 | size:
        raise MalformedEnvelope("protected header has duplicate keys or is not a fixmap")
    types = tuple(map(type, values))
    if types != _TYPES_KEYED and types != _TYPES_NULL_KEY:
        raise MalformedEnvelope("protected header field has the wrong type")
    if "" in values[:6]:
        raise MalformedEnvelope("protected header text fields must not be empty")
    rkd, iat, nonce, parents = values[6:]
    if rkd is not None and len(rkd) != DIGEST_BYTES:
        raise MalformedEnvelope(f"header field 'rkd' must be nil or bin({DIGEST_BYTES})")
    if not 0 <= iat <= MAX_INT:
        raise MalformedEnvelope("header field 'iat' must be an int from 0 to 2**63 - 1")
    if len(nonce) != NONCE_BYTES:
        raise MalformedEnvelope(f"header field 'nce' must be bin({NONCE_BYTES})")
    for parent in parents:
        if type(parent) is not bytes or len(parent) != DIGEST_BYTES:
            raise MalformedEnvelope(f"each parent must be bin({DIGEST_BYTES})")
    if size == 11:
        exp = header[K_EXP]
        if type(exp) is not int or not 0 <= exp <= MAX_INT:
            raise MalformedEnvelope("header field 'exp' must be an int from 0 to 2**63 - 1")
        if exp < iat:
            raise MalformedEnvelope("header field 'exp' is earlier than 'iat'")
    # Shortest form inside the header too: re-encoding the decoded map (in the order received)
    # must give the same bytes, so one header has one encoding, like the framing around it.
    if _packb(header) != protected:
        raise MalformedEnvelope("protected header is not in shortest form")
    return header, values


def decode_parts(value: bytes) -> tuple[dict[str, Any], tuple[Any, ...], bytes, bytes, bytes]:
    """Strictly decode a record value: (header map, required values in HEADER_KEYS order,
    protected, body, signature). The verifier's hot path.

    Raises MalformedEnvelope or UnsupportedVersion.
    """
    protected, body, signature = split_envelope(value)
    header, values = decode_header_values(protected)
    return header, values, protected, body, signature


# -- an inspectable, unverified view (CLI, debugging) --------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """The protected header's fields. Decoded but NOT verified: do not trust it."""

    alg: str
    kid: str
    issuer: str
    model: str
    content_type: str
    topic: str
    key_digest: bytes | None
    created_at: int
    nonce: bytes
    parents: tuple[bytes, ...]
    expires_at: int | None

    @classmethod
    def from_map(cls, header: dict[str, Any]) -> Header:
        return cls(
            alg=header[K_ALG],
            kid=header[K_KID],
            issuer=header[K_ISS],
            model=header[K_MDL],
            content_type=header[K_CTY],
            topic=header[K_TPC],
            key_digest=header[K_RKD],
            created_at=header[K_IAT],
            nonce=header[K_NCE],
            parents=tuple(header[K_PAR]),
            expires_at=header.get(K_EXP),
        )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope. NOT verified: use ``Verifier.verify`` before trusting any of it."""

    header: Header
    protected: bytes
    body: bytes
    signature: bytes
    digest: bytes

    @property
    def signed_message(self) -> bytes:
        return signed_message(self.protected, self.body)


def decode_envelope(value: bytes) -> Envelope:
    """Strictly decode a record value without verifying it (for inspection tools).

    Raises MalformedEnvelope or UnsupportedVersion.
    """
    if type(value) is not bytes:
        raise MalformedEnvelope("envelope value must be bytes")
    protected, body, signature = split_envelope(value)
    header = Header.from_map(decode_header(protected))
    return Envelope(header, protected, body, signature, envelope_digest(value))
