"""Provenance: where each envelope lives, and walking a chain of envelopes back to its origin.

Every envelope a relay signs names the SHA-256 digests of the envelopes it came from (its
``parents``). A digest alone does not say where to read the parent, so a
:class:`ProvenanceIndex` maps digest -> (topic, partition, offset) in Redis. The reference
auditor maintains it: it reads every topic with ``read_committed`` and indexes only envelopes
that verified and passed the replay guard, so an aborted transactional output or a re-published
copy never gets an entry. The first verified position wins (``SET NX``), and entries expire
with the topics' retention: once Kafka has deleted a record there is nothing left to point at.

:class:`Tracer` starts from one envelope (bytes from a file, or a record read back from Kafka)
and walks back hop by hop: it looks each parent digest up in the index, reads the record at
that position (assign + seek, no consumer group), checks that the bytes hash to the parent
digest, and verifies the signature in audit mode (old records are legitimately past max_age).
Each link is reported with its issuer, model, created_at and position; a link that is not
indexed, no longer in Kafka, whose bytes do not match the digest, or that fails verification is
reported at that link, and the walk does not continue past it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from signed_bus._kafka.consumer import require_read_committed
from signed_bus._kafka.fetch import fetch_records
from signed_bus._lifecycle import AsyncLifecycle
from signed_bus._text import printable
from signed_bus._verifier import VerifiedMessage, Verifier
from signed_bus.errors import (
    ConfigurationError,
    ProvenanceIndexUnavailable,
    VerificationError,
)

__all__ = [
    "FetchedRecord",
    "LinkStatus",
    "Position",
    "PositionLookup",
    "ProvenanceIndex",
    "ProvenanceIndexUnavailable",
    "RecordFetcher",
    "RecordSource",
    "TraceLink",
    "TraceReport",
    "Tracer",
    "iso_ms",
    "partitions_of",
]

log = logging.getLogger("signed_bus.provenance")

RedisClient = aioredis.Redis | aioredis.RedisCluster


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A record's place in Kafka."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse ``topic[partition]@offset`` or ``topic:partition:offset``."""
        try:
            if "@" in text and text.count("[") == 1:
                head, offset = text.rsplit("@", 1)
                topic, partition = head[:-1].split("[", 1)
            else:
                topic, partition, offset = text.rsplit(":", 2)
            position = cls(topic, int(partition), int(offset))
        except ValueError:
            raise ConfigurationError(
                f"not a record position: {text!r} (want topic:partition:offset)"
            ) from None
        if not position.topic or position.partition < 0 or position.offset < 0:
            raise ConfigurationError(f"not a record position: {text!r}")
        return position


