"""What every reference agent shares: configuration from the environment, logging, a status
hash in Redis, and a clean stop on SIGTERM/SIGINT.

Environment (all agents; defaults in brackets):

- ``KAFKA_BOOTSTRAP_SERVERS`` [``127.0.0.1:9092``]
- ``REDIS_URL``: Redis for the replay guard and agent state [``redis://127.0.0.1:6379/0``];
  checked at start as the guard checks it (percent-encode '/', '?' and '#' in a password)
- ``SIGNED_BUS_KEYRING_FILE``: the agent's own key file (or ``SIGNED_BUS_KEYRING``: its
  contents)
- ``SIGNED_BUS_VERIFY_KEYRING_FILE``: the public keys it verifies with [the key file above]
- ``SIGNED_BUS_JWKS_URL``: verify with the keys of this JWK Set instead (an https URL or a file),
  followed while the agent runs; ``SIGNED_BUS_JWKS_REFRESH_S`` [300],
  ``SIGNED_BUS_JWKS_UNKNOWN_KID_S`` [30] (docs/OPERATIONS.md, "Distributing public keys as a JWK
  Set")
- ``SIGNED_BUS_KID``: kid of the agent's own signing key (signing agents)
- ``AGENT_ID``: the issuer the agent signs as, its name in logs and status
- ``SIGNED_BUS_REPLAY_PREFIX``: replay-guard key prefix; the SAME for every consumer, which is
  what makes the nonce set shared [``signed-bus``]
- ``AGENT_STATE_PREFIX``: prefix of agent state in Redis: status hashes, delivery ledgers,
  execution records, the provenance index [``signed-bus``]
- ``RESULTS_TOPIC`` [``inference.results``], ``PLANS_TOPIC`` [``agent.plans``]
- ``RESULTS_DLQ_TOPIC`` / ``PLANS_DLQ_TOPIC``: their dead-letter topics [``<topic>.dlq``]
- ``SIGNED_BUS_MAX_AGE_MS``: freshness window [300000]
- ``LOG_LEVEL`` [``INFO``]; logs go to stderr
- ``SIGNED_BUS_METRICS_PORT``: serve Prometheus metrics at ``/metrics`` on this port
  (``SIGNED_BUS_METRICS_ADDR`` [``0.0.0.0``]); unset: no metrics (docs/OBSERVABILITY.md)

Every agent runs through :func:`agent_main`: ``--help`` lists its settings and these, the
effective settings are logged at start (URLs without credentials, keys as their kids, never a
secret), and a missing or bad setting prints one line naming it and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

import signed_bus
from producers.observe import observe
from signed_bus import ConfigurationError, Freshness, Keyring, KeySource, printable
from signed_bus._redis_url import RedisUrl
from signed_bus._url import without_credentials

__all__ = [
    "AgentEnv",
    "StatusBoard",
    "agent_main",
    "describe_keyring",
    "env_float",
    "env_int",
    "env_list",
    "env_str",
    "install_stop_signals",
    "load_keyring",
    "load_verify_keyring",
    "log_settings",
    "redis_client",
    "setup_logging",
    "shown_url",
    "stop_key_sources",
]


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigurationError(f"environment variable {name} is required")
    return default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def load_keyring() -> Keyring:
    """The agent's key ring, by the one lookup order of the library and the CLI
    (:func:`signed_bus.load_keyring`): ``SIGNED_BUS_KEYRING_FILE``, else ``SIGNED_BUS_KEYRING``."""
    return signed_bus.load_keyring()


async def load_verify_keyring() -> Keyring:
    """The ring verifiers use. ``SIGNED_BUS_JWKS_URL`` set (an https URL or a file of a JWK Set):
    the ring of a started :class:`signed_bus.KeySource` following it (new kids within
    ``SIGNED_BUS_JWKS_REFRESH_S``, an early fetch on an unknown kid at most every
    ``SIGNED_BUS_JWKS_UNKNOWN_KID_S``; :func:`stop_key_sources` stops it, and
    :func:`agent_main` calls that when the agent ends). Else
    ``SIGNED_BUS_VERIFY_KEYRING_FILE`` (public keys) if set, else the agent's own ring. Keeping
    them apart lets a signing agent hold only its own private key."""
    jwks = os.environ.get("SIGNED_BUS_JWKS_URL", "").strip()
    if jwks:
        source = KeySource(
            jwks,
            refresh_interval_s=env_float("SIGNED_BUS_JWKS_REFRESH_S", 300.0),
            unknown_kid_interval_s=env_float("SIGNED_BUS_JWKS_UNKNOWN_KID_S", 30.0),
        )
        await source.start()  # the first load must succeed: ConfigurationError if not
        _key_sources.append(source)
        return source.keyring
    path = os.environ.get("SIGNED_BUS_VERIFY_KEYRING_FILE", "").strip()
    if path:
        return Keyring.from_file(path)
    return load_keyring()


_key_sources: list[KeySource] = []


async def stop_key_sources() -> None:
    """Stop every key source :func:`load_verify_keyring` started (their rings keep their keys)."""
    while _key_sources:
        await _key_sources.pop().stop()


@dataclass(frozen=True, slots=True)
class AgentEnv:
    """The settings every agent reads (see the module docstring)."""

    agent_id: str
    bootstrap_servers: str
    redis_url: str
    replay_prefix: str
    state_prefix: str
    results_topic: str
    plans_topic: str
    results_dlq: str
    plans_dlq: str
    #: the verifiers' window: SIGNED_BUS_MAX_AGE_MS, SIGNED_BUS_FUTURE_SKEW_MS and
    #: SIGNED_BUS_MAX_LAG_MS, each defaulting to Freshness's own default
    freshness: Freshness

    @classmethod
    def load(cls, default_agent_id: str) -> AgentEnv:
        results = env_str("RESULTS_TOPIC", "inference.results")
        plans = env_str("PLANS_TOPIC", "agent.plans")
        window = Freshness()
        redis_url = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
        checked_redis_url(redis_url)  # refused here, before anything starts
        return cls(
            agent_id=env_str("AGENT_ID", default_agent_id),
            bootstrap_servers=env_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            redis_url=redis_url,
            replay_prefix=env_str("SIGNED_BUS_REPLAY_PREFIX", "signed-bus"),
            state_prefix=env_str("AGENT_STATE_PREFIX", "signed-bus"),
            results_topic=results,
            plans_topic=plans,
            results_dlq=env_str("RESULTS_DLQ_TOPIC", f"{results}.dlq"),
            plans_dlq=env_str("PLANS_DLQ_TOPIC", f"{plans}.dlq"),
            freshness=Freshness(
                max_age_ms=env_int("SIGNED_BUS_MAX_AGE_MS", window.max_age_ms),
                future_skew_ms=env_int("SIGNED_BUS_FUTURE_SKEW_MS", window.future_skew_ms),
                max_lag_ms=env_int("SIGNED_BUS_MAX_LAG_MS", window.max_lag_ms),
            ),
        )

    def describe(self) -> dict[str, object]:
        """The settings as :func:`log_settings` shows them (no credentials)."""
        window = self.freshness
        jwks = os.environ.get("SIGNED_BUS_JWKS_URL", "").strip()
        return {
            "AGENT_ID": self.agent_id,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "REDIS_URL": shown_url(self.redis_url),
            "SIGNED_BUS_REPLAY_PREFIX": self.replay_prefix,
            "AGENT_STATE_PREFIX": self.state_prefix,
            "RESULTS_TOPIC": self.results_topic,
            "PLANS_TOPIC": self.plans_topic,
            "RESULTS_DLQ_TOPIC": self.results_dlq,
            "PLANS_DLQ_TOPIC": self.plans_dlq,
            "SIGNED_BUS_MAX_AGE_MS": window.max_age_ms,
            "SIGNED_BUS_FUTURE_SKEW_MS": window.future_skew_ms,
            "SIGNED_BUS_MAX_LAG_MS": window.max_lag_ms,
            "SIGNED_BUS_JWKS_URL": shown_url(jwks) if jwks else None,
        }

    def redis(self) -> aioredis.Redis:
        """A client for agent state at ``REDIS_URL`` (:func:`redis_client`)."""
        return redis_client(self.redis_url)

    def status_key(self, agent: str | None = None) -> str:
        return f"{self.state_prefix}:status:{agent or self.agent_id}"

    def ledger_key(self, name: str) -> str:
        return f"{self.state_prefix}:ledger:{name}"


def checked_redis_url(url: str) -> RedisUrl:
    """``url`` checked as the replay guard checks it: a userinfo every parser reads the same way
    (a password holding an unencoded '/', '#' or '?' would be parsed as a host or port and
    quoted by the client's error), the password masked in any error."""
    try:
        return RedisUrl(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"REDIS_URL: {exc}") from None


def redis_client(url: str) -> aioredis.Redis:
    """The one way the agents and the demo build a Redis client: the library's checked URL
    (:func:`checked_redis_url`), then redis-py's ``from_url``; ConfigurationError (exit 2, the
    password masked) instead of the client's own error."""
    return checked_redis_url(url).client(aioredis.Redis.from_url, "agent state")


def setup_logging(agent_id: str) -> logging.Logger:
    level = env_str("LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigurationError(
            f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}"
        )
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {agent_id} %(levelname)s %(name)s: %(message)s",
    )
    # aiokafka logs every coordinator change at INFO; keep the agents' logs readable.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return logging.getLogger(agent_id)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT: the agent finishes its batch, commits and exits."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


