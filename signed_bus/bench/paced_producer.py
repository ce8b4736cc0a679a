"""The latency run's producer: a separate process that sends results at a fixed rate.

``python -m signed_bus.bench.paced_producer`` reads one JSON job from stdin (the keyring comes
this way, never on the command line), prints ``ready`` once connected, sends ``count`` results
at ``rate`` per second, each stamped with ``sent_ns = time.time_ns()`` just before it is encoded
(raw) or signed, and prints one JSON line: how many it sent, in how long, and how late the
pacing ran at worst (a late producer would inflate every latency).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import msgpack

from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._keys import Keyring
from signed_bus._signer import Signer
from signed_bus.bench.codec import ED25519_KID, HMAC_KID, ISSUER, MODEL
from signed_bus.bench.payloads import inference_results

__all__ = ["main", "paced_produce"]

KIDS = {"hs256": HMAC_KID, "eddsa": ED25519_KID}


async def paced_produce(job: dict[str, Any]) -> dict[str, float]:
    topic: str = job["topic"]
    rate: int = job["rate"]
    count: int = job["count"]
    results = inference_results(min(count, 2_000), size=job["payload_bytes"])
    options = ProducerOptions(bootstrap_servers=job["bootstrap_servers"], client_id="bench-pace")
    producer = options.build()
    await producer.start()
    try:
        await producer.partitions_for(topic)
        signed: SignedProducer | None = None
        if job["variant"] != "raw":
            keyring = Keyring.from_json(job["keyring"])
            signer = Signer(keyring, kid=KIDS[job["variant"]], issuer=ISSUER, model=MODEL)
            signed = SignedProducer(producer, signer=signer)
        packb = msgpack.packb
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        futures = []
        late_max = 0.0
        start = loop.time()
        for index in range(count):
            delay = start + index * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late_max = max(late_max, -delay)
            result = dict(results[index % len(results)], seq=index)
            result["sent_ns"] = time.time_ns()
            if signed is None:
                futures.append(await producer.send(topic, packb(result)))
            else:
                futures.append(await signed.send(topic, result))
        await asyncio.gather(*futures)
        elapsed = loop.time() - start
    finally:
        await producer.stop()
    return {"sent": float(count), "seconds": elapsed, "late_max_ms": late_max * 1_000}


def main() -> None:
    job = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(paced_produce(job))), flush=True)


if __name__ == "__main__":
    main()
