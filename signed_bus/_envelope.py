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
from typing import Final

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
    "encode_envelope",
    "encode_header",
    "envelope_digest",
    "key_digest",
    "seal",
    "signed_message",
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
