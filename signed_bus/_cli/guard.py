"""``signed-bus guard status|rebuild``: the replay guard's state after a loss of Redis data.

``status`` prints the epoch record (epoch, when the last loss was detected, the topics a rebuild
covered, ready or rebuilding); exit 1 while a recovery runs or the record is missing. ``rebuild
TOPIC...`` re-claims every verified record of the topics over the retention window from Kafka
in a new epoch (:func:`signed_bus._replay.rebuild.rebuild`), then marks it ready; exit 1 when a
topic could not be read (its pre-loss records stay quarantined). docs/OPERATIONS.md, "Losing
Redis state".
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

from signed_bus._cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    add_connection_options,
    add_freshness_options,
    freshness_from_args,
    kafka_security,
    keyring_from_args,
    redis_options,
    stdout,
)

if TYPE_CHECKING:
    from signed_bus._replay.guard import RedisReplayGuard
    from signed_bus._verifier import Verifier

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "guard",
        help="replay guard: status of its epoch, rebuild after Redis lost state",
        description="Show the replay guard's epoch record, or rebuild the first-seen positions "
        "of topics from Kafka after Redis lost its nonces.",
    )
    commands = parser.add_subparsers(dest="guard_command", metavar="ACTION", required=True)
    status = commands.add_parser("status", help="print the epoch record")
    rebuild = commands.add_parser(
        "rebuild",
        help="re-claim the topics' records over the window, then resume the consumers",
        description="Re-read each TOPIC from now minus the guard's retention, verify every "
        "record (audit: signature, topic, key) and re-claim its nonce at its position, earliest "
        "first, in a new epoch; consumers hold until it is marked ready. Give every topic the "
        "guard's consumers read: records created before the loss on any other topic are "
        "quarantined.",
    )
    rebuild.add_argument("topics", metavar="TOPIC", nargs="+")
    add_freshness_options(rebuild)
    for command, keyring in ((status, False), (rebuild, True)):
        add_connection_options(command, redis=True, keyring=keyring)
        command.add_argument("--prefix", default="signed-bus", help="the guard's key prefix")
        command.add_argument("--cluster", action="store_true", help="Redis Cluster (seed URL)")
        command.add_argument(
            "--bucket-ms", type=int, default=1_000, help="the prefix's bucket_ms (default 1000)"
        )
        command.add_argument("--shards", type=int, default=16, help="the prefix's shards")
        command.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)
    rebuild.set_defaults(handler=_rebuild)


def _guard(args: argparse.Namespace) -> RedisReplayGuard:
    from signed_bus._replay.guard import RedisReplayGuard

    return RedisReplayGuard.from_url(
        args.redis_url,
        cluster=args.cluster,
        prefix=args.prefix,
        bucket_ms=args.bucket_ms,
        shards=args.shards,
        **redis_options(args),
    )


def _status(args: argparse.Namespace) -> int:
    return asyncio.run(_run_status(args))


async def _run_status(args: argparse.Namespace) -> int:
    from signed_bus._replay.rebuild import read_epoch

    guard = _guard(args)
    try:
        state = await read_epoch(guard)
    finally:
        await guard.stop()
    document: dict[str, object] = {"prefix": args.prefix, "epoch": None}
    if state is not None:
        document = {
            "prefix": args.prefix,
            "epoch": state.epoch,
            "lost_at": state.lost_at or None,
            "covered": sorted(state.covered),
            "state": "ready" if state.ready else "rebuilding",
        }
    out = stdout()
    if args.json:
        print(json.dumps(document), file=out)
    else:
        for name, value in document.items():
            print(f"{name}: {value}", file=out)
    return EXIT_OK if state is not None and state.ready else EXIT_FAILED


def _rebuild(args: argparse.Namespace) -> int:
    keyring = keyring_from_args(args)
    freshness = freshness_from_args(args)
    from signed_bus._verifier import Verifier

    verifier = Verifier(keyring, freshness=freshness, audit=True)
    return asyncio.run(_run_rebuild(args, verifier))


async def _run_rebuild(args: argparse.Namespace, verifier: Verifier) -> int:
    from signed_bus._replay.rebuild import rebuild

    guard = _guard(args)
    try:
        report = await rebuild(
            guard,
            bootstrap_servers=args.bootstrap_servers,
            topics=args.topics,
            verifier=verifier,
            kafka_options=kafka_security(args),
        )
    finally:
        await guard.stop()
    document = {
        "epoch": report.epoch,
        "lost_at": report.lost_at,
        "covered": report.covered,
        "failed": report.failed,
        "read": report.read,
        "rejected": report.rejected,
        "claimed": report.claimed,
        "seconds": round(report.seconds, 3),
    }
    out = stdout()
    if args.json:
        print(json.dumps(document), file=out)
    else:
        for name, value in document.items():
            print(f"{name}: {value}", file=out)
    return EXIT_OK if not report.failed else EXIT_FAILED
