"""Rebuild the replay guard's first-seen positions from Kafka after Redis lost them.

Kafka holds every record a guard ever claimed; Redis is an index over them. After a loss
(:mod:`signed_bus._replay.epoch`) :func:`rebuild` re-reads each topic the guard serves over the
retention window (``offsets_for_times(now - retention)`` to the end as of the start), verifies
every record in audit mode (nothing unauthenticated claims a nonce), and re-claims each nonce at
its position, earliest record timestamp first, in a new epoch the consumers' guards hold for.
When every topic asked for was read, the epoch is marked ready with them as ``covered``: their
records are claimed as before the loss (the original is SAME_POSITION, a copy REPLAY). A topic
that could not be read is left out of ``covered``, so records created before the loss on it are
quarantined, never delivered as new. ``signed-bus guard rebuild`` runs it by hand and
``signed-bus guard status`` shows the epoch record (docs/OPERATIONS.md, "Losing Redis state").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from signed_bus._lifecycle import start_kafka_client
from signed_bus._replay.epoch import (
    READY,
    EpochState,
    epoch_key,
    is_lost,
    lost_error,
    parse_epoch_record,
)
from signed_bus._replay.layout import ClaimRow, decode_verdicts
from signed_bus._replay.steps import Claims, Command, ReadKafka, RunScript, Steps
from signed_bus.errors import ReplayGuardUnavailable, VerificationError

if TYPE_CHECKING:
    from signed_bus._freshness import Freshness
    from signed_bus._replay.core import GuardCore
    from signed_bus._replay.guard import RedisReplayGuard
    from signed_bus._verifier import Verifier

__all__ = [
    "RebuildReport",
    "RebuildSource",
    "log_own_rebuild",
    "read_epoch",
    "read_records",
    "rebuild",
    "rebuild_steps",
]

_log = logging.getLogger("signed_bus.replay")

#: Seconds without a record before the end offsets: the topic counts as not re-read.
_IDLE_S = 30.0

#: Adds the rebuilt topics to ``covered`` and marks the epoch ready, unless another recovery
#: replaced it meanwhile.
_FINISH_SCRIPT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
local covered = redis.call('HGET', KEYS[1], 'covered') or ''
if covered ~= '' and ARGV[2] ~= '' then
  covered = covered .. ','
end
redis.call('HSET', KEYS[1], 'covered', covered .. ARGV[2], 'state', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class RebuildSource:
    """Where a guard rebuilds its topics from by itself (``rebuild_from=...`` of either guard):
    the Kafka cluster, every topic its consumers read, the verifier that checks each record
    (the consumers' own will do: the rebuild checks with an audit copy of it on the same
    keyring, as freshness is judged by the retention window instead), the client's security
    options. The guard rebuilds after a loss, and when it starts on a prefix with no state in
    Redis (docs/OPERATIONS.md)."""

    bootstrap_servers: str
    topics: tuple[str, ...]
    verifier: Verifier
    kafka_options: Mapping[str, Any] = field(default_factory=dict)


def log_own_rebuild(prefix: str, report: RebuildReport | None, error: Exception | None) -> None:
    """The log line of a guard's own rebuild (``rebuild_from``): what it covered, or why it
    failed (claims stay held; the next held claim starts another attempt)."""
    if report is None:
        _log.warning(
            "replay guard prefix %r: rebuild from Kafka failed (%s): claims stay held",
            prefix,
            type(error).__name__,
        )
        return
    _log.warning(
        "replay guard prefix %r: rebuilt %s from Kafka in %.1fs (%d records, %s); failed: %s",
        prefix,
        ", ".join(report.covered) or "nothing",
        report.seconds,
        report.read,
        report.claimed,
        ", ".join(report.failed) or "none",
    )


@dataclass
class RebuildReport:
    """What a rebuild did: the epoch it finished, the topics it covered and those it could
    not read (topic -> why), and record counts."""

    epoch: str = ""
    lost_at: int = 0
    covered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    read: int = 0
    rejected: int = 0
    claimed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


async def read_epoch(guard: RedisReplayGuard) -> EpochState | None:
    """The guard's epoch record as stored now (None when missing)."""
    return parse_epoch_record(await guard._client.hgetall(epoch_key(guard.prefix)))


