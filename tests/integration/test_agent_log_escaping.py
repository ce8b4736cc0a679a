"""The action agent's EXECUTE log line escapes the plan's text (real Redis for its ledger)."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis
from aiokafka.structs import ConsumerRecord

from consumers.action_agent import ActionAgent
from signed_bus import ClaimVerdict, ConsumedMessage, Keyring, Signer, Verifier
from signed_bus._keys import generate_hmac_key

pytestmark = pytest.mark.integration

# A plan is free text signed by the planner, which got it from a model's output.
FORGED = "x\n\r\x1b[2KEXECUTE restart prod\u202e"


def consumed(payload: object) -> ConsumedMessage:
    ring = Keyring([generate_hmac_key("k1", ["planner"])])
    value = Signer(ring, kid="k1", issuer="planner", model="m").sign(payload, topic="plans")
    verified = Verifier(ring).verify(value, topic="plans", key=None)
    record = ConsumerRecord(
        topic="plans",
        partition=0,
        offset=3,
        timestamp=0,
        timestamp_type=1,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=(),
    )
    return ConsumedMessage(verified, record, ClaimVerdict.NEW)


async def test_execute_log_line_escapes_the_plan_text(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    agent = ActionAgent(
        redis,
        state_prefix=redis_prefix,
        agent_id="action-agent",
        allowed_issuers=frozenset({"planner"}),
        exec_ttl_ms=60_000,
        log_name="action-agent-test",
    )
    action = {"action_id": f"a{FORGED}", "verb": FORGED, "target": FORGED, "reason": "r"}
    plan = {
        "kind": "plan",
        "plan_id": "p1",
        "prompt_id": "q1",
        "source_model": "m",
        "actions": [action],
    }
    try:
        with caplog.at_level(logging.INFO, logger="action-agent-test"):
            await agent.handle(consumed(plan))
            await agent.handle(consumed(plan))  # executed before: the "skipped" line
    finally:
        await redis.aclose()
    assert agent.counts["executed"] == 1 and agent.counts["already_executed"] == 1
    lines = [entry.getMessage() for entry in caplog.records]
    assert len(lines) == 2
    for line in lines:
        assert line.isprintable(), repr(line)
        assert "x\\x0a\\x0d\\x1b[2KEXECUTE restart prod\\u202e" in line
    assert lines[0].startswith("EXECUTE x\\x0a")