@dataclass(slots=True)
class StatusBoard:
    """An agent's counters, published as one Redis hash so an operator (or the demo) can watch.

    ``{state_prefix}:status:{agent}`` holds ``state`` (starting/running/done/failed),
    ``updated_ms`` and one JSON field ``counters``. Publishing is best effort: a Redis hiccup
    must not stop the agent's real work.
    """

    client: aioredis.Redis
    key: str
    counters: dict[str, Any] = field(default_factory=dict)
    state: str = "starting"

    async def publish(self, state: str | None = None, **extra: object) -> None:
        if state is not None:
            self.state = state
        self.counters.update(extra)
        with contextlib.suppress(Exception):
            await self.client.hset(
                self.key,
                mapping={
                    "state": self.state,
                    "updated_ms": str(int(time.time() * 1000)),
                    "counters": json.dumps(self.counters, sort_keys=True, default=str),
                },
            )

    async def run_every(
        self,
        seconds: float,
        stop: asyncio.Event,
        refresh: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        """Publish every ``seconds`` until ``stop`` is set (run it as a task); ``refresh``
        returns counters to merge in before each publication."""
        while not stop.is_set():
            if refresh is not None:
                self.counters.update(refresh())
            await self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)


async def read_status(client: aioredis.Redis, key: str) -> dict[str, Any]:
    """A status hash as published by :class:`StatusBoard` (empty if the agent never wrote it)."""
    raw = await client.hgetall(key)
    if not raw:
        return {}
    decoded = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    counters = json.loads(decoded.get("counters", "{}"))
    return {"state": decoded.get("state"), "updated_ms": decoded.get("updated_ms"), **counters}