async def rebuild(
    guard: RedisReplayGuard,
    *,
    bootstrap_servers: str,
    topics: Sequence[str],
    verifier: Verifier,
    freshness: Freshness | None = None,
    kafka_options: Mapping[str, Any] | None = None,
    now_ms: int | None = None,
) -> RebuildReport:
    """Rebuild the first-seen positions of ``topics`` in a new epoch and mark it ready
    (:func:`rebuild_steps` on the async guard).

    ``verifier`` checks each record (in audit mode, a copy when it is not: its freshness is
    never checked against now); ``freshness`` (default: the verifier's) is the consumers'
    window, whose retention decides how far back to read.
    Raises ReplayGuardUnavailable when Redis fails (run it again: claims are idempotent)."""
    steps = rebuild_steps(
        guard,
        RebuildSource(bootstrap_servers, tuple(topics), verifier, kafka_options or {}),
        freshness=freshness,
        now_ms=now_ms,
    )
    return await guard._run(steps)


def rebuild_steps(
    guard: GuardCore[Any],
    source: RebuildSource,
    *,
    freshness: Freshness | None = None,
    now_ms: int | None = None,
) -> Steps[RebuildReport]:
    """A rebuild as steps (either guard runs them): read each topic of ``source`` over the
    retention window, re-claim every verified record at its position, earliest first, in the
    epoch being recovered (or a new one when Redis holds none), then mark it ready with the
    topics read as ``covered``."""
    started = time.monotonic()
    freshness = freshness or source.verifier.freshness
    now = int(time.time() * 1000) if now_ms is None else now_ms
    retention = guard.retention_ms(freshness)
    yield from guard._prepare_steps()
    key = epoch_key(guard.prefix)
    current = parse_epoch_record((yield Command(("HGETALL", key))))
    epochs = guard._epochs
    if current is not None:
        # rebuilding: a guard that saw the loss started the epoch and holds for it; ready:
        # re-claim inside it (consumers quarantine those topics meanwhile) and add the topics
        state = current
    else:  # nothing survived: consumers that start meanwhile hold for this epoch
        started_epoch = yield from epochs.start_epoch("", now)
        if started_epoch is None:
            raise ReplayGuardUnavailable("another recovery started a new epoch meanwhile")
        state = yield from epochs.restore(started_epoch, ready=False)
    report = RebuildReport(epoch=state.epoch, lost_at=state.lost_at)
    rows: list[tuple[tuple[int, str, int, int], ClaimRow]] = yield ReadKafka(
        source.bootstrap_servers,
        tuple(source.topics),
        _audit(source.verifier),
        now - retention,
        dict(source.kafka_options),
        report,
    )
    _in_log_order(rows)
    oldest = freshness.oldest_acceptable(now)
    claims = [row for _, row in rows if row[2] >= oldest]
    step = guard.max_claims_per_call
    for begin in range(0, len(claims), step):
        chunk = claims[begin : begin + step]
        calls = guard._planner.plan(chunk)
        replies = yield Claims(calls, retention, state.epoch)
        if any(is_lost(reply) for reply in replies):
            raise lost_error(guard.prefix, None)
        verdicts = decode_verdicts(calls, replies, len(chunk)) or []
        for verdict in verdicts:
            report.claimed[verdict.value] = report.claimed.get(verdict.value, 0) + 1
    report.covered = sorted(topic for topic in source.topics if topic not in report.failed)
    done = yield RunScript(_FINISH_SCRIPT, (key,), (state.epoch, ",".join(report.covered), READY))
    if not done:
        raise ReplayGuardUnavailable("another recovery replaced the epoch during the rebuild")
    report.seconds = time.monotonic() - started
    return report


