"""The lifecycle every service-owning class shares: ``start()``/``stop()`` plus ``async with``
(``with`` for the sync classes; enter starts, exit stops; stop is idempotent in each class).
After ``stop()`` an object refuses ``start()`` and use with :class:`~signed_bus.errors.Stopped`
(:func:`stopped_error` builds it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

from signed_bus.errors import Stopped

__all__ = ["AsyncLifecycle", "SyncLifecycle", "stopped_error"]


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
