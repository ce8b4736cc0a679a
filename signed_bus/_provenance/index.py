"""The provenance index: envelope digest -> the first verified position, in Redis.

The reference auditor maintains it and :class:`~signed_bus._provenance.trace.Tracer` looks
parents up in it: docs/PIPELINES.md, "Provenance and `signed-bus trace`".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signed_bus._lifecycle import AsyncLifecycle, stopped_error
from signed_bus._provenance.trace import Position
from signed_bus._redis_url import RedisUrl
from signed_bus._text import printable
from signed_bus.errors import ConfigurationError, ProvenanceIndexUnavailable

__all__ = ["ProvenanceIndex"]

log = logging.getLogger("signed_bus.provenance")

RedisClient = aioredis.Redis | aioredis.RedisCluster


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


class ProvenanceIndex(AsyncLifecycle):
    """digest -> first verified position, one Redis string key per digest.

    Layout: ``{prefix}:prov:{digest hex}`` -> ``"{partition}:{offset}:{topic}"``, written with
    ``SET NX PX ttl`` (first position wins: a re-published copy can never move an entry; one
    command per key, so it works unchanged on Redis Cluster). Set ``ttl_ms`` to the topics'
    retention.ms. A batch of entries is one pipelined round trip.

    Lifecycle: the client connects lazily, so the index works without :meth:`start`;
    :meth:`stop` closes a client the index created and is idempotent; ``async with`` does both.
    After :meth:`stop`, :meth:`start` and every operation raise
    :class:`~signed_bus.errors.Stopped` (not ProvenanceIndexUnavailable, which means Redis failed).
    """

    def __init__(self, client: RedisClient, *, ttl_ms: int, prefix: str = "signed-bus") -> None:
        if ttl_ms <= 0:
            raise ConfigurationError("ttl_ms must be positive")
        self._client = client
        self._owns_client = False
        self._ttl_ms = ttl_ms
        self._prefix = prefix
        self._where = f"client={type(client).__name__}"
        self._stopped = False

    @classmethod
    def from_url(
        cls, url: str, *, ttl_ms: int, prefix: str = "signed-bus", **kwargs: Any
    ) -> ProvenanceIndex:
        """Build an index on a client it creates (and closes in :meth:`stop`).

        ``redis://`` or ``rediss://`` only, checked like the replay guard's (signed_bus._redis_url):
        the URL's password never reaches a message or the repr, a userinfo a parser would read
        differently (an unencoded '/', '?' or '#') is refused, and a client error is reported by
        its type name only.
        """
        checked = RedisUrl(url)
        client = checked.client(aioredis.Redis.from_url, "the provenance index", **kwargs)
        index = cls(client, ttl_ms=ttl_ms, prefix=prefix)
        index._owns_client = True
        index._where = f"url={checked.redacted!r}"
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
        self._check_usable()
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
        self._check_usable()
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
        self._check_usable()
        try:
            return bool(await self._client.delete(self.key(digest)))
        except (RedisError, OSError) as exc:
            failure = type(exc).__name__
        raise self._unavailable("delete", failure)

    def _check_usable(self) -> None:
        if self._stopped:
            raise stopped_error("the provenance index")

    async def start(self) -> None:
        """Nothing to open (the client connects lazily); Stopped after :meth:`stop`."""
        self._check_usable()

    async def stop(self) -> None:
        """Close the client if this index created it; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._owns_client:
            await self._client.aclose()
