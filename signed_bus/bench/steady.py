"""Part "steady": what a consumer costs the broker and Redis at an ordinary steady rate.

Not in the default run (about three times ``steady_duration_s`` plus a minute): ``signed-bus
bench --only steady``. A producer process sends ``steady_rate`` results per second (1,500) for
``steady_duration_s`` seconds (120) to a topic of 6 partitions, one consumer reads them all, in
three runs one after the other:

- ``raw``: a raw aiokafka consumer built from the same ``ConsumerOptions`` as the signed one
  (same fetch settings), committing after every batch (one commit in flight), msgpack results;
- ``signed``: ``VerifyingConsumer`` with the default options (fetch_min_bytes 256 KiB,
  fetch_max_wait_ms 200, commit_interval_ms 2,000) and a guard sized with ``peak_rate``;
- ``per-batch``: the same with the former settings (fetch_min_bytes 1, fetch_max_wait_ms 500,
  a commit after every batch) and the default 16 shards: the baseline of the commit and Redis
  figures.

Per run: offset commits per second (the consumer's own count: the broker's JMX is not read),
Redis calls per second (server side: INFO commandstats of the guard's private redis-server,
every command but INFO), end-to-end latency (as part 3: send time stamped by the producer,
receive time when the application has the result, first 2 s left out) and the broker's CPU
(``/proc/<pid>/stat`` of the local ``kafka.Kafka`` process: on a shared machine it includes
every other client's load). Then Redis bytes per nonce at 1,500/s and 5,000/s (part 4's
method on a private redis-server with the stock ``hash-max-listpack-entries 128``), the guard
sized by ``peak_rate`` against the default 16 shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aioredis

from signed_bus._kafka.consumer import ConsumerOptions, VerifyingConsumer
from signed_bus._keys import Keyring
from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._replay.layout import CLAIM_SCRIPT
from signed_bus._replay.sizing import LISTPACK_ENTRIES
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import bench_keyring
from signed_bus.bench.config import BenchConfig
from signed_bus.bench.kafka import bench_topics, consumer_options, start_consumer, wait_assigned
from signed_bus.bench.prefixes import bench_prefix
from signed_bus.bench.redis_cost import claiming, encodings, make_claims, memory_per_nonce
from signed_bus.bench.redis_server import private_redis, private_redis_url
from signed_bus.bench.results import PartResult, Row, Target
from signed_bus.bench.stats import summarize_latencies

__all__ = ["measure_steady"]

PARTITIONS = 6
_VARIANTS = ("raw", "signed", "per-batch")
_WARMUP_S = 2.0
_MEMORY_RATES = (1_500, 5_000)
#: (sent_ns by the producer, received_ns by the consumer)
Sample = tuple[int, int]


@dataclasses.dataclass(slots=True)
class _Counts:
    samples: list[Sample] = dataclasses.field(default_factory=list)
    commits: int = 0
    batches: int = 0


def broker_pid() -> int | None:
    """The pid of the local Kafka broker (``kafka.Kafka`` on its command line), if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in words:
            return int(entry.name)
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None if unreadable)."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Commands the claim script runs inside Redis: commandstats counts them too, but they are
#: part of one EVALSHA call, not calls of their own.
_SCRIPT_COMMANDS = frozenset(
    f"cmdstat_{name.lower()}" for name in re.findall(r"redis\.call\('(\w+)'", CLAIM_SCRIPT)
)


async def redis_calls(client: aioredis.Redis) -> int:
    """Commands clients sent so far (INFO commandstats): INFO itself and the commands the claim
    script runs inside its EVALSHA left out."""
    stats = await client.info("commandstats")
    skip = _SCRIPT_COMMANDS | {"cmdstat_info"}
    return sum(
        int(value.get("calls", 0))
        for name, value in stats.items()
        if name not in skip and isinstance(value, dict)
    )


def _options(config: BenchConfig, topic: str, variant: str) -> ConsumerOptions:
    options = consumer_options(config, topic)
    if variant == "per-batch":
        return dataclasses.replace(
            options, fetch_min_bytes=1, fetch_max_wait_ms=500, commit_interval_ms=0
        )
    return options


