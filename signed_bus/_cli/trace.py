"""``signed-bus trace``: walk one envelope's provenance back to the model output.

Start from a record in Kafka (``--position topic:partition:offset``) or an envelope saved to a
file (``--file``). Every parent is looked up in the provenance index (Redis), read back from
Kafka, checked against its digest and verified in audit mode; the chain is printed link by link.
Exit 0: every link verified; 1: a link is missing, tampered or invalid, or the walk stopped at
``--max-links`` with parents unchecked; 2: usage/configuration.
Record text in the report is escaped (:meth:`signed_bus._provenance.TraceLink.describe`), so a
signed model name cannot print a fake "chain verified" line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from signed_bus._cli.options import (
    EXIT_FAILED,
    Progress,
    Subparsers,
    UsageError,
    add_connection_options,
    add_progress_option,
    kafka_security,
    keyring_from_args,
    redis_options,
    start_client,
)
from signed_bus._cli.trace_output import report_document, report_dot
from signed_bus._text import printable
from signed_bus.errors import ConfigurationError, SignedBusError

if TYPE_CHECKING:
    from signed_bus._keys import Keyring
    from signed_bus._provenance import Position, RecordFetcher
    from signed_bus._provenance.trace import FetchedRecord

__all__ = ["register"]


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
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--key", help="with --file: the record key it was published with (UTF-8 text)")
    key.add_argument("--key-hex", help="with --file: the record key, hex-encoded")
    parser.add_argument(
        "--index-prefix",
        default=os.environ.get("AGENT_STATE_PREFIX", "signed-bus"),
        help="key prefix of the provenance index (default: $AGENT_STATE_PREFIX or signed-bus)",
    )
    parser.add_argument(
        "--max-links",
        type=_positive,
        default=1000,
        metavar="N",
        help="stop the walk after N links (default 1000); a walk stopped with parents left "
        "unchecked is reported as not verified (exit 1)",
    )
    add_connection_options(parser, redis=True)
    add_progress_option(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--format",
        choices=("text", "json", "dot"),
        default="text",
        help="text (default), json (one object) or dot (a Graphviz graph: dot -Tsvg)",
    )
    output.add_argument(
        "--json", dest="format", action="store_const", const="json", help="--format json"
    )
    parser.set_defaults(handler=_trace)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """An envelope from ``--file`` and what it was published as."""

    value: bytes
    topic: str
    key: bytes | None


def _trace(args: argparse.Namespace) -> int:
    from signed_bus._provenance import Position

    keyring = keyring_from_args(args)
    # Everything the options decide is checked before anything connects.
    start = Position.parse(args.position) if args.position else None
    envelope = None
    if args.file:
        envelope = _from_file(args)
        if envelope is None:
            return EXIT_FAILED
    return asyncio.run(_run(args, keyring, start, envelope))


def _from_file(args: argparse.Namespace) -> _Envelope | None:
    """The envelope in ``--file`` with its topic and key; None (reported) if it is not one."""
    from signed_bus._decode import decode_envelope

    with open(args.file, "rb") as handle:
        value = handle.read()
    try:
        header = decode_envelope(value).header
    except SignedBusError as exc:
        print(f"{printable(args.file)}: not an envelope ({exc})", file=sys.stderr)
        return None
    key = None
    if args.key_hex is not None:
        try:
            key = bytes.fromhex(args.key_hex)
        except ValueError:
            raise UsageError("--key-hex is not hex (an even number of 0-9, a-f)") from None
    elif args.key is not None:
        key = args.key.encode()
    elif header.key_digest is not None:
        raise ConfigurationError(
            f"{args.file} was signed for a record key: pass --key or --key-hex"
        )
    return _Envelope(value, args.topic or header.topic, key)


async def _run(
    args: argparse.Namespace, keyring: Keyring, start: Position | None, envelope: _Envelope | None
) -> int:
    from signed_bus._provenance import ProvenanceIndex, RecordFetcher, Tracer
    from signed_bus._verifier import Verifier

    verifier = Verifier(keyring, audit=True)
    security = kafka_security(args)
    # Everything that can refuse its options is built before anything opens. The index TTL only
    # matters when writing; the tracer only reads.
    index = ProvenanceIndex.from_url(
        args.redis_url, ttl_ms=1, prefix=args.index_prefix, **redis_options(args)
    )
    fetcher = RecordFetcher(bootstrap_servers=args.bootstrap_servers, **security)
    try:
        await start_client(fetcher, f"Kafka at {args.bootstrap_servers}")
    except BaseException:
        await index.stop()
        raise
    async with index, fetcher:
        progress = Progress("tracing, records read", None, args)
        tracer = Tracer(
            index=index,
            verifier=verifier,
            fetcher=_Counted(fetcher, progress),
            max_links=args.max_links,
        )
        if start is not None:
            report = await tracer.trace_position(start)
        else:
            assert envelope is not None  # argparse requires --position or --file
            report = await tracer.trace_value(
                envelope.value, topic=envelope.topic, key=envelope.key
            )
    progress.done()
    if args.format == "json":
        print(json.dumps(report_document(report), indent=2))
    elif args.format == "dot":
        print(report_dot(report), end="")
    else:
        print(report.format())
    return 0 if report.ok else 1


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


class _Counted:
    """The fetcher the tracer reads through, counting reads for the progress report (a long
    chain is one read per link)."""

    def __init__(self, fetcher: RecordFetcher, progress: Progress) -> None:
        self._fetcher = fetcher
        self._progress = progress

    async def fetch(self, position: Position) -> FetchedRecord | None:
        record = await self._fetcher.fetch(position)
        self._progress.advance()
        return record
