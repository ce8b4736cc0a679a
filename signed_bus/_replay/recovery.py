"""A guard's side of the epoch record (:mod:`signed_bus._replay.epoch`) as steps without I/O
(:mod:`signed_bus._replay.steps`): reading it, starting an epoch after a loss (or on a prefix
with no state at all), restoring the layout record and the markers. Both guards run these."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from redis.crc import key_slot

from signed_bus._replay.epoch import (
    READY_SCRIPT,
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
from signed_bus._replay.steps import Command, Pipeline, RunScript, StartRebuild, Steps
from signed_bus.errors import ReplayStateLost

__all__ = ["Epochs"]

_log = logging.getLogger("signed_bus.replay")


class Epochs:
    """The epoch a guard claims in, and its recovery after a loss.

    ``layout`` gives the layout record to restore (None: the guard does not check layouts);
    ``on_state_loss`` is ``quarantine`` (the new epoch is ready at once) or ``hold`` (it stays
    rebuilding until a rebuild marks it ready); ``rebuilds`` the topics the guard rebuilds by
    itself (``rebuild_from``; None without), which then always holds."""

    __slots__ = (
        "_cluster",
        "_layout",
        "on_state_loss",
        "prefix",
        "rebuilds",
        "refuse_empty_prefix",
        "state",
    )

    def __init__(
        self,
        *,
        prefix: str,
        cluster: bool,
        layout: Callable[[], str] | None,
        on_state_loss: str,
        rebuilds: frozenset[str] | None = None,
        refuse_empty_prefix: bool = False,
    ) -> None:
        self._cluster = cluster
        self.refuse_empty_prefix = refuse_empty_prefix and rebuilds is None
        self._layout = layout
        self.prefix = prefix
        self.rebuilds = rebuilds
        # a guard that rebuilds its own topics holds (never quarantines them) until it did
        self.on_state_loss = "hold" if rebuilds is not None else on_state_loss
        self.state: EpochState | None = None

    def marker(self, first_key: bytes) -> bytes:
        """The marker a claim call naming ``first_key`` (and keys of its slot) checks."""
        return marker_key(self.prefix, key_slot(first_key) if self._cluster else None)

    def wait_for_rebuild(self, rows: Sequence[ClaimRow], held: Sequence[int]) -> Steps[None]:
        """ReplayStateLost (and a rebuild started) when a row the epoch quarantines is on a
        topic this guard rebuilds itself: it waits for the rebuild instead."""
        if self.rebuilds is not None and any(rows[i][3] in self.rebuilds for i in held):
            yield StartRebuild()
            raise lost_error(self.prefix, self.state)

    def rebuilt(self) -> None:
        """The guard's own rebuild finished: read the epoch record again at the next claim."""
        self.state = None

    def refresh(self) -> Steps[EpochState]:
        """Read the epoch record again before quarantining: a rebuild run elsewhere (the CLI,
        another guard's ``rebuild_from``) adds its topics to ``covered`` without this guard
        knowing. One round trip, only on the quarantine path."""
        self.state = None
        return (yield from self.load(create=False))

    def current(self) -> Steps[EpochState]:
        """The ready epoch to claim in (read when not known); ReplayStateLost while none is."""
        state = self.state
        if state is not None and state.ready:
            return state
        return (yield from self.load(create=False))

    def load(self, *, create: bool) -> Steps[EpochState]:
        """Read the epoch record; with ``create`` (a guard starting), start one when there is
        none: ready, for a guard that cannot rebuild (a new prefix, or an emptied Redis no
        guard can tell from one: a WARNING says so); rebuilding from Kafka, as after a loss, for
        a guard that can; none for a guard that refuses an empty prefix (ReplayStateLost names
        the rebuild to run). ReplayStateLost unless the epoch is ready."""
        key = epoch_key(self.prefix)
        state = parse_epoch_record((yield Command(("HGETALL", key))))
        if state is None and create and self.refuse_empty_prefix:
            self.state = None
            raise ReplayStateLost(
                f"replay guard prefix {self.prefix!r} has no replay state in Redis (a new "
                "prefix, or Redis lost it) and refuse_empty_prefix is set: run `signed-bus "
                "guard rebuild TOPIC...` for it, or start one guard without the flag"
            )
        if state is None and create:
            lost_at = int(time.time() * 1000) if self.rebuilds is not None else 0
            state = yield from self.start_epoch("", lost_at)
            if state is not None:
                self._warn_no_state()
                state = yield from self.restore(state, ready=self.rebuilds is None)
            else:  # another guard started it first
                state = parse_epoch_record((yield Command(("HGETALL", key))))
        self.state = state
        if state is None or not state.ready:
            if state is not None and self.rebuilds is not None:
                yield StartRebuild()
            raise lost_error(self.prefix, state)
        return state

    def _warn_no_state(self) -> None:
        if self.rebuilds is not None:
            _log.warning(
                "replay guard prefix %r: no replay state in Redis (a new prefix, or Redis lost "
                "it while no consumer ran): rebuilding %s from Kafka before the first claim",
                self.prefix,
                ", ".join(sorted(self.rebuilds)),
            )
            return
        _log.warning(
            "replay guard prefix %r: no replay state in Redis, started as a new prefix. If "
            "Redis lost it (a restart without persistence, a flush) while no consumer ran, "
            "copies of records created before now pass as new: run `signed-bus guard rebuild "
            "TOPIC...` before starting consumers, or give the guard rebuild_from",
            self.prefix,
        )

    def start_epoch(self, known: str, lost_at: int) -> Steps[EpochState | None]:
        """Start a new epoch (state rebuilding) unless the record names another one than
        ``known`` (another guard recovered first); the new epoch, or None if it was not ours."""
        mine = new_epoch()
        reply = yield RunScript(
            RECOVER_SCRIPT, (epoch_key(self.prefix),), (known, mine, lost_at, REBUILDING)
        )
        state = parse_epoch_record(reply)
        return state if state is not None and state.epoch == mine else None

    def lost(self, known: EpochState) -> Steps[NoReturn]:
        """A claim call found its marker missing or from another epoch: start a new epoch
        (unless another guard did), restore the layout record and the markers, and raise
        ReplayStateLost (the batch is held and retried)."""
        self.state = None
        state = yield from self.start_epoch(known.epoch, int(time.time() * 1000))
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
            state = yield from self.restore(state, ready=self.on_state_loss == "quarantine")
            if not state.ready and self.rebuilds is not None:
                yield StartRebuild()
        raise lost_error(self.prefix, state)

    def restore(self, state: EpochState, *, ready: bool) -> Steps[EpochState]:
        """Write the layout record (if missing) and every marker of ``state``'s epoch, then
        mark the epoch ready (when ``ready``)."""
        if self._layout is not None:
            yield Command(("SET", layout_key(self.prefix), self._layout().encode(), "NX"))
        value = state.epoch.encode()
        if self._cluster:
            markers = tuple(("SET", marker_key(self.prefix, s), value) for s in range(SLOTS))
            for result in (yield Pipeline(markers)):
                if isinstance(result, BaseException):
                    raise result
        else:
            yield Command(("SET", marker_key(self.prefix), value))
        if not ready:
            return state
        reply = yield RunScript(READY_SCRIPT, (epoch_key(self.prefix),), (state.epoch,))
        current = parse_epoch_record(reply)
        if current is None or current.epoch != state.epoch:
            # replaced meanwhile: not ready under this epoch; the next claim reads the record
            return EpochState(state.epoch, state.lost_at, state.covered, ready=False)
        return current