async def _consume_raw(options: ConsumerOptions, count: int, warmup: int, out: _Counts) -> None:
    consumer = await start_consumer(options)
    unpackb = msgpack.unpackb
    try:
        seen = 0
        commit: asyncio.Task[Any] | None = None
        while seen < count:
            records = await consumer.getmany(timeout_ms=1_000, max_records=1_000)
            offsets = {}
            for tp, batch in records.items():
                for record in batch:
                    result = unpackb(record.value)
                    now = time.time_ns()
                    if result["seq"] >= warmup:
                        out.samples.append((result["sent_ns"], now))
                seen += len(batch)
                offsets[tp] = batch[-1].offset + 1
            if offsets:
                out.batches += 1
                if commit is not None:
                    await commit
                commit = asyncio.create_task(consumer.commit(offsets))
                out.commits += 1
        if commit is not None:
            await commit
    finally:
        await consumer.stop()


async def _consume_signed(
    consumer: VerifyingConsumer, count: int, warmup: int, out: _Counts
) -> None:
    try:
        seen = 0
        async for message in consumer:
            result = message.payload
            now = time.time_ns()
            assert isinstance(result, dict)
            if result["seq"] >= warmup:
                out.samples.append((result["sent_ns"], now))
            seen += 1
            if seen >= count:
                break
    finally:
        await consumer.stop()
        out.commits, out.batches = consumer.metrics.commits, consumer.metrics.batches


async def _produce(
    config: BenchConfig, topic: str, variant: str, count: int, keyring: Keyring
) -> dict[str, Any]:
    """Run the paced producer process (part 3's) until it sent ``count`` results."""
    job = {
        "bootstrap_servers": config.bootstrap_servers,
        "topic": topic,
        "variant": "raw" if variant == "raw" else "hs256",
        "keyring": keyring.to_json(),
        "rate": config.steady_rate,
        "count": count,
        "payload_bytes": config.payload_bytes,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signed_bus.bench.paced_producer",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(json.dumps(job).encode() + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        ready = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if ready.strip() != b"ready":
            raise RuntimeError(f"the paced producer failed to start: {ready!r}")
        timeout = count / config.steady_rate + 60
        line = await asyncio.wait_for(process.stdout.readline(), timeout=timeout)
        if not line:
            raise RuntimeError(f"the paced producer exited with {await process.wait()}")
        report: dict[str, Any] = json.loads(line)
        return report
    finally:
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _run(
    config: BenchConfig, variant: str, topic: str, client: aioredis.Redis
) -> dict[str, Any]:
    count = int(config.steady_rate * config.steady_duration_s)
    warmup = int(config.steady_rate * _WARMUP_S)
    options = _options(config, topic, variant)
    out = _Counts()
    keyring = bench_keyring()
    guard: RedisReplayGuard | None = None
    if variant == "raw":
        consuming = asyncio.ensure_future(_consume_raw(options, count, warmup, out))
    else:
        peak = config.steady_rate if variant == "signed" else None
        guard = RedisReplayGuard(client, prefix=bench_prefix(), peak_rate=peak)
        await guard.start()
        verifier = Verifier(keyring, freshness=config.freshness)
        consumer = VerifyingConsumer.from_options(options, verifier=verifier, guard=guard)
        await consumer.start()
        await wait_assigned(consumer.consumer)
        consuming = asyncio.ensure_future(_consume_signed(consumer, count, warmup, out))
    pid = broker_pid()
    calls_before, cpu_before = await redis_calls(client), cpu_seconds(pid)
    started = time.perf_counter()
    try:
        producer = await _produce(config, topic, variant, count, keyring)
        await asyncio.wait_for(consuming, timeout=60)
    finally:
        if not consuming.done():
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
    seconds = time.perf_counter() - started
    calls, cpu_after = await redis_calls(client) - calls_before, cpu_seconds(pid)
    if guard is not None:
        await guard.stop()
    latency = summarize_latencies([(received - sent) / 1e6 for sent, received in out.samples])
    broker_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "records": count,
        "seconds": seconds,
        "commits_per_s": out.commits / seconds,
        "batches_per_s": out.batches / seconds,
        "records_per_batch": count / max(out.batches, 1),
        "redis_calls_per_s": calls / seconds,
        "broker_cpu_share": None if broker_cpu is None else broker_cpu / seconds,
        "latency_ms": latency,
        "producer_late_max_ms": producer["late_max_ms"],
        "options": {
            "fetch_min_bytes": options.fetch_min_bytes,
            "fetch_max_wait_ms": options.fetch_max_wait_ms,
            "commit_interval_ms": options.commit_interval_ms,
            "shards": None if guard is None else guard.shards,
        },
    }


