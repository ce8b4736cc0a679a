"""The reference agents ignore (and count) a signed body that breaks its decoding profile instead
of crashing on it: a crash before the commit would meet the same record after every restart."""

from __future__ import annotations

import logging
from typing import Any

from consumers.action_agent import ActionAgent
from consumers.planner import Planner
from signed_bus import ConsumedMessage, Keyring, Signer, Verifier, generate_hmac_key

TOPIC = "t"
# Authentic, but a repeated member name breaks the application/json profile.
BODY = b'{"request_id": "a", "request_id": "b"}'


class Record:
    topic, partition, offset, timestamp, timestamp_type = TOPIC, 0, 7, 0, 1
    key: bytes | None = None
    value: bytes = b""
    headers: tuple[tuple[str, bytes], ...] = ()


def message(issuer: str) -> ConsumedMessage:
    ring = Keyring([generate_hmac_key("k", issuers=[issuer])])
    signer = Signer(ring, kid="k", issuer=issuer, model="m")
    value = signer.sign_bytes(BODY, content_type="application/json", topic=TOPIC, key=None)
    verified = Verifier(ring, audit=True).verify(value, topic=TOPIC, key=None)
    return ConsumedMessage(verified, Record(), None)


class NoRedis:
    def register_script(self, script: str) -> object:
        return object()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a bad payload must not reach Redis ({name})")


async def test_the_planner_counts_a_body_that_breaks_its_profile() -> None:
    planner = Planner(
        NoRedis(),  # type: ignore[arg-type]
        ledger_key="l",
        allowed_issuers=frozenset({"worker"}),
        log=logging.getLogger("test"),
    )
    assert await planner(message("worker")) == []
    assert planner.counts["bad_payload"] == 1


async def test_the_action_agent_counts_a_body_that_breaks_its_profile() -> None:
    agent = ActionAgent(
        NoRedis(),  # type: ignore[arg-type]
        state_prefix="p",
        agent_id="a",
        allowed_issuers=frozenset({"planner"}),
        exec_ttl_ms=1_000,
    )
    await agent.handle(message("planner"))
    assert agent.counts["bad_payload"] == 1
