"""Soak run on the clusters: a steady rate through an exactly-once relay hop for ``--duration``
seconds (``make soak``: 600), with one Kafka broker and one Redis master killed along the way.

Starts its own 3-node KRaft cluster and Redis Cluster (3 masters, 1 replica each) from
tests/integration/clusters.py, removed at the end. Inputs are signed at ``--rate``/s into
``soak.in``; the relay (replay guard on the Redis Cluster, durable claims) signs one output per
input into ``soak.out``; a plain consumer of ``soak.out`` (its own guard) is the end of the
pipeline. At a third of the run broker 2 is killed (kill -9) and restarted 20 s later; at two
thirds the master owning the slot of the current time bucket is killed and its replica takes
over. Every ``--every`` seconds a line: inputs sent, outputs delivered, throughput, p99 of the
end-to-end latency (input signed -> output delivered), Redis used_memory over the masters. At
the end the counts: sent, delivered, missing, delivered twice, rejected.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.crc import key_slot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from signed_bus import (
    ConsumedMessage,
    ConsumerOptions,
    Keyring,
    Output,
    ProducerOptions,
    RedisReplayGuard,
    Relay,
    SignedProducer,
    Signer,
    Verifier,
    VerifyingConsumer,
    generate_ed25519_key,
)
from signed_bus._replay import bucket_key
from tests.integration.clusters import (
    KafkaClusterProcesses,
    RedisClusterProcesses,
    _cli,
)


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _used_memory(redis: RedisClusterProcesses) -> int:
    total = 0
    for port in redis.ports:
        if redis._procs[port].poll() is None and redis.role(port) == "master":
            info = dict(
                line.strip().split(":", 1)
                for line in _cli(port, "INFO", "memory").splitlines()
                if ":" in line
            )
            total += int(info.get("used_memory", "0"))
    return total


async def soak(duration: float, rate: int, every: float) -> int:
    print("starting clusters (3 KRaft nodes; Redis 3 masters + 3 replicas) ...", flush=True)
    with KafkaClusterProcesses() as kafka, RedisClusterProcesses() as redis:
        bootstrap = kafka.bootstrap
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        append_time = {"message.timestamp.type": "LogAppendTime"}  # freshness by broker time
        await admin.create_topics(
            [NewTopic(name, 3, 3, topic_configs=append_time) for name in ("soak.in", "soak.out")]
        )
        await admin.close()
        ring = Keyring(
            [generate_ed25519_key("src-1", ["source"]), generate_ed25519_key("hop-1", ["hop"])]
        )
        verifier = Verifier(ring.public())
        guards = [
            RedisReplayGuard.from_url(
                redis.url, cluster=True, prefix="soak", durable_replicas=1, peak_rate=rate
            )
            for _ in range(2)
        ]

        async def transform(message: ConsumedMessage) -> list[Output]:
            payload = message.payload
            assert isinstance(payload, dict)
            return [Output({"n": payload["n"], "t": payload["t"]}, key=message.key)]

        hop_consumer = VerifyingConsumer.from_options(
            ConsumerOptions(bootstrap_servers=bootstrap, group_id="soak-hop", topics=["soak.in"]),
            verifier=verifier,
            guard=guards[0],
        )
        hop_kafka = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, transactional_id="soak-hop"
        )
        relay = Relay(
            hop_consumer,
            SignedProducer(hop_kafka, signer=Signer(ring, kid="hop-1", issuer="hop", model="m")),
            transform,
            output_topic="soak.out",
            exactly_once=True,
            group_id="soak-hop",
        )
        end = VerifyingConsumer.from_options(
            ConsumerOptions(bootstrap_servers=bootstrap, group_id="soak-end", topics=["soak.out"]),
            verifier=verifier,
            guard=guards[1],
        )
        delivered: Counter[int] = Counter()
        latencies: list[float] = []

        async def at_end(message: ConsumedMessage) -> None:
            payload = message.payload
            assert isinstance(payload, dict)
            delivered[int(payload["n"])] += 1
            latencies.append(time.time() - float(payload["t"]))

        for guard in guards:
            await guard.start()
        await hop_kafka.start()
        await hop_consumer.start()
        await end.start()
        tasks = [asyncio.create_task(relay.run()), asyncio.create_task(end.run(at_end))]
        source = Signer(ring, kid="src-1", issuer="source", model="lm")
        sent = 0
        started = time.monotonic()
        faults: dict[str, float] = {}
        fault_tasks: list[asyncio.Task[None]] = []

        def mark(name: str) -> None:
            faults[name] = time.monotonic() - started
            print(f"  {name} at t={faults[name]:.0f}s", flush=True)

        async def broker_fault() -> None:  # kill -9 one broker, back 20 s later
            await asyncio.to_thread(kafka.kill, 1)
            mark("broker_killed")
            await asyncio.sleep(20)
            await asyncio.to_thread(kafka.start_node, 1)
            mark("broker_back")

        async def redis_fault() -> None:  # kill -9 the master of the current bucket's slot
            slot = key_slot(bucket_key("soak", int(time.time() * 1000) // 1000, 0))
            victim = redis.master_of(slot)
            await asyncio.to_thread(redis.kill, victim)
            mark("redis_master_killed")
            await asyncio.to_thread(redis.wait_promoted, victim)
            mark("redis_replica_promoted")
            # back empty: it rejoins as the replica durable claims need again
            await asyncio.to_thread(redis.restart, victim)
            mark("redis_node_rejoined")

        async with SignedProducer(
            ProducerOptions(bootstrap_servers=bootstrap), signer=source
        ) as producer:
            next_line = started + every
            last_delivered, window_from = 0, 0
            while (now := time.monotonic()) < started + duration:
                due = int((now - started) * rate)
                while sent < due:
                    await producer.send(
                        "soak.in", {"n": sent, "t": time.time()}, key=f"k{sent}".encode()
                    )
                    sent += 1
                elapsed = now - started
                if not fault_tasks and elapsed >= duration / 3:
                    fault_tasks.append(asyncio.create_task(broker_fault()))
                if len(fault_tasks) == 1 and elapsed >= 2 * duration / 3:
                    fault_tasks.append(asyncio.create_task(redis_fault()))
                if now >= next_line:
                    total = sum(delivered.values())
                    window = latencies[window_from:]
                    window_from = len(latencies)
                    print(
                        f"t={elapsed:6.0f}s sent={sent:7d} delivered={total:7d} "
                        f"throughput={(total - last_delivered) / every:7.0f}/s "
                        f"p99={_p99(window) * 1000:8.0f} ms "
                        f"redis={_used_memory(redis) / 1e6:6.1f} MB",
                        flush=True,
                    )
                    last_delivered, next_line = total, next_line + every
                await asyncio.sleep(0.005)
        await asyncio.gather(*fault_tasks)
        for _ in range(360):  # up to 3 minutes to drain
            if len(delivered) >= sent:
                break
            await asyncio.sleep(0.5)
        await relay.stop()
        await end.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hop_consumer.stop()
        await hop_kafka.stop()
        for guard in guards:
            await guard.stop()
        missing = sent - len(delivered)
        twice = sum(1 for count in delivered.values() if count > 1)
        result: dict[str, Any] = {
            "seconds": round(duration),
            "rate": rate,
            "sent": sent,
            "delivered": len(delivered),
            "missing": missing,
            "delivered_twice": twice,
            "rejected_hop": hop_consumer.metrics.rejected_total,
            "rejected_end": end.metrics.rejected_total,
            "p99_ms_all": round(_p99(latencies) * 1000),
            "durable_waits": sum(g.durable.waits if g.durable else 0 for g in guards),
            "faults_s": {k: round(v, 1) for k, v in faults.items()},
        }
        print("result:", result, flush=True)
        return 0 if missing == 0 and twice == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--rate", type=int, default=200, help="inputs per second (default 200)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds per report line")
    args = parser.parse_args()
    return asyncio.run(soak(args.duration, args.rate, args.every))


if __name__ == "__main__":
    raise SystemExit(main())
