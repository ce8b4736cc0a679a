"""What both replay guards are, without I/O: their settings, their ``from_url``, and every step
of their conversation with Redis (:mod:`signed_bus._replay.steps`). The async
:class:`~signed_bus._replay.guard.RedisReplayGuard` and the sync
:class:`~signed_bus._replay.sync_guard.SyncRedisReplayGuard` add only the I/O that runs the
steps, so a setting, a loss rule or a claim decision cannot differ between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, Self, TypeVar

from redis.crc import key_slot
from redis.exceptions import RedisError

from signed_bus._freshness import Freshness
from signed_bus._redis_url import RedisUrl
from signed_bus._replay.epoch import is_lost, merge_verdicts, quarantine_split
from signed_bus._replay.layout import (
    CLAIM_SCRIPT,
    ClaimPlanner,
    ClaimRow,
    ClaimVerdict,
    ScriptCall,
    bucket_key,
    check_layout_record,
    decode_verdicts,
    layout_descriptor,
    layout_key,
)
from signed_bus._replay.rebuild import RebuildSource
from signed_bus._replay.recovery import Epochs
from signed_bus._replay.settings import (
    check_durable_settings,
    check_guard_settings,
    check_no_window_options,
    check_state_loss_settings,
    shards_to_adopt,
    warn_if_evicting,
    warn_outgrown_shards,
)
from signed_bus._replay.steps import (
    Claims,
    Command,
    LoadScript,
    Pipeline,
    RunScript,
    Steps,
    node_claim,
    pipelined_claims,
)
from signed_bus.errors import ConfigurationError, ReplayGuardUnavailable, ReplayStateLost

__all__ = ["SHARD_CHECK_EVERY_S", "GuardCore"]

_log = logging.getLogger("signed_bus.replay")

#: Seconds between two checks that the hashes of a full bucket are still compact listpacks.
SHARD_CHECK_EVERY_S = 30.0

C = TypeVar("C")

_CLAIM_SHA: Final = hashlib.sha1(CLAIM_SCRIPT.encode()).hexdigest()  # noqa: S324 (Redis's name)


class GuardCore(Generic[C]):
    """A replay guard's settings and steps; ``C`` is its Redis client type.

    ``client``: a built client of the guard's kind (single node or cluster), not closed by
    ``stop()``; ``from_url`` builds one the guard owns. ``prefix``, ``bucket_ms``, ``shards`` /
    ``peak_rate`` and ``max_claims_per_call`` place the nonces (every guard on a prefix must
    agree: ``check_layout``). ``on_state_loss``: ``quarantine`` or ``hold`` after Redis lost its
    nonces. ``durable_replicas`` / ``durable_timeout_ms``: a claim counts only once that many
    replicas hold it (WAIT in the same round trip). ``rebuild_from``: where the guard rebuilds
    its topics from Kafka by itself, after a loss and when it starts on a prefix with no state
    in Redis. ``refuse_empty_prefix``: without ``rebuild_from``, a guard that finds no state for
    its prefix does not start (ReplayStateLost; a consumer holds) until ``signed-bus guard
    rebuild`` or a guard without the flag wrote it. docs/OPERATIONS.md, "Redis replay guard"."""

    def __init__(
        self,
        client: C,
        *,
        prefix: str = "signed-bus",
        bucket_ms: int = 1_000,
        shards: int | None = None,
        peak_rate: float | None = None,
        max_claims_per_call: int = 4_096,
        check_layout: bool = True,
        on_state_loss: str = "quarantine",
        durable_replicas: int = 0,
        durable_timeout_ms: int = 1_000,
        rebuild_from: RebuildSource | None = None,
        refuse_empty_prefix: bool = False,
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
        self.durable = check_durable_settings(durable_replicas, durable_timeout_ms)
        if rebuild_from is not None and not isinstance(rebuild_from, RebuildSource):
            raise ConfigurationError("rebuild_from must be a RebuildSource")
        self.rebuild_from = rebuild_from
        self._cluster = self._check_client(client)
        self._client = client
        self.prefix = prefix
        self.bucket_ms = bucket_ms
        self.shards = shards
        self.max_claims_per_call = max_claims_per_call
        self.check_layout = check_layout
        self._epochs = Epochs(
            prefix=prefix,
            cluster=self._cluster,
            layout=(lambda: self.layout) if check_layout else None,
            on_state_loss=self.on_state_loss,
            rebuilds=None if rebuild_from is None else frozenset(rebuild_from.topics),
            refuse_empty_prefix=refuse_empty_prefix,
        )
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
        # The first shard check waits one period: a just-started guard has no full bucket to
        # look at yet, and a check at the first claim costs a second connection and a round
        # trip in every short-lived consumer.
        self._checked_at = time.monotonic()
        self._warned_hashtable = False
        self._setup()

    @classmethod
    def _check_client(cls, client: object) -> bool:
        """ConfigurationError unless ``client`` suits this guard; True for a cluster client."""
        raise NotImplementedError

    @classmethod
    def _client_factory(cls, cluster: bool) -> Callable[..., C]:
        """The redis-py ``from_url`` of this guard's single-node or cluster client."""
        raise NotImplementedError

    def _setup(self) -> None:
        """The guard's own I/O state (locks, background work), after the settings."""

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
        durable_replicas: int = 0,
        durable_timeout_ms: int = 1_000,
        rebuild_from: RebuildSource | None = None,
        refuse_empty_prefix: bool = False,
        **client_options: Any,
    ) -> Self:
        """Build a guard that owns its client, from ``redis://`` or ``rediss://`` (TLS).

        Credentials go in the URL (``rediss://user:password@host:6380/0``). ``cluster=True``
        makes a cluster client from the same URL (a seed node). ``client_options`` go to the
        client (``socket_timeout``, ``retry``, ``ssl_ca_certs`` ...); the defaults are short
        timeouts (2 s) so an outage is reported, not waited out.
        """
        check_no_window_options(client_options)
        checked = RedisUrl(url)
        client_options.setdefault("socket_timeout", 2.0)
        client_options.setdefault("socket_connect_timeout", 2.0)
        client = checked.client(cls._client_factory(cluster), "the replay guard", **client_options)
        guard = cls(
            client,
            prefix=prefix,
            bucket_ms=bucket_ms,
            shards=shards,
            peak_rate=peak_rate,
            max_claims_per_call=max_claims_per_call,
            check_layout=check_layout,
            on_state_loss=on_state_loss,
            durable_replicas=durable_replicas,
            durable_timeout_ms=durable_timeout_ms,
            rebuild_from=rebuild_from,
            refuse_empty_prefix=refuse_empty_prefix,
        )
        guard._owns_client = True
        guard._where = f"url={checked.redacted!r}"
        guard._url = checked
        return guard

    def retention_ms(self, freshness: Freshness) -> int:
        """How long a nonce claimed with ``freshness`` is kept after its last claim (the TTL a
        bucket gets from each claim into it): ``freshness.retention_ms`` + one bucket."""
        return freshness.retention_ms + self.bucket_ms

    @property
    def layout(self) -> str:
        """The layout descriptor every consumer sharing the prefix must agree on."""
        return layout_descriptor(self.bucket_ms, self.shards)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._where}, prefix={self.prefix!r}, "
            f"cluster={self._cluster}, layout={self.layout!r})"
        )

    def _unavailable(self, exc: BaseException) -> ReplayGuardUnavailable:
        detail = str(exc) if self._url is None else self._url.scrub(str(exc))
        return ReplayGuardUnavailable(
            f"Redis replay guard unavailable ({self._where}): {type(exc).__name__}: {detail}"
        )

    def _prepare_steps(self) -> Steps[None]:
        """Check the layout record (writing it for a new prefix) and load the claim script."""
        if self.check_layout:
            key = layout_key(self.prefix)
            # SET NX then GET (not SET NX GET, which needs Redis 7): the record never changes
            # once written, so the two steps cannot interleave badly.
            yield Command(("SET", key, self.layout.encode(), "NX"))
            stored = yield Command(("GET", key))
            shards = shards_to_adopt(
                self.prefix,
                stored,
                bucket_ms=self.bucket_ms,
                shards=self.shards,
                peak_rate=self.peak_rate,
            )
            self.shards = self._planner.shards = shards
            check_layout_record(self.prefix, stored, self.layout)
        # On a cluster this loads on every primary; a node that lacks it later (a failover)
        # answers NOSCRIPT and the claim loads it again.
        yield LoadScript(CLAIM_SCRIPT)

    def _start_steps(self) -> Steps[None]:
        """What ``start()`` does: prepare, read the epoch (starting one for a prefix with no
        state: a rebuild first when the guard has ``rebuild_from``), warn of eviction."""
        yield from self._prepare_steps()
        try:
            yield from self._epochs.load(create=True)
        except ReplayStateLost:  # claims hold until it is ready; a refused prefix does not start
            if self._epochs.refuse_empty_prefix and self._epochs.state is None:
                raise
        if not self._cluster:
            # an evicted bucket forgets its nonces: replays inside the window would pass.
            # INFO may be forbidden by an ACL; the docs say what to set
            with contextlib.suppress(RedisError):
                warn_if_evicting((yield Command(("INFO", "memory"))))

    def _claim_steps(
        self, claims: Sequence[ClaimRow], freshness: Freshness
    ) -> Steps[list[ClaimVerdict]]:
        """A claim of a batch (see ``claim()``): quarantine by the epoch, one script call per
        planned call, recovery when a call answers that Redis lost its state."""
        epoch = yield from self._epochs.current()
        send, held = quarantine_split(claims, epoch, freshness.future_skew_ms)
        if held:  # a rebuild another process ran may have covered them since: read it again
            epoch = yield from self._epochs.refresh()
            send, held = quarantine_split(claims, epoch, freshness.future_skew_ms)
        if held:
            yield from self._epochs.wait_for_rebuild(claims, held)
        rows = claims if not held else [claims[i] for i in send]
        calls = self._planner.plan(rows) if rows else []
        ttl = self.retention_ms(freshness)
        replies = (yield Claims(calls, ttl, epoch.epoch)) if calls else []
        if any(is_lost(reply) for reply in replies):
            yield from self._epochs.lost(epoch)
        verdicts = decode_verdicts(calls, replies, len(rows)) if rows else []
        if verdicts is None:
            raise ReplayGuardUnavailable("Redis returned a malformed replay claim reply")
        return merge_verdicts(len(claims), send, verdicts) if held else verdicts

    def _keys(self, call: ScriptCall) -> list[bytes]:
        """The call's bucket keys, then the marker of their slot."""
        keys = list(call.keys)
        keys.append(self._epochs.marker(keys[0]))
        return keys

    def _claim_units(self, request: Claims) -> list[Steps[list[Any]]]:
        """The claim calls as units a guard may run concurrently, each answering its calls'
        replies in order: on a single node one EVALSHA, or one pipeline (with WAIT when
        durable); on a cluster one per call (redis-py pipelines no EVALSHA there), a durable
        one with WAIT on the slot master's connection."""
        calls, ttl, epoch = request.calls, request.ttl, request.epoch
        if self._cluster:
            if self.durable:
                durable = self.durable
                return [
                    node_claim(_CLAIM_SHA, self._keys(c), c.blob, ttl, epoch, durable)
                    for c in calls
                ]
            return [self._one_call(call, ttl, epoch) for call in calls]
        if len(calls) == 1 and not self.durable:
            return [self._one_call(calls[0], ttl, epoch)]
        keyed = [(self._keys(call), call.blob) for call in calls]
        return [pipelined_claims(_CLAIM_SHA, keyed, ttl, epoch, self.durable)]

    def _one_call(self, call: ScriptCall, ttl: int, epoch: str) -> Steps[list[Any]]:
        reply = yield RunScript(CLAIM_SCRIPT, tuple(self._keys(call)), (ttl, call.blob, epoch))
        return [reply]

    def _shard_check(self, claims: Sequence[ClaimRow]) -> Steps[None] | None:
        """Every SHARD_CHECK_EVERY_S, until it warned once: the steps that check that one
        hash of the bucket before the batch's (a full one) is still a compact listpack, and
        warn when the rate outgrew the shards; None when no check is due."""
        now = time.monotonic()
        if self._warned_hashtable or now - self._checked_at < SHARD_CHECK_EVERY_S:
            return None
        self._checked_at = now
        bucket = claims[0][2] // self.bucket_ms - 1
        return self._check_hash(bucket_key(self.prefix, bucket, int(now) % self.shards))

    def _check_hash(self, key: bytes) -> Steps[None]:
        try:
            encoding, entries = yield Pipeline((("OBJECT", "ENCODING", key), ("HLEN", key)))
        except Exception as exc:  # a failing Redis: the claims will say so; no check then
            _log.debug("replay guard shard check failed: %s", type(exc).__name__)
            return
        if isinstance(encoding, Exception) or isinstance(entries, Exception):
            # OBJECT may be forbidden by an ACL: no check then
            _log.debug("replay guard shard check failed: %s", type(encoding).__name__)
            return
        if encoding not in (b"hashtable", "hashtable"):
            return
        self._warned_hashtable = True
        warn_outgrown_shards(key, int(entries), self.prefix, self.shards, self.bucket_ms)
