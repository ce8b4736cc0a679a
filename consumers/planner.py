"""The planner: a relay hop that turns verified inference results into signed plans.

It reads the results topic through a verifying consumer (forged, tampered, replayed and stale
results are dead-lettered before the planner sees them), accepts results only from the allowed
inference agents, makes one plan per result (:func:`consumers.plans.make_plan`) and publishes it
signed with its own Ed25519 key. Each plan's envelope names the result's digest as its parent.
By default the hop is exactly-once: outputs and input offsets commit in one Kafka transaction.

Run: ``python -m consumers.planner``. Environment (besides :mod:`producers.common`):

- ``GROUP_ID``: consumer group [``planner``]
- ``SIGNED_BUS_KID``: kid of the planner's signing key [``planner-1``]
- ``AGENT_ID``: the issuer it signs as [``planner``]
- ``PLANNER_MODEL``: the model field of its envelopes [``planner-rules@2.0``]
- ``ALLOWED_ISSUERS``: issuers whose results are planned [``inference-agent``]
- ``EXACTLY_ONCE``: ``true`` for Kafka transactions, ``false`` for at-least-once [``true``]
- ``TRANSACTIONAL_ID``: stable per planner instance [``{GROUP_ID}-{AGENT_ID}``]
- ``RESTART_LIMIT``: transform failures tolerated before exiting [5]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
from collections import Counter

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from consumers.plans import make_plan
from producers.common import (
    AgentEnv,
    StatusBoard,
    agent_main,
    describe_keyring,
    env_bool,
    env_int,
    env_list,
    env_str,
    install_stop_signals,
    load_keyring,
    load_verify_keyring,
    log_settings,
    setup_logging,
)
from producers.model import InferenceResult
from signed_bus import (
    ConsumedMessage,
    ConsumerOptions,
    Output,
    RedisReplayGuard,
    Relay,
    SignedProducer,
    Signer,
    VerificationError,
    Verifier,
    VerifyingConsumer,
    printable,
)
from signed_bus.errors import RelayError, RelayTransformError

AGENT = "planner"


class Planner:
    """The transform: result -> plan, with a delivery ledger for audits."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        ledger_key: str,
        allowed_issuers: frozenset[str],
        log: logging.Logger,
    ) -> None:
        self._redis = redis
        self._ledger_key = ledger_key
        self._allowed = allowed_issuers
        self._log = log
        self.counts: Counter[str] = Counter()

    async def __call__(self, message: ConsumedMessage) -> list[Output]:
        verified = message.verified
        position = f"{message.topic}:{message.partition}:{message.offset}"
        if verified.issuer not in self._allowed:
            self.counts["unexpected_issuer"] += 1
            self._log.warning(
                "ignoring a result from issuer %s at %s", printable(verified.issuer), position
            )
            return []
        try:
            result = InferenceResult.from_payload(message.payload)
        except (ValueError, VerificationError) as exc:  # a body that breaks its profile too
            self.counts["bad_payload"] += 1
            self._log.warning(
                "ignoring a record that is not a result at %s: %s", position, printable(str(exc))
            )
            return []
        plan = make_plan(result, source_digest=verified.digest)
        # One field per delivered record position: idempotent when a batch is re-processed.
        await self._redis.hset(
            self._ledger_key,
            position,
            json.dumps(
                {
                    "prompt_id": result.prompt_id,
                    "output_sha256": hashlib.sha256(result.output.encode()).hexdigest(),
                    "model": verified.model,
                    "digest": verified.digest.hex(),
                }
            ),
        )
        self.counts["planned"] += 1
        return [Output(plan.to_payload(), key=plan.prompt_id.encode())]


async def run() -> int:
    env = AgentEnv.load(AGENT)
    log = setup_logging(env.agent_id)
    group = env_str("GROUP_ID", AGENT)
    exactly_once = env_bool("EXACTLY_ONCE", True)
    restart_limit = env_int("RESTART_LIMIT", 5)
    ring = load_keyring()
    verify_ring = await load_verify_keyring()
    kid = env_str("SIGNED_BUS_KID", "planner-1")
    model = env_str("PLANNER_MODEL", "planner-rules@2.0")
    allowed = frozenset(env_list("ALLOWED_ISSUERS", "inference-agent"))
    transactional_id = (
        env_str("TRANSACTIONAL_ID", f"{group}-{env.agent_id}") if exactly_once else None
    )
    signer = Signer(ring, kid=kid, issuer=env.agent_id, model=model)
    log_settings(
        log,
        {
            **env.describe(),
            "GROUP_ID": group,
            "SIGNED_BUS_KID": kid,
            "PLANNER_MODEL": model,
            "ALLOWED_ISSUERS": ",".join(sorted(allowed)),
            "EXACTLY_ONCE": exactly_once,
            "TRANSACTIONAL_ID": transactional_id,
            "RESTART_LIMIT": restart_limit,
            "keyring": describe_keyring(ring),
            "verify keyring": describe_keyring(verify_ring),
        },
    )
    redis = env.redis()
    planner = Planner(
        redis,
        ledger_key=env.ledger_key(env.agent_id),
        allowed_issuers=allowed,
        log=log,
    )
    guard = RedisReplayGuard.from_url(env.redis_url, prefix=env.replay_prefix)
    consumer = VerifyingConsumer.from_options(
        ConsumerOptions(
            bootstrap_servers=env.bootstrap_servers,
            group_id=group,
            topics=[env.results_topic],
            client_id=env.agent_id,
        ),
        verifier=Verifier(verify_ring, freshness=env.freshness),
        guard=guard,
        dead_letter_topic=env.results_dlq,
    )
    kafka = AIOKafkaProducer(
        bootstrap_servers=env.bootstrap_servers,
        enable_idempotence=True,
        client_id=env.agent_id,
        transactional_id=transactional_id,
    )
    producer = SignedProducer(kafka, signer=signer)
    relay = Relay(
        consumer,
        producer,
        planner,
        output_topic=env.plans_topic,
        exactly_once=exactly_once,
        group_id=group,
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    status = StatusBoard(redis, env.status_key())

    def counters() -> dict[str, object]:
        return {
            **planner.counts,
            "exactly_once": exactly_once,
            "relay": relay.metrics.snapshot(),
            "consumer": consumer.metrics.snapshot(),
        }

    reporter = asyncio.create_task(status.run_every(1.0, stop, counters))
    code = 0
    failures = 0
    try:
        await guard.start()
        await kafka.start()
        await consumer.start()
        await status.publish("running")
        waiter = asyncio.create_task(stop.wait())
        while not stop.is_set():
            runner = asyncio.create_task(relay.run())
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not runner.done():
                await relay.stop()
                await runner
                break
            try:
                runner.result()
            except RelayTransformError:
                failures += 1
                log.exception("transform failed (%d/%d); re-processing", failures, restart_limit)
                if failures >= restart_limit:
                    raise
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))
        waiter.cancel()
    except (RelayError, Exception):
        log.exception("planner failed")
        code = 1
    finally:
        stop.set()
        await reporter
        await consumer.stop()
        with contextlib.suppress(Exception):
            await kafka.stop()
        await guard.stop()
        await status.publish("failed" if code else "done", **counters())
        await redis.aclose()
    log.info("stopped: %s", relay.metrics.snapshot())
    return code


def main(argv: list[str] | None = None) -> None:
    sys.exit(agent_main("consumers.planner", __doc__, run, argv))


if __name__ == "__main__":
    main()