def _in_log_order(rows: list[tuple[tuple[int, str, int, int], ClaimRow]]) -> None:
    """Sort ``rows`` (key: timestamp, topic, partition, offset) into the order they are
    re-claimed in: offset order within a partition, timestamp order across partitions.

    A record's timestamp is the running maximum of its partition's timestamps up to it, so a
    record never sorts before an earlier offset of its partition: on a CreateTime topic the
    producer picks the timestamp, and a copy written later with an earlier one would otherwise
    take the original's first-seen position."""
    rows.sort(key=lambda item: (item[0][1], item[0][2], item[0][3]))
    partition: tuple[str, int] | None = None
    highest = 0
    for index, ((stamp, topic, part, offset), row) in enumerate(rows):
        if (topic, part) != partition:
            partition, highest = (topic, part), stamp
        highest = max(highest, stamp)
        rows[index] = ((highest, topic, part, offset), row)
    rows.sort(key=lambda item: item[0])


def _audit(verifier: Verifier) -> Verifier:
    """``verifier`` in audit mode: a rebuild re-reads records older than max_age on purpose.
    Checked against now, a record a lagging consumer still accepts (by its LogAppendTime) would
    not be re-claimed, and a copy of it would pass as new on a covered topic; the retention
    window (``oldest_acceptable``) is the rebuild's freshness rule instead."""
    if verifier.audit:
        return verifier
    from signed_bus._verifier import Verifier

    return Verifier(
        verifier._keyring,
        freshness=verifier.freshness,
        max_envelope_bytes=verifier.max_envelope_bytes,
        clock=verifier.clock,
        audit=True,
    )


async def read_records(
    request: ReadKafka,
) -> list[tuple[tuple[int, str, int, int], ClaimRow]]:
    """Run a :class:`ReadKafka` request (aiokafka; the sync guard runs it in its own loop)."""
    return await _read(
        request.bootstrap_servers,
        request.topics,
        request.verifier,
        request.since_ms,
        request.kafka_options,
        request.report,
    )


async def _read(
    bootstrap_servers: str,
    topics: Sequence[str],
    verifier: Verifier,
    since_ms: int,
    kafka_options: Mapping[str, Any] | None,
    report: RebuildReport,
) -> list[tuple[tuple[int, str, int, int], ClaimRow]]:
    """Every verified record of ``topics`` from ``since_ms`` to the end as of now, with its
    sort key (timestamp, topic, partition, offset). A topic that fails goes to report.failed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",  # an aborted copy never claims
        **dict(kafka_options or {}),
    )
    await start_kafka_client(consumer)
    rows: list[tuple[tuple[int, str, int, int], ClaimRow]] = []
    try:
        for topic in topics:
            try:
                partitions = await _partitions(consumer, topic)
                tps = [TopicPartition(topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                ends = await consumer.end_offsets(tps)
                starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
                for tp in tps:
                    found = starts.get(tp)
                    consumer.seek(tp, found.offset if found is not None else ends[tp])
                await _drain(consumer, tps, ends, verifier, rows, report)
            except KafkaError as exc:
                report.failed[topic] = f"{type(exc).__name__}: {exc}"
    finally:
        await consumer.stop()
    return rows


async def _partitions(consumer: Any, topic: str) -> set[int]:
    from aiokafka.errors import UnknownTopicOrPartitionError

    deadline = time.monotonic() + 10
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if time.monotonic() > deadline:
            raise UnknownTopicOrPartitionError(f"no partitions for {topic!r}")
        await consumer._client.force_metadata_update()
        consumer._client.add_topic(topic)


async def _drain(
    consumer: Any,
    tps: list[Any],
    ends: Mapping[Any, int],
    verifier: Verifier,
    rows: list[tuple[tuple[int, str, int, int], ClaimRow]],
    report: RebuildReport,
) -> None:
    from aiokafka.errors import KafkaTimeoutError

    pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
    idle_since = time.monotonic()
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=1_000)
        if batches:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > _IDLE_S:
            raise KafkaTimeoutError(f"no records for {_IDLE_S:.0f}s before the end offsets")
        for tp, records in batches.items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                report.read += 1
                if record.value is None:  # a tombstone: nothing to claim
                    report.rejected += 1
                    continue
                try:
                    message = verifier.verify(record.value, topic=tp.topic, key=record.key)
                except VerificationError:
                    report.rejected += 1
                    continue
                position = (record.timestamp, tp.topic, tp.partition, record.offset)
                row = (message.issuer, message.nonce, message.created_at, tp.topic,
                       tp.partition, record.offset)  # fmt: skip
                rows.append((position, row))
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
