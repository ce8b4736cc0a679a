"""The signed-bus demo: a three-agent pipeline under attack, then a report that proves the
outcome.

    python -m demo.pipeline                 # ~2 minutes once Kafka and Redis are up
    python -m demo.pipeline --scale small   # ~10 s (what the test suite runs)

What it does, against the Kafka and Redis of KAFKA_BOOTSTRAP_SERVERS / REDIS_URL:

1. generates one Ed25519 key per agent with ``signed-bus keygen`` (the inference agent, the
   planner, and a low-privilege "telemetry" agent whose key the attacker has stolen), and a
   public key ring every verifier uses;
2. creates this run's topics with LogAppendTime (results, plans and their dead-letter topics);
3. starts the agents as processes (``python -m consumers.auditor`` and so on), each logging to
   ``.services/demo/<run>/logs/<agent>.log``; the inference agent answers the prompts at a fixed
   rate while the attacker forges, flips, replays and spoofs on both hops' topics;
4. shows one progress line per second (from the agents' status hashes in Redis);
5. stops the agents and prints the report: honest results produced and delivered per hop,
   actions executed (exactly once each), attacks tried and dropped by reason, and the provenance
   of one executed action traced back to its model output.

Exit status 0 only if no attack got through and no honest record was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from demo.report import (
    Expected,
    Findings,
    check_action_ledger,
    check_attacks,
    check_executions,
    check_planner_ledger,
    conclude,
    format_report,
)
from producers.common import checked_redis_url, read_status, redis_client
from signed_bus import (
    ConfigurationError,
    Keyring,
    Position,
    ProvenanceIndex,
    RecordFetcher,
    Tracer,
    Verifier,
    create_topics,
    printable,
)

REPO = Path(__file__).resolve().parent.parent
KEEP_S = 86_400  # without --cleanup: the run's Redis keys expire, and its records go, after a day


@dataclass(frozen=True, slots=True)
class Scale:
    prompts: int
    rate: float  # results per second
    attack_rounds: int  # per topic
    attack_interval_s: float
    partitions: int
    timeout_s: float


SCALES = {
    # ~100 s of traffic at a steady rate, attacks spread over it.
    "full": Scale(
        prompts=1500,
        rate=15.0,
        attack_rounds=10,
        attack_interval_s=8.0,
        partitions=3,
        timeout_s=300,
    ),
    "small": Scale(
        prompts=60,
        rate=30.0,
        attack_rounds=2,
        attack_interval_s=0.5,
        partitions=2,
        timeout_s=90,
    ),
}

AGENTS_CONSUMING = ("auditor", "action-agent", "planner")


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.scale = SCALES[args.scale]
        if args.prompts:
            self.scale = Scale(**{**_asdict(self.scale), "prompts": args.prompts})
        self.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
        self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        checked_redis_url(self.redis_url)  # refused before anything is set up
        self.run_id = time.strftime("demo%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        self.home = Path(args.dir or REPO / ".services" / "demo") / self.run_id
        self.keys = self.home / "keys"
        self.logs = self.home / "logs"
        self.prefix = f"signed-bus-demo:{self.run_id}"
        self.topics = {
            "results": f"{self.run_id}.inference.results",
            "plans": f"{self.run_id}.agent.plans",
        }
        self.dlq = {name: f"{topic}.dlq" for name, topic in self.topics.items()}
        self.report_json = args.report_json
        self.cleanup = args.cleanup
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log_files: list[IO[bytes]] = []
        self.tty = sys.stdout.isatty()

    # -- set-up ----------------------------------------------------------------------------

    def keygen(self) -> None:
        self.keys.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        public = self.keys / "public.keyring"
        for name, kid, issuer in (
            ("inference-agent", "inference-agent-1", "inference-agent"),
            ("planner", "planner-1", "planner"),
            ("telemetry", "telemetry-1", "telemetry-agent"),
        ):
            subprocess.run(  # noqa: S603 - fixed argv: this interpreter and our own CLI
                [
                    sys.executable,
                    "-m",
                    "signed_bus",
                    "keygen",
                    "--alg",
                    "ed25519",
                    "--kid",
                    kid,
                    "--issuer",
                    issuer,
                    "--out",
                    str(self.keys / f"{name}.keyring"),
                    "--public-out",
                    str(public),
                    "--append",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                cwd=REPO,
            )

    async def create_topics(self) -> None:
        await create_topics(
            self.bootstrap,
            [*self.topics.values(), *self.dlq.values()],
            partitions=self.scale.partitions,
            configs={"retention.ms": str(KEEP_S * 1000)},
        )

    def agent_env(self, agent: str, keyring: str | None) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.redis_url,
            "AGENT_STATE_PREFIX": self.prefix,
            "SIGNED_BUS_REPLAY_PREFIX": f"{self.prefix}:replay",
            "RESULTS_TOPIC": self.topics["results"],
            "PLANS_TOPIC": self.topics["plans"],
            "RESULTS_DLQ_TOPIC": self.dlq["results"],
            "PLANS_DLQ_TOPIC": self.dlq["plans"],
            "SIGNED_BUS_VERIFY_KEYRING_FILE": str(self.keys / "public.keyring"),
            "GROUP_ID": f"{self.run_id}.{agent}",
        }
        if keyring:
            env["SIGNED_BUS_KEYRING_FILE"] = str(self.keys / f"{keyring}.keyring")
        # one port per process: every agent inheriting the same one would fail to bind it
        env.pop("SIGNED_BUS_METRICS_PORT", None)
        return env

    def start(self, agent: str, module: str, keyring: str | None, **extra: str) -> None:
        env = self.agent_env(agent, keyring)
        env.update(extra)
        log = open(self.logs / f"{agent}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self.log_files.append(log)
        self.procs[agent] = subprocess.Popen(  # noqa: S603 - fixed argv: our own modules
            [sys.executable, "-m", module],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the orchestrator only
        )

    # -- run -------------------------------------------------------------------------------

    async def status(self, redis: aioredis.Redis, agent: str) -> dict[str, Any]:
        return await read_status(redis, f"{self.prefix}:status:{agent}")

    async def wait_running(self, redis: aioredis.Redis, agents: tuple[str, ...]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [(await self.status(redis, a)).get("state") for a in agents]
            if all(s == "running" for s in states):
                return
            self.check_alive(agents)
            await asyncio.sleep(0.2)
        raise RuntimeError(f"agents did not start: {dict(zip(agents, states, strict=True))}")

    def check_alive(self, agents: tuple[str, ...]) -> None:
        for agent in agents:
            proc = self.procs.get(agent)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{agent} exited with status {proc.returncode}; see {self.logs / agent}.log"
                )

    async def progress(self, redis: aioredis.Redis, started: float) -> bool:
        """Print progress until the run is complete (True) or timed out (False)."""
        expected_actions = Expected.compute(self.scale.prompts, self.run_id).action_count
        last_line = 0.0
        settled_since: float | None = None
        while True:
            now = time.monotonic()
            inference = await self.status(redis, "inference-agent")
            planner = await self.status(redis, "planner")
            actions = await self.status(redis, "action-agent")
            attacker = await self.status(redis, "attacker")
            auditor = await self.status(redis, "auditor")
            produced = int(inference.get("produced", 0))
            planned = int(planner.get("relay", {}).get("outputs", 0))
            executed = int(actions.get("executed", 0))
            tried = int(attacker.get("tried", 0))
            dead = auditor.get("dead_letters", {})
            dropped = sum(sum(r.values()) for r in dead.values())
            line = (
                f"[{now - started:5.0f}s] results {produced}/{self.scale.prompts}"
                f" | plans {planned} | actions {executed}/{expected_actions}"
                f" | attacks {tried} tried, {dropped} dropped"
                f" | audited {sum(int(c.get('ok', 0)) for c in auditor.get('topics', {}).values())}"
            )
            if self.tty:
                print(f"\r{line}", end="", flush=True)
            elif now - last_line >= 5:
                print(line, flush=True)
                last_line = now
            by_topic = attacker.get("by_topic", {})
            complete = (
                inference.get("state") == "done"
                and attacker.get("state") == "done"
                and executed >= expected_actions
                and planned >= self.scale.prompts
                and all(sum(dead.get(topic, {}).values()) >= n for topic, n in by_topic.items())
                and all(
                    int(counts.get("ok", 0)) >= self.scale.prompts
                    for counts in auditor.get("topics", {}).values()
                )
            )
            if complete:
                # A short settle so late duplicates (if any) show up in the report.
                settled_since = settled_since or now
                if now - settled_since >= 1.0:
                    if self.tty:
                        print()
                    print(line, flush=True)
                    return True
            if now - started > self.scale.timeout_s:
                if self.tty:
                    print()
                print(f"timed out after {self.scale.timeout_s:.0f} s", flush=True)
                return False
            self.check_alive(("auditor", "action-agent", "planner"))
            for agent in ("inference-agent", "attacker"):
                proc = self.procs[agent]
                if proc.poll() not in (None, 0):
                    raise RuntimeError(f"{agent} failed; see {self.logs / agent}.log")
            await asyncio.sleep(1.0)

    def stop_all(self) -> None:
        for agent in ("inference-agent", "attacker", "planner", "action-agent", "auditor"):
            proc = self.procs.get(agent)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for agent, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{agent} did not stop; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        for log in self.log_files:
            log.close()

    # -- report ----------------------------------------------------------------------------

    async def findings(self, redis: aioredis.Redis) -> Findings:
        expected = Expected.compute(self.scale.prompts, self.run_id)
        findings = Findings()
        inference = await self.status(redis, "inference-agent")
        planner = await self.status(redis, "planner")
        actions = await self.status(redis, "action-agent")
        attacker = await self.status(redis, "attacker")
        auditor = await self.status(redis, "auditor")
        findings.produced = int(inference.get("produced", 0))
        relay = planner.get("relay", {})
        findings.plans_published = int(relay.get("outputs", 0))
        if planner.get("exactly_once"):
            findings.planner_mode = (
                f"exactly-once: {relay.get('transactions', 0)} transactions, "
                f"{relay.get('aborted', 0)} aborted"
            )
        else:
            findings.planner_mode = "at-least-once"
        findings.duplicate_deliveries_suppressed = int(actions.get("already_executed", 0))
        check_planner_ledger(
            expected, _decode(await redis.hgetall(f"{self.prefix}:ledger:planner")), findings
        )
        check_action_ledger(
            expected, _decode(await redis.hgetall(f"{self.prefix}:ledger:action-agent")), findings
        )
        executions = [
            json.loads(raw) for raw in await redis.lrange(f"{self.prefix}:executions", 0, -1)
        ]
        effects = {
            k: int(v) for k, v in _decode(await redis.hgetall(f"{self.prefix}:effects")).items()
        }
        check_executions(expected, executions, effects, findings)
        findings.attacks_tried = dict(attacker.get("by_kind", {}))
        check_attacks(attacker.get("by_topic", {}), auditor.get("dead_letters", {}), findings)
        findings.auditor_rejected = {
            topic: counts.get("rejected", {}) for topic, counts in auditor.get("topics", {}).items()
        }
        if findings.produced != self.scale.prompts:
            findings.lost.append(
                f"the inference agent produced {findings.produced} of {self.scale.prompts}"
            )
        return findings

    async def trace_one(self, redis: aioredis.Redis) -> tuple[str | None, bool]:
        raw = await redis.lindex(f"{self.prefix}:executions", 0)
        if raw is None:
            return None, False
        record = json.loads(raw)
        start = Position.parse(record["plan_position"])
        verifier = Verifier(Keyring.from_file(self.keys / "public.keyring"), audit=True)
        index = ProvenanceIndex(redis, ttl_ms=1, prefix=self.prefix)
        async with RecordFetcher(bootstrap_servers=self.bootstrap) as fetcher:
            report = await Tracer(index=index, verifier=verifier, fetcher=fetcher).trace_position(
                start
            )
        origin_ok = any(
            link.message is not None and link.message.issuer == "inference-agent"
            for link in report.origins
        )
        header = (
            f"action {printable(str(record['action_id']))} ({printable(str(record['verb']))} "
            f"{printable(str(record['target']))}) executed by the action agent from the plan at "
            f"{printable(str(start))}:"
        )
        command = (
            f"  (again: {_cli()} trace --position {start.topic}:{start.partition}:"
            f"{start.offset} --keyring {self.keys / 'public.keyring'} "
            f"--index-prefix {self.prefix})"
        )
        return "\n".join([header, report.format(), command]), report.ok and origin_ok

    async def tidy(self, redis: aioredis.Redis) -> str:
        """Delete the run's topics and Redis keys (``--cleanup``), or else make every key expire
        within a day, so repeated demos do not pile up state in a shared Redis. Returns what it
        did, for the last line of output."""
        keys = [key async for key in redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
        if self.cleanup:
            for start in range(0, len(keys), 500):
                await redis.delete(*keys[start : start + 500])
            topics = [*self.topics.values(), *self.dlq.values()]
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                await admin.delete_topics(topics)
            finally:
                await admin.close()
            return f"cleanup: deleted {len(keys)} Redis keys and {len(topics)} topics"
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            ttls = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for key, ttl in zip(keys, ttls, strict=True):
                # no TTL, or a longer one (the provenance index's); EXPIRE's NX/GT need Redis 7
                if ttl == -1 or ttl > KEEP_S:
                    pipe.expire(key, KEEP_S)
            await pipe.execute()
        return (
            f"kept for a day: {len(keys)} Redis keys under {self.prefix}: and the records of "
            f"topics {self.run_id}.* (run with --cleanup to delete them at the end)"
        )

    async def finish(self) -> None:
        """Run ``tidy`` on a client of its own; a failure is reported, never raised, so it
        cannot change the exit status."""
        try:
            redis = redis_client(self.redis_url)
            try:
                print(await self.tidy(redis), flush=True)
            finally:
                await redis.aclose()
        except Exception as exc:  # reported; the run's verdict stands
            print(f"cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    async def run(self) -> int:
        try:
            return await self.run_pipeline()
        finally:
            if self.keys.exists():  # something was set up
                await self.finish()

    async def run_pipeline(self) -> int:
        started = time.monotonic()
        print(
            f"signed-bus demo {self.run_id}: {self.scale.prompts} prompts at "
            f"{self.scale.rate:g}/s, {self.scale.attack_rounds} attack rounds per topic"
        )
        print(f"  keys and agent logs: {self.home}")
        self.keygen()
        await self.create_topics()
        redis = redis_client(self.redis_url)
        try:
            self.start("auditor", "consumers.auditor", None, STATUS_INTERVAL_S="5")
            self.start("action-agent", "consumers.action_agent", None)
            self.start("planner", "consumers.planner", "planner")
            await self.wait_running(redis, AGENTS_CONSUMING)
            print(f"  agents up after {time.monotonic() - started:.1f} s; publishing")
            traffic = time.monotonic()
            self.start(
                "inference-agent",
                "producers.inference_agent",
                "inference-agent",
                PROMPT_COUNT=str(self.scale.prompts),
                PROMPT_RATE=str(self.scale.rate),
                RUN_ID=self.run_id,
            )
            self.start(
                "attacker",
                "producers.attacker",
                "telemetry",
                ATTACK_ROUNDS=str(self.scale.attack_rounds),
                ATTACK_INTERVAL_S=str(self.scale.attack_interval_s),
                ATTACK_MANIFEST=str(self.logs / "attacks.json"),
            )
            complete = await self.progress(redis, traffic)
        finally:
            self.stop_all()
        try:
            findings = await self.findings(redis)
            if not complete:
                findings.problems.append("the run did not complete before the timeout")
            trace, trace_ok = await self.trace_one(redis)
            if not trace_ok:
                findings.problems.append(
                    "the traced action's chain did not verify to a model output"
                )
            conclude(findings)
        finally:
            await redis.aclose()
        print(format_report(findings, trace=trace, elapsed_s=time.monotonic() - started))
        if self.report_json:
            text = json.dumps(findings.to_json(), indent=2)
            await asyncio.to_thread(Path(self.report_json).write_text, text)
        return 0 if findings.ok else 1


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def _asdict(scale: Scale) -> dict[str, Any]:
    return {name: getattr(scale, name) for name in Scale.__dataclass_fields__}


def _cli() -> str:
    """The ``signed-bus`` console script beside this interpreter (it is on PATH only in an
    activated venv), relative to the working directory when it is below it."""
    script = Path(sys.executable).with_name("signed-bus")
    if not script.exists():
        return "signed-bus"
    with contextlib.suppress(ValueError):
        return str(script.absolute().relative_to(Path.cwd()))
    return str(script)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default=os.environ.get("DEMO_SCALE", "full")
    )
    parser.add_argument("--prompts", type=int, help="override the number of prompts")
    parser.add_argument("--dir", help="where keys and logs go (default .services/demo)")
    parser.add_argument("--report-json", help="also write the report as JSON to this file")
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="delete the run's topics and Redis keys at the end (default: the keys expire and "
        "the records go after a day, so the printed trace command works until then)",
    )
    args = parser.parse_args(argv)
    try:
        demo = Demo(args)
    except ConfigurationError as exc:
        print(f"{parser.prog}: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        demo.stop_all()
        return 130
    except RuntimeError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            demo.stop_all()
        return 2


if __name__ == "__main__":
    sys.exit(main())
