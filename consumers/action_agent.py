"""The action agent: verifies plans and executes each action exactly once.

The last hop acts on the world, so it is where a replayed or forged plan would do harm. Its
verifying consumer drops anything unsigned, tampered, replayed, stale or signed by a key that
may not speak for its issuer, and dead-letters it. On top of that, only plans whose issuer is an
allowed planner are acted on.

Exactly once: executing an action and recording it are one Lua script in Redis. The script
claims ``{prefix}:exec:{action_id}`` with SET NX and, only if the claim is new, applies the
action's effect (here: a counter per action and an entry in the execution log). A redelivered
plan (a crash before the offset commit, a rebalance) finds its actions claimed and executes
nothing. The action ids come from the planner and are derived from the digest of the result a
plan was made from, so even a second plan for the same result (an at-least-once planner that
re-processed its input) cannot run an action twice.

Run: ``python -m consumers.action_agent``. Environment (besides :mod:`producers.common`):

- ``GROUP_ID``: consumer group [``action-agent``]
- ``ALLOWED_ISSUERS``: issuers whose plans are executed [``planner``]
- ``EXEC_TTL_S``: how long execution records are kept [86400]
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import Counter

import redis.asyncio as aioredis

from consumers.plans import Plan
from producers.common import (
    AgentEnv,
    StatusBoard,
    agent_main,
    describe_keyring,
    env_int,
    env_list,
    env_str,
    install_stop_signals,
    load_verify_keyring,
    log_settings,
    setup_logging,
)
from signed_bus import (
    ConsumedMessage,
    ConsumerOptions,
    RedisReplayGuard,
    VerificationError,
    Verifier,
    VerifyingConsumer,
    printable,
)

AGENT = "action-agent"

# KEYS[1] exec record, KEYS[2] effect counters (hash), KEYS[3] execution log (list)
# ARGV[1] action id, ARGV[2] record (JSON), ARGV[3] ttl ms. Returns 1 if executed now, 0 if the
# action had been executed before.
_EXECUTE_LUA = """
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 0
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


class ActionAgent:
    """Executes the actions of verified plans, once each (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        state_prefix: str,
        agent_id: str,
        allowed_issuers: frozenset[str],
        exec_ttl_ms: int,
        log_name: str = AGENT,
    ) -> None:
        self._redis = redis
        self._prefix = state_prefix
        self._agent = agent_id
        self._allowed = allowed_issuers
        self._ttl_ms = exec_ttl_ms
        self._script = redis.register_script(_EXECUTE_LUA)
        self._log = logging.getLogger(log_name)
        self.counts: Counter[str] = Counter()

    def exec_key(self, action_id: str) -> str:
        return f"{self._prefix}:exec:{action_id}"

    @property
    def effects_key(self) -> str:
        return f"{self._prefix}:effects"

    @property
    def log_key(self) -> str:
        return f"{self._prefix}:executions"

    @property
    def ledger_key(self) -> str:
        return f"{self._prefix}:ledger:{self._agent}"

    async def handle(self, message: ConsumedMessage) -> None:
        verified = message.verified
        position = f"{message.topic}:{message.partition}:{message.offset}"
        if verified.issuer not in self._allowed:
            self.counts["unexpected_issuer"] += 1
            self._log.warning(
                "ignoring a plan from issuer %s at %s", printable(verified.issuer), position
            )
            return
        try:
            plan = Plan.from_payload(message.payload)
        except (ValueError, VerificationError) as exc:  # a body that breaks its profile too
            self.counts["bad_payload"] += 1
            self._log.warning(
                "ignoring a record that is not a plan at %s: %s", position, printable(str(exc))
            )
            return
        self.counts["plans"] += 1
        # Delivery ledger: one field per delivered record position (idempotent on redelivery).
        await self._redis.hset(
            self.ledger_key,
            position,
            json.dumps(
                {
                    "plan_id": plan.plan_id,
                    "prompt_id": plan.prompt_id,
                    "actions": [[a.verb, a.target] for a in plan.actions],
                    "digest": verified.digest.hex(),
                    "parents": [p.hex() for p in verified.parents],
                }
            ),
        )
        for action in plan.actions:
            record = json.dumps(
                {
                    "action_id": action.action_id,
                    "verb": action.verb,
                    "target": action.target,
                    "reason": action.reason,
                    "plan_id": plan.plan_id,
                    "prompt_id": plan.prompt_id,
                    "plan_digest": verified.digest.hex(),
                    "plan_position": position,
                    "executed_at": int(time.time() * 1000),
                }
            )
            executed = await self._script(
                keys=[self.exec_key(action.action_id), self.effects_key, self.log_key],
                args=[action.action_id, record, self._ttl_ms],
            )
            if executed:
                self.counts["executed"] += 1
                self._log.info(
                    "EXECUTE %s %s (action %s, plan from %s)",
                    printable(action.verb),
                    printable(action.target),
                    printable(action.action_id),
                    position,
                )
            else:
                self.counts["already_executed"] += 1
                self._log.info(
                    "action %s was executed before; skipped", printable(action.action_id)
                )


async def run() -> int:
    env = AgentEnv.load(AGENT)
    log = setup_logging(env.agent_id)
    allowed = frozenset(env_list("ALLOWED_ISSUERS", "planner"))
    exec_ttl_s = env_int("EXEC_TTL_S", 86_400)
    group = env_str("GROUP_ID", AGENT)
    ring = await load_verify_keyring()
    log_settings(
        log,
        {
            **env.describe(),
            "GROUP_ID": group,
            "ALLOWED_ISSUERS": ",".join(sorted(allowed)),
            "EXEC_TTL_S": exec_ttl_s,
            "verify keyring": describe_keyring(ring),
        },
    )
    redis = env.redis()
    agent = ActionAgent(
        redis,
        state_prefix=env.state_prefix,
        agent_id=env.agent_id,
        allowed_issuers=allowed,
        exec_ttl_ms=exec_ttl_s * 1000,
        log_name=env.agent_id,
    )
    guard = RedisReplayGuard.from_url(env.redis_url, prefix=env.replay_prefix)
    consumer = VerifyingConsumer.from_options(
        ConsumerOptions(
            bootstrap_servers=env.bootstrap_servers,
            group_id=group,
            topics=[env.plans_topic],
            client_id=env.agent_id,
        ),
        verifier=Verifier(ring, freshness=env.freshness),
        guard=guard,
        dead_letter_topic=env.plans_dlq,
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    status = StatusBoard(redis, env.status_key())

    def counters() -> dict[str, object]:
        return {**agent.counts, "consumer": consumer.metrics.snapshot()}

    reporter = asyncio.create_task(status.run_every(1.0, stop, counters))
    code = 0
    try:
        await guard.start()
        await consumer.start()
        await status.publish("running")
        runner = asyncio.create_task(consumer.run(agent.handle))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        await consumer.stop()
        await runner
        stopper.cancel()
    except Exception:
        log.exception("action agent failed")
        code = 1
    finally:
        stop.set()
        await reporter
        await consumer.stop()
        await guard.stop()
        await status.publish("failed" if code else "done", **counters())
        await redis.aclose()
    log.info("stopped: %s", dict(agent.counts))
    return code


def main(argv: list[str] | None = None) -> None:
    sys.exit(agent_main("consumers.action_agent", __doc__, run, argv))


if __name__ == "__main__":
    main()