def _parse_entry(raw: object) -> Position | None:
    """An index entry ``partition:offset:topic`` as a Position; None (logged) if it is not one."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        partition, offset, topic = text.split(":", 2)
        if not (partition.isascii() and partition.isdigit() and offset.isascii()):
            raise ValueError(text)
        if not offset.isdigit() or not topic:
            raise ValueError(text)
        return Position(topic, int(partition), int(offset))
    except ValueError:  # UnicodeDecodeError included
        shown = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
        log.warning("provenance index entry is not a position: %s", printable(shown[:200]))
        return None


# A ``password=`` query item (redis-py reads it as the password), up to the next item.
_QUERY_PASSWORD = re.compile(r"(?i)([?&;]password=)[^&;#]*")


def _redact_url(url: str) -> str:
    """``url`` with its userinfo password and any ``password=`` query item masked.

    Works on the raw text before anything parses it: the userinfo is everything between
    ``://`` and the LAST ``@``. URL parsers end the authority at the first '/', '?' or '#', so
    a password holding one (``redis://user:pa/ss@host``) would otherwise be read as a port or
    a path and printed. Masking up to the last '@' can only hide too much, never too little; a
    userinfo without a colon is masked whole (often a password put there by mistake).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    userinfo, at, tail = rest.rpartition("@")
    shown = ""
    if at:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***@" if colon else "***@"
    else:
        tail = rest
    query_masked = _QUERY_PASSWORD.sub(r"\1***", tail)
    return f"{scheme}://{shown}{query_masked}"


class ProvenanceIndex(AsyncLifecycle):
    """digest -> first verified position, one Redis string key per digest.

    Layout: ``{prefix}:prov:{digest hex}`` -> ``"{partition}:{offset}:{topic}"``, written with
    ``SET NX PX ttl`` (first position wins: a re-published copy can never move an entry; one
    command per key, so it works unchanged on Redis Cluster). Set ``ttl_ms`` to the topics'
    retention.ms. A batch of entries is one pipelined round trip.
    """

    def __init__(self, client: RedisClient, *, ttl_ms: int, prefix: str = "signed-bus") -> None:
        if ttl_ms <= 0:
            raise ConfigurationError("ttl_ms must be positive")
        self._client = client
        self._owns_client = False
        self._ttl_ms = ttl_ms
        self._prefix = prefix
        self._where = f"client={type(client).__name__}"

    @classmethod
    def from_url(
        cls, url: str, *, ttl_ms: int, prefix: str = "signed-bus", **kwargs: Any
    ) -> ProvenanceIndex:
        """Build an index on a client it creates (and closes in :meth:`stop`).

        The URL's password never reaches a message or the repr: the userinfo (everything
        between ``://`` and the last ``@`` of the raw text) is masked before anything parses
        it, and a client error is reported by its type name only.
        """
        where = f"url={_redact_url(url)!r}"
        failure = None
        try:
            client = aioredis.Redis.from_url(url, **kwargs)
        except Exception as exc:
            failure = type(exc).__name__
        if failure is not None:  # raised outside the handler: no __context__ quoting the URL
            raise ConfigurationError(
                f"bad Redis URL or option for the provenance index ({where}): {failure}"
            )
        index = cls(client, ttl_ms=ttl_ms, prefix=prefix)
        index._owns_client = True
        index._where = where
        return index

    def __repr__(self) -> str:
        return f"ProvenanceIndex({self._where}, prefix={self._prefix!r}, ttl_ms={self._ttl_ms})"

    def _unavailable(self, operation: str, failure: str) -> ProvenanceIndexUnavailable:
        # Raised outside the except block by the callers: no __context__ with the client's text.
        return ProvenanceIndexUnavailable(
            f"provenance index {operation} failed ({self._where}): {failure}"
        )

    def key(self, digest: bytes) -> str:
        return f"{self._prefix}:prov:{digest.hex()}"

    async def record(self, entries: Iterable[tuple[bytes, Position]]) -> int:
        """Index ``(digest, position)`` pairs; returns how many digests were new."""
        batch = list(entries)
        if not batch:
            return 0
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for digest, pos in batch:
                    pipe.set(
                        self.key(digest),
                        f"{pos.partition}:{pos.offset}:{pos.topic}",
                        nx=True,
                        px=self._ttl_ms,
                    )
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            failure = type(exc).__name__
        else:
            return sum(1 for reply in replies if reply)
        raise self._unavailable("write", failure)

    async def lookup(self, digest: bytes) -> Position | None:
        """The indexed position of ``digest``, or None if it was never indexed, expired, or its
        entry is not a position (logged: the link then reads as not indexed instead of stopping
        the walk)."""
        failure = None
        try:
            raw = await self._client.get(self.key(digest))
        except (RedisError, OSError) as exc:
            failure = type(exc).__name__
        if failure is not None:
            raise self._unavailable("lookup", failure)
        if raw is None:
            return None
        return _parse_entry(raw)

    async def forget(self, digest: bytes) -> bool:
        """Drop one entry (an operator repairing the index); True if it existed."""
        try:
            return bool(await self._client.delete(self.key(digest)))
        except (RedisError, OSError) as exc:
            failure = type(exc).__name__
        raise self._unavailable("delete", failure)

    async def start(self) -> None:
        """Nothing to open (the client connects lazily); here for the usual lifecycle."""

    async def stop(self) -> None:
        """Close the client if this index created it; idempotent."""
        if self._owns_client:
            self._owns_client = False
            await self._client.aclose()


@dataclass(frozen=True, slots=True)
class FetchedRecord:
    """The parts of a Kafka record the trace needs."""

    position: Position
    key: bytes | None
    value: bytes | None  # None for a tombstone (a record without a value)
    timestamp: int
    timestamp_type: int


class RecordFetcher(AsyncLifecycle):
    """Reads single records by position: assign + seek, no consumer group, read_committed.

    Pass a built AIOKafkaConsumer (created with ``group_id=None``, ``enable_auto_commit=False``
    and ``isolation_level="read_committed"``, else ConfigurationError; not closed by us) or
    ``bootstrap_servers``.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer | None = None,
        *,
        bootstrap_servers: str | None = None,
        timeout_s: float = 10.0,
        **consumer_options: Any,
    ) -> None:
        if (consumer is None) == (bootstrap_servers is None):
            raise ConfigurationError("pass either a consumer or bootstrap_servers")
        if consumer is not None:
            # A record of an aborted transaction must never become a link of a trace.
            require_read_committed(consumer)
        self._owns_consumer = consumer is None
        self._consumer = consumer or AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            **consumer_options,
        )
        self._timeout_s = timeout_s
        self._started = False
        self._known: dict[str, set[int]] = {}

    async def start(self) -> None:
        if self._owns_consumer and not self._started:
            await self._consumer.start()
        self._started = True

    async def stop(self) -> None:
        if self._owns_consumer and self._started:
            await self._consumer.stop()
        self._started = False

    async def fetch(self, position: Position) -> FetchedRecord | None:
        """The record at ``position``, or None if the log does not (or no longer) hold it.

        None covers: unknown topic or partition, an offset outside [log start, last stable
        offset), and an offset that holds no readable record (an aborted transaction's output,
        a transaction marker, a compacted-away record, or a record the Kafka client cannot
        decode).
        """
        try:
            return await asyncio.wait_for(self._fetch(position), self._timeout_s)
        except (TimeoutError, KafkaError):
            return None

    async def _fetch(self, position: Position) -> FetchedRecord | None:
        partitions = await self._partitions(position.topic)
        if position.partition not in partitions:
            return None
        tp = TopicPartition(position.topic, position.partition)
        self._consumer.assign([tp])
        begin = (await self._consumer.beginning_offsets([tp]))[tp]
        end = (await self._consumer.end_offsets([tp]))[tp]
        if not begin <= position.offset < end:
            return None
        self._consumer.seek(tp, position.offset)
        while True:
            batch = await fetch_records(self._consumer, tp, timeout_ms=1000, max_records=1)
            if any(s.offset <= position.offset <= s.last_offset for s in batch.skipped):
                return None
            for record in batch.records.get(tp, ()):
                if record.offset != position.offset:
                    return None
                return FetchedRecord(
                    position=position,
                    key=record.key,
                    value=record.value,
                    timestamp=record.timestamp,
                    timestamp_type=record.timestamp_type,
                )
            if await self._consumer.position(tp) > position.offset:
                return None

    async def _partitions(self, topic: str) -> set[int]:
        known = self._known.get(topic)
        if known is not None:
            return known
        partitions = await partitions_of(self._consumer, topic)
        self._known[topic] = partitions
        return partitions


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition numbers of ``topic`` (empty if it does not exist), for a group-less
    consumer; leaves the consumer assigned to the topic's partition 0.

    ``topics()`` asks the broker without creating anything (assigning an unknown topic would
    auto-create it on brokers that allow that). A consumer's own metadata only covers assigned
    topics, so partition 0, which every topic has, is assigned and probed to load the list.
    """
    if topic not in await consumer.topics():
        return set()
    probe = TopicPartition(topic, 0)
    consumer.assign([probe])
    await consumer.end_offsets([probe])
    return set(consumer.partitions_for_topic(topic) or ())


class PositionLookup(Protocol):
    """Where an envelope digest was stored (:class:`ProvenanceIndex` is the Redis one)."""

    async def lookup(self, digest: bytes) -> Position | None: ...


class RecordSource(Protocol):
    """Reads the record at a position (:class:`RecordFetcher` is the Kafka one)."""

    async def fetch(self, position: Position) -> FetchedRecord | None: ...


LinkStatus = Literal["ok", "not_indexed", "not_found", "digest_mismatch", "invalid"]

_STATUS_TEXT: dict[str, str] = {
    "ok": "verified",
    "not_indexed": "MISSING: digest not in the provenance index (never indexed or expired)",
    "not_found": "MISSING: no readable record at the indexed position",
    "digest_mismatch": "TAMPERED: the record's bytes do not hash to the parent digest",
    "invalid": "INVALID: the record does not verify",
}


@dataclass(frozen=True, slots=True)
class TraceLink:
    """One envelope on the walk back, and what was found about it."""

    depth: int
    digest: bytes
    status: LinkStatus
    position: Position | None = None
    message: VerifiedMessage | None = None
    reason: str | None = None  # the VerificationError reason code when status == "invalid"
    detail: str | None = None
    child: bytes | None = None  # the digest of the envelope that named this one as a parent

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """One line for a terminal. Record text (issuer, model, topic, the failure's detail) is
        escaped: any key holder can sign a model name holding CR or ANSI sequences that would
        otherwise rewrite the report."""
        where = printable(str(self.position)) if self.position else "(no position)"
        head = f"{'  ' * self.depth}#{self.depth} {where} digest={self.digest.hex()[:16]}"
        if self.message is not None:
            msg = self.message
            created = iso_ms(msg.created_at)
            head += (
                f" issuer={printable(msg.issuer)} model={printable(msg.model)} created_at={created}"
            )
            if not msg.parents:
                head += " [origin]"
        if self.ok:
            return f"{head}  OK"
        text = _STATUS_TEXT[self.status]
        if self.reason:
            text += f" ({printable(self.reason)})"
        if self.detail:
            text += f": {printable(self.detail)}"
        return f"{head}  {text}"


@dataclass(slots=True)
class TraceReport:
    """The links of one trace, in walk order (the starting envelope first)."""

    links: list[TraceLink] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.links) and all(link.ok for link in self.links)

    @property
    def broken(self) -> list[TraceLink]:
        return [link for link in self.links if not link.ok]

    @property
    def origins(self) -> list[TraceLink]:
        """Verified links without parents: the model outputs the chain started from."""
        return [
            link
            for link in self.links
            if link.ok and link.message is not None and not link.message.parents
        ]

    def format(self) -> str:
        lines = [link.describe() for link in self.links]
        if self.ok:
            lines.append(f"chain verified: {len(self.links)} link(s), every signature valid")
        else:
            first = self.broken[0]
            lines.append(
                f"chain BROKEN at depth {first.depth} ({first.status}); "
                f"{len(self.broken)} bad link(s) of {len(self.links)}"
            )
        return "\n".join(lines)


