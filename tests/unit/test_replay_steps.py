"""The replay guards' steps without I/O (signed_bus/_replay/steps.py, core.py, recovery.py):
what each asks of Redis and what it decides on the replies, driven here by scripted replies.
Both guards run these same steps; the integration tests run them on real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.exceptions import NoPermissionError, NoScriptError

from signed_bus._freshness import Freshness
from signed_bus._keys import Keyring, generate_hmac_key
from signed_bus._replay.epoch import (
    READY,
    READY_SCRIPT,
    REBUILDING,
    RECOVER_SCRIPT,
    EpochState,
)
from signed_bus._replay.layout import ClaimRow
from signed_bus._replay.rebuild import RebuildSource
from signed_bus._replay.settings import Durability
from signed_bus._replay.steps import (
    Claims,
    Command,
    LoadScript,
    Pipeline,
    Request,
    RunScript,
    StartRebuild,
    drive,
    pipelined_claims,
)
from signed_bus._replay.sync_guard import SyncRedisReplayGuard
from signed_bus._verifier import Verifier
from signed_bus.errors import ReplayGuardUnavailable, ReplayStateLost

WINDOW = Freshness()


def _rows(count: int) -> list[ClaimRow]:
    now = int(time.time() * 1000)
    return [("iss", i.to_bytes(16, "big"), now, "t", 0, i) for i in range(count)]


def _record(epoch: str, *, lost_at: int = 0, state: str = READY) -> dict[bytes, bytes]:
    return {b"epoch": epoch.encode(), b"lost_at": str(lost_at).encode(), b"covered": b"",
            b"state": state.encode()}  # fmt: skip


class Script:
    """Answers requests from a function, recording each."""

    def __init__(self, answer: Callable[[Request], Any]) -> None:
        self.answer = answer
        self.sent: list[Request] = []

    def __call__(self, request: Request) -> Any:
        self.sent.append(request)
        return self.answer(request)


def _guard(**kw: Any) -> SyncRedisReplayGuard:
    return SyncRedisReplayGuard(redis.Redis(), prefix="p", **kw)  # no I/O until a command


def test_a_pipeline_reloads_a_lost_script_and_resends_only_the_calls_it_missed() -> None:
    attempts: list[int] = []

    def answer(request: Request) -> Any:
        if isinstance(request, LoadScript):
            return "sha"
        assert isinstance(request, Pipeline)
        attempts.append(len(request.commands))
        if len(attempts) == 1:
            return [b"0", NoScriptError("NOSCRIPT"), b"1"]
        return [b"2"]

    keyed = [([b"k%d" % i, b"m"], b"blob") for i in range(3)]
    script = Script(answer)
    assert drive(pipelined_claims("sha", keyed, 10, "e", None), script) == [b"0", b"2", b"1"]
    assert attempts == [3, 1]
    assert isinstance(script.sent[1], LoadScript)


def test_a_durable_pipeline_sends_wait_last_and_refuses_a_short_answer() -> None:
    durable = Durability(2, 500)
    sent: list[Pipeline] = []

    def answer(request: Request) -> Any:
        assert isinstance(request, Pipeline)
        sent.append(request)
        return [b"0", 1]  # the claim, then WAIT: one replica of the two asked for

    keyed = [([b"k", b"m"], b"blob")]
    with pytest.raises(ReplayGuardUnavailable, match="not durable: 1 of 2"):
        drive(pipelined_claims("sha", keyed, 10, "e", durable), answer)
    assert sent[0].commands[-1] == ("WAIT", 2, 500)
    assert (durable.waits, durable.short) == (1, 1)


def test_a_lost_marker_starts_one_new_epoch_restores_the_layout_and_raises() -> None:
    guard = _guard()
    guard._epochs.state = EpochState("old", 0, frozenset(), ready=True)

    def answer(request: Request) -> Any:
        if isinstance(request, Claims):
            return [b"L"]
        if isinstance(request, RunScript) and request.source == READY_SCRIPT:
            return _record(request.args[0], lost_at=1, state=READY)
        if isinstance(request, RunScript):
            assert request.source == RECOVER_SCRIPT and request.args[0] == "old"
            return _record(request.args[1], lost_at=request.args[2], state=REBUILDING)
        return b"OK"

    script = Script(answer)
    with pytest.raises(ReplayStateLost, match="a new epoch started"):
        drive(guard._claim_steps(_rows(3), WINDOW), script)
    commands = [r.args for r in script.sent if isinstance(r, Command)]
    assert commands[0][:2] == ("SET", b"p:layout") and commands[0][-1] == "NX"
    assert commands[1][:2] == ("SET", b"p:mark")
    scripts = [r for r in script.sent if isinstance(r, RunScript)]
    new_epoch = scripts[0].args[1]
    # quarantine: ready at once, and only the epoch it started (conditional on the record)
    assert scripts[1].source == READY_SCRIPT and scripts[1].args == (new_epoch,)
    assert guard._epochs.state is None  # the retried batch reads the new record


def test_an_epoch_replaced_while_its_markers_were_restored_is_not_marked_ready() -> None:
    """Another guard saw a loss and started a rebuilding epoch between this guard's new epoch
    and its ready mark: the mark must not land on the other epoch (it would release guards
    holding for its rebuild), and this guard does not take its own epoch for ready."""
    guard = _guard()
    guard._epochs.state = EpochState("old", 0, frozenset(), ready=True)
    theirs = _record("theirs", lost_at=5, state=REBUILDING)

    def answer(request: Request) -> Any:
        if isinstance(request, Claims):
            return [b"L"]
        if isinstance(request, RunScript) and request.source == READY_SCRIPT:
            return theirs  # the script found another epoch: it changed nothing
        if isinstance(request, RunScript):
            return _record(request.args[1], lost_at=request.args[2], state=REBUILDING)
        if isinstance(request, Command) and request.args[0] == "HGETALL":
            return theirs
        return b"OK"

    script = Script(answer)
    with pytest.raises(ReplayStateLost):
        drive(guard._claim_steps(_rows(3), WINDOW), script)
    assert not any(isinstance(r, Command) and r.args[0] == "HSET" for r in script.sent)
    script.sent.clear()
    with pytest.raises(ReplayStateLost, match="rebuild"):  # holds: their epoch is rebuilding
        drive(guard._claim_steps(_rows(3), WINDOW), script)
    state = guard._epochs.state
    assert state is not None and state.epoch == "theirs" and not state.ready


def test_an_empty_prefix_with_rebuild_from_is_a_loss_rebuilt_before_the_first_claim() -> None:
    source = RebuildSource(
        "kafka:9092", ("t",), Verifier(Keyring([generate_hmac_key("k", ["i"])]), audit=True)
    )
    guard = _guard(rebuild_from=source)

    stored: dict[bytes, bytes] = {}  # no epoch record: nothing in Redis for the prefix

    def answer(request: Request) -> Any:
        if isinstance(request, Command) and request.args[0] in ("HGETALL", "GET"):
            return dict(stored) if request.args[0] == "HGETALL" else guard.layout.encode()
        if isinstance(request, RunScript):
            assert request.args[0] == "" and request.args[2] > 0  # lost_at: now
            stored.update(_record(request.args[1], lost_at=request.args[2], state=REBUILDING))
            return stored
        if isinstance(request, Command) and request.args[0] == "INFO":
            raise NoPermissionError("INFO forbidden")  # tolerated: the eviction check is skipped
        return b"OK"

    script = Script(answer)
    drive(guard._start_steps(), script)  # starts; claims hold until the rebuild marked it ready
    assert any(isinstance(r, StartRebuild) for r in script.sent)
    assert not any(isinstance(r, Command) and r.args[0] == "HSET" for r in script.sent)
    state = guard._epochs.state
    assert state is not None and not state.ready and state.lost_at > 0
    script.sent.clear()
    with pytest.raises(ReplayStateLost, match="rebuild is running"):
        drive(guard._claim_steps(_rows(1), WINDOW), script)
    assert any(isinstance(r, StartRebuild) for r in script.sent)  # (the guard runs one at most)
    assert not any(isinstance(r, Claims) for r in script.sent)
