"""The async guard's side of the epoch record (:mod:`signed_bus._replay.epoch`): reading it,
starting an epoch after a loss, restoring the layout record and the markers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from redis.commands.core import AsyncScript
from redis.crc import key_slot

from signed_bus._replay.epoch import (
    READY,
    REBUILDING,
    RECOVER_SCRIPT,
    SLOTS,
    EpochState,
    epoch_key,
    lost_error,
    marker_key,
    new_epoch,
    parse_epoch_record,
)
from signed_bus._replay.layout import ClaimRow, layout_key

if TYPE_CHECKING:
    from signed_bus._replay.rebuild import Rebuild

__all__ = ["AsyncEpochs"]

_log = logging.getLogger("signed_bus.replay")


class AsyncEpochs:
    """The epoch a guard claims in, and its recovery after a loss, on ``redis.asyncio``.

    ``layout`` gives the layout record to restore (None: the guard does not check layouts);
    ``on_state_loss`` is ``quarantine`` (the new epoch is ready at once) or ``hold`` (it stays
    rebuilding until ``signed-bus guard rebuild`` marks it ready)."""

    __slots__ = (
        "_client",
        "_cluster",
        "_layout",
        "_rebuild",
        "_rebuilding",
        "_recover",
        "on_state_loss",
        "prefix",
        "state",
    )

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        cluster: bool,
        layout: Callable[[], str] | None,
        on_state_loss: str,
        rebuild: Rebuild | None = None,
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._layout = layout
        self._recover: AsyncScript = client.register_script(RECOVER_SCRIPT)
        self.prefix = prefix
        # a guard that rebuilds its own topics holds (never quarantines them) until it did
        self.on_state_loss = "hold" if rebuild is not None else on_state_loss
        self.state: EpochState | None = None
        self._rebuild = rebuild
        self._rebuilding: asyncio.Task[None] | None = None

    def wait_for_rebuild(self, rows: Sequence[ClaimRow], held: Sequence[int]) -> None:
        """ReplayStateLost (and a rebuild started) when a row the epoch quarantines is on a
        topic this guard rebuilds itself: it waits for the rebuild instead."""
        if self._rebuild is not None and any(rows[i][3] in self._rebuild.topics for i in held):
            self._start_rebuild()
            raise lost_error(self.prefix, self.state)

    def _start_rebuild(self) -> None:
        if self._rebuild is None or (self._rebuilding and not self._rebuilding.done()):
            return
        self._rebuilding = asyncio.create_task(self._run_rebuild(self._rebuild))

    async def _run_rebuild(self, rebuild: Rebuild) -> None:
        try:
            await rebuild()
        except Exception as exc:  # logged; the next held claim starts another attempt
            _log.warning(
                "replay guard prefix %r: rebuild from Kafka failed (%s): claims stay held",
                self.prefix,
                type(exc).__name__,
            )
        else:
            self.state = None  # read the epoch record again at the next claim

    def marker(self, first_key: bytes) -> bytes:
        """The marker a claim call naming ``first_key`` (and keys of its slot) checks."""
        return marker_key(self.prefix, key_slot(first_key) if self._cluster else None)

    async def current(self) -> EpochState:
        """The ready epoch to claim in (read when not known); ReplayStateLost while none is."""
        state = self.state
        if state is not None and state.ready:
            return state
        return await self.load(create=False)

    async def load(self, *, create: bool) -> EpochState:
        """Read the epoch record; with ``create``, start the prefix's first epoch when there is
        none (a new prefix, or an emptied Redis: docs/OPERATIONS.md). ReplayStateLost unless
        the epoch is ready."""
        key = epoch_key(self.prefix)
        state = parse_epoch_record(await self._client.hgetall(key))
        if state is None and create:
            state = await self.start_epoch("", 0)
            if state is not None:
                state = await self.restore(state, ready=True)
            else:
                state = parse_epoch_record(await self._client.hgetall(key))
        self.state = state
        if state is None or not state.ready:
            if state is not None:
                self._start_rebuild()
            raise lost_error(self.prefix, state)
        return state

    async def start_epoch(self, known: str, lost_at: int) -> EpochState | None:
        """Start a new epoch (state rebuilding) unless the record names another one than
        ``known`` (another guard recovered first); the new epoch, or None if it was not ours."""
        mine = new_epoch()
        reply = await self._recover(
            keys=[epoch_key(self.prefix)], args=[known, mine, lost_at, REBUILDING]
        )
        state = parse_epoch_record(reply)
        return state if state is not None and state.epoch == mine else None

    async def lost(self, known: EpochState) -> NoReturn:
        """A claim call found its marker missing or from another epoch: start a new epoch
        (unless another guard did), restore the layout record and the markers, and raise
        ReplayStateLost (the batch is held and retried)."""
        self.state = None
        state = await self.start_epoch(known.epoch, int(time.time() * 1000))
        if state is not None:
            _log.error(
                "replay guard prefix %r: Redis lost its nonces (a restart without persistence, "
                "a flush, an eviction or a failover); new epoch started; records created before "
                "the loss are %s",
                self.prefix,
                "held until a rebuild (signed-bus guard rebuild)"
                if self.on_state_loss == "hold"
                else "quarantined (dead-lettered as quarantined) unless a rebuild covers them",
            )
            state = await self.restore(state, ready=self.on_state_loss == "quarantine")
            if not state.ready:
                self._start_rebuild()
        raise lost_error(self.prefix, state)

    async def restore(self, state: EpochState, *, ready: bool) -> EpochState:
        """Write the layout record (if missing) and every marker of ``state``'s epoch, then
        mark the epoch ready (when ``ready``)."""
        if self._layout is not None:
            await self._client.set(layout_key(self.prefix), self._layout().encode(), nx=True)
        value = state.epoch.encode()
        if self._cluster:
            pipe = self._client.pipeline()
            for slot in range(SLOTS):
                pipe.set(marker_key(self.prefix, slot), value)
            await pipe.execute()
        else:
            await self._client.set(marker_key(self.prefix), value)
        if not ready:
            return state
        await self._client.hset(epoch_key(self.prefix), "state", READY)
        return EpochState(state.epoch, state.lost_at, state.covered, ready=True)
