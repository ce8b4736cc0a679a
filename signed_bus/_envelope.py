"""Envelope v1: the bytes of a signed Kafka record value (spec: docs/ENVELOPE.md).

value     = msgpack array [TAG: str, protected: bin, body: bin, sig: bin]
protected = msgpack map of the header fields (``HEADER_KEYS``), carried as bytes
signed    = SIGNATURE_DOMAIN || u32be(len(tag)) || tag || u32be(len(protected)) || protected
            || u32be(len(body)) || body

The signature covers bytes, never a re-serialised object: msgpack has no canonical form, so the
verifier checks exactly the bytes the signer produced and hands those same bytes to the
application. The outer framing must use the shortest msgpack encodings, so that one signed
(protected, body, sig) triple has exactly one envelope value and therefore one digest.

Encoding is built by hand (the framing is four fixed items; a generic packer would spend more time
on dispatch than on bytes). Decoding is strict: every failure raises ``MalformedEnvelope`` (or
``UnsupportedVersion`` for another version tag), never anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, NoReturn

import msgpack

from signed_bus.errors import MalformedEnvelope, UnsupportedVersion

__all__ = [
    "CONTENT_TYPE_MSGPACK",
    "DIGEST_BYTES",
    "HEADER_KEYS",
    "MAX_INT",
    "MAX_PARENTS",
    "MAX_PROTECTED_BYTES",
    "MAX_TEXT_BYTES",
    "NONCE_BYTES",
    "SIGNATURE_DOMAIN",
    "TAG",
    "Envelope",
    "Header",
    "decode_envelope",
    "decode_header",
    "decode_header_values",
    "decode_parts",
    "encode_envelope",
    "encode_header",
    "envelope_digest",
    "frame_offsets",
    "key_digest",
    "seal",
    "signed_message",
    "split_envelope",
]

TAG: Final = "signed-bus/v1"
CONTENT_TYPE_MSGPACK: Final = "application/msgpack"
#: Prefix of every signed message; the NUL ends the text so no tag can extend it.
SIGNATURE_DOMAIN: Final = b"signed-bus/v1 sig\x00"
NONCE_BYTES: Final = 16
DIGEST_BYTES: Final = 32
MAX_PARENTS: Final = 64
#: Limit on the UTF-8 length of every text field of the header (alg, kid, iss, mdl, cty, tpc).
MAX_TEXT_BYTES: Final = 255
#: The longest protected header the rules allow (docs/ENVELOPE.md section 2): fixmap(11), eleven
#: 3-byte fixstr keys, six 255-byte texts as str 8, rkd bin 8(32), iat and exp as uint 64, nce
#: bin 8(16), par as array 16 of 64 bin 8(32). A longer one is malformed without being decoded.
MAX_PROTECTED_BYTES: Final = 1 + 11 * 4 + 6 * (2 + 255) + 34 + 9 + 18 + 3 + 64 * 34 + 9
#: Timestamps are msgpack unsigned integers that fit a signed 64-bit integer (Java long, int64).
MAX_INT: Final = 2**63 - 1

# Header keys, in the order the encoder writes them. A verifier accepts any order.
K_ALG: Final = "alg"  # signature algorithm: "HS256" | "EdDSA"
K_KID: Final = "kid"  # key id
K_ISS: Final = "iss"  # issuer: the agent id the envelope speaks for
K_MDL: Final = "mdl"  # model: name and version or digest
K_CTY: Final = "cty"  # content type of the body
K_TPC: Final = "tpc"  # destination topic
K_RKD: Final = "rkd"  # SHA-256 of the Kafka record key, or nil for a null key
K_IAT: Final = "iat"  # created_at, integer ms since the epoch
K_NCE: Final = "nce"  # nonce, 16 random bytes
K_PAR: Final = "par"  # parents: array of 32-byte envelope digests
K_EXP: Final = "exp"  # optional expires_at, integer ms since the epoch (absent when unset)

HEADER_KEYS: Final = (K_ALG, K_KID, K_ISS, K_MDL, K_CTY, K_TPC, K_RKD, K_IAT, K_NCE, K_PAR, K_EXP)

_TAG_BYTES: Final = TAG.encode()
#: Start of every v1 value: fixarray(4) then the tag as a fixstr.
_VALUE_PREFIX: Final = b"\x94" + bytes([0xA0 | len(_TAG_BYTES)]) + _TAG_BYTES
_PREFIX_LEN: Final = len(_VALUE_PREFIX)
#: Constant start of every signed message.
_SIGNED_PREFIX: Final = SIGNATURE_DOMAIN + len(_TAG_BYTES).to_bytes(4, "big") + _TAG_BYTES

_sha256 = hashlib.sha256
_unpackb = msgpack.unpackb
_packb = msgpack.packb


# -- hand-built msgpack ---------------------------------------------------------------------------


def pack_str(text: str) -> bytes:
    """msgpack str, shortest form."""
    raw = text.encode("utf-8")
    n = len(raw)
    if n < 32:
        return bytes((0xA0 | n,)) + raw
    if n < 0x100:
        return b"\xd9" + bytes((n,)) + raw
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + raw
    return b"\xdb" + n.to_bytes(4, "big") + raw


def pack_bin_header(n: int) -> bytes:
    """The type-and-length prefix of a msgpack bin of n bytes, shortest form."""
    if n < 0x100:
        return b"\xc4" + bytes((n,))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xc6" + n.to_bytes(4, "big")
    raise ValueError("msgpack bin is limited to 2**32 - 1 bytes")


def pack_uint(value: int) -> bytes:
    """msgpack non-negative integer, shortest form."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x100:
        return b"\xcc" + bytes((value,))
    if value < 0x10000:
        return b"\xcd" + value.to_bytes(2, "big")
    if value < 0x100000000:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


