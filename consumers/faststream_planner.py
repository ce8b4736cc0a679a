"""The planner hop as a FastStream app: :mod:`consumers.planner`'s transform (result -> plan)
with signed-bus added as one broker middleware (docs/FASTSTREAM.md).

The subscriber sees only verified, fresh, first-position results (forged, tampered, replayed and
stale ones go to the results dead-letter topic with their reason, as the aiokafka planner's
do); each plan it returns is published to the plans topic signed with the planner's key and
names the result's digest as its parent, so ``signed-bus trace`` walks it back. Delivery is
at-least-once (``AckPolicy.NACK_ON_ERROR``: a handler failure is redelivered, never skipped).

Run: ``python -m consumers.faststream_planner`` (``--help`` lists the settings). Environment:
as :mod:`consumers.planner` (its ``EXACTLY_ONCE``, ``TRANSACTIONAL_ID`` and ``RESTART_LIMIT``
aside: this hop is at-least-once): ``GROUP_ID`` [``faststream-planner``], ``SIGNED_BUS_KID``
[``planner-1``], ``PLANNER_MODEL`` [``planner-rules@2.0``], ``ALLOWED_ISSUERS``
[``inference-agent``].
"""

from __future__ import annotations

import sys

from faststream import AckPolicy, Context, FastStream
from faststream.kafka import KafkaBroker

from consumers.plans import make_plan
from producers.common import (
    AgentEnv,
    agent_main,
    describe_keyring,
    env_list,
    env_str,
    load_keyring,
    load_verify_keyring,
    log_settings,
    setup_logging,
)
from producers.model import InferenceResult
from signed_bus import ConsumedMessage, RedisReplayGuard, Signer, Verifier, printable
from signed_bus.faststream import SignedBus

AGENT = "planner"
SIGNED = Context("signed")


async def run() -> int:
    """Build the app from the environment (a bad setting: one line, exit 2) and run it until a
    signal stops it."""
    env = AgentEnv.load(AGENT)
    log = setup_logging(env.agent_id)
    group = env_str("GROUP_ID", "faststream-planner")
    kid = env_str("SIGNED_BUS_KID", "planner-1")
    model = env_str("PLANNER_MODEL", "planner-rules@2.0")
    allowed = frozenset(env_list("ALLOWED_ISSUERS", "inference-agent"))
    ring = load_keyring()
    verify_ring = await load_verify_keyring()
    log_settings(
        log,
        {
            **env.describe(),
            "GROUP_ID": group,
            "SIGNED_BUS_KID": kid,
            "PLANNER_MODEL": model,
            "ALLOWED_ISSUERS": ",".join(sorted(allowed)),
            "keyring": describe_keyring(ring),
            "verify keyring": describe_keyring(verify_ring),
        },
    )
    guard = RedisReplayGuard.from_url(env.redis_url, prefix=env.replay_prefix)
    bus = SignedBus(
        signer=Signer(ring, kid=kid, issuer=env.agent_id, model=model),
        verifier=Verifier(verify_ring, freshness=env.freshness),
        guard=guard,
        dead_letter_topic=env.results_dlq,
    )
    broker = KafkaBroker(env.bootstrap_servers, client_id=env.agent_id, middlewares=[bus])
    plans = broker.publisher(env.plans_topic)

    @broker.subscriber(
        env.results_topic,
        group_id=group,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def plan(payload: object, signed: ConsumedMessage = SIGNED) -> None:
        """One plan per verified result from an allowed issuer (its parent: the result)."""
        if signed.verified.issuer not in allowed:
            log.warning("ignoring a result from issuer %s", printable(signed.verified.issuer))
            return
        try:
            result = InferenceResult.from_payload(payload)
        except ValueError as exc:  # authentic, but not a result: nothing to plan
            log.warning("ignoring a record that is not a result: %s", printable(str(exc)))
            return
        made = make_plan(result, source_digest=signed.verified.digest)
        await plans.publish(made.to_payload(), key=made.prompt_id.encode())

    # a subscriber the bus cannot guard is refused before anything is fetched
    app = FastStream(broker, on_startup=[lambda: bus.check(broker)], on_shutdown=[guard.stop])
    await app.run()
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(agent_main("consumers.faststream_planner", __doc__, run, argv))


if __name__ == "__main__":
    main()
