"""What a replay guard asks of Redis, as steps without I/O, so the async and the sync guard
run one implementation of every decision and differ only in how they send a request.

A guard's conversation with Redis (checking the layout record, reading or starting an epoch,
running claim calls, recovering after a loss, a rebuild from Kafka) is a generator: it yields
one request at a time (:class:`Command`, :class:`Pipeline`, :class:`RunScript`,
:class:`LoadScript`, :class:`Claims`, :class:`ReadKafka`, :class:`StartRebuild`) and receives
the reply; what it returns is the outcome. The async guard drives it with ``await`` on
``redis.asyncio`` (:meth:`RedisReplayGuard._drive <signed_bus.RedisReplayGuard>`), the sync guard
with blocking calls (:func:`drive`). A request that fails is thrown back into the generator at
the ``yield`` that asked for it, so a step decides itself which failures it tolerates.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import NoScriptError

from signed_bus._replay.layout import CLAIM_SCRIPT, ScriptCall

if TYPE_CHECKING:
    from signed_bus._replay.settings import Durability

__all__ = [
    "Claims",
    "Command",
    "LoadScript",
    "Pipeline",
    "ReadKafka",
    "Request",
    "RunScript",
    "StartRebuild",
    "Steps",
    "drive",
    "node_claim",
    "pipelined_claims",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command (``execute_command(*args)``); the reply is its result."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands in one pipeline (no transaction), errors returned as values. ``node_key``: on
    a cluster, send them on one connection to the master of that key's slot (WAIT counts the
    replicas holding the writes of its own connection); None: let the client route them."""

    commands: tuple[tuple[Any, ...], ...]
    node_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class RunScript:
    """EVALSHA of ``source`` (loaded again if Redis answers NOSCRIPT)."""

    source: str
    keys: tuple[bytes, ...]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class LoadScript:
    """SCRIPT LOAD of ``source`` (on every master of a cluster)."""

    source: str


@dataclass(frozen=True, slots=True)
class Claims:
    """Run the claim script calls; the reply is their replies, in order. Each guard runs the
    units :meth:`GuardCore._claim_units <signed_bus._replay.core.GuardCore>` plans its own way
    (the async one concurrently on a cluster)."""

    calls: list[ScriptCall]
    ttl: int
    epoch: str


@dataclass(frozen=True, slots=True)
class ReadKafka:
    """Read and verify every record of ``topics`` from ``since_ms`` to the end as of now
    (:func:`signed_bus._replay.rebuild.read_records`, on aiokafka); the reply is the rows."""

    bootstrap_servers: str
    topics: tuple[str, ...]
    verifier: Any
    since_ms: int
    kafka_options: dict[str, Any]
    report: Any = field(compare=False)


@dataclass(frozen=True, slots=True)
class StartRebuild:
    """Start the guard's own rebuild from Kafka in the background unless one runs."""


Request = Command | Pipeline | RunScript | LoadScript | Claims | ReadKafka | StartRebuild
#: A guard's conversation with Redis: yields requests, receives replies, returns ``T``.
Steps = Generator[Request, Any, T]


def drive(steps: Steps[T], send: Callable[[Request], Any]) -> T:
    """Run ``steps`` with ``send`` doing each request (the blocking driver); a failed request
    is thrown into the steps."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            reply, error = send(request), None
        except Exception as exc:  # thrown into the steps, which re-raise what they keep
            reply, error = None, exc


def _evalsha(sha: str, keys: Sequence[bytes], ttl: int, blob: bytes, epoch: str) -> tuple[Any, ...]:
    return ("EVALSHA", sha, len(keys), *keys, ttl, blob, epoch)


def pipelined_claims(
    sha: str,
    keyed: Sequence[tuple[Sequence[bytes], bytes]],
    ttl: int,
    epoch: str,
    durable: Durability | None,
) -> Steps[list[Any]]:
    """The claim script once per (keys, blob) in one pipeline on a single node, then WAIT when
    claims are durable: one round trip. Loads the script again once if Redis lost it."""
    replies: list[Any] = [None] * len(keyed)
    pending = list(range(len(keyed)))
    for _ in range(2):
        commands = [_evalsha(sha, keyed[i][0], ttl, keyed[i][1], epoch) for i in pending]
        if durable:
            commands.append(("WAIT", *durable.wait_args))
        results = list((yield Pipeline(tuple(commands))))
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
        yield LoadScript(CLAIM_SCRIPT)  # flushed, or a node that never had it
        pending = missing
    raise NoScriptError("the claim script is still missing after SCRIPT LOAD")


def node_claim(
    sha: str, keys: Sequence[bytes], blob: bytes, ttl: int, epoch: str, durable: Durability
) -> Steps[list[Any]]:
    """One durable claim call on a cluster: EVALSHA then WAIT on one connection to the slot's
    master, in one round trip (redis-py's cluster pipeline takes no EVALSHA)."""
    for _ in range(2):
        script, wait = yield Pipeline(
            (_evalsha(sha, keys, ttl, blob, epoch), ("WAIT", *durable.wait_args)),
            node_key=keys[0],
        )
        if isinstance(script, NoScriptError):
            yield LoadScript(CLAIM_SCRIPT)
            continue
        if isinstance(script, BaseException):
            raise script
        durable.check(wait)
        return [script]
    raise NoScriptError("the claim script is still missing after SCRIPT LOAD")
