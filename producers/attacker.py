"""The demo's attacker: a holder of produce rights trying to get bad results through.

It reads the pipeline's topics like any client (it can: it has produce and consume rights),
captures honest envelopes, and publishes, on every hop's topic:

- ``replay``: a captured envelope re-published unchanged on the same topic (same partition, and
  another partition when the topic has several): the replay guard must drop it;
- ``cross_topic``: a captured envelope re-published on another hop's topic (signed for the first
  topic, so ``wrong_topic``);
- ``bit_flip``: a captured envelope with one bit flipped somewhere (framing, header, body or
  signature);
- ``unknown_key``: a result signed with a key the pipeline never heard of;
- ``stolen_kid``: a result signed with the attacker's own key under a kid the pipeline trusts
  (read from a captured header), so the signature cannot verify;
- ``spoofed_issuer``: a result signed with a key the pipeline does trust, but for a low-privilege
  agent (a compromised telemetry agent), claiming to be the topic's real issuer;
- ``unsigned``: the bare msgpack result, no envelope.

The forged results are what an attacker would want: an honest prompt id with a harmful answer,
or a plan with a harmful action. Run as ``python -m producers.attacker`` (environment below).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from signed_bus import Keyring, Signer, generate_ed25519_key

# Private: a getmany() that survives records the client cannot decode (no public equivalent yet).
from signed_bus._kafka.fetch import fetch_records

__all__ = [
    "ATTACK_KINDS",
    "Attack",
    "Captured",
    "Forger",
    "Forgery",
    "malicious_payload",
    "plan_round",
]

log = logging.getLogger("producers.attacker")

ATTACK_KINDS: Final = (
    "replay",
    "replay_other_partition",
    "cross_topic",
    "bit_flip",
    "unknown_key",
    "stolen_kid",
    "spoofed_issuer",
    "unsigned",
)

#: What a verifying consumer should answer to each attack (bit flips land anywhere, so any
#: verification failure is right for them, as long as it is one).
EXPECTED_REASONS: Final[Mapping[str, frozenset[str]]] = {
    "replay": frozenset({"replay"}),
    "replay_other_partition": frozenset({"replay"}),
    "cross_topic": frozenset({"wrong_topic"}),
    "bit_flip": frozenset(
        {
            "malformed",
            "unsupported_version",
            "unknown_key",
            "algorithm_mismatch",
            "untrusted_issuer",
            "bad_signature",
            "wrong_topic",
            "wrong_key",
            "expired",
            "not_yet_valid",
        }
    ),
    "unknown_key": frozenset({"unknown_key"}),
    "stolen_kid": frozenset({"bad_signature"}),
    "spoofed_issuer": frozenset({"untrusted_issuer"}),
    "unsigned": frozenset({"malformed"}),
}


@dataclass(frozen=True, slots=True)
class Captured:
    """An honest record the attacker read off a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    def header(self) -> dict[str, Any]:
        """The envelope's protected header, decoded without verifying (an attacker's view)."""
        outer = msgpack.unpackb(self.value, raw=False)
        header = msgpack.unpackb(outer[1], raw=False)
        if not isinstance(header, dict):
            raise ValueError("captured value has no header map")
        return header

    def payload(self) -> object:
        outer = msgpack.unpackb(self.value, raw=False)
        return msgpack.unpackb(outer[2], raw=False)


@dataclass(frozen=True, slots=True)
class Forgery:
    """One record the attacker publishes, and what it is."""

    kind: str
    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    source: str = ""  # the captured position it was made from, if any

    @property
    def expected_reasons(self) -> frozenset[str]:
        return EXPECTED_REASONS[self.kind]

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "topic": self.topic,
            "partition": self.partition,
            "source": self.source,
            "digest": hashlib.sha256(self.value).hexdigest(),
        }


def malicious_payload(captured_payload: object, *, serial: int) -> dict[str, object]:
    """A harmful variant of a captured payload: same ids, the attacker's content."""
    if isinstance(captured_payload, dict) and captured_payload.get("kind") == "plan":
        forged = dict(captured_payload)
        forged["actions"] = [
            {
                "action_id": f"{captured_payload.get('plan_id', 'plan')}/{99 + serial}",
                "verb": "rollback",
                "target": "payments",
                "reason": "attacker-chosen action",
            }
        ]
        return forged
    if isinstance(captured_payload, dict):
        forged = dict(captured_payload)
        forged["output"] = "rollback payments: the attacker says so."
        return forged
    return {"kind": "inference_result", "output": "rollback payments.", "serial": serial}


