"""``signed-bus tail TOPIC``: verify each record of a topic as it arrives and print the verdict.

A quick look for an operator. It reads with no consumer group (nothing committed, no other
group disturbed) and does not claim nonces in the shared replay set (a look must not change
what the pipeline delivers), so replays show as OK here: the consumers' dead-letter topics say
which copies they dropped. Freshness is judged against the broker's append time when the topic
uses LogAppendTime, as the consumers do.

Every record field is shown through :func:`signed_bus._text.printable`: a signed issuer or model
is still text of the signer's choosing, and must not be able to rewrite the lines printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from signed_bus._cli.options import (
    Subparsers,
    add_connection_options,
    add_freshness_options,
    freshness_from_args,
    kafka_security,
    keyring_from_args,
    start_client,
)
from signed_bus._text import printable

if TYPE_CHECKING:
    from signed_bus._kafka.fetch import Skipped
    from signed_bus._keys import Keyring
    from signed_bus.errors import VerificationError

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "tail",
        help="verify records of a topic live and print one verdict per record",
        description=(
            "Read TOPIC (every partition, no consumer group), verify each record and print its "
            "position and verdict: OK with issuer, model, created_at and digest, or the "
            "rejection reason. Replays are not checked (tail never writes to the shared nonce "
            "set). Stops on Ctrl-C, after --count records or after --idle-timeout seconds "
            "without records."
        ),
    )
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the end"
    )
    parser.add_argument("--count", type=int, help="exit after this many records")
    parser.add_argument(
        "--idle-timeout", type=float, help="exit after this many seconds without a record"
    )
    parser.add_argument(
        "--audit", action="store_true", help="audit mode: do not judge freshness (old records)"
    )
    add_freshness_options(parser)
    add_connection_options(parser, redis=False)
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per record, then one with the counts",
    )
    parser.set_defaults(handler=_tail)


def _tail(args: argparse.Namespace) -> int:
    keyring = keyring_from_args(args)
    try:
        return asyncio.run(_run(args, keyring, sys.stdout))
    except KeyboardInterrupt:
        return 0


async def _run(args: argparse.Namespace, keyring: Keyring, out: TextIO) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from signed_bus._gate import Gate
    from signed_bus._kafka.fetch import fetch_records
    from signed_bus._provenance import partitions_of
    from signed_bus._verifier import Verifier
    from signed_bus.errors import ConfigurationError

    gate = Gate(Verifier(keyring, freshness=freshness_from_args(args), audit=args.audit))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka_security(args),
    )
    await start_client(consumer, f"Kafka at {args.bootstrap_servers}")
    report = _Report(out, as_json=args.json)
    seen = 0
    counts: dict[str, int] = {}
    try:
        partitions = sorted(await partitions_of(consumer, args.topic))
        if not partitions:
            raise ConfigurationError(f"topic {args.topic!r} does not exist")
        tps = [TopicPartition(args.topic, p) for p in partitions]
        consumer.assign(tps)
        if args.from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        loop = asyncio.get_running_loop()
        last = loop.time()
        while args.count is None or seen < args.count:
            fetched = await fetch_records(consumer, timeout_ms=500, max_records=500)
            records = [r for tp_records in fetched.records.values() for r in tp_records]
            if not fetched:
                if args.idle_timeout is not None and loop.time() - last >= args.idle_timeout:
                    break
                continue
            last = loop.time()
            # The gate verifies (the consumers' rules: LogAppendTime reference, tombstones,
            # verifier bugs as malformed); tail claims nothing, so every verified record
            # settles without a verdict.
            batch = gate.receive(fetched.records)
            gate.settle(batch, [None] * len(batch.verified))
            delivered = {(m.partition, m.offset): m for _, _, m in batch.entries if m is not None}
            errors = {(r.partition, r.offset): e for r, e in batch.rejected}
            for record in records:
                message = delivered.get((record.partition, record.offset))
                if message is None:
                    exc = errors[(record.partition, record.offset)]
                    verdict = exc.reason
                    report.reject(record, exc)
                else:
                    verdict = "ok"
                    report.ok(record, message.verified)
                counts[verdict] = counts.get(verdict, 0) + 1
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
            # offsets the Kafka client could not decode (after their partition's records); the
            # fetch already went past them
            for skipped in fetched.skipped:
                if args.count is not None and seen >= args.count:
                    break
                report.undecodable(skipped)
                counts["undecodable"] = counts.get("undecodable", 0) + 1
                seen += 1
            out.flush()
    finally:
        await consumer.stop()
        report.summary(seen, counts)
    return 0


class _Report:
    """One line per record: text (escaped) or JSON (``--json``)."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self._out = out
        self._json = as_json

    def _emit(self, document: dict[str, Any]) -> None:
        print(json.dumps(document), file=self._out)

    def ok(self, record: Any, message: Any) -> None:
        if not self._json:
            print(f"{_where_record(record)}  OK {_describe(message)}", file=self._out)
            return
        self._emit(
            {
                **_position(record),
                "verdict": "ok",
                "issuer": message.issuer,
                "kid": message.kid,
                "model": message.model,
                "created_at": message.created_at,
                "digest": message.digest.hex(),
                "parents": [parent.hex() for parent in message.parents],
            }
        )

    def reject(self, record: Any, exc: VerificationError) -> None:
        if not self._json:
            # str() of a VerificationError escapes the record's text
            print(f"{_where_record(record)}  REJECT {exc}", file=self._out)
            return
        self._emit(
            {**_position(record), "verdict": "reject", "reason": exc.reason, "error": str(exc)}
        )

    def undecodable(self, skipped: Skipped) -> None:
        if not self._json:
            print(f"{_where(skipped)}  REJECT undecodable: {skipped.error}", file=self._out)
            return
        self._emit(
            {
                "topic": skipped.topic,
                "partition": skipped.partition,
                "offset": skipped.offset,
                "last_offset": skipped.last_offset,
                "verdict": "reject",
                "reason": "undecodable",
                "error": skipped.error,
            }
        )

    def summary(self, seen: int, counts: dict[str, int]) -> None:
        if self._json:
            self._emit({"records": seen, "counts": dict(sorted(counts.items()))})
            return
        text = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no records"
        print(f"-- {seen} record(s): {text}", file=self._out)


def _position(record: Any) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _where_record(record: Any) -> str:
    return f"{printable(record.topic)}[{record.partition}]@{record.offset}"


def _where(skipped: Skipped) -> str:
    last = f"..{skipped.last_offset}" if skipped.last_offset != skipped.offset else ""
    return f"{skipped.topic}[{skipped.partition}]@{skipped.offset}{last}"


def _describe(message: Any) -> str:
    from signed_bus._provenance import iso_ms

    stamp = iso_ms(message.created_at)  # guarded: a validly signed created_at can be huge
    parents = f" parents={len(message.parents)}" if message.parents else ""
    return (
        f"issuer={printable(message.issuer)} model={printable(message.model)} created_at={stamp} "
        f"digest={message.digest.hex()[:16]}{parents}"
    )
