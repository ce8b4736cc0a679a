"""Regenerate the envelope v1 known-answer vectors (keys.json, positive.json, negative.json).

    .venv/bin/python tests/vectors/generate.py          # rewrite the files
    .venv/bin/python tests/vectors/generate.py --check  # exit 1 if the files would change

The files are the reference: tests/unit/test_vectors.py checks the library against them byte for
byte, so regenerate only when the wire format changes on purpose (and then bump the tag).
Keys, clock and nonces are fixed; Ed25519 signatures are deterministic (RFC 8032), so the
output is identical on every run. The keys are public test keys: never use them for anything.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from signed_bus.envelope import (
    CONTENT_TYPE_MSGPACK,
    SIGNATURE_DOMAIN,
    TAG,
    encode_envelope,
    signed_message,
)
from signed_bus.keys import Ed25519Key, HmacKey, Keyring
from signed_bus.signer import Signer

HERE = Path(__file__).resolve().parent
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z
HMAC_SECRET = hashlib.sha256(b"signed-bus test vector HS256 secret").digest()
ED25519_SEED = hashlib.sha256(b"signed-bus test vector EdDSA seed").digest()
OTHER_SECRET = hashlib.sha256(b"signed-bus test vector key not in the ring").digest()
PARENT_A = hashlib.sha256(b"parent envelope a").digest()
PARENT_B = hashlib.sha256(b"parent envelope b").digest()
RESULT = {"request": "req-42", "label": "cat", "score": 0.875, "top": [["cat", 0.875]]}

VERIFY_DEFAULTS = {
    "max_age_ms": 300_000,
    "future_skew_ms": 5_000,
    "max_envelope_bytes": 1_048_576,
    "audit": False,
}


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
    ]
    for index, case in enumerate(cases):
        signer = Signer(
            ring,
            kid=case["kid"],
            issuer=case["issuer"],
            model=case["model"],
            clock=lambda: NOW,
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
                "created_at": NOW,
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
            "verify": {
                **VERIFY_DEFAULTS,
                "topic": case["topic"],
                "record_key_hex": hexs(case["record_key"]),
                "reference_ms": NOW,
            },
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