async def _bytes_per_nonce(config: BenchConfig, rate: int, *, sized: bool) -> dict[str, Any]:
    """used_memory growth per nonce for a stream at ``rate``/s (40 s of it; 10 s quick)."""
    seconds = 10 if config.quick else 40
    claims = make_claims(rate * seconds, rate=rate, start_ms=int(time.time() * 1000))
    async with private_redis(listpack_entries=LISTPACK_ENTRIES) as url:
        client = aioredis.Redis.from_url(url)
        try:
            prefix = "signed-bus"  # the default: key names as long as in production
            guard = RedisReplayGuard(client, prefix=prefix, peak_rate=rate if sized else None)
            per_nonce = await memory_per_nonce(
                client, claiming(guard, config), claims, batch=max(1, rate // 5)
            )
            hashes, mean_entries, kinds = await encodings(client, prefix)
            return {
                "bytes_per_nonce": per_nonce,
                "shards": guard.shards,
                "hashes": hashes,
                "mean_entries": mean_entries,
                "encodings": kinds,
            }
        finally:
            await client.aclose()


async def measure_steady(config: BenchConfig) -> PartResult:
    rate = config.steady_rate
    part = PartResult(name="steady", title=f"6. steady load at {rate:,} results/s")
    runs: dict[str, dict[str, Any]] = {}
    async with private_redis_url(config.redis_url, enabled=config.private_redis) as (url, own):
        client = aioredis.Redis.from_url(url)
        try:
            async with bench_topics(config, _VARIANTS, partitions=PARTITIONS) as topics:
                for variant in _VARIANTS:
                    runs[variant] = await _run(config, variant, topics[variant], client)
        finally:
            await client.aclose()
    memory = {
        f"{r}/s {'sized' if sized else '16 shards'}": await _bytes_per_nonce(config, r, sized=sized)
        for r in _MEMORY_RATES
        for sized in (False, True)
    }
    signed, old = runs["signed"], runs["per-batch"]
    lat = {name: run["latency_ms"] for name, run in runs.items()}
    part.rows = [
        Row("steady", "commits/s per consumer", "1/s", old["commits_per_s"],
            signed["commits_per_s"], "per-batch", "lower"),
        Row("steady", "Redis calls/s per consumer", "1/s", old["redis_calls_per_s"],
            signed["redis_calls_per_s"], "per-batch", "lower"),
        Row("steady", "p50 end-to-end", "ms", lat["raw"]["p50"], lat["signed"]["p50"],
            "raw aiokafka", "lower"),
        Row("steady", "p99 end-to-end", "ms", lat["raw"]["p99"], lat["signed"]["p99"],
            "raw aiokafka", "lower"),
    ]  # fmt: skip
    for r in _MEMORY_RATES:
        part.rows.append(
            Row("steady", f"Redis B/nonce at {r:,}/s", "B", memory[f"{r}/s 16 shards"]
                ["bytes_per_nonce"], memory[f"{r}/s sized"]["bytes_per_nonce"], "16 shards",
                "lower")
        )  # fmt: skip
    if old["broker_cpu_share"] is not None and signed["broker_cpu_share"] is not None:
        part.rows.append(
            Row("steady", "broker CPU (share of a core)", "core", old["broker_cpu_share"],
                signed["broker_cpu_share"], "per-batch", "lower")
        )  # fmt: skip
    part.targets = [
        Target("commits/s per consumer", signed["commits_per_s"], "<=", 1.0, "/s"),
        Target("Redis calls/s per consumer", signed["redis_calls_per_s"], "<=", 10.0, "/s"),
        Target("p99 added latency (steady)", lat["signed"]["p99"] - lat["raw"]["p99"], "<=",
               2.0, " ms"),
    ] + [
        Target(f"Redis B/nonce at {r:,}/s", memory[f"{r}/s sized"]["bytes_per_nonce"], "<=",
               33.0, " B")
        for r in _MEMORY_RATES
    ]  # fmt: skip
    part.details = {
        "rate_per_s": rate,
        "duration_s": config.steady_duration_s,
        "partitions": PARTITIONS,
        "private_redis": own,
        "runs": runs,
        "memory": memory,
        "commits": "counted by the consumers themselves (the broker's JMX is not read)",
        "redis_calls": "INFO commandstats of the guard's Redis, all commands but INFO",
        "broker_cpu": "/proc/<pid>/stat of the local kafka.Kafka process over the run",
    }
    return part
