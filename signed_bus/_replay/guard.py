"""The async replay guard: claims nonces in the shared Redis nonce set.

The layout, the claim script and the packing live in :mod:`signed_bus._replay.layout` (no I/O);
this module runs them on ``redis.asyncio``. docs/OPERATIONS.md, "Redis replay guard", says how
to run and size it.

One script call claims a whole batch in one round trip on a single node; on Redis Cluster the
batch is split into one script call per hash slot (one per bucket in the batch, usually one or
two), run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from signed_bus._freshness import Freshness
from signed_bus._lifecycle import AsyncLifecycle, stopped_error
from signed_bus._redis_url import RedisUrl
from signed_bus._replay.epoch import is_lost, merge_verdicts, quarantine_split
from signed_bus._replay.layout import (
    CLAIM_SCRIPT,
    Claim,
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
from signed_bus._replay.rebuild import RebuildSource, rebuilder
from signed_bus._replay.recovery import AsyncEpochs
from signed_bus._replay.settings import (
    Durability,
    check_durable_settings,
    check_guard_settings,
    check_no_window_options,
    check_state_loss_settings,
    shards_to_adopt,
    warn_if_evicting,
)
from signed_bus._replay.sizing import (
    LISTPACK_ENTRIES,
    compact_rate,
    recommended_shards,
)
from signed_bus.errors import ConfigurationError, ReplayGuardUnavailable, ReplayStateLost

# Claim, ClaimRow and ClaimVerdict are the guard's API types (defined in layout.py).
__all__ = ["Claim", "ClaimRow", "ClaimVerdict", "RedisReplayGuard"]

_log = logging.getLogger("signed_bus.replay")

_CLUSTER_CONCURRENCY: Final = 16
#: Seconds between two checks that the hashes of a full bucket are still compact listpacks.
_SHARD_CHECK_EVERY_S: Final = 30.0

# Everything a Redis client can raise for an unreachable or failing server.
_REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


class RedisReplayGuard(AsyncLifecycle):
    """Claims the nonces of verified envelopes in a Redis nonce set shared by all groups.

    ``client`` is a built ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``;
    it is not closed by :meth:`stop` (use :meth:`from_url` to let the guard own one).

    Every consumer sharing ``prefix`` must use the same ``bucket_ms`` and ``shards`` (they decide
    where a nonce lives); :meth:`start` records them in ``{prefix}:layout`` and refuses a
    mismatch. Give either ``shards`` or ``peak_rate`` (the planned peak of distinct envelopes
    per second; shards = :func:`recommended_shards` of it), not both; neither means 16 shards
    (~1,000/s). Too few shards costs memory (a hash that outgrows Redis's
    ``hash-max-listpack-entries`` becomes a hashtable, ~3x the bytes per nonce); too many costs
    a little per key at low rates; neither affects correctness. A guard sized by ``peak_rate``
    adopts the shards already recorded for the prefix (the first guard decides; a WARNING says
    when they are fewer than its rate needs), while explicit ``shards`` must match. Every
    ``_SHARD_CHECK_EVERY_S`` the guard also checks in the background that a full bucket's hash
    is still a listpack and logs a WARNING (once) when the observed rate outgrew the shards.

    Lifecycle: :meth:`start` (or the first claim) loads the script and checks the layout;
    :meth:`stop` closes a client the guard created and is idempotent; ``async with`` does both.
    A stopped guard does not start again: :meth:`start` and :meth:`claim` then raise
    :class:`~signed_bus.errors.Stopped` (not ReplayGuardUnavailable, which means Redis failed).
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
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
        if not isinstance(client, aioredis.Redis | RedisCluster):
            raise ConfigurationError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster"
            )
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self.prefix = prefix
        self.bucket_ms = bucket_ms
        self.shards = shards
        self.max_claims_per_call = max_claims_per_call
        self.check_layout = check_layout
        self._script: AsyncScript = client.register_script(CLAIM_SCRIPT)
        self._epochs = AsyncEpochs(
            client,
            prefix=prefix,
            cluster=self._cluster,
            layout=(lambda: self.layout) if check_layout else None,
            on_state_loss=self.on_state_loss,
            rebuild=rebuilder(self, rebuild_from),
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
        self._start_lock = asyncio.Lock()
        # The first check waits one period: a just-started guard has no full bucket to look at
        # yet, and a check at the first claim costs a second connection and a round trip in
        # every short-lived consumer.
        self._checked_at = time.monotonic()
        self._check_task: asyncio.Task[None] | None = None
        self._warned_hashtable = False

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
        **client_options: Any,
    ) -> RedisReplayGuard:
        """Build a guard that owns its client, from ``redis://`` or ``rediss://`` (TLS).

        Credentials go in the URL (``rediss://user:password@host:6380/0``). ``cluster=True``
        makes a ``RedisCluster`` from the same URL (a seed node). ``client_options`` go to the
        client (``socket_timeout``, ``retry``, ``ssl_ca_certs`` ...); the defaults are short
        timeouts (2 s) so an outage is reported, not waited out.
        """
        check_no_window_options(client_options)
        checked = RedisUrl(url)
        client_options.setdefault("socket_timeout", 2.0)
        client_options.setdefault("socket_connect_timeout", 2.0)
        client: aioredis.Redis | RedisCluster
        if cluster:
            client = checked.client(RedisCluster.from_url, "the replay guard", **client_options)
        else:
            client = checked.client(aioredis.Redis.from_url, "the replay guard", **client_options)
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
            f"RedisReplayGuard({self._where}, prefix={self.prefix!r}, cluster={self._cluster}, "
            f"layout={self.layout!r})"
        )

    async def start(self) -> None:
        """Load the script and check the layout record. Claims start the guard if needed.

        Raises :class:`~signed_bus.errors.Stopped` after :meth:`stop`."""
        if self._stopped:
            raise stopped_error("the replay guard")
        if self._started:
            return
        async with self._start_lock:
            if self._stopped:  # stopped while waiting for another start
                raise stopped_error("the replay guard")
            if self._started:
                return
            try:
                if self.check_layout:
                    await self._check_layout()
                # On a cluster this loads on every primary; a node that lacks it later (a
                # failover) answers NOSCRIPT and the script object loads it again.
                await self._client.script_load(CLAIM_SCRIPT)
                with contextlib.suppress(ReplayStateLost):  # claims hold until it is ready
                    await self._epochs.load(create=True)
                if not self._cluster:
                    await self._warn_if_evicting()
            except _REDIS_FAILURES as exc:
                raise self._unavailable(exc) from exc
            self._started = True

    async def _check_layout(self) -> None:
        key = layout_key(self.prefix)
        # SET NX then GET (not SET NX GET, which needs Redis 7): the record never changes once
        # written, so the two steps cannot interleave badly.
        await self._client.set(key, self.layout.encode(), nx=True)
        stored = await self._client.get(key)
        shards = shards_to_adopt(
            self.prefix,
            stored,
            bucket_ms=self.bucket_ms,
            shards=self.shards,
            peak_rate=self.peak_rate,
        )
        self.shards = self._planner.shards = shards
        check_layout_record(self.prefix, stored, self.layout)

    async def _warn_if_evicting(self) -> None:
        # An evicted bucket forgets its nonces: replays inside the window would pass.
        try:
            info = await self._client.info("memory")
        except RedisError:  # INFO may be forbidden by an ACL; the docs say what to set
            return
        warn_if_evicting(info)

    async def stop(self) -> None:
        """Close the client if the guard created it. Idempotent; the guard cannot start again."""
        if self._stopped:
            return
        self._stopped = True
        if self._check_task is not None:
            self._check_task.cancel()
        if self._owns_client:
            try:
                await self._client.aclose()
            except _REDIS_FAILURES as exc:  # closing a dead connection is not worth raising
                _log.debug("closing the replay guard's Redis client failed: %s", type(exc))

    async def claim(
        self, claims: Sequence[ClaimRow], *, freshness: Freshness
    ) -> list[ClaimVerdict]:
        """Claim a batch of nonces; verdicts come back in the order of ``claims``.

        ``claims`` are :class:`Claim` values or plain tuples in the same field order
        (:data:`ClaimRow`: a consumer's hot path saves building an object per record).
        ``freshness`` is the window the claiming verifier accepts records by: every bucket a
        claim touches is kept for at least :meth:`retention_ms` of it.

        One Redis round trip for the batch on a single node: one script call, or one per
        ``max_claims_per_call`` claims sent as one pipeline. On a cluster, one script call per
        hash slot the batch touches (a slot per time bucket), run concurrently.
        Raises :class:`ReplayGuardUnavailable` when Redis fails; claims are idempotent, so
        retry the same batch (claims already stored come back as SAME_POSITION). Raises
        :class:`~signed_bus.errors.Stopped` after :meth:`stop`.
        """
        if not isinstance(freshness, Freshness):
            raise ConfigurationError("freshness must be the claiming verifier's Freshness")
        if self._stopped:
            raise stopped_error("the replay guard")
        if not claims:
            return []
        if not self._started:
            await self.start()
        try:
            epoch = await self._epochs.current()
            send, held = quarantine_split(claims, epoch, freshness.future_skew_ms)
            if held:
                self._epochs.wait_for_rebuild(claims, held)
            rows = claims if not held else [claims[i] for i in send]
            calls = self._planner.plan(rows) if rows else []
            ttl = self.retention_ms(freshness)
            replies = await self._execute(calls, ttl, epoch.epoch) if calls else []
            if any(is_lost(reply) for reply in replies):
                await self._epochs.lost(epoch)
        except _REDIS_FAILURES as exc:
            raise self._unavailable(exc) from exc
        verdicts = decode_verdicts(calls, replies, len(rows)) if rows else []
        if verdicts is None:
            raise ReplayGuardUnavailable("Redis returned a malformed replay claim reply")
        if held:
            verdicts = merge_verdicts(len(claims), send, verdicts)
        now = time.monotonic()
        if now - self._checked_at >= _SHARD_CHECK_EVERY_S and not self._warned_hashtable:
            self._checked_at = now
            self._check_shards(claims[0][2] // self.bucket_ms - 1)
        return verdicts

    def _check_shards(self, bucket: int) -> None:
        """In the background, check that one hash of ``bucket`` (a full one) is a listpack."""
        if self._check_task is not None and not self._check_task.done():
            return
        shard = int(self._checked_at) % self.shards
        key = bucket_key(self.prefix, bucket, shard)
        self._check_task = asyncio.create_task(self._check_hash(key))

    async def _check_hash(self, key: bytes) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.object("encoding", key)
            pipe.hlen(key)
            encoding, entries = await pipe.execute()
        except _REDIS_FAILURES as exc:  # OBJECT may be forbidden by an ACL: no check then
            _log.debug("replay guard shard check failed: %s", type(exc).__name__)
            return
        if encoding not in (b"hashtable", "hashtable"):
            return
        self._warned_hashtable = True
        rate = int(entries) * self.shards * 1000 / self.bucket_ms
        _log.warning(
            "replay guard hash %s holds %d nonces, more than the compact encoding's limit "
            "(hash-max-listpack-entries, %d by default): about %.0f envelopes/s reach prefix %r, "
            "more than its %d shards suit (%.0f/s), so each nonce takes about 3x the memory. "
            "Size a new prefix with peak_rate=%.0f (or shards=%d)",
            key.decode(),
            int(entries),
            LISTPACK_ENTRIES,
            rate,
            self.prefix,
            self.shards,
            compact_rate(self.shards, bucket_ms=self.bucket_ms),
            rate,
            recommended_shards(rate, bucket_ms=self.bucket_ms),
        )

    def _keys(self, call: ScriptCall) -> list[bytes]:
        """The call's bucket keys, then the marker of their slot."""
        keys = list(call.keys)
        keys.append(self._epochs.marker(keys[0]))
        return keys

    async def _execute(self, calls: list[ScriptCall], ttl: int, epoch: str) -> list[Any]:
        """Run the script calls: one EVALSHA, or one pipeline (per node on a cluster); with
        durable claims, WAIT in the same pipeline (after each call on a cluster)."""
        if len(calls) == 1 and not (self.durable and not self._cluster):
            return [await self._run(calls[0], ttl, epoch)]
        if self._cluster:
            # redis-py refuses EVALSHA in cluster pipelines: one call per slot, concurrently,
            # at most _CLUSTER_CONCURRENCY at a time (a node's pool fails rather than waits
            # when it runs out of connections).
            limit = asyncio.Semaphore(_CLUSTER_CONCURRENCY)

            async def bounded(call: ScriptCall) -> Any:
                async with limit:
                    return await self._run(call, ttl, epoch)

            return list(await asyncio.gather(*(bounded(call) for call in calls)))
        # A batch over max_claims_per_call (or a durable claim): one pipeline, one round trip.
        keyed = [(self._keys(call), call.blob) for call in calls]
        return await _pipelined(self._client, self._script.sha, keyed, [ttl, epoch], self.durable)

    async def _run(self, call: ScriptCall, ttl: int, epoch: str) -> Any:
        # the script object loads the script again when Redis answers NOSCRIPT
        keys = self._keys(call)
        if self.durable and self._cluster:
            assert isinstance(self._client, RedisCluster)
            args = [ttl, call.blob, epoch]
            return await _durable_on_node(self._client, self._script.sha, keys, args, self.durable)
        return await self._script(keys=keys, args=[ttl, call.blob, epoch])

    def _unavailable(self, exc: BaseException) -> ReplayGuardUnavailable:
        detail = str(exc) if self._url is None else self._url.scrub(str(exc))
        return ReplayGuardUnavailable(
            f"Redis replay guard unavailable ({self._where}): {type(exc).__name__}: {detail}"
        )


async def _pipelined(
    client: Any,  # a redis.asyncio.Redis (never a cluster: it pipelines no EVALSHA)
    sha: str,
    keyed: list[tuple[list[bytes], bytes]],
    args: list[Any],
    durable: Durability | None,
) -> list[Any]:
    """Run the script once per (keys, blob) in one pipeline on a single node, with WAIT after
    the calls when claims are durable; loads the script again once if Redis lost it."""
    ttl, epoch = args
    replies: list[Any] = [None] * len(keyed)
    pending = list(range(len(keyed)))
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        for i in pending:
            keys, blob = keyed[i]
            pipe.evalsha(sha, len(keys), *keys, ttl, blob, epoch)
        if durable:
            pipe.execute_command("WAIT", *durable.wait_args)
        results = await pipe.execute(raise_on_error=False)
        if durable:
            durable.check(results.pop())
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
        await client.script_load(CLAIM_SCRIPT)  # flushed, or a node that never had it
        pending = missing
    raise NoScriptError("the claim script is still missing after SCRIPT LOAD")


async def _durable_on_node(
    client: RedisCluster, sha: str, keys: list[bytes], args: list[Any], durable: Durability
) -> Any:
    """EVALSHA then WAIT on one connection to the slot's master, in one round trip: WAIT
    counts the replicas that hold the writes of its own connection. redis-py's cluster pipeline
    takes no EVALSHA, so this sends the two commands through the node's own pipeline."""
    from redis.asyncio.cluster import PipelineCommand

    node = client.get_node_from_key(keys[0].decode())
    if node is None:
        raise RedisClusterException(f"no node serves {keys[0]!r}")
    try:
        for _ in range(2):
            script = PipelineCommand(0, "EVALSHA", sha, len(keys), *keys, *args)
            wait = PipelineCommand(1, "WAIT", *durable.wait_args)
            await node.execute_pipeline([script, wait])
            if isinstance(script.result, NoScriptError):
                await client.script_load(CLAIM_SCRIPT)
                continue
            if isinstance(script.result, BaseException):
                raise script.result
            durable.check(wait.result)
            return script.result
        raise NoScriptError("the claim script is still missing after SCRIPT LOAD")
    except _REDIS_FAILURES:
        # a failover moved the slot: learn the new topology before the retry
        with contextlib.suppress(*_REDIS_FAILURES):
            await client.nodes_manager.initialize()
        raise
