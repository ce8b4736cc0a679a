"""Sizing the replay guard's Redis: memory and shards per bucket.

docs/OPERATIONS.md, "Redis replay guard", has the measured figures and a worked example.
"""

from __future__ import annotations

import math
from typing import Final

from signed_bus.errors import ConfigurationError

__all__ = [
    "DEFAULT_BYTES_PER_NONCE",
    "DEFAULT_SHARDS",
    "LISTPACK_ENTRIES",
    "compact_rate",
    "estimate_memory_bytes",
    "recommended_shards",
]

#: Shards per bucket of a guard given neither ``shards`` nor ``peak_rate``: 1,000/s.
DEFAULT_SHARDS: Final = 16
#: Redis's stock ``hash-max-listpack-entries``: a hash with more fields becomes a hashtable.
LISTPACK_ENTRIES: Final = 128

#: Bytes per nonce of Redis ``used_memory`` assumed by :func:`estimate_memory_bytes`. Measured
#: with benchmarks/bench_replay.py on Redis 7.0: about 33 with shards sized for the rate (hashes
#: stay listpacks), about 96 where hashes outgrow listpack; this covers both.
DEFAULT_BYTES_PER_NONCE: Final = 100.0


def estimate_memory_bytes(
    rate_per_second: float,
    *,
    retention_ms: int,
    bytes_per_nonce: float = DEFAULT_BYTES_PER_NONCE,
) -> int:
    """Redis memory the nonce set needs: bytes per nonce x claim rate x retention.

    ``rate_per_second`` counts distinct envelopes (fan-out to more groups adds none);
    ``retention_ms`` is :meth:`RedisReplayGuard.retention_ms` of the consumers' window
    (max_age + max_lag + 2 x skew + one bucket). Measure ``bytes_per_nonce`` for your Redis with
    ``python benchmarks/bench_replay.py``.
    """
    if rate_per_second < 0 or retention_ms < 0 or bytes_per_nonce <= 0:
        raise ConfigurationError("rate, retention and bytes per nonce must be positive")
    return math.ceil(rate_per_second * retention_ms / 1000 * bytes_per_nonce)


def recommended_shards(
    peak_rate_per_second: float, *, bucket_ms: int = 1_000, nonces_per_hash: int = 64
) -> int:
    """Shards per bucket so one hash holds about ``nonces_per_hash`` nonces at the peak rate.

    64 leaves room for a 2x burst under the stock ``hash-max-listpack-entries 128``. Every
    consumer sharing a prefix must use the same value, so derive it from a planned peak rate,
    not a measured one. 1,000/s with 1 s buckets gives the default, 16.
    """
    if (
        isinstance(peak_rate_per_second, bool)
        or not isinstance(peak_rate_per_second, int | float)
        or not math.isfinite(peak_rate_per_second)
        or peak_rate_per_second < 0
        or bucket_ms < 1
        or nonces_per_hash < 1
    ):
        raise ConfigurationError(
            "rate must be a finite number >= 0, bucket_ms and nonces_per_hash >= 1"
        )
    wanted = math.ceil(peak_rate_per_second * bucket_ms / 1000 / nonces_per_hash)
    return max(1, min(0xFFFF, wanted))


def compact_rate(shards: int, *, bucket_ms: int = 1_000, nonces_per_hash: int = 64) -> float:
    """The rate of distinct envelopes per second ``shards`` are sized for (the inverse of
    :func:`recommended_shards`): 64 nonces per hash, half the stock listpack limit."""
    return shards * nonces_per_hash * 1000 / bucket_ms
