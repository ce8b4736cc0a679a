"""The synchronous replay guard: the same nonce set, layout and claim script as the async
:class:`~signed_bus._replay.guard.RedisReplayGuard`, run on redis-py's blocking client.

For consumers that are not asyncio programs (confluent-kafka workers, threads, process pools).
Everything but the I/O is shared with the async guard (:mod:`signed_bus._replay.layout` packs
the claims and decodes the verdicts, :mod:`signed_bus._replay.settings` checks the settings),
so a sync and an async consumer sharing a prefix claim in one nonce set: a replay across them
is dropped, a fan-out is delivered in both. docs/OPERATIONS.md, "Redis replay guard".
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from signed_bus._freshness import Freshness
from signed_bus._lifecycle import SyncLifecycle, stopped_error
from signed_bus._redis_url import RedisUrl
from signed_bus._replay.epoch import (
    READY,
    REBUILDING,
    RECOVER_SCRIPT,
    SLOTS,
    EpochState,
    epoch_key,
    is_lost,
    lost_error,
    marker_key,
    merge_verdicts,
    new_epoch,
    parse_epoch_record,
    quarantine_split,
)
from signed_bus._replay.layout import (
    CLAIM_SCRIPT,
    ClaimPlanner,
    ClaimRow,
    ClaimVerdict,
    ScriptCall,
    check_layout_record,
    decode_verdicts,
    layout_descriptor,
    layout_key,
)
from signed_bus._replay.settings import (
    check_guard_settings,
    check_no_window_options,
    check_state_loss_settings,
    shards_to_adopt,
    warn_if_evicting,
)
from signed_bus.errors import ConfigurationError, ReplayGuardUnavailable, ReplayStateLost

__all__ = ["SyncRedisReplayGuard"]

_log = logging.getLogger("signed_bus.replay")

# Everything a Redis client can raise for an unreachable or failing server.
_REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)


class SyncRedisReplayGuard(SyncLifecycle):
    """Claims nonces in the Redis nonce set every consumer group shares, without asyncio.

    ``client`` is a built ``redis.Redis`` or ``redis.cluster.RedisCluster`` (not closed by
    :meth:`stop`; :meth:`from_url` builds one the guard owns). The settings, their meaning and
    the layout record are those of the async guard: a sync and an async guard on one prefix
    must agree on ``bucket_ms`` and ``shards`` (:meth:`start` refuses a mismatch).

    Thread-safe: redis-py's client takes a pooled connection per call, so worker threads may
    share one guard. ``start()``/``stop()`` or ``with``; a stopped guard raises
    :class:`~signed_bus.errors.Stopped`.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        prefix: str = "signed-bus",
        bucket_ms: int = 1_000,
        shards: int | None = None,
        peak_rate: float | None = None,
        max_claims_per_call: int = 4_096,
        check_layout: bool = True,
        on_state_loss: str = "quarantine",
    ) -> None:
        shards = check_guard_settings(
            prefix=prefix,
            bucket_ms=bucket_ms,
            shards=shards,
            peak_rate=peak_rate,
            max_claims_per_call=max_claims_per_call,
        )
        self.peak_rate = peak_rate
        self.on_state_loss = check_state_loss_settings(on_state_loss)
        if not isinstance(client, redis.Redis | RedisCluster):
            raise ConfigurationError("client must be a redis.Redis or redis.cluster.RedisCluster")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self.prefix = prefix
        self.bucket_ms = bucket_ms
        self.shards = shards
        self.max_claims_per_call = max_claims_per_call
        self.check_layout = check_layout
        self._script: Script = client.register_script(CLAIM_SCRIPT)
        self._recover: Script = client.register_script(RECOVER_SCRIPT)
        self._epoch: EpochState | None = None
        self._planner = ClaimPlanner(
            prefix=prefix,
            bucket_ms=bucket_ms,
            shards=shards,
            max_claims_per_call=max_claims_per_call,
            slot_of=key_slot if self._cluster else None,
        )
        self._owns_client = False
        self._where = f"client={type(client).__name__}"
        self._url: RedisUrl | None = None
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = "signed-bus",
        bucket_ms: int = 1_000,
        shards: int | None = None,
        peak_rate: float | None = None,
        max_claims_per_call: int = 4_096,
        check_layout: bool = True,
        on_state_loss: str = "quarantine",
        **client_options: Any,
    ) -> SyncRedisReplayGuard:
        """A guard owning its client, from ``redis://`` or ``rediss://``: as
        :meth:`RedisReplayGuard.from_url <signed_bus.RedisReplayGuard.from_url>`."""
        check_no_window_options(client_options)
        checked = RedisUrl(url)
        client_options.setdefault("socket_timeout", 2.0)
        client_options.setdefault("socket_connect_timeout", 2.0)
        client: redis.Redis | RedisCluster
        if cluster:
            client = checked.client(RedisCluster.from_url, "the replay guard", **client_options)
        else:
            client = checked.client(redis.Redis.from_url, "the replay guard", **client_options)
        guard = cls(
            client,
            prefix=prefix,
            bucket_ms=bucket_ms,
            shards=shards,
            peak_rate=peak_rate,
            max_claims_per_call=max_claims_per_call,
            check_layout=check_layout,
            on_state_loss=on_state_loss,
        )
        guard._owns_client = True
        guard._where = f"url={checked.redacted!r}"
        guard._url = checked
        return guard

    def retention_ms(self, freshness: Freshness) -> int:
        """How long a nonce claimed with ``freshness`` is kept after its last claim."""
        return freshness.retention_ms + self.bucket_ms

    @property
    def layout(self) -> str:
        """The layout descriptor every consumer sharing the prefix must agree on."""
        return layout_descriptor(self.bucket_ms, self.shards)

    def __repr__(self) -> str:
        return (
            f"SyncRedisReplayGuard({self._where}, prefix={self.prefix!r}, "
            f"cluster={self._cluster}, layout={self.layout!r})"
        )

    def start(self) -> None:
        """Load the script and check the layout record (claims start the guard if needed)."""
        with self._lock:
            if self._stopped:
                raise stopped_error("the replay guard")
            if self._started:
                return
            try:
                if self.check_layout:
                    key = layout_key(self.prefix)
                    self._client.set(key, self.layout.encode(), nx=True)
                    stored = self._client.get(key)
                    shards = shards_to_adopt(
                        self.prefix,
                        stored,
                        bucket_ms=self.bucket_ms,
                        shards=self.shards,
                        peak_rate=self.peak_rate,
                    )
                    self.shards = self._planner.shards = shards
                    check_layout_record(self.prefix, stored, self.layout)
                self._client.script_load(CLAIM_SCRIPT)
                with contextlib.suppress(ReplayStateLost):  # claims hold until it is ready
                    self._load_epoch("")
                if not self._cluster:
                    with contextlib.suppress(RedisError):  # INFO may be forbidden by an ACL
                        warn_if_evicting(self._client.info("memory"))
            except _REDIS_FAILURES as exc:
                raise self._unavailable(exc) from exc
            self._started = True

    def stop(self) -> None:
        """Close the client if the guard created it. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._owns_client:
            try:
                self._client.close()
            except _REDIS_FAILURES as exc:
                _log.debug("closing the replay guard's Redis client failed: %s", type(exc))

    def claim(self, claims: Sequence[ClaimRow], *, freshness: Freshness) -> list[ClaimVerdict]:
        """Claim a batch of nonces; verdicts in the order of ``claims`` (see
        :meth:`RedisReplayGuard.claim <signed_bus.RedisReplayGuard.claim>`). Raises
        :class:`ReplayGuardUnavailable` when Redis fails; retry the same batch."""
        if not isinstance(freshness, Freshness):
            raise ConfigurationError("freshness must be the claiming verifier's Freshness")
        if self._stopped:
            raise stopped_error("the replay guard")
        if not claims:
            return []
        if not self._started:
            self.start()
        try:
            epoch = self._epoch
            if epoch is None or not epoch.ready:
                epoch = self._load_epoch(None)
            send, held = quarantine_split(claims, epoch, freshness.future_skew_ms)
            rows = claims if not held else [claims[i] for i in send]
            calls = self._planner.plan(rows) if rows else []
            ttl = self.retention_ms(freshness)
            replies = self._execute(calls, ttl, epoch.epoch) if calls else []
            if any(is_lost(reply) for reply in replies):
                self._recover_from_loss(epoch)
        except _REDIS_FAILURES as exc:
            raise self._unavailable(exc) from exc
        verdicts = decode_verdicts(calls, replies, len(rows)) if rows else []
        if verdicts is None:
            raise ReplayGuardUnavailable("Redis returned a malformed replay claim reply")
        return merge_verdicts(len(claims), send, verdicts) if held else verdicts

    def _load_epoch(self, known: str | None) -> EpochState:
        """Read the epoch record (see the async guard's twin)."""
        key = epoch_key(self.prefix)
        state = parse_epoch_record(self._client.hgetall(key))
        if state is None and known is not None:
            mine = new_epoch()
            state = parse_epoch_record(self._recover(keys=[key], args=["", mine, 0, REBUILDING]))
            if state is not None and state.epoch == mine:
                state = self._restore(state, ready=True)
        if state is None or not state.ready:
            self._epoch = None
            raise lost_error(self.prefix, state)
        self._epoch = state
        return state

    def _recover_from_loss(self, known: EpochState) -> None:
        """Start a new epoch after a loss (see the async guard's twin); raises."""
        self._epoch = None
        mine = new_epoch()
        lost_at = int(time.time() * 1000)
        state = parse_epoch_record(
            self._recover(
                keys=[epoch_key(self.prefix)], args=[known.epoch, mine, lost_at, REBUILDING]
            )
        )
        if state is not None and state.epoch == mine:
            _log.error(
                "replay guard prefix %r: Redis lost its nonces; new epoch started (%s)",
                self.prefix,
                self.on_state_loss,
            )
            state = self._restore(state, ready=self.on_state_loss == "quarantine")
        raise lost_error(self.prefix, state)

    def _restore(self, state: EpochState, *, ready: bool) -> EpochState:
        if self.check_layout:
            self._client.set(layout_key(self.prefix), self.layout.encode(), nx=True)
        value = state.epoch.encode()
        if self._cluster:
            pipe = self._client.pipeline()
            for slot in range(SLOTS):
                pipe.set(marker_key(self.prefix, slot), value)
            pipe.execute()
        else:
            self._client.set(marker_key(self.prefix), value)
        if not ready:
            return state
        self._client.hset(epoch_key(self.prefix), "state", READY)
        return EpochState(state.epoch, state.lost_at, state.covered, ready=True)

    def _keys(self, call: ScriptCall) -> list[bytes]:
        keys = list(call.keys)
        keys.append(marker_key(self.prefix, key_slot(keys[0]) if self._cluster else None))
        return keys

    def _execute(self, calls: list[ScriptCall], ttl: int, epoch: str) -> list[Any]:
        if len(calls) == 1 or self._cluster:
            # redis-py refuses EVALSHA in cluster pipelines: one call per slot
            return [self._script(keys=self._keys(c), args=[ttl, c.blob, epoch]) for c in calls]
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in pending:
                keys = self._keys(calls[i])
                pipe.evalsha(self._script.sha, len(keys), *keys, ttl, calls[i].blob, epoch)
            results = pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError):
                    missing.append(i)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    replies[i] = result
            if not missing:
                return replies
            self._client.script_load(CLAIM_SCRIPT)
            pending = missing
        raise NoScriptError("the claim script is still missing after SCRIPT LOAD")

    def _unavailable(self, exc: BaseException) -> ReplayGuardUnavailable:
        detail = str(exc) if self._url is None else self._url.scrub(str(exc))
        return ReplayGuardUnavailable(
            f"Redis replay guard unavailable ({self._where}): {type(exc).__name__}: {detail}"
        )