class Tracer:
    """Walks parents from one envelope back to the model output(s) it came from.

    ``verifier`` must be in audit mode: records on the chain are older than any sensible
    max_age, and tracing must not touch the replay guard.
    """

    def __init__(
        self,
        *,
        index: PositionLookup,
        verifier: Verifier,
        fetcher: RecordSource,
        max_links: int = 1000,
    ) -> None:
        if not verifier.audit:
            raise ConfigurationError("the tracer needs a Verifier built with audit=True")
        self._index = index
        self._verifier = verifier
        self._fetcher = fetcher
        self._max_links = max_links

    async def trace_position(self, position: Position) -> TraceReport:
        """Trace from the record at ``position`` (read back from Kafka)."""
        record = await self._fetcher.fetch(position)
        if record is None or record.value is None:
            detail = None if record is None else "a tombstone (no value) at that position"
            return TraceReport(
                [
                    TraceLink(
                        depth=0, digest=b"", status="not_found", position=position, detail=detail
                    )
                ]
            )
        return await self._walk(
            record.value, topic=position.topic, key=record.key, position=position
        )

    async def trace_value(
        self,
        value: bytes,
        *,
        topic: str,
        key: bytes | None = None,
        position: Position | None = None,
    ) -> TraceReport:
        """Trace from envelope bytes (for example a file), signed for ``topic`` and ``key``."""
        return await self._walk(value, topic=topic, key=key, position=position)

    async def _walk(
        self, value: bytes, *, topic: str, key: bytes | None, position: Position | None
    ) -> TraceReport:
        report = TraceReport()
        digest = hashlib.sha256(value).digest()
        first = self._verify(0, digest, value, topic, key, position, child=None)
        report.links.append(first)
        queue: deque[TraceLink] = deque([first])
        seen = {digest}
        while queue:
            link = queue.popleft()
            if not link.ok or link.message is None:
                continue
            for parent in link.message.parents:
                if parent in seen:
                    continue
                seen.add(parent)
                if len(report.links) >= self._max_links:
                    return report
                found = await self._follow(link.depth + 1, parent, child=link.digest)
                report.links.append(found)
                queue.append(found)
        return report

    async def _follow(self, depth: int, digest: bytes, *, child: bytes) -> TraceLink:
        position = await self._index.lookup(digest)
        if position is None:
            return TraceLink(depth=depth, digest=digest, status="not_indexed", child=child)
        record = await self._fetcher.fetch(position)
        if record is None:
            return TraceLink(
                depth=depth, digest=digest, status="not_found", position=position, child=child
            )
        if record.value is None:
            # A tombstone cannot hash to any envelope digest: the index points at a record
            # that is not the one it was written for.
            return TraceLink(
                depth=depth,
                digest=digest,
                status="digest_mismatch",
                position=position,
                detail="the record is a tombstone (no value)",
                child=child,
            )
        actual = hashlib.sha256(record.value).digest()
        if actual != digest:
            return TraceLink(
                depth=depth,
                digest=digest,
                status="digest_mismatch",
                position=position,
                detail=f"record hashes to {actual.hex()[:16]}",
                child=child,
            )
        return self._verify(
            depth, digest, record.value, position.topic, record.key, position, child=child
        )

    def _verify(
        self,
        depth: int,
        digest: bytes,
        value: bytes,
        topic: str,
        key: bytes | None,
        position: Position | None,
        *,
        child: bytes | None,
    ) -> TraceLink:
        try:
            message = self._verifier.verify(value, topic=topic, key=key)
        except VerificationError as exc:
            return TraceLink(
                depth=depth,
                digest=digest,
                status="invalid",
                position=position,
                reason=exc.reason,
                detail=exc.message or None,
                child=child,
            )
        return TraceLink(
            depth=depth,
            digest=digest,
            status="ok",
            position=position,
            message=message,
            child=child,
        )


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC, or ``"out of range"`` for an instant a
    datetime cannot hold (a validly signed created_at can be anything up to 2**63 - 1, and
    audit mode does not judge freshness)."""
    try:
        stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    except (OverflowError, ValueError, OSError):
        return "out of range"
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
