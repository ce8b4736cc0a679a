"""``signed-bus dlq stats|show|redrive DLQ_TOPIC``: where an operator looks first.

Every command reads the dead-letter topic from its beginning to its end as of the start (no
consumer group, nothing committed) and parses each record with
:meth:`signed_bus.DeadLetter.from_record`; a record that does not parse is counted, never fatal.
Nothing in a dead letter is authenticated, so every text shown is escaped
(:func:`signed_bus._text.printable`) or JSON-encoded.

``redrive`` sends chosen letters back to their source topic and partition, unchanged (value, key),
for the consumers to verify again from scratch. Only letters whose reason allows it
(:data:`REDRIVABLE`), that still verify in audit mode (signature, topic and key binding) and whose
envelope is younger than the retention of the fleet's window (the guard may have forgotten an older
one's claim) are sent: never a signature failure, whatever its reason header claims. Redriving is
idempotent through the replay guard: a letter redriven twice is two copies of one envelope, and
only one of them is ever delivered (the other is a ``replay``). Usage: docs/OPERATIONS.md, "Dead
letters".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import sys
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, TextIO

from signed_bus._cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    Progress,
    Subparsers,
    Unreachable,
    UsageError,
    add_connection_options,
    add_freshness_options,
    add_progress_option,
    freshness_from_args,
    kafka_security,
    keyring_from_args,
    start_client,
    stdout,
)
from signed_bus._deadletter import DeadLetter
from signed_bus._text import printable
from signed_bus.errors import ConfigurationError, MalformedDeadLetter, VerificationError

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from signed_bus._keys import Keyring

__all__ = ["REDRIVABLE", "register"]

#: Reasons a letter may be redriven for: the record was honest but came at the wrong time
#: (``expired`` or ``not_yet_valid`` after an outage or a clock fault), before its key
#: (``unknown_key``), or was held back after a replay-state loss (``quarantined``). Never a
#: signature, decoding, binding or replay failure.
REDRIVABLE = frozenset({"expired", "not_yet_valid", "unknown_key", "quarantined"})
#: An unsigned header on a redriven copy naming the letter it came from (informational).
HEADER_REDRIVEN_FROM = "signed-bus-redriven-from"


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="dead-letter topics: stats, show, redrive",
        description="Read a dead-letter topic: counts (stats), the letters (show), or send "
        "chosen letters back to their source topic (redrive).",
    )
    commands = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    stats = commands.add_parser(
        "stats",
        help="counts by reason and source topic, first and last time",
        description="Count the letters of DLQ_TOPIC by reason and by source topic, with the "
        "time of the first and the last one.",
    )
    show = commands.add_parser(
        "show",
        help="print the letters, decoded and escaped",
        description="Print each letter: its position, reason, source position and time, the "
        "error, the key, and the envelope header (decoded, NOT verified).",
    )
    redrive = commands.add_parser(
        "redrive",
        help="send chosen letters back to their source topic",
        description="Send the chosen letters back to their source topic and partition, "
        f"unchanged. Only reasons {', '.join(sorted(REDRIVABLE))} may be redriven, and only "
        "letters that still verify (audit mode) are sent. A letter redriven twice is "
        "delivered once: the replay guard drops the second copy. Exit 1 if a chosen letter "
        "was not sent.",
    )
    for command in (stats, show, redrive):
        command.add_argument("topic", metavar="DLQ_TOPIC")
        add_connection_options(command, redis=False, keyring=command is redrive)
        add_progress_option(command)
        command.add_argument(
            "--reason",
            action="append",
            metavar="REASON",
            help="only letters with this reason (repeat for several)",
        )
        command.add_argument("--source-topic", help="only letters from this source topic")
        command.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    for command in (show, redrive):
        command.add_argument(
            "--position",
            action="append",
            metavar="PARTITION:OFFSET",
            help="only the letter at this position of DLQ_TOPIC (repeat for several)",
        )
    for command in (stats, show):
        command.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--limit", type=int, help="print at most this many letters")
    redrive.add_argument("--dry-run", action="store_true", help="say what would be sent")
    # the fleet's window: how long the replay guard remembers a claim (retention_ms)
    add_freshness_options(redrive)
    stats.set_defaults(handler=lambda args: asyncio.run(_stats(args)))
    show.set_defaults(handler=lambda args: asyncio.run(_show(args)))
    redrive.set_defaults(handler=_redrive)


# -- reading --------------------------------------------------------------------------------------


class Entry:
    """One record of the dead-letter topic: its position and time, and the parsed letter (None
    with ``problem`` set if it does not parse)."""

    __slots__ = ("letter", "offset", "partition", "problem", "timestamp")

    def __init__(self, record: Any) -> None:
        self.partition: int = record.partition
        self.offset: int = record.offset
        self.timestamp: int | None = record.timestamp
        self.letter: DeadLetter | None = None
        self.problem: str | None = None
        try:
            self.letter = DeadLetter.from_record(record)
        except MalformedDeadLetter as exc:
            self.problem = str(exc)


def _positions(args: argparse.Namespace) -> set[tuple[int, int]] | None:
    if not getattr(args, "position", None):
        return None
    chosen = set()
    for text in args.position:
        partition, _, offset = text.partition(":")
        try:
            chosen.add((int(partition), int(offset)))
        except ValueError:
            raise UsageError(f"--position {text}: expected PARTITION:OFFSET") from None
    return chosen


def _chosen(entry: Entry, args: argparse.Namespace, positions: set[tuple[int, int]] | None) -> bool:
    if positions is not None and (entry.partition, entry.offset) not in positions:
        return False
    letter = entry.letter
    if args.reason and (letter is None or letter.reason not in args.reason):
        return False
    return not (args.source_topic and (letter is None or letter.source_topic != args.source_topic))


async def _letters(args: argparse.Namespace) -> AsyncGenerator[Entry, None]:
    """Every record of the topic from its beginning to its end as of now, as entries."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from signed_bus._kafka.fetch import fetch_records
    from signed_bus._provenance import partitions_of

    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka_security(args),
    )
    await start_client(consumer, f"Kafka at {args.bootstrap_servers}")
    try:
        partitions = sorted(await partitions_of(consumer, args.topic))
        if not partitions:
            raise ConfigurationError(f"topic {args.topic!r} does not exist")
        tps = [TopicPartition(args.topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        progress = Progress(f"reading {args.topic}", sum(ends[tp] - starts[tp] for tp in tps), args)
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        while pending:
            fetched = await fetch_records(consumer, timeout_ms=500, max_records=2000)
            if fetched:
                deadline = loop.time() + args.timeout
            elif loop.time() > deadline:
                raise ConfigurationError(
                    f"no progress reading {args.topic} for {args.timeout:g} s; stopped early"
                )
            for tp, records in fetched.records.items():
                for record in records:
                    if record.offset < ends[tp]:
                        progress.advance()
                        yield Entry(record)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        progress.done()
    finally:
        await consumer.stop()


# -- stats ----------------------------------------------------------------------------------------


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return "out of range"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _stats(args: argparse.Namespace) -> int:
    by_reason: dict[str, int] = {}
    by_source: dict[str, int] = {}
    total = unparsable = 0
    first: int | None = None
    last: int | None = None
    async for entry in _letters(args):
        if not _chosen(entry, args, None):
            continue
        total += 1
        if entry.timestamp is not None:
            first = entry.timestamp if first is None else min(first, entry.timestamp)
            last = entry.timestamp if last is None else max(last, entry.timestamp)
        if entry.letter is None:
            unparsable += 1
            continue
        by_reason[entry.letter.reason] = by_reason.get(entry.letter.reason, 0) + 1
        source = entry.letter.source_topic
        by_source[source] = by_source.get(source, 0) + 1
    out = stdout()
    if args.json:
        document = {
            "topic": args.topic,
            "letters": total,
            "not_dead_letters": unparsable,
            "by_reason": dict(sorted(by_reason.items())),
            "by_source_topic": dict(sorted(by_source.items())),
            "first": _iso(first),
            "last": _iso(last),
            "first_ms": first,
            "last_ms": last,
        }
        print(json.dumps(document, indent=2), file=out)
        return EXIT_OK
    print(f"{printable(args.topic)}: {total} record(s)", file=out)
    if unparsable:
        print(f"  not dead letters (did not parse): {unparsable}", file=out)
    for title, counts in (("by reason", by_reason), ("by source topic", by_source)):
        if counts:
            print(f"{title}:", file=out)
            width = max(len(name) for name in counts)
            for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
                print(f"  {printable(name):<{width}}  {count}", file=out)
    if first is not None:
        print(f"first: {_iso(first)}  last: {_iso(last)}", file=out)
    return EXIT_OK


# -- show -----------------------------------------------------------------------------------------


def _envelope(value: bytes | None) -> dict[str, object] | None:
    if value is None:
        return None
    from signed_bus._decode import decode_envelope

    try:
        header = decode_envelope(value).header
    except VerificationError:
        return None
    return {
        "alg": header.alg,
        "kid": header.kid,
        "issuer": header.issuer,
        "model": header.model,
        "topic": header.topic,
        "created_at": header.created_at,
        "created_at_iso": _iso(header.created_at),
        "nonce": header.nonce.hex(),
        "parents": len(header.parents),
    }


def _document(entry: Entry, topic: str) -> dict[str, object]:
    document: dict[str, object] = {
        "topic": topic,
        "partition": entry.partition,
        "offset": entry.offset,
        "timestamp": entry.timestamp,
    }
    letter = entry.letter
    if letter is None:
        document["not_a_dead_letter"] = entry.problem
        return document
    document.update(
        reason=letter.reason,
        source_topic=letter.source_topic,
        source_partition=letter.source_partition,
        source_offset=letter.source_offset,
        source_timestamp=letter.source_timestamp,
        error=letter.error,
        key_hex=None if letter.key is None else letter.key.hex(),
        value_bytes=None if letter.value is None else len(letter.value),
        value_omitted=letter.value_omitted,
        value_null=letter.value_null,
        key_omitted=letter.key_omitted,
        not_decoded=letter.not_decoded,
        envelope_unverified=_envelope(letter.value),
    )
    return document


def _print_entry(entry: Entry, topic: str, out: TextIO) -> None:
    where = f"{printable(topic)}[{entry.partition}]@{entry.offset}"
    letter = entry.letter
    if letter is None:
        print(f"{where}  NOT A DEAD LETTER: {printable(entry.problem or '')}", file=out)
        return
    source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
    print(f"{where}  {letter.reason}  from {source}  at {_iso(letter.source_timestamp)}", file=out)
    print(f"  error: {printable(letter.error)}", file=out)
    key = "none" if letter.key is None else printable(letter.key.decode("utf-8", "replace"))
    if letter.key_omitted:
        key = f"omitted (sha256 {letter.key_sha256})"
    if letter.value is None:
        value = "omitted" if letter.value_omitted else "null" if letter.value_null else "none"
    else:
        value = f"{len(letter.value)} bytes"
    print(f"  key: {key}  value: {value}", file=out)
    header = _envelope(letter.value)
    if header is not None:
        print(
            f"  envelope (NOT verified): issuer={printable(str(header['issuer']))} "
            f"kid={printable(str(header['kid']))} model={printable(str(header['model']))} "
            f"created_at={header['created_at_iso']}",
            file=out,
        )


async def _show(args: argparse.Namespace) -> int:
    positions = _positions(args)
    out = stdout()
    shown = 0
    async with contextlib.aclosing(_letters(args)) as entries:  # --limit stops it early
        async for entry in entries:
            if not _chosen(entry, args, positions):
                continue
            if args.json:
                print(json.dumps(_document(entry, args.topic)), file=out)
            else:
                _print_entry(entry, args.topic, out)
            shown += 1
            if args.limit is not None and shown >= args.limit:
                break
    if not args.json:
        print(f"-- {shown} letter(s)", file=out)
    return EXIT_OK


# -- redrive --------------------------------------------------------------------------------------


def _redrive(args: argparse.Namespace) -> int:
    if not args.reason and not args.position:
        raise UsageError("choose the letters: --reason REASON and/or --position PARTITION:OFFSET")
    refused = sorted(set(args.reason or ()) - REDRIVABLE)
    if refused:
        raise UsageError(
            f"letters with reason {', '.join(refused)} cannot be redriven (only "
            f"{', '.join(sorted(REDRIVABLE))})"
        )
    keyring = keyring_from_args(args)
    return asyncio.run(_run_redrive(args, keyring))


def _refusal(entry: Entry, check: Callable[[DeadLetter], int]) -> str | None:
    """Why this letter may not be redriven, or None. ``check`` verifies the letter (audit mode)
    and returns why its age refuses it, as a number of ms past the guard's memory (<= 0: fine)."""
    letter = entry.letter
    if letter is None:
        return "not a dead letter"
    if letter.reason not in REDRIVABLE:
        return f"reason {letter.reason} cannot be redriven"
    if letter.value is None or letter.key_omitted:
        return "the letter does not hold the record's value and key"
    try:
        past = check(letter)
    except VerificationError as exc:
        return f"does not verify ({exc.reason})"
    if past > 0:
        return (
            "created longer ago than the replay guard remembers claims (the window's "
            f"retention, by {past} ms): a copy could pass as new"
        )
    return None


async def _run_redrive(args: argparse.Namespace, keyring: Keyring) -> int:
    from aiokafka import AIOKafkaProducer

    from signed_bus._verifier import Verifier

    verifier = Verifier(keyring, audit=True)
    retention_ms = freshness_from_args(args).retention_ms

    def check(letter: DeadLetter) -> int:
        assert letter.value is not None
        verified = verifier.verify(letter.value, topic=letter.source_topic, key=letter.key)
        # The guard keeps a nonce retention_ms after its last claim: an envelope older than
        # that may have been delivered and forgotten, and its copy would be claimed as new.
        return verifier.clock() - verified.created_at - retention_ms

    positions = _positions(args)
    chosen: list[tuple[Entry, DeadLetter]] = []
    skipped: list[tuple[Entry, str]] = []
    async for entry in _letters(args):
        if not _chosen(entry, args, positions):
            continue
        why = _refusal(entry, check)
        if why is None:
            assert entry.letter is not None
            chosen.append((entry, entry.letter))
        else:
            skipped.append((entry, why))
    out = stdout()
    for entry, why in skipped:
        print(f"skip {args.topic}[{entry.partition}]@{entry.offset}: {why}", file=out)
    if args.dry_run:
        for entry, letter in chosen:
            print(
                f"would send {args.topic}[{entry.partition}]@{entry.offset} to "
                f"{letter.source_topic}[{letter.source_partition}]",
                file=out,
            )
        print(f"-- dry run: {len(chosen)} to send, {len(skipped)} skipped", file=out)
        return EXIT_OK if not skipped else EXIT_FAILED
    sent = 0
    if chosen:
        producer = AIOKafkaProducer(
            bootstrap_servers=args.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            **kafka_security(args),
        )
        await start_client(producer, f"Kafka at {args.bootstrap_servers}")
        progress = Progress("redriving", len(chosen), args)
        try:
            sent = await _send(producer, chosen, args, progress, skipped)
        finally:
            await producer.stop()
        progress.done()
    print(f"-- redrove {sent} letter(s), skipped {len(skipped)}", file=out)
    if not chosen and not skipped:
        print("signed-bus: note: no letter matched", file=sys.stderr)
    return EXIT_OK if not skipped else EXIT_FAILED


async def _send(
    producer: AIOKafkaProducer,
    chosen: list[tuple[Entry, DeadLetter]],
    args: argparse.Namespace,
    progress: Progress,
    skipped: list[tuple[Entry, str]],
) -> int:
    """Send each chosen letter back; returns how many were sent. A letter that cannot be sent
    is a printed skip (added to ``skipped``), never the end of the run: its source partition is
    an unsigned header (a forged or stale letter may name one the topic lacks), and one refused
    send says nothing about the next letter."""
    from aiokafka.errors import KafkaError

    try:
        # Every topic's partitions in one request; asking for the source topics one by one
        # could create a missing one on a broker that auto-creates topics.
        cluster = await producer.client.fetch_all_metadata()
    except KafkaError as exc:
        raise Unreachable(
            f"Kafka at {args.bootstrap_servers} is unreachable ({type(exc).__name__})"
        ) from None
    out = stdout()
    sent = 0
    for entry, letter in chosen:
        where = f"{args.topic}[{entry.partition}]@{entry.offset}"
        why = None
        partitions = cluster.partitions_for_topic(letter.source_topic)
        if not partitions:
            why = f"{letter.source_topic} does not exist"
        elif letter.source_partition not in partitions:
            why = f"{letter.source_topic} has no partition {letter.source_partition}"
        else:
            origin = f"{args.topic}:{entry.partition}:{entry.offset}".encode()
            try:
                await producer.send_and_wait(
                    letter.source_topic,
                    letter.value,
                    key=letter.key,
                    partition=letter.source_partition,
                    headers=[(HEADER_REDRIVEN_FROM, origin)],
                )
            except KafkaError as exc:
                why = f"not sent ({type(exc).__name__})"
        if why is None:
            sent += 1
        else:
            skipped.append((entry, why))
            print(f"skip {printable(where)}: {printable(why)}", file=out)
        progress.advance()
    return sent
