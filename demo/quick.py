"""Quick demo: signed inference results through a real Kafka broker, verified on the way out.

1. an inference agent signs N results (EdDSA key, issuer ``inference-agent``) and produces them;
2. an attacker with produce rights adds tampered copies (a flipped byte) and verbatim replays;
3. a consumer verifies every record (verifier holds only the public key) and claims each
   verified nonce in the Redis replay guard;
4. a verdict summary: the honest results must all verify exactly once, every attack must be
   rejected. Exit 0 only then.

Needs KAFKA_BOOTSTRAP_SERVERS and REDIS_URL (``make demo`` starts the services and sets them).
Run: python demo/quick.py [--count 1000] [--tamper 5] [--replay 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from signed_bus import (
    Claim,
    ClaimVerdict,
    Keyring,
    RedisReplayGuard,
    Signer,
    VerificationError,
    Verifier,
    create_topics,
    generate_ed25519_key,
)

ISSUER = "inference-agent"
MODEL = "sentiment-demo-v1"
MAX_AGE_MS = 300_000
SKEW_MS = 5_000
LOG_APPEND_TIME = 1

Position = tuple[int, int]  # (partition, offset)


@dataclass
class Sent:
    honest: dict[Position, int] = field(default_factory=dict)  # position -> request id
    attacks: dict[Position, str] = field(default_factory=dict)  # position -> "tamper"|"replay"


@dataclass
class Outcome:
    verified: Counter[int] = field(default_factory=Counter)  # request id -> times delivered
    honest_rejected: Counter[str] = field(default_factory=Counter)
    attacks_rejected: Counter[str] = field(default_factory=Counter)
    attacks_accepted: Counter[str] = field(default_factory=Counter)
    wrong_payload: int = 0


def result_for(request_id: int) -> dict[str, object]:
    """A stand-in model output."""
    label = ("positive", "negative", "neutral")[request_id % 3]
    return {
        "request_id": request_id,
        "label": label,
        "score": round(0.5 + (request_id % 50) / 100, 2),
        "tokens": 12 + request_id % 40,
    }


def tampered(value: bytes) -> bytes:
    """What a proxy or connector rewriting one byte of the record would send."""
    flipped = bytearray(value)
    flipped[-40] ^= 0x01
    return bytes(flipped)


async def produce(bootstrap: str, topic: str, signer: Signer, args: argparse.Namespace) -> Sent:
    sent = Sent()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        records: list[tuple[bytes, bytes]] = []
        futures = []
        for request_id in range(args.count):
            key = f"request-{request_id}".encode()
            value = signer.sign(result_for(request_id), topic=topic, key=key)
            records.append((key, value))
            futures.append(await producer.send(topic, value, key=key))
        for request_id, future in enumerate(futures):
            metadata = await future
            sent.honest[(metadata.partition, metadata.offset)] = request_id
        # the attacker: same keys, so the copies land after the originals in the same partition
        step = max(1, args.count // max(1, args.tamper + args.replay))
        picks = [records[(i * step) % args.count] for i in range(args.tamper + args.replay)]
        for i, (key, value) in enumerate(picks):
            kind = "tamper" if i < args.tamper else "replay"
            attack = tampered(value) if kind == "tamper" else value
            metadata = await producer.send_and_wait(topic, attack, key=key)
            sent.attacks[(metadata.partition, metadata.offset)] = kind
    finally:
        await producer.stop()
    return sent


async def consume(
    bootstrap: str,
    topic: str,
    verifier: Verifier,
    guard: RedisReplayGuard,
    sent: Sent,
    timeout_s: float,
) -> tuple[Outcome, int]:
    outcome = Outcome()
    expected = len(sent.honest) + len(sent.attacks)
    seen = 0
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"quick-demo-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1_000, max_records=500)
            for tp, records in batches.items():
                claims: list[tuple[Position, Claim, object]] = []
                for record in records:
                    seen += 1
                    position = (tp.partition, record.offset)
                    reference = (
                        record.timestamp if record.timestamp_type == LOG_APPEND_TIME else None
                    )
                    try:
                        message = verifier.verify(
                            record.value, topic=topic, key=record.key, reference_ms=reference
                        )
                    except VerificationError as exc:
                        reject(outcome, sent, position, exc.reason)
                        continue
                    claim = Claim(
                        issuer=message.issuer,
                        nonce=message.nonce,
                        created_at=message.created_at,
                        topic=topic,
                        partition=tp.partition,
                        offset=record.offset,
                    )
                    claims.append((position, claim, message.payload))
                if not claims:
                    continue
                verdicts = await guard.claim([claim for _, claim, _ in claims])
                for (position, _, payload), verdict in zip(claims, verdicts, strict=True):
                    if verdict is ClaimVerdict.REPLAY:
                        reject(outcome, sent, position, "replay")
                    else:
                        accept(outcome, sent, position, payload)
    finally:
        await consumer.stop()
    return outcome, seen


def reject(outcome: Outcome, sent: Sent, position: Position, reason: str) -> None:
    if position in sent.attacks:
        outcome.attacks_rejected[reason] += 1
    else:
        outcome.honest_rejected[reason] += 1


def accept(outcome: Outcome, sent: Sent, position: Position, payload: object) -> None:
    if position in sent.attacks:
        outcome.attacks_accepted[sent.attacks[position]] += 1
        return
    request_id = sent.honest.get(position)
    if request_id is None or payload != result_for(request_id):
        outcome.wrong_payload += 1
        return
    outcome.verified[request_id] += 1


def by_reason(counter: Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counter.items())) or "none"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="honest results to sign")
    parser.add_argument("--tamper", type=int, default=5, help="tampered copies to inject")
    parser.add_argument("--replay", type=int, default=5, help="verbatim replays to inject")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for records")
    args = parser.parse_args()
    if args.count < 1 or args.tamper < 0 or args.replay < 0:
        parser.error("--count must be positive, --tamper and --replay non-negative")

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    run = uuid.uuid4().hex[:8]
    topic = f"quick-demo-results-{run}"

    signing_ring = Keyring([generate_ed25519_key(f"demo-{run}", issuers=[ISSUER])])
    signer = Signer(signing_ring, kid=f"demo-{run}", issuer=ISSUER, model=MODEL)
    verifier = Verifier(signing_ring.public(), max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS)

    print(f"signed-bus quick demo: Kafka {bootstrap}, Redis {redis_url}, topic {topic}")
    started = time.monotonic()
    await create_topics(bootstrap, [topic], partitions=args.partitions)
    try:
        sent = await produce(bootstrap, topic, signer, args)
        produced_s = time.monotonic() - started
        async with RedisReplayGuard.from_url(
            redis_url, max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS, prefix=f"quick-demo-{run}"
        ) as guard:
            outcome, seen = await consume(bootstrap, topic, verifier, guard, sent, args.timeout)
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
    elapsed = time.monotonic() - started

    delivered_once = sum(1 for n in outcome.verified.values() if n == 1)
    duplicates = sum(n - 1 for n in outcome.verified.values() if n > 1)
    lost = args.count - len(outcome.verified)
    honest_rejected = sum(outcome.honest_rejected.values())
    attacks = len(sent.attacks)
    caught = sum(outcome.attacks_rejected.values())
    accepted_attacks = sum(outcome.attacks_accepted.values())

    print(
        f"honest results: produced {len(sent.honest)}, verified OK {delivered_once}, "
        f"rejected {honest_rejected}, lost {lost}, duplicates {duplicates}, "
        f"wrong payload {outcome.wrong_payload}"
    )
    print(f"  rejected by reason: {by_reason(outcome.honest_rejected)}")
    print(
        f"injected attacks: {args.tamper} tampered, {args.replay} replayed; "
        f"rejected {caught}/{attacks}, accepted {accepted_attacks}"
    )
    print(f"  rejected by reason: {by_reason(outcome.attacks_rejected)}")
    print(
        f"records read {seen}; produce {produced_s:.2f}s, whole run {elapsed:.2f}s "
        f"({len(sent.honest) / elapsed:.0f} results/s end to end)"
    )
    ok = (
        delivered_once == args.count
        and lost == 0
        and duplicates == 0
        and honest_rejected == 0
        and outcome.wrong_payload == 0
        and caught == attacks
        and accepted_attacks == 0
    )
    print("verdict: PASS" if ok else "verdict: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
