"""The lifecycle every service-owning class shares: ``start()``/``stop()`` plus ``async with``
(``with`` for the sync classes; enter starts, exit stops; stop is idempotent in each class).
After ``stop()`` an object refuses ``start()`` and use with :class:`~signed_bus.errors.Stopped`
(:func:`stopped_error` builds it)."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, Self

from signed_bus.errors import Stopped

__all__ = ["AsyncLifecycle", "SyncLifecycle", "start_kafka_client", "stopped_error"]


class AsyncLifecycle(ABC):
    """``async with obj`` starts it and always stops it, whatever the block raised."""

    __slots__ = ()

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class SyncLifecycle(ABC):
    """The same without asyncio (the confluent-kafka front): ``with obj`` starts it and always
    stops it."""

    __slots__ = ()

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stopped_error(what: str) -> Stopped:
    """The error every long-lived object raises when started or used after ``stop()``."""
    return Stopped(f"{what} was stopped; it cannot be started again, make a new one")


async def start_kafka_client(client: Any) -> None:
    """``await client.start()`` for an aiokafka consumer, producer or admin client: the one way
    signed-bus starts one.

    If the start fails, the client is closed again before the error propagates (a client left
    open warns "Unclosed" when collected, and may keep a connection). Once started, ``stop()``
    may follow at once: a consumer without a group starts a coordinator task in ``start()``
    that has not run when ``start()`` returns; ``stop()`` cancels and awaits it, and a task
    cancelled before its first step raises CancelledError out of ``stop()`` (leaving the client
    open). One turn of the loop lets it reach its first wait, where a cancel ends it cleanly.
    """
    try:
        await client.start()
    except BaseException:
        close = getattr(client, "stop", None) or client.close  # the admin client has close()
        with contextlib.suppress(Exception):  # closing what never opened: the cause is raised
            await close()
        raise
    await asyncio.sleep(0)
