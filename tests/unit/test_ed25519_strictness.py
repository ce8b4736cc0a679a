"""Ed25519 as verified here (docs/ENVELOPE.md section 4): what OpenSSL accepts, what we refuse.

Curve arithmetic below is the RFC 8032 section 5.1 reference, in Python, independent of the
library and of OpenSSL: it recomputes the small-order points and builds edge-case signatures.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from signed_bus._keys import Ed25519Key
from signed_bus.errors import BadSignature, ConfigurationError

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]
IDENTITY: Point = (0, 1, 1, 0)


def add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(n: int, point: Point) -> Point:
    out = IDENTITY
    while n:
        if n & 1:
            out = add(out, point)
        point = add(point, point)
        n >>= 1
    return out


def same(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def decode(raw: bytes) -> Point | None:
    """RFC 8032 5.1.3 as OpenSSL reads it: y >= p is reduced and x = 0 with the sign bit set
    is taken as x = 0, rather than both refused."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    y %= P
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def encode(point: Point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


BASE = decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
assert BASE is not None


def small_order_points() -> list[Point]:
    """The 8-torsion subgroup: L times a point of order 8L generates it."""
    for i in range(2, 200):
        point = decode(i.to_bytes(32, "little"))
        if point is None:
            continue
        torsion = mul(L, point)
        if not same(mul(4, torsion), IDENTITY):  # order 8
            return [mul(k, torsion) for k in range(8)]
    raise AssertionError("no point of order 8L found")


def small_order_encodings() -> set[bytes]:
    """Every 32-byte string OpenSSL decodes to a small-order point: canonical encodings, the
    non-canonical y + p where it fits 255 bits, each with either x sign bit."""
    out = set()
    for point in small_order_points():
        canonical = int.from_bytes(encode(point), "little") & ((1 << 255) - 1)
        for y in (canonical, canonical + P):
            if y < 2**255:
                out.add(y.to_bytes(32, "little"))
                out.add((y | 1 << 255).to_bytes(32, "little"))
    return out


def openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def test_openssl_verifies_a_forgery_under_the_identity_key() -> None:
    identity = encode(IDENTITY)
    forged = identity + bytes(32)  # R = identity, S = 0
    for message in (b"any", b"message", b"at all"):
        assert openssl_accepts(identity, forged, message)
    # The same point with the x sign bit set (non-canonical) is read as the identity too.
    assert openssl_accepts(identity[:31] + b"\x80", forged, b"any")


@pytest.mark.parametrize("raw", sorted(small_order_encodings()), ids=lambda r: r.hex()[:12])
def test_every_small_order_public_key_is_refused(raw: bytes) -> None:
    point = decode(raw)
    assert point is not None and same(mul(8, point), IDENTITY)
    with pytest.raises(ConfigurationError, match="small-order"):
        Ed25519Key.from_public_bytes("k", raw, issuers=["agent"])


def test_a_key_with_a_torsion_component_is_not_small_order() -> None:
    # Only pure small-order points are refused: A + T (T of order 8) has order 8L.
    seed = hashlib.sha256(b"mixed order").digest()
    honest = Ed25519Key.from_private_bytes("k", seed, issuers=["agent"])
    point = decode(honest.public_bytes)
    assert point is not None
    mixed = encode(add(point, small_order_points()[1]))
    Ed25519Key.from_public_bytes("k", mixed, issuers=["agent"])  # accepted


def _expanded(seed: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    return scalar, digest[32:]


def test_non_canonical_s_is_refused() -> None:
    seed = hashlib.sha256(b"strictness").digest()
    key = Ed25519Key.from_private_bytes("k", seed, issuers=["agent"])
    signature = key.sign(b"message")
    s = int.from_bytes(signature[32:], "little")
    bumped = signature[:32] + (s + L).to_bytes(32, "little")  # same S mod L
    assert s + L < 2**256
    key.verify(b"message", signature)
    with pytest.raises(BadSignature):
        key.verify(b"message", bumped)


def test_small_order_r_from_the_key_holder_verifies_cofactorless() -> None:
    # R = identity, S = k * a: [S]B = R + [k]A holds exactly. Only the private key's holder can
    # compute it, so accepting it forges nothing; stated in the spec rather than refused.
    seed = hashlib.sha256(b"small order R").digest()
    key = Ed25519Key.from_private_bytes("k", seed, issuers=["agent"])
    a, _ = _expanded(seed)
    r_enc = encode(IDENTITY)
    message = b"message"
    k = int.from_bytes(hashlib.sha512(r_enc + key.public_bytes + message).digest(), "little") % L
    signature = r_enc + (k * a % L).to_bytes(32, "little")
    key.verify(message, signature)  # does not raise
    with pytest.raises(BadSignature):
        key.verify(b"other message", signature)
