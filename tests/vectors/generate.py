"""Regenerate the envelope v1 known-answer vectors (keys.json, positive.json, negative.json).

    .venv/bin/python tests/vectors/generate.py          # rewrite the files
    .venv/bin/python tests/vectors/generate.py --check  # exit 1 if the files would change

The files are the reference: tests/unit/test_vectors.py checks the library against them byte for
byte, so regenerate only when the wire format changes on purpose (and then bump the tag).
Keys, clock and nonces are fixed; Ed25519 signatures are deterministic (RFC 8032), so the
output is identical on every run. The keys are public test keys: never use them for anything.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from signed_bus._envelope import (
    CONTENT_TYPE_MSGPACK,
    SIGNATURE_DOMAIN,
    TAG,
    encode_envelope,
    signed_message,
)
from signed_bus._keys import Ed25519Key, HmacKey, Keyring
from signed_bus._signer import Signer

HERE = Path(__file__).resolve().parent
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z
HMAC_SECRET = hashlib.sha256(b"signed-bus test vector HS256 secret").digest()
ED25519_SEED = hashlib.sha256(b"signed-bus test vector EdDSA seed").digest()
OTHER_SECRET = hashlib.sha256(b"signed-bus test vector key not in the ring").digest()
PARENT_A = hashlib.sha256(b"parent envelope a").digest()
PARENT_B = hashlib.sha256(b"parent envelope b").digest()
RESULT = {"request": "req-42", "label": "cat", "score": 0.875, "top": [["cat", 0.875]]}

MAX_INT = 2**63 - 1
ED25519_L = 2**252 + 27742317777372353535851937790883648493
VERIFY_DEFAULTS = {
    "max_age_ms": 300_000,
    "future_skew_ms": 5_000,
    "max_lag_ms": 3_600_000,
    "max_envelope_bytes": 1_048_576,
    "audit": False,
}
#: 65,536 bytes and more need bin 32 framing: the shortest form for this body is 0xc6.
BIN32_BODY = bytes(range(256)) * 257


def keyring() -> Keyring:
    return Keyring(
        [
            HmacKey("hs-2026-01", HMAC_SECRET, issuers=["inference-agent"]),
            Ed25519Key.from_private_bytes("ed-2026-01", ED25519_SEED, issuers=["planner"]),
        ]
    )


def fixed_nonces(start: int) -> Callable[[], bytes]:
    counter = iter(range(start, start + 1000))
    return lambda: bytes([next(counter)]) * 16


def hexs(raw: bytes | None) -> str | None:
    return None if raw is None else raw.hex()


def _hs_case() -> dict[str, Any]:
    return {
        "kid": "hs-2026-01",
        "issuer": "inference-agent",
        "model": "resnet-50@sha256:0f1e2d",
        "topic": "inference.results",
        "record_key": b"req-42",
        "content_type": CONTENT_TYPE_MSGPACK,
        "body": msgpack.packb(RESULT),
        "parents": [],
        "expires_at": None,
    }


def verify_options(topic: str, record_key: bytes | None, **changes: Any) -> dict[str, Any]:
    """A vector's verifier options and inputs; the clock (now_ms) is the reference time unless
    a change says otherwise."""
    options = {**VERIFY_DEFAULTS, "topic": topic, "record_key_hex": hexs(record_key)}
    options["reference_ms"] = changes.pop("reference_ms", NOW)
    options["now_ms"] = changes.pop("now_ms", options["reference_ms"])
    options.update(changes)
    return options


def positive_vectors() -> Iterator[dict[str, Any]]:
    ring = keyring()
    cases: list[dict[str, Any]] = [
        {
            "name": "hs256-msgpack-keyed",
            "description": "HS256, msgpack body, keyed record, no parents, no expiry",
            "kid": "hs-2026-01",
            "issuer": "inference-agent",
            "model": "resnet-50@sha256:0f1e2d",
            "topic": "inference.results",
            "record_key": b"req-42",
            "content_type": CONTENT_TYPE_MSGPACK,
            "body": msgpack.packb(RESULT),
            "parents": [],
            "expires_at": None,
        },
        {
            "name": "hs256-null-key-parents-expiry",
            "description": "HS256, null record key, two parents, expires_at set",
            "kid": "hs-2026-01",
            "issuer": "inference-agent",
            "model": "resnet-50@sha256:0f1e2d",
            "topic": "inference.results",
            "record_key": None,
            "content_type": CONTENT_TYPE_MSGPACK,
            "body": msgpack.packb(RESULT),
            "parents": [PARENT_A, PARENT_B],
            "expires_at": NOW + 60_000,
        },
        {
            "name": "eddsa-msgpack-keyed-parent",
            "description": "EdDSA, msgpack body, keyed record, one parent",
            "kid": "ed-2026-01",
            "issuer": "planner",
            "model": "planner-rules@7",
            "topic": "plans",
            "record_key": b"req-42",
            "content_type": CONTENT_TYPE_MSGPACK,
            "body": msgpack.packb({"action": "restock", "sku": "A-1", "qty": 3}),
            "parents": [PARENT_A],
            "expires_at": None,
        },
        {
            "name": "eddsa-json-large-body",
            "description": "EdDSA, application/json body of 300 bytes (bin16 framing)",
            "kid": "ed-2026-01",
            "issuer": "planner",
            "model": "planner-rules@7",
            "topic": "plans",
            "record_key": b"",
            "content_type": "application/json",
            "body": json.dumps({"note": "x" * 280}).encode(),
            "parents": [],
            "expires_at": NOW + 1,
        },
        {
            "name": "eddsa-bin32-body",
            "description": "EdDSA, 65,792-byte opaque body: bin 32 framing (0xc6) is shortest",
            "kid": "ed-2026-01",
            "issuer": "planner",
            "model": "planner-rules@7",
            "topic": "plans",
            "record_key": b"req-42",
            "content_type": "application/octet-stream",
            "body": BIN32_BODY,
            "parents": [],
            "expires_at": None,
        },
        {
            "name": "hs256-clock-ahead-within-max-lag",
            "description": "reference (append time) = iat; the verifier's clock is max_age + "
            "max_lag later: the oldest a lagging consumer still accepts",
            **_hs_case(),
            "verify": {"now_ms": NOW + 300_000 + 3_600_000},
        },
        {
            "name": "hs256-clock-behind-within-skew",
            "description": "reference = iat; the verifier's clock is future_skew behind",
            **_hs_case(),
            "verify": {"now_ms": NOW - 5_000},
        },
        {
            "name": "hs256-audit-a-year-later",
            "description": "audit mode: freshness is not checked, everything else is",
            **_hs_case(),
            "verify": {"audit": True, "reference_ms": NOW + 365 * 86_400_000},
        },
        {
            "name": "hs256-iat-exp-int64-max",
            "description": "iat = exp = 2^63 - 1, verified at that instant: no overflow near "
            "the top of the range",
            **_hs_case(),
            "created_at": MAX_INT,
            "expires_at": MAX_INT,
            "verify": {"reference_ms": MAX_INT},
        },
        {
            "name": "hs256-iat-zero",
            "description": "iat = 0 verified at the epoch: window bounds below zero",
            **_hs_case(),
            "created_at": 0,
            "verify": {"reference_ms": 0},
        },
    ]
    for index, case in enumerate(cases):
        created_at = case.get("created_at", NOW)
        signer = Signer(
            ring,
            kid=case["kid"],
            issuer=case["issuer"],
            model=case["model"],
            clock=functools.partial(int, created_at),
            nonce_source=fixed_nonces(0x10 * (index + 1)),
        )
        value = signer.sign_bytes(
            case["body"],
            content_type=case["content_type"],
            topic=case["topic"],
            key=case["record_key"],
            parents=case["parents"],
            expires_at=case["expires_at"],
        )
        framed = msgpack.unpackb(value)
        _, protected, body, signature = framed
        header = msgpack.unpackb(protected)
        yield {
            "name": case["name"],
            "description": case["description"],
            "sign": {
                "kid": case["kid"],
                "issuer": case["issuer"],
                "model": case["model"],
                "topic": case["topic"],
                "record_key_hex": hexs(case["record_key"]),
                "content_type": case["content_type"],
                "body_hex": case["body"].hex(),
                "parents_hex": [p.hex() for p in case["parents"]],
                "expires_at": case["expires_at"],
                "created_at": created_at,
                "nonce_hex": header["nce"].hex(),
            },
            "header": {
                key: (val.hex() if isinstance(val, bytes) else val)
                if key != "par"
                else [p.hex() for p in val]
                for key, val in header.items()
            },
            "protected_hex": protected.hex(),
            "signed_message_hex": signed_message(protected, body).hex(),
            "signature_hex": signature.hex(),
            "envelope_hex": value.hex(),
            "digest_hex": hashlib.sha256(value).hexdigest(),
            "verify": verify_options(case["topic"], case["record_key"], **case.get("verify", {})),
        }


def _hs256(secret: bytes) -> Callable[[bytes], bytes]:
    key = HmacKey("tmp", secret, issuers=["x"])
    return key.sign


def _resign(header: Any, body: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    """Encode any header object with msgpack and sign it properly: tests strict decoding, since
    the signature over such an envelope is valid."""
    protected = header if isinstance(header, bytes) else msgpack.packb(header)
    return encode_envelope(protected, body, sign(signed_message(protected, body)))


def negative_vectors(positive: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    base = positive[0]
    value = bytes.fromhex(base["envelope_hex"])
    _, protected, body, signature = msgpack.unpackb(value)
    header = msgpack.unpackb(protected)
    hs = _hs256(HMAC_SECRET)
    verify = dict(base["verify"])

    def case(name: str, reason: str, envelope: bytes, **overrides: Any) -> dict[str, Any]:
        if "reference_ms" in overrides and "now_ms" not in overrides:
            overrides["now_ms"] = overrides["reference_ms"]  # a consumer reading without lag
        return {
            "name": name,
            "reason": reason,
            "envelope_hex": envelope.hex(),
            "verify": {**verify, **overrides},
        }

    def with_header(**changes: Any) -> dict[str, Any]:
        changed = dict(header)
        changed.update(changes)
        return changed

    yield case("oversized", "oversized", value, max_envelope_bytes=len(value) - 1)
    yield case("empty-value", "malformed", b"")
    yield case("truncated-by-one", "malformed", value[:-1])
    yield case("trailing-byte", "malformed", value + b"\x00")
    yield case("not-an-array", "malformed", msgpack.packb({"tag": TAG}))
    yield case(
        "non-shortest-framing-bin16-signature",
        "malformed",
        value[: -len(signature) - 2] + b"\xc5\x00\x20" + signature,
    )
    yield case(
        "other-version-tag",
        "unsupported_version",
        msgpack.packb(["signed-bus/v2", protected, body, signature]),
    )
    yield case(
        "signature-byte-flipped",
        "bad_signature",
        value[:-1] + bytes([value[-1] ^ 0x01]),
    )
    yield case(
        "body-byte-flipped",
        "bad_signature",
        encode_envelope(protected, body[:-1] + bytes([body[-1] ^ 0x01]), signature),
    )
    yield case("empty-signature", "bad_signature", encode_envelope(protected, body, b""))
    yield case("short-signature", "bad_signature", encode_envelope(protected, body, signature[:16]))
    yield case(
        "topic-rewritten-unsigned",
        "bad_signature",
        encode_envelope(msgpack.packb(with_header(tpc="other.topic")), body, signature),
    )
    yield case("read-from-other-topic", "wrong_topic", value, topic="other.topic")
    yield case("other-record-key", "wrong_key", value, record_key_hex=b"req-43".hex())
    yield case("null-record-key", "wrong_key", value, record_key_hex=None)
    yield case("alg-none", "algorithm_mismatch", _resign(with_header(alg="none"), body, hs))
    yield case(
        "alg-eddsa-on-hmac-kid",
        "algorithm_mismatch",
        _resign(with_header(alg="EdDSA"), body, hs),
    )
    ed_public = Ed25519Key.from_private_bytes("x", ED25519_SEED, issuers=["x"]).public_bytes
    yield case(
        "hmac-with-ed25519-public-key-as-secret",
        "algorithm_mismatch",
        _resign(with_header(kid="ed-2026-01", iss="planner"), body, _hs256(ed_public)),
    )
    yield case(
        "unknown-kid",
        "unknown_key",
        _resign(with_header(kid="hs-2025-12"), body, _hs256(OTHER_SECRET)),
    )
    yield case(
        "untrusted-issuer",
        "untrusted_issuer",
        _resign(with_header(iss="planner"), body, hs),
    )
    yield case(
        "created-after-future-skew",
        "not_yet_valid",
        value,
        reference_ms=NOW - verify["future_skew_ms"] - 1,
    )
    yield case("older-than-max-age", "expired", value, reference_ms=NOW + verify["max_age_ms"] + 1)
    expiring = bytes.fromhex(positive[1]["envelope_hex"])
    yield case(
        "past-expires-at",
        "expired",
        expiring,
        record_key_hex=None,
        reference_ms=NOW + 60_001,
    )
    for field, bad, label in [
        ("iat", -1, "negative"),
        ("iat", 1.5, "float"),
        ("iat", float("nan"), "nan"),
        ("iat", float("inf"), "inf"),
        ("iat", "1767225600000", "string"),
        ("iat", True, "bool"),
        ("iat", 2**63, "above-int64"),
        ("exp", -5, "negative"),
        ("nce", b"\x00" * 15, "15-bytes"),
        ("nce", "0" * 16, "string"),
        ("rkd", b"\x00" * 31, "31-bytes"),
        ("par", [b"\x00" * 31], "31-byte-parent"),
        ("par", [b"\x00" * 32] * 65, "65-parents"),
        ("par", b"\x00" * 32, "not-an-array"),
        ("kid", "", "empty"),
        ("kid", b"hs-2026-01", "bin"),
        ("alg", 1, "int"),
        ("mdl", "m" * 256, "256-bytes"),
    ]:
        yield case(
            f"signed-header-{field}-{label}",
            "malformed",
            _resign(with_header(**{field: bad}), body, hs),
        )
    yield case("signed-header-unknown-key", "malformed", _resign(with_header(xtr=1), body, hs))
    missing = dict(header)
    del missing["nce"]
    yield case("signed-header-missing-nonce", "malformed", _resign(missing, body, hs))
    # A map announcing 11 entries where "tpc" appears twice: most decoders keep the last one.
    duplicate = bytearray(msgpack.packb(with_header(tpc="inference.results")))
    duplicate[0] += 1
    duplicate += msgpack.packb("tpc") + msgpack.packb("other.topic")
    yield case("signed-header-duplicate-key", "malformed", _resign(bytes(duplicate), body, hs))

    # Shortest form and nothing after the map, inside the header too (all correctly signed).
    shortest = msgpack.packb(header)
    for name, changed in [
        ("str8-kid", shortest.replace(b"\xa3kid\xaahs-2026-01", b"\xa3kid\xd9\x0ahs-2026-01")),
        ("bin16-nonce", shortest.replace(b"\xa3nce\xc4\x10", b"\xa3nce\xc5\x00\x10")),
        ("int64-iat", shortest.replace(b"\xa3iat\xcf", b"\xa3iat\xd3")),
        ("array16-parents", shortest.replace(b"\xa3par\x90", b"\xa3par\xdc\x00\x00")),
        ("map16", b"\xde\x00\x0a" + shortest[1:]),
        ("trailing-byte", shortest + b"\xc0"),
    ]:
        assert changed != shortest
        yield case(f"signed-header-not-shortest-{name}", "malformed", _resign(changed, body, hs))
    yield case(
        "signed-header-exp-before-iat",
        "malformed",
        _resign(with_header(exp=header["iat"] - 1), body, hs),
        audit=True,
    )
    yield case(
        "protected-longer-than-3836-bytes",
        "malformed",
        encode_envelope(b"\xc0" * 3837, body, signature),
    )

    # The verifier's clock apart from the reference (append) time.
    yield case(
        "clock-past-max-age-plus-max-lag",
        "expired",
        value,
        now_ms=NOW + verify["max_age_ms"] + verify["max_lag_ms"] + 1,
    )
    yield case(
        "clock-behind-by-more-than-skew",
        "not_yet_valid",
        value,
        now_ms=NOW - verify["future_skew_ms"] - 1,
    )
    yield case(
        "reference-at-int64-max",
        "expired",
        value,
        reference_ms=MAX_INT,
        now_ms=NOW,
    )
    at_max = _resign(with_header(iat=MAX_INT), body, hs)
    yield case("iat-int64-max-read-now", "not_yet_valid", at_max)
    yield case(
        "audit-still-checks-the-signature", "bad_signature", value[:-1] + b"\x00", audit=True
    )
    yield case(
        "audit-still-checks-the-topic", "wrong_topic", value, audit=True, topic="other.topic"
    )

    # EdDSA signatures.
    ed = positive[2]
    ed_value = bytes.fromhex(ed["envelope_hex"])
    ed_verify = {**ed["verify"]}
    yield {
        "name": "eddsa-signature-byte-flipped",
        "reason": "bad_signature",
        "envelope_hex": (ed_value[:-64] + bytes([ed_value[-64] ^ 0x01]) + ed_value[-63:]).hex(),
        "verify": ed_verify,
    }
    s_value = int.from_bytes(ed_value[-32:], "little")
    assert s_value + ED25519_L < 2**256
    yield {
        "name": "eddsa-non-canonical-s",
        "reason": "bad_signature",
        "envelope_hex": (ed_value[:-32] + (s_value + ED25519_L).to_bytes(32, "little")).hex(),
        "verify": ed_verify,
    }

    # Values that are not v1: another version tag (first item a UTF-8 str other than the tag,
    # whatever follows), or malformed.
    for name, foreign in [
        ("v2-one-item", msgpack.packb(["signed-bus/v2"])),
        ("empty-tag", msgpack.packb(["", protected, body, signature])),
        ("array16-tag-then-junk", b"\xdc\x00\x14" + msgpack.packb("v9") + b"\xc1\xc1"),
        ("str8-tag-then-trailing", b"\x94\xd9\x0dsigned-bus/v0" + b"\x00" * 8),
        ("array32-nested-junk", b"\xdd\xff\xff\xff\xff\xa2v3" + b"\x91" * 64),
    ]:
        yield case(f"other-version-{name}", "unsupported_version", foreign)
    for name, foreign in [
        ("tag-as-bin", msgpack.packb([TAG.encode(), protected, body, signature])),
        ("tag-not-utf8", b"\x94\xa2\xff\xfe" + value[15:]),
        ("tag-cut-short", value[:10]),
        ("v1-tag-3-items", msgpack.packb([TAG, protected, body])),
        ("v1-tag-5-items", msgpack.packb([TAG, protected, body, signature, b""])),
        ("v1-tag-as-str8", b"\x94\xd9\x0d" + value[2:]),
        ("v1-tag-array16", b"\xdc\x00\x04" + value[1:]),
        ("v1-tag-nested-arrays", value[:15] + b"\x94\x94\x94\x90" * 64),
        ("first-item-int", msgpack.packb([1, protected, body, signature])),
        ("empty-array", b"\x90"),
    ]:
        yield case(f"not-v1-{name}", "malformed", foreign)


#: Encodings of small-order points (identity, its x-sign-bit twin, order 2, 4 and 8): a key
#: file naming one of them as a public key must fail to load (docs/ENVELOPE.md section 4).
SMALL_ORDER_KEYS = {
    "identity": "01" + "00" * 31,
    "identity-x-sign-bit": "01" + "00" * 30 + "80",
    "order-2": "ec" + "ff" * 30 + "7f",
    "order-4": "00" * 32,
    "order-8": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "non-canonical-identity": "ee" + "ff" * 30 + "7f",
}


def refused_keys(positive: list[dict[str, Any]]) -> dict[str, Any]:
    """Key-file entries a loader must refuse, and for the identity key an envelope that OpenSSL
    would accept under it: R = identity, S = 0 verifies every message."""
    base = positive[2]  # EdDSA, issuer planner
    header = msgpack.unpackb(bytes.fromhex(base["protected_hex"]))
    header["kid"] = "ed-small-order"
    protected = msgpack.packb(header)
    body = bytes.fromhex(base["sign"]["body_hex"])
    forged = encode_envelope(
        protected, body, bytes.fromhex(SMALL_ORDER_KEYS["identity"]) + bytes(32)
    )
    return {
        "description": "Ed25519 public keys of small order: refuse them when loading keys",
        "keys": [
            {
                "name": name,
                "entry": {
                    "kid": "ed-small-order",
                    "alg": "EdDSA",
                    "issuers": ["planner"],
                    "public": _b64u(bytes.fromhex(raw)),
                },
            }
            for name, raw in SMALL_ORDER_KEYS.items()
        ],
        "forged_under_identity": {
            "envelope_hex": forged.hex(),
            "signed_message_hex": signed_message(protected, body).hex(),
            "verify": base["verify"],
        },
    }


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def render(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def files() -> dict[str, str]:
    positive = list(positive_vectors())
    return {
        "keys.json": keyring().to_json(),
        "positive.json": render(
            {
                "tag": TAG,
                "signature_domain_hex": SIGNATURE_DOMAIN.hex(),
                "vectors": positive,
            }
        ),
        "negative.json": render({"tag": TAG, "vectors": list(negative_vectors(positive))}),
        "refused-keys.json": render(refused_keys(positive)),
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in files().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale vector files: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
