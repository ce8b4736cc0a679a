"""Part 5: the codec per message, signed-bus against the naive design and Standard Webhooks.

Every contender signs and verifies the same inference results (512-byte msgpack maps):

- signed-bus: ``Signer.sign`` (msgpack-encode the result, build the header with a fresh nonce,
  HMAC or Ed25519 over tag|header|body) and ``Verifier.verify`` (size cap, strict decode, policy,
  signature, destination, freshness) followed by reading ``.payload`` (the body decoded once);
- naive JSON+HMAC: ``hmac.new(secret, json.dumps(result, sort_keys=True).encode(), sha256)
  .hexdigest()``; verify = ``json.loads`` + recompute over the re-serialised object +
  ``hmac.compare_digest``;
- ``standardwebhooks.Webhook``: ``sign(msg_id, timestamp, json.dumps(result))`` and ``verify``
  with its JSON parse (the package signs text, so it gets the result as JSON).

Each contender's verify ends with the decoded result in hand, as an application needs it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgpack

from signed_bus._envelope import CONTENT_TYPE_MSGPACK
from signed_bus._keys import Keyring, generate_ed25519_key, generate_hmac_key
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.paths import bench_paths, built_on
from signed_bus.bench.payloads import inference_results
from signed_bus.bench.results import PartResult, Row, Target
from signed_bus.bench.stats import Loop, time_per_op_us

__all__ = ["ISSUER", "TOPIC", "bench_keyring", "measure_codec", "naive_sign", "naive_verify"]

ISSUER = "bench-agent"
MODEL = "vision-classifier:2.3.1"
TOPIC = "bench.results"
HMAC_KID = "bench-hs256"
ED25519_KID = "bench-eddsa"
#: Distinct results per run; the timed loops cycle through them.
_DISTINCT = 1_000


def bench_keyring() -> Keyring:
    """A fresh keyring with one HS256 and one EdDSA key for the benchmark issuer."""
    return Keyring(
        [generate_hmac_key(HMAC_KID, [ISSUER]), generate_ed25519_key(ED25519_KID, [ISSUER])]
    )


def naive_sign(secret: bytes, result: object) -> tuple[bytes, str]:
    """The naive design: JSON with sorted keys, hex HMAC-SHA256 of it; returns (body, sig)."""
    body = json.dumps(result, sort_keys=True).encode()
    return body, hmac.new(secret, body, hashlib.sha256).hexdigest()


def naive_verify(secret: bytes, body: bytes, signature: str) -> object:
    """Parse, re-serialise, recompute, compare in constant time; the parsed result or raise."""
    result = json.loads(body)
    expected = hmac.new(
        secret, json.dumps(result, sort_keys=True).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise ValueError("bad signature")
    return result


def _cycle(items: Sequence[Any], count: int) -> list[Any]:
    return [items[index % len(items)] for index in range(count)]


def _codec_cases(
    config: BenchConfig,
) -> tuple[dict[str, tuple[Callable[[Any], object] | Loop, list[Any]]], dict[str, float]]:
    from standardwebhooks.webhooks import Webhook

    results = inference_results(min(_DISTINCT, config.codec_ops), size=config.payload_bytes)
    keyring = bench_keyring()
    hs_signer = Signer(keyring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
    ed_signer = Signer(keyring, kid=ED25519_KID, issuer=ISSUER, model=MODEL)
    verifier = Verifier(keyring, freshness=config.freshness)
    secret = secrets.token_bytes(32)
    webhook = Webhook(secret)

    hs_envelopes = [hs_signer.sign(result, topic=TOPIC) for result in results]
    ed_envelopes = [ed_signer.sign(result, topic=TOPIC) for result in results]
    naive_messages = [naive_sign(secret, result) for result in results]
    now = datetime.now(tz=UTC)
    webhook_messages = []
    for index, result in enumerate(results):
        data = json.dumps(result)
        msg_id = f"msg_{index:016d}"
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook.sign(msg_id, now, data),
        }
        webhook_messages.append((data, headers))
    # Check every contender accepts what it produced before timing it.
    for envelope in hs_envelopes[:1] + ed_envelopes[:1]:
        if verifier.verify(envelope, topic=TOPIC, key=None).payload != results[0]:
            raise AssertionError("signed-bus round trip changed the result")
    naive_verify(secret, *naive_messages[0])
    webhook.verify(*webhook_messages[0])

    def webhook_sign(result: object) -> str:
        return str(
            webhook.sign(f"msg_{time.monotonic_ns()}", datetime.now(tz=UTC), json.dumps(result))
        )

    ops = config.codec_ops
    cases: dict[str, tuple[Callable[[Any], object] | Loop, list[Any]]] = {
        "naive_sign": (lambda result: naive_sign(secret, result), _cycle(results, ops)),
        "naive_verify": (
            lambda message: naive_verify(secret, *message),
            _cycle(naive_messages, ops),
        ),
        "webhooks_sign": (webhook_sign, _cycle(results, ops)),
        "webhooks_verify": (
            lambda message: webhook.verify(*message),
            _cycle(webhook_messages, ops),
        ),
        "hs256_sign": (lambda result: hs_signer.sign(result, topic=TOPIC), _cycle(results, ops)),
        "hs256_verify": (
            lambda value: verifier.verify(value, topic=TOPIC, key=None).payload,
            _cycle(hs_envelopes, ops),
        ),
        "eddsa_sign": (lambda result: ed_signer.sign(result, topic=TOPIC), _cycle(results, ops)),
        "eddsa_verify": (
            lambda value: verifier.verify(value, topic=TOPIC, key=None).payload,
            _cycle(ed_envelopes, ops),
        ),
    }
    # The core: seal an encoded body, open (verify) a value without decoding its body, per path.
    bodies = [msgpack.packb(result) for result in results]
    for path in bench_paths():
        with built_on(path):
            path_signer = Signer(keyring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
            path_verifier = Verifier(keyring, freshness=config.freshness)

        # The loops a caller writes: the API call per item, no wrapper function around it.
        def seal_all(bodies: Sequence[bytes], signer: Signer = path_signer) -> None:
            for body in bodies:
                signer.sign_bytes(body, content_type=CONTENT_TYPE_MSGPACK, topic=TOPIC)

        def open_all(values: Sequence[bytes], verifier: Verifier = path_verifier) -> None:
            for value in values:
                verifier.verify(value, topic=TOPIC, key=None)

        cases[f"core_seal_{path}"] = (Loop(seal_all), _cycle(bodies, ops))
        cases[f"core_open_{path}"] = (Loop(open_all), _cycle(hs_envelopes, ops))
    sizes = {
        "payload_msgpack": float(config.payload_bytes),
        "hs256_envelope": sum(map(len, hs_envelopes)) / len(hs_envelopes),
        "eddsa_envelope": sum(map(len, ed_envelopes)) / len(ed_envelopes),
        "naive_json_plus_hex_sig": sum(len(b) + len(s) for b, s in naive_messages) / len(results),
        "webhooks_json_plus_headers": sum(
            len(d) + sum(len(k) + len(v) for k, v in h.items()) for d, h in webhook_messages
        )
        / len(results),
    }
    return cases, sizes


def measure_codec(config: BenchConfig) -> PartResult:
    """Time every case (best of ``config.repeats`` interleaved rounds) and build the rows."""
    part = PartResult(name="codec", title="5. codec per message (same 512-byte results)")
    cases, sizes = _codec_cases(config)
    us = time_per_op_us(cases, repeats=config.repeats)
    naive = "naive JSON+HMAC"
    webhooks = "standardwebhooks"
    unit = "us/msg"
    part.rows = [
        Row("codec", "sign HS256", unit, us["naive_sign"], us["hs256_sign"], naive, "lower"),
        Row(
            "codec",
            "verify+decode HS256",
            unit,
            us["naive_verify"],
            us["hs256_verify"],
            naive,
            "lower",
        ),
        Row("codec", "sign HS256", unit, us["webhooks_sign"], us["hs256_sign"], webhooks, "lower"),
        Row(
            "codec",
            "verify+decode HS256",
            unit,
            us["webhooks_verify"],
            us["hs256_verify"],
            webhooks,
            "lower",
        ),
        Row("codec", "sign EdDSA", unit, us["naive_sign"], us["eddsa_sign"], naive, "lower"),
        Row(
            "codec",
            "verify+decode EdDSA",
            unit,
            us["naive_verify"],
            us["eddsa_verify"],
            naive,
            "lower",
        ),
        Row(
            "codec",
            "message size HS256",
            "bytes",
            sizes["naive_json_plus_hex_sig"],
            sizes["hs256_envelope"],
            naive,
            "lower",
        ),
    ]
    paths = bench_paths()
    base, fast = paths[-1], paths[0]  # pure, and native where it is installed
    for label, case in (("core seal HS256 (body encoded)", "seal"), ("core open HS256", "open")):
        part.rows.append(
            Row(
                "codec",
                label,
                unit,
                us[f"core_{case}_{base}"],
                us[f"core_{case}_{fast}"],
                f"{base} vs {fast}",
                "lower",
            )
        )
    part.targets = [
        Target(
            f"HS256 seal per 512-byte result, body encoded ({fast})",
            us[f"core_seal_{fast}"],
            "<=",
            1.5,
            "us",
        ),
        Target(
            f"HS256 open per 512-byte result ({fast})", us[f"core_open_{fast}"], "<=", 1.5, "us"
        ),
    ]
    part.details = {
        "us_per_op": us,
        "bytes_per_message": sizes,
        "ops_per_case": config.codec_ops,
        "repeats": config.repeats,
        "estimator": "minimum over interleaved rounds",
    }
    return part
