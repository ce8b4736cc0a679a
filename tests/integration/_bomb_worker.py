"""A VerifyingConsumer in its own process, for the decompression bomb test, measuring its memory.

    python -m tests.integration._bomb_worker BOOTSTRAP TOPIC DLQ GROUP REDIS_URL PREFIX END

The keyring comes from SIGNED_BUS_KEYRING. The consumer runs until it has committed offset END of
partition 0 (every record before it delivered or dead-lettered), then prints one JSON line: the
offsets delivered, the rejection counts, and the resident memory (KiB) before reading and at its
peak (``VmHWM``). If the consumer stops, the JSON says what stopped it; if the process is
killed for lack of memory there is no JSON at all.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from signed_bus._freshness import Freshness
from signed_bus._kafka.consumer import ConsumedMessage, ConsumerOptions, VerifyingConsumer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._verifier import Verifier


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def main(argv: list[str]) -> dict[str, Any]:
    bootstrap, topic, dlq, group, redis_url, prefix, end_text = argv
    end = int(end_text)
    ring = Keyring.from_env()
    verifier = Verifier(ring, freshness=Freshness(max_age_ms=300_000, future_skew_ms=5_000))
    guard = RedisReplayGuard.from_url(redis_url, prefix=prefix)
    options = ConsumerOptions(bootstrap_servers=bootstrap, group_id=group, topics=[topic])
    consumer = VerifyingConsumer.from_options(
        options, verifier=verifier, guard=guard, dead_letter_topic=dlq, max_records=500
    )
    delivered: list[ConsumedMessage] = []

    async def handler(message: ConsumedMessage) -> None:
        delivered.append(message)

    async with guard, consumer:
        before = _status_kib("VmRSS")
        task = asyncio.create_task(consumer.run(handler))
        stopped = None
        deadline = time.monotonic() + 90
        while consumer.metrics.committed.get((topic, 0), 0) < end:
            if task.done():
                exc = task.exception()
                stopped = repr(exc) if exc is not None else "run() returned"
                break
            if time.monotonic() > deadline:
                stopped = f"timeout: committed {consumer.metrics.committed}"
                break
            await asyncio.sleep(0.05)
        task.cancel()
    return {
        "offsets": [m.offset for m in delivered],
        "seqs": [m.payload["seq"] for m in delivered],  # type: ignore[index]
        "rejected": dict(consumer.metrics.rejected),
        "dead_lettered": consumer.metrics.dead_lettered,
        "stopped": stopped,
        "rss_before_kib": before,
        # this process's own peak (ru_maxrss would count the parent's before exec too)
        "rss_peak_kib": _status_kib("VmHWM"),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
