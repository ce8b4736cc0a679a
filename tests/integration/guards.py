"""The two replay guards behind one async face, so a guard test runs over both by taking a
``make`` parameter (``GUARDS``): the async :class:`~signed_bus.RedisReplayGuard` as it is, the
sync :class:`~signed_bus.confluent.SyncRedisReplayGuard` with its blocking calls run in a
thread. What the tests assert is the same for both."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

import pytest

from signed_bus._freshness import Freshness
from signed_bus._replay.layout import ClaimRow, ClaimVerdict
from signed_bus._replay.settings import Durability
from signed_bus._replay.sync_guard import SyncRedisReplayGuard
from tests.integration.bus import guard


class Guard(Protocol):
    """What the guard tests use of a guard."""

    @property
    def durable(self) -> Durability | None: ...

    @property
    def layout(self) -> str: ...

    async def claim(
        self, claims: Sequence[ClaimRow], *, freshness: Freshness
    ) -> list[ClaimVerdict]: ...

    async def __aenter__(self) -> Guard: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Make(Protocol):
    def __call__(self, redis_url: str, prefix: str, **kw: Any) -> Guard: ...


class _Sync:
    """A sync guard seen through the async face (each call in a worker thread)."""

    def __init__(self, inner: SyncRedisReplayGuard) -> None:
        self.inner = inner

    @property
    def durable(self) -> Durability | None:
        return self.inner.durable

    @property
    def layout(self) -> str:
        return self.inner.layout

    async def claim(
        self, claims: Sequence[ClaimRow], *, freshness: Freshness
    ) -> list[ClaimVerdict]:
        return await asyncio.to_thread(self.inner.claim, claims, freshness=freshness)

    async def __aenter__(self) -> _Sync:
        await asyncio.to_thread(self.inner.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.inner.stop)


def async_guard(redis_url: str, prefix: str, **kw: Any) -> Guard:
    return guard(redis_url, prefix, **kw)


def sync_guard(redis_url: str, prefix: str, **kw: Any) -> Guard:
    return _Sync(SyncRedisReplayGuard.from_url(redis_url, prefix=prefix, **kw))


GUARDS = [
    pytest.param(async_guard, id="async"),
    pytest.param(sync_guard, id="sync"),
]
