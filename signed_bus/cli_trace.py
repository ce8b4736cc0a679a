"""``signed-bus trace``: walk one envelope's provenance back to the model output.

Start from a record in Kafka (``--position topic:partition:offset``) or an envelope saved to a
file (``--file``). Every parent is looked up in the provenance index (Redis), read back from
Kafka, checked against its digest and verified in audit mode; the chain is printed link by link.
Exit 0: every link verified; 1: a link is missing, tampered or invalid; 2: usage/configuration.
Record text in the report is escaped (:meth:`signed_bus._provenance.TraceLink.describe`), so a
signed model name cannot print a fake "chain verified" line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING

from signed_bus._freshness import Freshness
from signed_bus._text import printable
from signed_bus.errors import ConfigurationError, SignedBusError

if TYPE_CHECKING:
    from signed_bus._keys import Keyring
    from signed_bus._provenance import Position
    from signed_bus.cli import Subparsers

__all__ = [
    "add_connection_options",
    "add_freshness_options",
    "freshness_from_args",
    "keyring_from_args",
    "register",
]


def add_connection_options(parser: argparse.ArgumentParser, *, redis: bool) -> None:
    """Options shared by the pipeline subcommands (trace, tail)."""
    parser.add_argument(
        "--keyring",
        metavar="FILE",
        help="key file of the verifying keys (default: $SIGNED_BUS_KEYRING_FILE, "
        "else the contents of $SIGNED_BUS_KEYRING)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    if redis:
        parser.add_argument(
            "--redis-url",
            default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            help="Redis holding the provenance index (default: $REDIS_URL or "
            "redis://127.0.0.1:6379/0)",
        )


def add_freshness_options(parser: argparse.ArgumentParser) -> None:
    """--max-age-ms, --future-skew-ms, --max-lag-ms: the whole window, defaults from
    :class:`~signed_bus._freshness.Freshness` (written there only)."""
    default = Freshness()
    for name, value, text in (
        ("max-age-ms", default.max_age_ms, "records older than this by the reference time expire"),
        ("future-skew-ms", default.future_skew_ms, "how far ahead of either clock a record may be"),
        ("max-lag-ms", default.max_lag_ms, "how far past max age this reader may lag"),
    ):
        parser.add_argument(
            f"--{name}", type=int, default=value, metavar="MS", help=f"{text} (default {value})"
        )


def freshness_from_args(args: argparse.Namespace) -> Freshness:
    """The window the freshness options name (ConfigurationError for a bad number)."""
    return Freshness(
        max_age_ms=args.max_age_ms, future_skew_ms=args.future_skew_ms, max_lag_ms=args.max_lag_ms
    )


def keyring_from_args(args: argparse.Namespace) -> Keyring:
    from signed_bus._keys import Keyring

    path = args.keyring or os.environ.get("SIGNED_BUS_KEYRING_FILE")
    if path:
        return Keyring.from_file(path)
    if os.environ.get("SIGNED_BUS_KEYRING"):
        return Keyring.from_env("SIGNED_BUS_KEYRING")
    raise ConfigurationError(
        "no key ring: pass --keyring FILE or set SIGNED_BUS_KEYRING_FILE / SIGNED_BUS_KEYRING"
    )


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="walk an envelope's parents back to the model output, verifying every link",
        description=(
            "Walk an envelope's provenance back hop by hop: each parent digest is looked up in "
            "the provenance index, read back from Kafka, checked against its digest and "
            "verified (audit mode: age is not held against old records). Prints issuer, model, "
            "created_at and position per link. Exit 0 if every link verified, 1 if not. For a "
            "demo run, use the exact trace command its report prints (its topics, key ring and "
            "index prefix are per run)."
        ),
    )
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--position",
        metavar="TOPIC:PARTITION:OFFSET",
        help="start from the record at this position",
    )
    start.add_argument("--file", metavar="FILE", help="start from an envelope saved to a file")
    parser.add_argument(
        "--topic",
        help="with --file: the topic the envelope was published to (default: the topic its "
        "header names, which verification then checks like any other field)",
    )
    parser.add_argument(
        "--key", help="with --file: the record key it was published with (UTF-8 text)"
    )
    parser.add_argument("--key-hex", help="with --file: the record key, hex-encoded")
    parser.add_argument(
        "--index-prefix",
        default=os.environ.get("AGENT_STATE_PREFIX", "signed-bus"),
        help="key prefix of the provenance index (default: $AGENT_STATE_PREFIX or signed-bus)",
    )
    add_connection_options(parser, redis=True)
    parser.set_defaults(handler=_trace)


def _trace(args: argparse.Namespace) -> int:
    from signed_bus._provenance import Position

    keyring = keyring_from_args(args)
    start = Position.parse(args.position) if args.position else None
    value = None
    if args.file:
        with open(args.file, "rb") as handle:
            value = handle.read()
    return asyncio.run(_run(args, keyring, start, value))


async def _run(
    args: argparse.Namespace, keyring: Keyring, start: Position | None, value: bytes | None
) -> int:
    from signed_bus._envelope import decode_envelope
    from signed_bus._provenance import ProvenanceIndex, RecordFetcher, Tracer
    from signed_bus._verifier import Verifier

    verifier = Verifier(keyring, audit=True)
    # The index TTL only matters when writing; the tracer only reads.
    async with (
        ProvenanceIndex.from_url(args.redis_url, ttl_ms=1, prefix=args.index_prefix) as index,
        RecordFetcher(bootstrap_servers=args.bootstrap_servers) as fetcher,
    ):
        tracer = Tracer(index=index, verifier=verifier, fetcher=fetcher)
        if start is not None:
            report = await tracer.trace_position(start)
        else:
            assert value is not None  # argparse requires --position or --file
            try:
                header = decode_envelope(value).header
            except SignedBusError as exc:
                print(f"{printable(args.file)}: not an envelope ({exc})", file=sys.stderr)
                return 1
            key = None
            if args.key_hex is not None:
                key = bytes.fromhex(args.key_hex)
            elif args.key is not None:
                key = args.key.encode()
            elif header.key_digest is not None:
                raise ConfigurationError(
                    f"{args.file} was signed for a record key: pass --key or --key-hex"
                )
            topic = args.topic or header.topic
            report = await tracer.trace_value(value, topic=topic, key=key)
    print(report.format())
    return 0 if report.ok else 1
