"""A VerifyingConsumer in its own process, for the crash test (test_faults_consumer_crash.py).

    python -m tests.integration._crash_worker BOOTSTRAP TOPIC GROUP REDIS_URL PREFIX OUT \
        HANG_AT FRONT

The keyring comes from SIGNED_BUS_KEYRING. Every message the handler finishes is appended to
``OUT/handled`` (one JSON line: partition, offset, claim). The HANG_AT-th delivered message is
not finished: the handler writes ``OUT/inflight`` (same fields) and sleeps, so the test can
SIGKILL the process after the record's nonce was claimed and before its offset was committed.
FRONT is ``aiokafka`` (an asyncio consumer) or ``confluent`` (the sync consumer, no event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from signed_bus._freshness import Freshness
from signed_bus._kafka.consumer import ConsumedMessage, ConsumerOptions, VerifyingConsumer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._verifier import Verifier

MAX_AGE_MS, SKEW_MS = 300_000, 5_000
# Small batches, so that some batches are finished (and committed) before the crash and the
# crash lands in the middle of a claimed batch.
MAX_RECORDS = 4


def _line(message: ConsumedMessage) -> str:
    claim = message.claim.value if message.claim is not None else None
    return json.dumps({"partition": message.partition, "offset": message.offset, "claim": claim})


def confluent_main(argv: list[str]) -> None:
    from signed_bus.confluent import SyncRedisReplayGuard
    from signed_bus.confluent import VerifyingConsumer as SyncConsumer

    bootstrap, topic, group, redis_url, prefix, out_dir, hang_at_text, _ = argv
    out = Path(out_dir)
    hang_at = int(hang_at_text)
    ring = Keyring.from_env()
    verifier = Verifier(ring, freshness=Freshness(max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS))
    guard = SyncRedisReplayGuard.from_url(redis_url, prefix=prefix)
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 1_000,
    }
    consumer = SyncConsumer(
        config, [topic], verifier=verifier, guard=guard, max_records=MAX_RECORDS
    )
    delivered = 0
    with (out / "handled").open("a", encoding="utf-8") as handled:

        def handler(message: ConsumedMessage) -> None:
            nonlocal delivered
            delivered += 1
            if delivered == hang_at:
                tmp = out / "inflight.tmp"
                tmp.write_text(_line(message), encoding="utf-8")
                os.replace(tmp, out / "inflight")
                time.sleep(3_600)  # killed here: claimed, handed out, not committed
            handled.write(_line(message) + "\n")
            handled.flush()

        with guard, consumer:
            consumer.run(handler)


async def main(argv: list[str]) -> None:
    bootstrap, topic, group, redis_url, prefix, out_dir, hang_at_text, _ = argv
    out = Path(out_dir)
    hang_at = int(hang_at_text)
    ring = Keyring.from_env()
    verifier = Verifier(ring, freshness=Freshness(max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS))
    guard = RedisReplayGuard.from_url(redis_url, prefix=prefix)
    options = ConsumerOptions(
        bootstrap_servers=bootstrap,
        group_id=group,
        topics=[topic],
        # the broker's minimum: the restarted consumer's join waits this long for the dead one
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        commit_interval_ms=0,  # commit every finished batch: the test kills it mid-batch
    )
    consumer = VerifyingConsumer.from_options(
        options, verifier=verifier, guard=guard, max_records=MAX_RECORDS
    )
    delivered = 0
    with (out / "handled").open("a", encoding="utf-8") as handled:

        async def handler(message: ConsumedMessage) -> None:
            nonlocal delivered
            delivered += 1
            if delivered == hang_at:
                tmp = out / "inflight.tmp"
                tmp.write_text(_line(message), encoding="utf-8")
                os.replace(tmp, out / "inflight")  # the test sees the whole line or nothing
                await asyncio.sleep(3_600)  # killed here: claimed, handed out, not committed
            handled.write(_line(message) + "\n")
            handled.flush()

        async with guard, consumer:
            await consumer.run(handler)


if __name__ == "__main__":
    if sys.argv[-1] == "confluent":
        confluent_main(sys.argv[1:])
    else:
        asyncio.run(main(sys.argv[1:]))