def pack_array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


# Constant key encodings (all keys are 3-character fixstrs).
_KEY_BYTES: Final = {key: pack_str(key) for key in HEADER_KEYS}
_P_RKD_NIL: Final = _KEY_BYTES[K_RKD] + b"\xc0"
_P_RKD_BIN: Final = _KEY_BYTES[K_RKD] + pack_bin_header(DIGEST_BYTES)
_P_IAT: Final = _KEY_BYTES[K_IAT]
_P_NCE: Final = _KEY_BYTES[K_NCE] + pack_bin_header(NONCE_BYTES)
_P_PAR: Final = _KEY_BYTES[K_PAR]
_P_EXP: Final = _KEY_BYTES[K_EXP]
_P_PARENT: Final = pack_bin_header(DIGEST_BYTES)
_MAP_10: Final = b"\x8a"
_MAP_11: Final = b"\x8b"


def check_text(name: str, value: object) -> str:
    """Validate a header text field at signing time (ValueError/TypeError, caller's mistake)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str")
    n = len(value.encode("utf-8"))
    if not 0 < n <= MAX_TEXT_BYTES:
        raise ValueError(f"{name} must be 1 to {MAX_TEXT_BYTES} UTF-8 bytes")
    return value


def check_int(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise ValueError(f"{name} must be an int from 0 to 2**63 - 1 (ms since the epoch)")
    return value


def check_expiry(expires_at: object, created_at: int) -> int:
    """Validate expires_at against created_at: a header whose exp is before its iat is
    malformed (docs/ENVELOPE.md section 2), so a signer refuses to write one."""
    check_int("expires_at", expires_at)
    assert type(expires_at) is int
    if expires_at < created_at:
        raise ValueError(
            f"expires_at ({expires_at}) is earlier than created_at ({created_at}): it would "
            "never be valid"
        )
    return expires_at


def check_parents(parents: Sequence[bytes]) -> bytes:
    """Validate parents and return their msgpack encoding (the ``par`` value)."""
    if isinstance(parents, bytes | bytearray | memoryview | str):
        raise TypeError("parents must be a sequence of 32-byte digests, not a single value")
    items = list(parents)
    if len(items) > MAX_PARENTS:
        raise ValueError(f"at most {MAX_PARENTS} parents")
    out = [pack_array_header(len(items))]
    for parent in items:
        if type(parent) is not bytes or len(parent) != DIGEST_BYTES:
            raise ValueError(f"each parent must be {DIGEST_BYTES} bytes (an envelope digest)")
        out.append(_P_PARENT)
        out.append(parent)
    return b"".join(out)


def header_prefix(alg: str, kid: str, issuer: str, model: str, content_type: str) -> bytes:
    """Encoded alg..cty entries: constant for one signer and content type (no map header)."""
    return b"".join(
        (
            _KEY_BYTES[K_ALG],
            pack_str(check_text("alg", alg)),
            _KEY_BYTES[K_KID],
            pack_str(check_text("kid", kid)),
            _KEY_BYTES[K_ISS],
            pack_str(check_text("issuer", issuer)),
            _KEY_BYTES[K_MDL],
            pack_str(check_text("model", model)),
            _KEY_BYTES[K_CTY],
            pack_str(check_text("content_type", content_type)),
        )
    )


def topic_entry(topic: str) -> bytes:
    """Encoded tpc entry."""
    return _KEY_BYTES[K_TPC] + pack_str(check_text("topic", topic))


_BIN8: Final = tuple(b"\xc4" + bytes((n,)) for n in range(0x100))


def seal(
    prefix: bytes,
    topic_part: bytes,
    rkd: bytes | None,
    created_at: int,
    nonce: bytes,
    parents_part: bytes,
    expires_at: int | None,
    body: bytes,
    sign: Callable[[bytes], bytes],
) -> bytes:
    """Build the protected header, sign it with the body, and frame the record value.

    The signer's hot path: ``prefix`` comes from :func:`header_prefix`, ``topic_part`` from
    :func:`topic_entry`, ``parents_part`` from :func:`check_parents`; the other arguments are
    already validated. Returns the record value.
    """
    iat = (
        b"\xcf" + created_at.to_bytes(8, "big")
        if created_at > 0xFFFFFFFF
        else pack_uint(created_at)
    )
    protected = b"".join(
        (
            _MAP_10 if expires_at is None else _MAP_11,
            prefix,
            topic_part,
            _P_RKD_NIL if rkd is None else _P_RKD_BIN + rkd,
            _P_IAT,
            iat,
            _P_NCE,
            nonce,
            _P_PAR,
            parents_part,
            b"" if expires_at is None else _P_EXP + pack_uint(expires_at),
        )
    )
    n_protected = len(protected)
    n_body = len(body)
    signature = sign(
        b"".join(
            (
                _SIGNED_PREFIX,
                n_protected.to_bytes(4, "big"),
                protected,
                n_body.to_bytes(4, "big"),
                body,
            )
        )
    )
    return b"".join(
        (
            _VALUE_PREFIX,
            _BIN8[n_protected] if n_protected < 0x100 else pack_bin_header(n_protected),
            protected,
            _BIN8[n_body] if n_body < 0x100 else pack_bin_header(n_body),
            body,
            _BIN8[len(signature)],
            signature,
        )
    )


def encode_header(
    *,
    alg: str,
    kid: str,
    issuer: str,
    model: str,
    content_type: str,
    topic: str,
    key_digest: bytes | None,
    created_at: int,
    nonce: bytes,
    parents: Sequence[bytes] = (),
    expires_at: int | None = None,
) -> bytes:
    """Encode a protected header, validating every field (ValueError/TypeError on bad input)."""
    if key_digest is not None and (type(key_digest) is not bytes or len(key_digest) != 32):
        raise ValueError(f"key_digest must be None or {DIGEST_BYTES} bytes")
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    check_int("created_at", created_at)
    if expires_at is not None:
        check_expiry(expires_at, created_at)
    return b"".join(
        (
            _MAP_10 if expires_at is None else _MAP_11,
            header_prefix(alg, kid, issuer, model, content_type),
            topic_entry(topic),
            _P_RKD_NIL if key_digest is None else _P_RKD_BIN + key_digest,
            _P_IAT,
            pack_uint(created_at),
            _P_NCE,
            nonce,
            _P_PAR,
            check_parents(parents),
            b"" if expires_at is None else _P_EXP + pack_uint(expires_at),
        )
    )


def signed_message(protected: bytes, body: bytes) -> bytes:
    """The exact bytes the signature covers."""
    return b"".join(
        (
            _SIGNED_PREFIX,
            len(protected).to_bytes(4, "big"),
            protected,
            len(body).to_bytes(4, "big"),
            body,
        )
    )


def encode_envelope(protected: bytes, body: bytes, signature: bytes) -> bytes:
    """The record value: [TAG, protected, body, signature] in shortest-form msgpack."""
    return b"".join(
        (
            _VALUE_PREFIX,
            pack_bin_header(len(protected)),
            protected,
            pack_bin_header(len(body)),
            body,
            pack_bin_header(len(signature)),
            signature,
        )
    )


def envelope_digest(value: bytes) -> bytes:
    """SHA-256 of the whole record value: the digest a downstream envelope's parents name."""
    return _sha256(value).digest()


def key_digest(key: bytes | None) -> bytes | None:
    """The ``rkd`` header value for a Kafka record key: SHA-256 of it, None for a null key."""
    return None if key is None else _sha256(key).digest()


# -- strict decoding -----------------------------------------------------------------------------


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
