"""``signed-bus bench``: the subcommand (registered by signed_bus._cli.bench)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from signed_bus.bench.config import EXTRA_PARTS, PARTS, BenchConfig
from signed_bus.errors import ConfigurationError

__all__ = ["config_from_args", "register"]

# option dest -> BenchConfig field; None on the namespace means "not given".
_OVERRIDES = {
    "messages": "messages",
    "duration": "duration_s",
    "rate": "rate",
    "nonces": "nonces",
    "codec_ops": "codec_ops",
    "repeats": "repeats",
    "bootstrap_servers": "bootstrap_servers",
    "redis_url": "redis_url",
    "steady_duration": "steady_duration_s",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure what signing costs against raw aiokafka and the naive design",
        description=(
            "Benchmark signed-bus against its baselines in one run on the real Kafka broker and "
            "Redis: (1) produce and (2) consume throughput vs raw aiokafka, (3) end-to-end "
            "latency per hop at a fixed rate, (4) Redis round trips and bytes per nonce vs one "
            "key per nonce, (5) sign/verify per message vs naive JSON+HMAC and Standard "
            "Webhooks, (6) produce and consume throughput vs raw confluent-kafka. Prints a "
            "table with PASS/MISS targets and writes JSON and a PNG chart."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    parser.add_argument("--messages", type=_positive_int, metavar="N", help="records per run")
    parser.add_argument(
        "--duration", type=_positive_float, metavar="S", help="seconds per latency run"
    )
    parser.add_argument("--rate", type=_positive_int, metavar="R", help="latency run msg/s")
    parser.add_argument(
        "--out", type=Path, default=Path("results"), metavar="DIR", help="results folder"
    )
    parser.add_argument(
        "--only",
        metavar="PART,...",
        help=f"run only these parts: {','.join(PARTS)} (default: all), {','.join(EXTRA_PARTS)}",
    )
    parser.add_argument(
        "--steady-duration", type=_positive_float, metavar="S", help="seconds per steady run"
    )
    parser.add_argument(
        "--nonces", type=_positive_int, metavar="N", help="claims for bytes per nonce"
    )
    parser.add_argument("--codec-ops", type=_positive_int, metavar="N", help="codec calls/round")
    parser.add_argument(
        "--repeats", type=_positive_int, metavar="N", help="rounds per figure (best one counts)"
    )
    parser.add_argument(
        "--bootstrap-servers", metavar="HOST:PORT", help="default: $KAFKA_BOOTSTRAP_SERVERS"
    )
    parser.add_argument("--redis-url", metavar="URL", help="default: $REDIS_URL")
    parser.add_argument(
        "--shared-redis",
        action="store_true",
        help=(
            "run the replay guard of parts 2 and 3 on --redis-url instead of a private "
            "redis-server (part 4 always uses a private one)"
        ),
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile an untimed HS256 produce round and consume pass (pyinstrument)",
    )
    parser.set_defaults(handler=_bench)


def _parts(only: str | None) -> tuple[str, ...]:
    if not only:
        return PARTS
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in PARTS + EXTRA_PARTS]
    if unknown or not wanted:
        raise ConfigurationError(
            f"--only: unknown part(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(PARTS + EXTRA_PARTS)}"
        )
    return tuple(name for name in PARTS + EXTRA_PARTS if name in wanted)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Defaults, then --quick's sizes, then every option given explicitly."""
    config = BenchConfig.from_env()
    if args.quick:
        config = config.quick_mode()
    overrides: dict[str, Any] = {
        field: getattr(args, dest)
        for dest, field in _OVERRIDES.items()
        if getattr(args, dest) is not None
    }
    if args.repeats is not None:
        overrides["latency_rounds"] = args.repeats
    return dataclasses.replace(
        config,
        out_dir=args.out,
        parts=_parts(args.only),
        private_redis=not args.shared_redis,
        profile=args.profile,
        **overrides,
    )


def _command_line(args: argparse.Namespace) -> str:
    words = ["signed-bus", "bench"]
    if args.quick:
        words.append("--quick")
    named = ("messages", "duration", "rate", "nonces", "codec_ops", "repeats", "only")
    for dest in (*named, "steady_duration"):
        value = getattr(args, dest)
        if value is not None:
            words += [f"--{dest.replace('_', '-')}", str(value)]
    if args.out != Path("results"):
        words += ["--out", str(args.out)]
    if args.shared_redis:
        words.append("--shared-redis")
    if args.profile:
        words.append("--profile")
    return shlex.join(words)


def _profiles(details: object) -> list[str]:
    """Every path listed under a "profiles" key, at any depth of a part's details."""
    if not isinstance(details, dict):
        return []
    found = [str(path) for path in details.get("profiles", [])]
    for value in details.values():
        found += _profiles(value)
    return found


def _bench(args: argparse.Namespace) -> int:
    from signed_bus.bench.runner import run_bench
    from signed_bus.bench.table import format_report

    config = config_from_args(args)
    # Library warnings (a retried produce, a topic not yet in the metadata) go to stderr with
    # their source, instead of Python's bare last-resort handler.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    output = asyncio.run(run_bench(config, command=_command_line(args), progress=progress))
    print(format_report(output.report))
    print(f"wrote {output.json_path}")
    if output.png_path is not None:
        print(f"wrote {output.png_path}")
    for part in output.report.parts:
        for path in _profiles(part.details):
            print(f"wrote {path}")
    return 1 if any(part.error for part in output.report.parts) else 0
