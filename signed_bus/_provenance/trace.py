"""Provenance tracing: :class:`Tracer` walks a chain of envelopes back to its origin.

From one envelope it looks each parent digest up in the index (:mod:`.index`), reads the record
at that position (:mod:`.fetcher`), checks that the bytes hash to the digest and verifies them in
audit mode; a link is reported where it breaks. docs/PIPELINES.md, "Provenance and
`signed-bus trace`", describes the walk and the statuses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

from signed_bus._text import printable
from signed_bus._verifier import VerifiedMessage, Verifier
from signed_bus.errors import ConfigurationError, VerificationError

__all__ = [
    "FetchedRecord",
    "LinkStatus",
    "Position",
    "PositionLookup",
    "RecordSource",
    "TraceLink",
    "TraceReport",
    "Tracer",
    "iso_ms",
]


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


@dataclass(frozen=True, slots=True)
class FetchedRecord:
    """The parts of a Kafka record the trace needs."""

    position: Position
    key: bytes | None
    value: bytes | None  # None for a tombstone (a record without a value)
    timestamp: int
    timestamp_type: int


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
    """The links of one trace, in walk order (the starting envelope first).

    ``truncated``: the walk stopped at the tracer's ``max_links`` while parents were left
    unchecked (``unchecked`` of them at least: the parents of links already walked; theirs are
    not known). A truncated report is never ``ok``: an unchecked parent may be missing or forged.
    """

    links: list[TraceLink] = field(default_factory=list)
    truncated: bool = False
    unchecked: int = 0
    max_links: int | None = None  # the limit the walk stopped at, when truncated

    @property
    def ok(self) -> bool:
        return bool(self.links) and not self.truncated and all(link.ok for link in self.links)

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
        if self.broken:
            first = self.broken[0]
            lines.append(
                f"chain BROKEN at depth {first.depth} ({first.status}); "
                f"{len(self.broken)} bad link(s) of {len(self.links)}"
            )
        if self.truncated:
            lines.append(
                f"walk STOPPED at the limit of {self.max_links} link(s): at least "
                f"{self.unchecked} parent(s) not checked; the chain is NOT verified"
            )
        return "\n".join(lines)


class Tracer:
    """Walks parents from one envelope back to the model output(s) it came from.

    ``verifier`` must be in audit mode: records on the chain are older than any sensible
    max_age, and tracing must not touch the replay guard. ``max_links`` bounds the walk (one
    index lookup and one Kafka read per link); a walk that reaches it with parents left is
    reported ``truncated``, never verified.
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
        if max_links < 1:
            raise ConfigurationError(f"max_links must be at least 1, not {max_links}")
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
                if len(report.links) >= self._max_links:
                    report.truncated = True
                    report.unchecked = _unchecked((link, *queue), seen)
                    report.max_links = self._max_links
                    return report
                seen.add(parent)
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


def _unchecked(links: tuple[TraceLink, ...], seen: set[bytes]) -> int:
    """How many parents the walked ``links`` name that the walk never looked at."""
    return len(
        {
            parent
            for link in links
            if link.ok and link.message is not None
            for parent in link.message.parents
            if parent not in seen
        }
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
