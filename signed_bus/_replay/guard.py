"""The async replay guard: claims nonces in the shared Redis nonce set.

The layout, the claim script and the packing live in :mod:`signed_bus._replay.layout`, the
settings and every step of the conversation with Redis in :mod:`signed_bus._replay.core` (no
I/O, shared with the sync guard); this module sends those steps on ``redis.asyncio``.
docs/OPERATIONS.md, "Redis replay guard", says how to run and size it.

One script call claims a whole batch in one round trip on a single node; on Redis Cluster the
batch is split into one script call per hash slot (one per bucket in the batch, usually one or
two), run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from signed_bus._freshness import Freshness
from signed_bus._lifecycle import AsyncLifecycle, stopped_error
from signed_bus._replay.core import GuardCore
from signed_bus._replay.layout import Claim, ClaimRow, ClaimVerdict
from signed_bus._replay.rebuild import log_own_rebuild, read_records, rebuild_steps
from signed_bus._replay.steps import (
    Claims,
    Command,
    LoadScript,
    Pipeline,
    Request,
    RunScript,
    StartRebuild,
    Steps,
)
from signed_bus.errors import ConfigurationError

# Claim, ClaimRow and ClaimVerdict are the guard's API types (defined in layout.py).
__all__ = ["Claim", "ClaimRow", "ClaimVerdict", "RedisReplayGuard"]

_log = logging.getLogger("signed_bus.replay")

_CLUSTER_CONCURRENCY: Final = 16

# Everything a Redis client can raise for an unreachable or failing server.
_REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

T = TypeVar("T")


class RedisReplayGuard(GuardCore["aioredis.Redis | RedisCluster"], AsyncLifecycle):
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
    ``SHARD_CHECK_EVERY_S`` (30 s) the guard also checks in the background that a full
    bucket's hash is still a listpack and logs a WARNING (once) when the observed rate outgrew
    the shards (the sync guard checks after a claim).

    Lifecycle: :meth:`start` (or the first claim) loads the script and checks the layout;
    :meth:`stop` closes a client the guard created and is idempotent; ``async with`` does both.
    A stopped guard does not start again: :meth:`start` and :meth:`claim` then raise
    :class:`~signed_bus.errors.Stopped` (not ReplayGuardUnavailable, which means Redis failed).
    """

    @classmethod
    def _check_client(cls, client: object) -> bool:
        if not isinstance(client, aioredis.Redis | RedisCluster):
            raise ConfigurationError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster"
            )
        return isinstance(client, RedisCluster)

    @classmethod
    def _client_factory(cls, cluster: bool) -> Callable[..., aioredis.Redis | RedisCluster]:
        return RedisCluster.from_url if cluster else aioredis.Redis.from_url

    def _setup(self) -> None:
        self._scripts: dict[str, AsyncScript] = {}
        self._start_lock = asyncio.Lock()
        self._check_task: asyncio.Task[None] | None = None
        self._rebuilding: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check the layout record, load the script and read the epoch; a guard with
        ``rebuild_from`` that finds no state for its prefix starts rebuilding (claims hold until
        it finished). Claims start the guard if needed.

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
            await self._run(self._start_steps())
            self._started = True

    async def stop(self) -> None:
        """Close the client if the guard created it. Idempotent; the guard cannot start again."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._check_task, self._rebuilding):
            if task is not None:
                task.cancel()
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
        verdicts = await self._run(self._claim_steps(claims, freshness))
        if self._check_task is None or self._check_task.done():
            check = self._shard_check(claims)
            if check is not None:  # in the background: the batch does not wait for it
                self._check_task = asyncio.create_task(self._drive(check))
        return verdicts

    async def _run(self, steps: Steps[T]) -> T:
        """Drive ``steps``; a Redis failure becomes ReplayGuardUnavailable."""
        if self._stopped:
            raise stopped_error("the replay guard")
        try:
            return await self._drive(steps)
        except _REDIS_FAILURES as exc:
            raise self._unavailable(exc) from exc

    async def _drive(self, steps: Steps[T]) -> T:
        """The async driver of :mod:`signed_bus._replay.steps`."""
        reply: Any = None
        error: Exception | None = None
        while True:
            try:
                request = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                reply, error = await self._send(request), None
            except Exception as exc:  # thrown into the steps, which re-raise what they keep
                reply, error = None, exc

    async def _send(self, request: Request) -> Any:
        client = self._client
        if isinstance(request, Claims):
            return await self._claims(request)
        if isinstance(request, RunScript):
            script = self._scripts.get(request.source)
            if script is None:
                script = self._scripts[request.source] = client.register_script(request.source)
            return await script(keys=list(request.keys), args=list(request.args))
        if isinstance(request, Command):
            return await client.execute_command(*request.args)
        if isinstance(request, Pipeline):
            return await self._pipeline(request)
        if isinstance(request, LoadScript):
            return await client.script_load(request.source)
        if isinstance(request, StartRebuild):
            self._start_rebuild()
            return None
        return await read_records(request)

    async def _claims(self, request: Claims) -> list[Any]:
        units = self._claim_units(request)
        if len(units) == 1:
            return await self._drive(units[0])
        # a node's pool fails rather than waits when it runs out of connections: at most
        # _CLUSTER_CONCURRENCY calls at a time
        limit = asyncio.Semaphore(_CLUSTER_CONCURRENCY)

        async def bounded(unit: Steps[list[Any]]) -> list[Any]:
            async with limit:
                return await self._drive(unit)

        parts = await asyncio.gather(*(bounded(unit) for unit in units))
        return [reply for part in parts for reply in part]

    async def _pipeline(self, request: Pipeline) -> list[Any]:
        client = self._client
        if request.node_key is not None and isinstance(client, RedisCluster):
            return await _on_node(client, request)
        pipe = client.pipeline() if self._cluster else client.pipeline(transaction=False)
        for command in request.commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    def _start_rebuild(self) -> None:
        """Start the guard's own rebuild (``rebuild_from``) unless one runs."""
        if self.rebuild_from is None or self._stopped:
            return
        if self._rebuilding is not None and not self._rebuilding.done():
            return
        self._rebuilding = asyncio.create_task(self._rebuild(), name="replay guard rebuild")

    async def _rebuild(self) -> None:
        assert self.rebuild_from is not None
        try:
            report = await self._run(rebuild_steps(self, self.rebuild_from))
        except Exception as exc:  # logged; the next held claim starts another attempt
            log_own_rebuild(self.prefix, None, exc)
        else:
            log_own_rebuild(self.prefix, report, None)
            self._epochs.rebuilt()


async def _on_node(client: RedisCluster, request: Pipeline) -> list[Any]:
    """The commands on one connection to the master of ``request.node_key``'s slot; after a
    failure (a failover moved the slot) the client learns the new topology first."""
    assert request.node_key is not None
    node = client.get_node_from_key(request.node_key.decode())
    if node is None:
        raise RedisClusterException(f"no node serves {request.node_key!r}")
    commands = [PipelineCommand(i, *args) for i, args in enumerate(request.commands)]
    try:
        await node.execute_pipeline(commands)
    except _REDIS_FAILURES:
        with contextlib.suppress(*_REDIS_FAILURES):
            await client.nodes_manager.initialize()
        raise
    results = [command.result for command in commands]
    if any(isinstance(r, Exception) and not isinstance(r, NoScriptError) for r in results):
        with contextlib.suppress(*_REDIS_FAILURES):
            await client.nodes_manager.initialize()
    return results
