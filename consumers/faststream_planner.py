"""The planner hop as a FastStream app: :mod:`consumers.planner`'s transform (result -> plan)
with signed-bus added as one broker middleware (docs/FASTSTREAM.md).

The subscriber sees only verified, fresh, first-position results (forged, tampered, replayed and
stale ones go to the results dead-letter topic with their reason, as the aiokafka planner's
do); each plan it returns is published to the plans topic signed with the planner's key and
names the result's digest as its parent, so ``signed-bus trace`` walks it back. Delivery is
at-least-once (``AckPolicy.NACK_ON_ERROR``: a handler failure is redelivered, never skipped).

Run: ``python -m consumers.faststream_planner`` (or ``faststream run
consumers.faststream_planner:app``). Environment: as :mod:`consumers.planner` (its
``EXACTLY_ONCE``, ``TRANSACTIONAL_ID`` and ``RESTART_LIMIT`` aside: this hop is at-least-once).
"""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy, Context, FastStream
from faststream.kafka import KafkaBroker

from consumers.plans import make_plan
from producers.common import AgentEnv, env_list, env_str, load_keyring, load_verify_keyring
from producers.model import InferenceResult
from signed_bus import ConsumedMessage, RedisReplayGuard, Signer, Verifier, printable
from signed_bus.faststream import SignedBus

AGENT = "planner"
log = logging.getLogger("consumers.faststream_planner")

env = AgentEnv.load(AGENT)
guard = RedisReplayGuard.from_url(env.redis_url, prefix=env.replay_prefix)
bus = SignedBus(
    signer=Signer(
        load_keyring(),
        kid=env_str("SIGNED_BUS_KID", "planner-1"),
        issuer=env.agent_id,
        model=env_str("PLANNER_MODEL", "planner-rules@2.0"),
    ),
    verifier=Verifier(load_verify_keyring(), freshness=env.freshness),
    guard=guard,
    dead_letter_topic=env.results_dlq,
)
broker = KafkaBroker(env.bootstrap_servers, client_id=env.agent_id, middlewares=[bus])
app = FastStream(broker, on_shutdown=[guard.stop])
ALLOWED = frozenset(env_list("ALLOWED_ISSUERS", "inference-agent"))
SIGNED = Context("signed")
plans = broker.publisher(env.plans_topic)


@broker.subscriber(
    env.results_topic,
    group_id=env_str("GROUP_ID", "faststream-planner"),
    auto_offset_reset="earliest",
    isolation_level="read_committed",
    ack_policy=AckPolicy.NACK_ON_ERROR,
)
async def plan(payload: object, signed: ConsumedMessage = SIGNED) -> None:
    """One plan per verified result from an allowed issuer (its parent: the result)."""
    if signed.verified.issuer not in ALLOWED:
        log.warning("ignoring a result from issuer %s", printable(signed.verified.issuer))
        return
    try:
        result = InferenceResult.from_payload(payload)
    except ValueError as exc:  # authentic, but not a result: nothing to plan
        log.warning("ignoring a record that is not a result: %s", printable(str(exc)))
        return
    made = make_plan(result, source_digest=signed.verified.digest)
    await plans.publish(made.to_payload(), key=made.prompt_id.encode())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
