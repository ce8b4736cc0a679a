"""Checks every replay guard (async or sync) runs on its settings, without any I/O: the same
bounds, the same refusal of window options and the same eviction warning, so the two guards
cannot drift apart."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from signed_bus._freshness import MAX_WINDOW_MS
from signed_bus._replay.layout import MAX_KEYS_PER_CALL, parse_layout_descriptor
from signed_bus._replay.sizing import (
    DEFAULT_SHARDS,
    LISTPACK_ENTRIES,
    compact_rate,
    recommended_shards,
)
from signed_bus.errors import ConfigurationError, ReplayGuardUnavailable

__all__ = [
    "Durability",
    "check_durable_settings",
    "check_guard_settings",
    "check_no_window_options",
    "check_state_loss_settings",
    "shards_to_adopt",
    "warn_if_evicting",
    "warn_outgrown_shards",
]

_log = logging.getLogger("signed_bus.replay")

# Options a guard took before the window moved into Freshness; refused by name.
_WINDOW_OPTIONS: Final = frozenset({"max_age_ms", "future_skew_ms", "max_lag_ms", "freshness"})


def check_guard_settings(
    *,
    prefix: object,
    bucket_ms: object,
    shards: object,
    peak_rate: float | None,
    max_claims_per_call: object,
) -> int:
    """Refuse settings no guard can run with (raises ConfigurationError); returns the shard
    count: ``shards``, else the one :func:`recommended_shards` gives for ``peak_rate``, else the
    default."""
    _check_int("bucket_ms", bucket_ms, minimum=1, maximum=MAX_WINDOW_MS)
    if shards is not None and peak_rate is not None:
        raise ConfigurationError("give the replay guard shards or peak_rate, not both")
    if shards is None:
        assert isinstance(bucket_ms, int)  # checked above
        shards = DEFAULT_SHARDS
        if peak_rate is not None:
            shards = recommended_shards(peak_rate, bucket_ms=bucket_ms)
    _check_int("shards", shards, minimum=1, maximum=0xFFFF)
    _check_int("max_claims_per_call", max_claims_per_call, minimum=1, maximum=MAX_KEYS_PER_CALL)
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise ConfigurationError("prefix must be a non-empty string without '{' or '}'")
    assert isinstance(shards, int)  # checked above
    return shards


#: What a guard does with records created before a loss of the replay state: dead-letter them
#: as ``quarantined`` (unless a rebuild covered their topic), or hold every claim until a
#: rebuild (``signed-bus guard rebuild``) marks the new epoch ready.
STATE_LOSS_MODES: Final = ("quarantine", "hold")


def check_state_loss_settings(on_state_loss: object) -> str:
    """The guard's ``on_state_loss`` (ConfigurationError unless one of STATE_LOSS_MODES)."""
    if on_state_loss not in STATE_LOSS_MODES:
        raise ConfigurationError(
            f"on_state_loss must be one of {', '.join(STATE_LOSS_MODES)}, got {on_state_loss!r}"
        )
    assert isinstance(on_state_loss, str)
    return on_state_loss


