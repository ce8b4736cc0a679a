"""A VerifyingConsumer with coalesced commits in its own process (test_commit_interval.py).

    python -m tests.integration._interval_worker BOOTSTRAP TOPIC GROUP REDIS_URL PREFIX OUT \
        INTERVAL_MS

The keyring comes from SIGNED_BUS_KEYRING. Every message the handler finishes is appended to
``OUT/handled`` (one JSON line: partition, offset, wall-clock time it finished), so the test can
SIGKILL the process between two commits and tell which finished records were not committed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from signed_bus._freshness import Freshness
from signed_bus._kafka.consumer import ConsumedMessage, ConsumerOptions, VerifyingConsumer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._verifier import Verifier

MAX_AGE_MS, SKEW_MS = 300_000, 5_000


async def main(argv: list[str]) -> None:
    bootstrap, topic, group, redis_url, prefix, out_dir, interval_text = argv
    ring = Keyring.from_env()
    verifier = Verifier(ring, freshness=Freshness(max_age_ms=MAX_AGE_MS, future_skew_ms=SKEW_MS))
    guard = RedisReplayGuard.from_url(redis_url, prefix=prefix)
    options = ConsumerOptions(
        bootstrap_servers=bootstrap,
        group_id=group,
        topics=[topic],
        session_timeout_ms=6_000,  # the broker's minimum: the restarted consumer joins sooner
        heartbeat_interval_ms=1_000,
        commit_interval_ms=int(interval_text),
    )
    consumer = VerifyingConsumer.from_options(options, verifier=verifier, guard=guard)
    with (Path(out_dir) / "handled").open("a", encoding="utf-8") as handled:

        async def handler(message: ConsumedMessage) -> None:
            line = {"partition": message.partition, "offset": message.offset, "t": time.time()}
            handled.write(json.dumps(line) + "\n")
            handled.flush()

        async with guard, consumer:
            await consumer.run(handler)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