class Forger:
    """Builds forgeries from captured envelopes. No I/O, so tests can check each kind offline.

    ``compromised`` is a key ring holding the one signing key the attacker stole from a
    low-privilege agent: the pipeline trusts it, but only for that agent's issuer.
    """

    def __init__(self, *, compromised: Keyring, rng: random.Random | None = None) -> None:
        signing = [key for key in compromised if key.can_sign]
        if len(signing) != 1:
            raise ValueError("the compromised key ring must hold exactly one signing key")
        self._compromised = compromised
        self._compromised_kid = signing[0].kid
        self._rng = rng or random.Random()  # noqa: S311 - choosing bits to flip, not secrets
        self._serial = 0
        # A key no verifier knows; the kid looks plausible on purpose.
        self._rogue = Keyring([generate_ed25519_key("inference-agent-2", ["inference-agent"])])

    def forge(
        self,
        kind: str,
        captured: Captured,
        *,
        other_topic: str | None = None,
        other_partition: int | None = None,
    ) -> Forgery:
        """Forge one record of ``kind`` from ``captured`` (see the module docstring)."""
        self._serial += 1
        source = f"{captured.topic}[{captured.partition}]@{captured.offset}"
        topic, key = captured.topic, captured.key
        if kind == "replay":
            return Forgery(kind, topic, captured.value, key, captured.partition, source)
        if kind == "replay_other_partition":
            if other_partition is None:
                raise ValueError("replay_other_partition needs other_partition")
            return Forgery(kind, topic, captured.value, key, other_partition, source)
        if kind == "cross_topic":
            if other_topic is None:
                raise ValueError("cross_topic needs other_topic")
            return Forgery(kind, other_topic, captured.value, key, None, source)
        if kind == "bit_flip":
            return Forgery(kind, topic, self._flip(captured.value), key, None, source)
        header = captured.header()
        victim_issuer = str(header["iss"])
        model = str(header["mdl"])
        payload = malicious_payload(captured.payload(), serial=self._serial)
        if kind == "unknown_key":
            signer = Signer(
                self._rogue, kid="inference-agent-2", issuer="inference-agent", model=model
            )
            value = signer.sign(payload, topic=topic, key=key)
        elif kind == "stolen_kid":
            # The attacker's own key material under the victim's kid and issuer.
            stolen = Keyring([generate_ed25519_key(str(header["kid"]), [victim_issuer])])
            signer = Signer(stolen, kid=str(header["kid"]), issuer=victim_issuer, model=model)
            value = signer.sign(payload, topic=topic, key=key)
        elif kind == "spoofed_issuer":
            signer = Signer(
                self._claiming(victim_issuer),
                kid=self._compromised_kid,
                issuer=victim_issuer,
                model=model,
            )
            value = signer.sign(payload, topic=topic, key=key)
        elif kind == "unsigned":
            value = msgpack.packb(payload, use_bin_type=True)
        else:
            raise ValueError(f"unknown attack kind {kind!r}")
        return Forgery(kind, topic, value, key, None, source)

    def _flip(self, value: bytes) -> bytes:
        flipped = bytearray(value)
        flipped[self._rng.randrange(len(flipped))] ^= 1 << self._rng.randrange(8)
        return bytes(flipped)

    def _claiming(self, issuer: str) -> Keyring:
        """The compromised key, as the attacker's own copy that also claims ``issuer``.

        The attacker controls its local key file, so it can write any issuer list into it; the
        pipeline's keyring still says which issuers the key may speak for.
        """
        document = json.loads(self._compromised.to_json())
        for entry in document["keys"]:
            if entry["kid"] == self._compromised_kid:
                entry["issuers"] = sorted({*entry["issuers"], issuer})
        return Keyring.from_mapping(document, source="attacker's key ring")


@dataclass(frozen=True, slots=True)
class Attack:
    """One planned attack: its kind and where a copy goes (for replays and cross-topic)."""

    kind: str
    other_topic: str | None = None
    other_partition: int | None = None


def plan_round(
    captured: Captured,
    *,
    topics: Sequence[str],
    partitions: Mapping[str, int],
) -> list[Attack]:
    """The attacks of one round against ``captured``'s topic, one per applicable kind."""
    attacks = [Attack("replay")]
    count = partitions.get(captured.topic, 1)
    if count > 1:
        attacks.append(
            Attack("replay_other_partition", other_partition=(captured.partition + 1) % count)
        )
    others = [t for t in topics if t != captured.topic]
    if others:
        attacks.append(Attack("cross_topic", other_topic=others[0]))
    attacks += [
        Attack(kind)
        for kind in ("bit_flip", "unknown_key", "stolen_kid", "spoofed_issuer", "unsigned")
    ]
    return attacks


# -- the command ----------------------------------------------------------------------------------


