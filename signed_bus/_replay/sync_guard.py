"""The synchronous replay guard: the same nonce set, layout and claim script as the async
:class:`~signed_bus._replay.guard.RedisReplayGuard`, run on redis-py's blocking client.

For consumers that are not asyncio programs (confluent-kafka workers, threads, process pools).
Everything but the I/O is shared with the async guard (:mod:`signed_bus._replay.core` holds the
settings and the steps of every claim, recovery and rebuild, which this module sends with
blocking calls),
so a sync and an async consumer sharing a prefix claim in one nonce set: a replay across them
is dropped, a fan-out is delivered in both. docs/OPERATIONS.md, "Redis replay guard".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from signed_bus._freshness import Freshness
from signed_bus._lifecycle import SyncLifecycle, stopped_error
from signed_bus._replay.core import GuardCore
from signed_bus._replay.layout import ClaimRow, ClaimVerdict
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
    drive,
)
from signed_bus.errors import ConfigurationError

__all__ = ["SyncRedisReplayGuard"]

_log = logging.getLogger("signed_bus.replay")

#: How long ``stop()`` waits for the guard's own rebuild to end before closing the client (a
#: rebuild ends at its next request to Redis; a Kafka read under way runs to its end first).
_REBUILD_JOIN_S: Final = 5.0

# Everything a Redis client can raise for an unreachable or failing server.
_REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)

T = TypeVar("T")


class SyncRedisReplayGuard(GuardCore["redis.Redis | RedisCluster"], SyncLifecycle):
    """Claims nonces in the Redis nonce set every consumer group shares, without asyncio.

    ``client`` is a built ``redis.Redis`` or ``redis.cluster.RedisCluster`` (not closed by
    :meth:`stop`; :meth:`from_url` builds one the guard owns). The settings, their meaning and
    the layout record are those of the async guard: a sync and an async guard on one prefix
    must agree on ``bucket_ms`` and ``shards`` (:meth:`start` refuses a mismatch).

    Durable claims and ``rebuild_from`` work as on the async guard: its own rebuild runs in a
    background thread (reading Kafka with aiokafka in that thread's event loop) while claims
    hold. Thread-safe: redis-py's client takes a pooled connection per call, so worker threads
    may share one guard. ``start()``/``stop()`` or ``with``; a stopped guard raises
    :class:`~signed_bus.errors.Stopped`.
    """

    @classmethod
    def _check_client(cls, client: object) -> bool:
        if not isinstance(client, redis.Redis | RedisCluster):
            raise ConfigurationError("client must be a redis.Redis or redis.cluster.RedisCluster")
        return isinstance(client, RedisCluster)

    @classmethod
    def _client_factory(cls, cluster: bool) -> Callable[..., redis.Redis | RedisCluster]:
        return RedisCluster.from_url if cluster else redis.Redis.from_url

    def _setup(self) -> None:
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        self._rebuilding: threading.Thread | None = None
        self._rebuild_lock = threading.Lock()  # start() holds _lock when it starts a rebuild

    def start(self) -> None:
        """Check the layout record, load the script and read the epoch (as the async guard's
        ``start``). Claims start the guard if needed."""
        with self._lock:
            if self._stopped:
                raise stopped_error("the replay guard")
            if self._started:
                return
            self._run(self._start_steps())
            self._started = True

    def stop(self) -> None:
        """End the guard's own rebuild (at its next request; waits up to a few seconds for
        it) and close the client if the guard created it. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        with self._rebuild_lock:
            rebuilding = self._rebuilding
        if rebuilding is not None and rebuilding is not threading.current_thread():
            rebuilding.join(_REBUILD_JOIN_S)
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
        verdicts = self._run(self._claim_steps(claims, freshness))
        check = self._shard_check(claims)
        if check is not None:  # one more round trip every SHARD_CHECK_EVERY_S
            drive(check, self._send)
        return verdicts

    def _run(self, steps: Steps[T]) -> T:
        """Drive ``steps``; a Redis failure becomes ReplayGuardUnavailable."""
        if self._stopped:
            raise stopped_error("the replay guard")
        try:
            return drive(steps, self._send)
        except _REDIS_FAILURES as exc:
            raise self._unavailable(exc) from exc

    def _send(self, request: Request) -> Any:
        if self._stopped:  # a rebuild thread (or a claim) still running: no request reopens
            raise stopped_error("the replay guard")  # the client stop() closes
        client = self._client
        if isinstance(request, Claims):
            units = self._claim_units(request)
            return [reply for unit in units for reply in drive(unit, self._send)]
        if isinstance(request, RunScript):
            script = self._scripts.get(request.source)
            if script is None:
                script = self._scripts[request.source] = client.register_script(request.source)
            return script(keys=list(request.keys), args=list(request.args))
        if isinstance(request, Command):
            return client.execute_command(*request.args)  # type: ignore[no-untyped-call]
        if isinstance(request, Pipeline):
            return self._pipeline(request)
        if isinstance(request, LoadScript):
            return client.script_load(request.source)
        if isinstance(request, StartRebuild):
            self._start_rebuild()
            return None
        # the rebuild's Kafka read is aiokafka's: run it in this (background) thread's own loop
        return asyncio.run(read_records(request))

    def _pipeline(self, request: Pipeline) -> list[Any]:
        client = self._client
        if request.node_key is not None and isinstance(client, RedisCluster):
            return _on_node(client, request)
        pipe = client.pipeline() if self._cluster else client.pipeline(transaction=False)
        for command in request.commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

    def _start_rebuild(self) -> None:
        """Start the guard's own rebuild (``rebuild_from``) in a thread unless one runs."""
        with self._rebuild_lock:
            if self.rebuild_from is None or self._stopped:
                return
            if self._rebuilding is not None and self._rebuilding.is_alive():
                return
            self._rebuilding = threading.Thread(
                target=self._rebuild, name="replay guard rebuild", daemon=True
            )
            self._rebuilding.start()

    def _rebuild(self) -> None:
        assert self.rebuild_from is not None
        try:
            report = self._run(rebuild_steps(self, self.rebuild_from))
        except Exception as exc:  # logged; the next held claim starts another attempt
            if not self._stopped:  # a guard stopped meanwhile closed the client under it
                log_own_rebuild(self.prefix, None, exc)
        else:
            log_own_rebuild(self.prefix, report, None)
            self._epochs.rebuilt()


def _on_node(client: RedisCluster, request: Pipeline) -> list[Any]:
    """The commands on one connection to the master of ``request.node_key``'s slot (a plain
    client's pipeline holds one connection); after a failure the client learns the new
    topology first."""
    assert request.node_key is not None
    node = client.get_node_from_key(request.node_key.decode())  # type: ignore[no-untyped-call]
    if node is None or node.redis_connection is None:
        raise RedisClusterException(f"no node serves {request.node_key!r}")
    pipe = node.redis_connection.pipeline(transaction=False)
    for command in request.commands:
        pipe.execute_command(*command)
    try:
        results = list(pipe.execute(raise_on_error=False))
    except _REDIS_FAILURES:
        with contextlib.suppress(*_REDIS_FAILURES):
            client.nodes_manager.initialize()
        raise
    if any(isinstance(r, Exception) and not isinstance(r, NoScriptError) for r in results):
        with contextlib.suppress(*_REDIS_FAILURES):
            client.nodes_manager.initialize()
    return results