# -- the entry point every agent shares ---------------------------------------------------------


def shown_url(url: str) -> str:
    """A URL as logs may show it: no credentials, query or fragment (the library's rule, one
    implementation: everything up to the last '@' is credentials)."""
    return without_credentials(url)


def describe_keyring(ring: Keyring) -> str:
    """A ring as logs may show it: its kids, and which of them can sign (never key material)."""
    signing = sorted(key.kid for key in ring if key.can_sign)
    verifying = sorted(key.kid for key in ring if not key.can_sign)
    return f"signing={signing} verify-only={verifying}"


def log_settings(log: logging.Logger, settings: Mapping[str, object]) -> None:
    """One INFO line with the effective settings (each value escaped: they come from the
    environment and may hold anything)."""
    text = " ".join(f"{name}={printable(str(value))}" for name, value in settings.items())
    log.info("settings: %s", text)


def _common_help() -> str:
    doc = __doc__ or ""
    start = doc.find("Environment (all agents")
    return doc[start:].strip() if start >= 0 else ""


def agent_main(
    module: str,
    doc: str | None,
    run: Callable[[], Coroutine[Any, Any, int]],
    argv: Sequence[str] | None = None,
) -> int:
    """Run an agent: ``--help`` prints ``doc`` (its own settings) and the common settings; a
    missing or bad setting (a ConfigurationError before the agent starts working) prints one
    line naming it and returns 2, never a traceback. Returns the exit code."""
    prog = f"python -m {module}"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc,
        epilog=_common_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)  # --help exits 0; settings come from the environment only
    try:
        # /metrics when SIGNED_BUS_METRICS_PORT is set (a bad value exits 2 naming it); spans
        # when OpenTelemetry is installed
        observe()
    except OSError as exc:
        print(f"{prog}: error: cannot serve /metrics: {printable(str(exc))}", file=sys.stderr)
        return 2

    async def run_then_stop_sources() -> int:
        try:
            return await run()
        finally:
            await stop_key_sources()

    try:
        return asyncio.run(run_then_stop_sources())
    except ConfigurationError as exc:
        print(f"{prog}: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