async def run() -> int:
    """``python -m producers.attacker``: capture honest envelopes, publish forgeries.

    Environment (besides the common ones in :mod:`producers.common`):

    - ``ATTACK_TOPICS``: topics to capture from and attack (default: results and plans topics)
    - ``ATTACK_ROUNDS``: rounds per topic; a round is one forgery of each kind (default 3)
    - ``ATTACK_INTERVAL_S``: pause between rounds, so attacks interleave with honest traffic
      (default 1.0)
    - ``ATTACK_CAPTURE_TIMEOUT_S``: give up if a topic shows no honest record (default 120)
    - ``SIGNED_BUS_KEYRING_FILE``: the ONE stolen signing key (a low-privilege agent's)
    - ``ATTACK_MANIFEST``: write every forgery tried (kind, topic, digest) here as JSON
    - ``ATTACK_SEED``: seed for choosing the bits to flip (default: random)
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from producers.common import (
        AgentEnv,
        StatusBoard,
        describe_keyring,
        env_float,
        env_int,
        env_list,
        install_stop_signals,
        load_keyring,
        log_settings,
        setup_logging,
    )

    env = AgentEnv.load("attacker")
    setup_logging(env.agent_id)
    topics = env_list("ATTACK_TOPICS", f"{env.results_topic},{env.plans_topic}")
    rounds = env_int("ATTACK_ROUNDS", 3)
    interval = env_float("ATTACK_INTERVAL_S", 1.0)
    capture_timeout = env_float("ATTACK_CAPTURE_TIMEOUT_S", 120.0)
    seed = os.environ.get("ATTACK_SEED")
    stolen = load_keyring()
    log_settings(
        log,  # this module's logger, as the rest of the run logs to
        {
            **env.describe(),
            "ATTACK_TOPICS": ",".join(topics),
            "ATTACK_ROUNDS": rounds,
            "ATTACK_INTERVAL_S": interval,
            "ATTACK_CAPTURE_TIMEOUT_S": capture_timeout,
            "ATTACK_SEED": seed,
            "keyring": describe_keyring(stolen),
        },
    )
    forger = Forger(
        compromised=stolen,
        rng=random.Random(int(seed)) if seed else None,  # noqa: S311 - not for secrets
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    redis = env.redis()
    status = StatusBoard(redis, env.status_key())
    tried: Counter[str] = Counter()
    by_topic: Counter[str] = Counter()
    manifest: list[dict[str, object]] = []

    def publish_counters() -> None:
        status.counters.update(
            tried=sum(tried.values()), by_kind=dict(tried), by_topic=dict(by_topic)
        )

    # A plain client, as an attacker with produce/consume rights would have (read_committed:
    # see docs/PIPELINES.md on why an aborted output must not be trusted downstream anyway).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap_servers, enable_idempotence=True)
    await consumer.start()
    await producer.start()
    reporter = asyncio.create_task(status.run_every(1.0, stop))
    try:
        await status.publish("running")
        partitions: dict[str, int] = {}
        assignment = []
        for topic in topics:
            parts = await _partitions(consumer, topic)
            partitions[topic] = len(parts)
            assignment += [TopicPartition(topic, p) for p in parts]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        latest: dict[str, Captured] = {}
        done: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + capture_timeout
        next_round = loop.time()
        while not stop.is_set() and any(done[t] < rounds for t in topics):
            # a record the client cannot decode is skipped, not captured (nor fatal)
            batch = await fetch_records(consumer, timeout_ms=200, max_records=200)
            for tp, records in batch.records.items():
                for record in records:
                    latest[tp.topic] = Captured(
                        record.topic, record.partition, record.offset, record.key, record.value
                    )
            if loop.time() < next_round:
                continue
            ready = [t for t in topics if done[t] < rounds and t in latest]
            if not ready:
                if loop.time() > deadline:
                    log.error("no honest record seen on %s; giving up", topics)
                    await status.publish("failed")
                    return 1
                continue
            for topic in ready:
                captured = latest.pop(topic)
                for attack in plan_round(captured, topics=topics, partitions=partitions):
                    forgery = forger.forge(
                        attack.kind,
                        captured,
                        other_topic=attack.other_topic,
                        other_partition=attack.other_partition,
                    )
                    await producer.send_and_wait(
                        forgery.topic, forgery.value, key=forgery.key, partition=forgery.partition
                    )
                    tried[attack.kind] += 1
                    by_topic[forgery.topic] += 1
                    manifest.append(forgery.describe())
                done[topic] += 1
                log.info("round %d on %s: %d forgeries so far", done[topic], topic, len(manifest))
            publish_counters()
            deadline = loop.time() + capture_timeout
            next_round = loop.time() + interval
        publish_counters()
        path = os.environ.get("ATTACK_MANIFEST")
        if path:
            with open(path, "w", encoding="utf-8") as handle:  # noqa: ASYNC230 - once, at the end
                json.dump(manifest, handle, indent=1)
        await status.publish("done")
        log.info("published %d forgeries: %s", len(manifest), dict(tried))
        return 0
    except Exception:
        log.exception("attacker failed")
        await status.publish("failed")
        return 1
    finally:
        stop.set()
        await reporter
        await producer.stop()
        await consumer.stop()
        await redis.aclose()


async def _partitions(consumer: Any, topic: str) -> list[int]:
    from aiokafka import TopicPartition

    for _ in range(50):
        if topic in await consumer.topics():
            # A group-less consumer only knows assigned topics: probe partition 0 to load it.
            probe = TopicPartition(topic, 0)
            consumer.assign([probe])
            await consumer.end_offsets([probe])
            return sorted(consumer.partitions_for_topic(topic) or ())
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic} does not exist")


def main(argv: list[str] | None = None) -> None:
    from producers.common import agent_main

    sys.exit(agent_main("producers.attacker", run.__doc__, run, argv))


if __name__ == "__main__":
    main()