class Durability:
    """Durable claims: a claim counts only once ``replicas`` replicas acknowledged it (Redis
    ``WAIT replicas timeout_ms``, sent with the claim); counts what it waited for."""

    __slots__ = ("replicas", "short", "timeout_ms", "waits")

    def __init__(self, replicas: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        #: WAIT calls sent, and those that returned fewer replicas than asked for
        self.waits = 0
        self.short = 0

    @property
    def wait_args(self) -> tuple[int, int]:
        return self.replicas, self.timeout_ms

    def check(self, acknowledged: object) -> None:
        """ReplayGuardUnavailable unless WAIT's reply reaches ``replicas`` (the batch is then
        held and claimed again: the claims that landed come back as SAME_POSITION)."""
        self.waits += 1
        if isinstance(acknowledged, BaseException):
            raise ReplayGuardUnavailable(f"WAIT failed: {type(acknowledged).__name__}")
        if not isinstance(acknowledged, int) or acknowledged < self.replicas:
            self.short += 1
            raise ReplayGuardUnavailable(
                f"claim not durable: {acknowledged} of {self.replicas} replicas acknowledged "
                f"within {self.timeout_ms} ms"
            )


def check_durable_settings(replicas: object, timeout_ms: object) -> Durability | None:
    """The guard's durable-claim setting: None for ``replicas=0`` (the default)."""
    _check_int("durable_replicas", replicas, minimum=0, maximum=64)
    _check_int("durable_timeout_ms", timeout_ms, minimum=1, maximum=MAX_WINDOW_MS)
    assert isinstance(replicas, int) and isinstance(timeout_ms, int)
    return Durability(replicas, timeout_ms) if replicas else None


def shards_to_adopt(
    prefix: str,
    stored: bytes | str | None,
    *,
    bucket_ms: int,
    shards: int,
    peak_rate: float | None,
) -> int:
    """The shard count a guard uses once it has read its prefix's layout record ``stored``.

    A guard sized by ``peak_rate`` adopts the count already recorded for the prefix (one layout
    per prefix, whatever each guard's rate), warning when that is fewer than its rate wants; a
    guard given explicit ``shards`` keeps them, and the layout check then refuses a mismatch.
    """
    found = parse_layout_descriptor(stored) if peak_rate is not None else None
    if found is None or found[0] != bucket_ms or found[1] == shards:
        return shards
    if found[1] < shards:
        _log.warning(
            "replay guard prefix %r has %d shards, sized for %.0f envelopes/s; this guard's "
            "peak_rate %.0f/s wants %d: above that rate hashes outgrow the compact encoding "
            "(about 3x the memory per nonce, still correct). Size a new prefix for the "
            "highest rate to change it",
            prefix,
            found[1],
            compact_rate(found[1], bucket_ms=bucket_ms),
            peak_rate,
            shards,
        )
    return found[1]


def check_no_window_options(client_options: Mapping[str, Any]) -> None:
    """Refuse window options passed to ``from_url``: they would reach redis-py as connection
    options and fail at the first claim."""
    stale = _WINDOW_OPTIONS.intersection(client_options)
    if stale:
        raise ConfigurationError(
            f"the replay guard takes no freshness window ({', '.join(sorted(stale))}): "
            "every claim carries the verifier's Freshness"
        )


def warn_if_evicting(info: object) -> None:
    """Warn when Redis's ``INFO memory`` shows a policy that may evict buckets: an evicted
    bucket forgets its nonces, and replays inside the window would pass."""
    policy = info.get("maxmemory_policy") if isinstance(info, dict) else None
    if policy not in (None, "noeviction", b"noeviction"):
        _log.warning(
            "Redis maxmemory-policy is %s: it may evict replay-guard buckets and let "
            "replays through; set maxmemory-policy noeviction",
            policy,
        )


def warn_outgrown_shards(
    key: bytes, entries: int, prefix: str, shards: int, bucket_ms: int
) -> None:
    """Warn that the hash ``key`` (of a full bucket) left the compact encoding: the rate
    reaching ``prefix`` outgrew its shards, and each nonce takes about 3x the memory."""
    rate = entries * shards * 1000 / bucket_ms
    _log.warning(
        "replay guard hash %s holds %d nonces, more than the compact encoding's limit "
        "(hash-max-listpack-entries, %d by default): about %.0f envelopes/s reach prefix %r, "
        "more than its %d shards suit (%.0f/s), so each nonce takes about 3x the memory. "
        "Size a new prefix with peak_rate=%.0f (or shards=%d)",
        key.decode(),
        entries,
        LISTPACK_ENTRIES,
        rate,
        prefix,
        shards,
        compact_rate(shards, bucket_ms=bucket_ms),
        rate,
        recommended_shards(rate, bucket_ms=bucket_ms),
    )


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigurationError(f"{name} must be {bound}, got {value}")
