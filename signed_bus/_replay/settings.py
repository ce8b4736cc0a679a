"""Checks every replay guard (async or sync) runs on its settings, without any I/O: the same
bounds, the same refusal of window options and the same eviction warning, so the two guards
cannot drift apart."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from signed_bus._freshness import MAX_WINDOW_MS
from signed_bus._replay.layout import MAX_KEYS_PER_CALL, parse_layout_descriptor
from signed_bus._replay.sizing import DEFAULT_SHARDS, compact_rate, recommended_shards
from signed_bus.errors import ConfigurationError

__all__ = [
    "check_guard_settings",
    "check_no_window_options",
    "shards_to_adopt",
    "warn_if_evicting",
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


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigurationError(f"{name} must be {bound}, got {value}")
