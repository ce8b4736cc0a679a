"""The auditor: tails every topic and the dead-letter topics, counts verdicts by reason while it
runs, and maintains the provenance index.

Per data topic it runs a verifying consumer in its own group (the shared replay guard makes a
re-published copy a replay here too, while honest records are same-position fan-out), so its
counts are what any consumer group would see. Every verified record is indexed: digest ->
(topic, partition, offset) with ``SET NX`` (first position wins) and a TTL equal to the topics'
retention, which is what ``signed-bus trace`` walks. The auditor reads ``read_committed``, so an
aborted transaction's output is never indexed, and it does not dead-letter (the hops that act on
records do; the auditor reads their dead-letter topics and counts them by source and reason).

Run: ``python -m consumers.auditor``. Environment (besides :mod:`producers.common`):

- ``AUDIT_TOPICS``: data topics to verify and index [results and plans topics]
- ``AUDIT_DLQ_TOPICS``: dead-letter topics to count [their ``.dlq`` topics]
- ``GROUP_ID``: consumer group prefix [``auditor``]
- ``PROVENANCE_TTL_MS``: index entry lifetime; set it to the topics' retention.ms [604800000]
- ``STATUS_INTERVAL_S``: how often the verdict counts are logged [5]

Dead letters are unauthenticated (anyone who may write the dead-letter topic can forge one), so
the auditor's tables are bounded whatever arrives: reasons outside the library's reason codes
count as ``other``; source topics beyond the audited ones and :data:`MAX_EXTRA_TOPICS` more count
as ``other``; a record that is not a well-formed dead letter is counted (``malformed_dead_letters``)
and logged, escaped, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer

from producers.common import (
    AgentEnv,
    StatusBoard,
    agent_main,
    describe_keyring,
    env_float,
    env_int,
    env_list,
    env_str,
    install_stop_signals,
    load_verify_keyring,
    log_settings,
    setup_logging,
)
from signed_bus import (
    ConsumedMessage,
    ConsumerOptions,
    DeadLetter,
    Position,
    ProvenanceIndex,
    RedisReplayGuard,
    VerificationError,
    Verifier,
    VerifyingConsumer,
    printable,
)

# Private: a getmany() that survives records the client cannot decode (no public equivalent yet).
from signed_bus._kafka.fetch import Skipped, fetch_records
from signed_bus.errors import MalformedDeadLetter

AGENT = "auditor"

#: The label of every count whose reason or topic is not one the auditor keeps apart.
OTHER = "other"
#: Source topics counted apart besides the audited ones (first come, first counted).
MAX_EXTRA_TOPICS = 32
# Malformed letters logged one by one, then one line per this many (a flood of forgeries must not
# flood the log too); every one is counted.
_LOG_EVERY_MALFORMED = 1000
_LOG_FIRST_MALFORMED = 10


def reason_codes() -> frozenset[str]:
    """Every reason code the library's verification errors carry: the closed set of reasons
    the auditor counts apart."""
    codes: set[str] = set()
    pending: list[type[VerificationError]] = [VerificationError]
    while pending:
        cls = pending.pop()
        codes.add(cls.reason)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)


class Auditor:
    """Counts and indexes; the lifecycles of its consumers belong to :func:`run`."""

    def __init__(
        self,
        index: ProvenanceIndex,
        *,
        topics: Iterable[str] = (),
        max_extra_topics: int = MAX_EXTRA_TOPICS,
    ) -> None:
        self.index = index
        self.accepted: Counter[str] = Counter()
        self.indexed = 0
        # source topic label -> reason label -> count; both label sets are bounded.
        self.dead_letters: dict[str, Counter[str]] = {}
        self.malformed_dead_letters = 0
        self._reasons = reason_codes()
        self._topics = set(topics)
        self._extra_topics: set[str] = set()
        self._max_extra_topics = max_extra_topics

    async def on_verified(self, message: ConsumedMessage) -> None:
        self.accepted[message.topic] += 1
        position = Position(message.topic, message.partition, message.offset)
        # Await first, then add: `self.indexed += await ...` reads the counter before the await,
        # and the other topics' consumers update it meanwhile.
        new = await self.index.record([(message.verified.digest, position)])
        self.indexed += new

    def on_dead_letter(self, letter: DeadLetter) -> None:
        reason = letter.reason if letter.reason in self._reasons else OTHER
        self.dead_letters.setdefault(self._topic_label(letter.source_topic), Counter())[reason] += 1

    def on_malformed_dead_letter(self) -> int:
        """Count a record of a dead-letter topic that is not a dead letter; returns the count."""
        self.malformed_dead_letters += 1
        return self.malformed_dead_letters

    def _topic_label(self, topic: str) -> str:
        if topic in self._topics or topic in self._extra_topics:
            return topic
        if len(self._extra_topics) < self._max_extra_topics:
            self._extra_topics.add(topic)
            return topic
        return OTHER

    def on_undecodable_dead_letter(self, skipped: Skipped) -> None:
        """A record of a dead-letter topic that the Kafka client could not decode: counted under
        that dead-letter topic with reason ``undecodable`` (its source is unknown)."""
        label = self._topic_label(skipped.topic)
        self.dead_letters.setdefault(label, Counter())["undecodable"] += 1

    def summary(self, consumers: dict[str, VerifyingConsumer]) -> dict[str, Any]:
        topics = {}
        for topic, consumer in consumers.items():
            metrics = consumer.metrics
            topics[topic] = {
                "ok": self.accepted[topic],
                "rejected": dict(metrics.rejected),
                "records": metrics.records,
            }
        return {
            "topics": topics,
            "dead_letters": {t: dict(c) for t, c in self.dead_letters.items()},
            "malformed_dead_letters": self.malformed_dead_letters,
            "indexed": self.indexed,
        }


def format_summary(summary: dict[str, Any]) -> str:
    """One log line; topic and reason labels are escaped (dead letters name them)."""
    parts = []
    for topic, counts in summary["topics"].items():
        rejected = (
            ",".join(f"{printable(r)}={n}" for r, n in sorted(counts["rejected"].items())) or "-"
        )
        parts.append(f"{printable(topic)}: ok={counts['ok']} rejected[{rejected}]")
    for topic, counts in summary["dead_letters"].items():
        dead = ",".join(f"{printable(r)}={n}" for r, n in sorted(counts.items()))
        parts.append(f"dlq({printable(topic)}): {dead}")
    if summary.get("malformed_dead_letters"):
        parts.append(f"dlq malformed={summary['malformed_dead_letters']}")
    parts.append(f"indexed={summary['indexed']}")
    return " | ".join(parts)


def count_dead_letter(auditor: Auditor, record: Any, log: logging.Logger) -> None:
    """Count one record of a dead-letter topic; a malformed one is counted and logged (escaped,
    rate-limited), never raised: a forged record must not stop the auditor, before or after a
    restart."""
    try:
        letter = DeadLetter.from_record(record)
    except MalformedDeadLetter as exc:
        count = auditor.on_malformed_dead_letter()
        if count <= _LOG_FIRST_MALFORMED or count % _LOG_EVERY_MALFORMED == 0:
            log.warning(
                "record %s[%s]@%s is not a dead letter (%s); %d such record(s) so far",
                printable(str(getattr(record, "topic", "?"))),
                printable(str(getattr(record, "partition", "?"))),
                printable(str(getattr(record, "offset", "?"))),
                printable(str(exc)),
                count,
            )
        return
    auditor.on_dead_letter(letter)


async def tail_dead_letters(
    auditor: Auditor, consumer: AIOKafkaConsumer, stop: asyncio.Event, log: logging.Logger
) -> None:
    while not stop.is_set():
        batch = await fetch_records(consumer, timeout_ms=500, max_records=500)
        for records in batch.records.values():
            for record in records:
                count_dead_letter(auditor, record, log)
        for skipped in batch.skipped:
            log.warning(
                "records %s[%d]@%d..%d of a dead-letter topic could not be decoded (%s); skipped",
                printable(skipped.topic),
                skipped.partition,
                skipped.offset,
                skipped.last_offset,
                printable(skipped.error),
            )
            auditor.on_undecodable_dead_letter(skipped)
        if batch:
            await consumer.commit()


async def run() -> int:
    env = AgentEnv.load(AGENT)
    log = setup_logging(env.agent_id)
    topics = env_list("AUDIT_TOPICS", f"{env.results_topic},{env.plans_topic}")
    dlq_topics = env_list("AUDIT_DLQ_TOPICS", f"{env.results_dlq},{env.plans_dlq}")
    group = env_str("GROUP_ID", AGENT)
    interval = env_float("STATUS_INTERVAL_S", 5.0)
    ttl_ms = env_int("PROVENANCE_TTL_MS", 7 * 24 * 3600 * 1000)
    ring = await load_verify_keyring()
    log_settings(
        log,
        {
            **env.describe(),
            "AUDIT_TOPICS": ",".join(topics),
            "AUDIT_DLQ_TOPICS": ",".join(dlq_topics),
            "GROUP_ID": group,
            "PROVENANCE_TTL_MS": ttl_ms,
            "STATUS_INTERVAL_S": interval,
            "verify keyring": describe_keyring(ring),
        },
    )
    redis = env.redis()
    index = ProvenanceIndex(redis, ttl_ms=ttl_ms, prefix=env.state_prefix)
    auditor = Auditor(index, topics=topics)
    guard = RedisReplayGuard.from_url(env.redis_url, prefix=env.replay_prefix)
    verifier = Verifier(ring, freshness=env.freshness)
    consumers = {
        topic: VerifyingConsumer.from_options(
            ConsumerOptions(
                bootstrap_servers=env.bootstrap_servers,
                group_id=f"{group}.{topic}",
                topics=[topic],
                client_id=f"{env.agent_id}-{topic}",
            ),
            verifier=verifier,
            guard=guard,
        )
        for topic in topics
    }
    dlq = AIOKafkaConsumer(
        *dlq_topics,
        bootstrap_servers=env.bootstrap_servers,
        group_id=f"{group}.dead-letters",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # it counts what it reads: committed records only
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    status = StatusBoard(redis, env.status_key())

    async def log_summary() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            log.info("%s", format_summary(auditor.summary(consumers)))

    code = 0
    tasks: list[asyncio.Task[Any]] = []
    reporter = asyncio.create_task(status.run_every(1.0, stop, lambda: auditor.summary(consumers)))
    logger = asyncio.create_task(log_summary())
    try:
        await guard.start()
        await dlq.start()
        for consumer in consumers.values():
            await consumer.start()
        await status.publish("running")
        tasks = [asyncio.create_task(c.run(auditor.on_verified)) for c in consumers.values()]
        tasks.append(asyncio.create_task(tail_dead_letters(auditor, dlq, stop, log)))
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({*tasks, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for task in done:
            failure = None if task is waiter else task.exception()
            if failure is not None:
                raise failure
    except Exception:
        log.exception("auditor failed")
        code = 1
    finally:
        stop.set()
        for consumer in consumers.values():
            await consumer.stop()
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
        await reporter
        await logger
        await dlq.stop()
        await guard.stop()
        summary = auditor.summary(consumers)
        await status.publish("failed" if code else "done", **summary)
        log.info("final: %s", format_summary(summary))
        await redis.aclose()
    return code


def main(argv: list[str] | None = None) -> None:
    sys.exit(agent_main("consumers.auditor", __doc__, run, argv))


if __name__ == "__main__":
    main()
