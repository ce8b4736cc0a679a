"""Benchmark settings: one frozen object built from the command line and handed to every part."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from signed_bus._freshness import Freshness

__all__ = ["EXTRA_PARTS", "PARTS", "BenchConfig"]

#: Every measurement, in the order the runner executes them (cheap, service-free ones first).
PARTS: tuple[str, ...] = (
    "codec",
    "redis",
    "produce",
    "consume",
    "latency",
    "observability",
    "confluent",
    "faststream",
)
#: Parts run only when named in ``--only`` (they take minutes), after the others.
EXTRA_PARTS: tuple[str, ...] = ("steady", "durable")


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure and how much of it.

    ``messages`` sizes the throughput runs (parts 1 and 2), ``duration_s`` and ``rate`` the
    fixed-rate latency run (part 3), ``nonces`` the Redis memory run (part 4: at least 100,000
    for a figure worth quoting) and ``codec_ops`` the per-message codec timings (part 5).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    out_dir: Path = Path("results")
    parts: tuple[str, ...] = PARTS
    quick: bool = False
    messages: int = 50_000
    duration_s: float = 15.0
    rate: int = 1_000
    nonces: int = 200_000
    codec_ops: int = 20_000
    repeats: int = 3
    #: Rounds of the latency run (each ``duration_s`` per variant).
    latency_rounds: int = 3
    payload_bytes: int = 512
    #: The steady-load part: results per second and seconds per run (three runs).
    steady_rate: int = 1_500
    steady_duration_s: float = 120.0
    #: The verifier's window; the replay guard keeps nonces for its retention.
    freshness: Freshness = dataclasses.field(default_factory=Freshness)
    #: Run the replay guard of parts 2 and 3 on a private redis-server (part 4 always does):
    #: the development Redis is shared with other test runs.
    private_redis: bool = True
    #: Profile an extra, untimed HS256 produce round and consume pass (pyinstrument).
    profile: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> BenchConfig:
        """Defaults with the service addresses from the environment, then ``overrides``."""
        defaults = cls()
        base = dataclasses.replace(
            defaults,
            bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", defaults.bootstrap_servers),
            redis_url=os.environ.get("REDIS_URL", defaults.redis_url),
        )
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]

    def quick_mode(self) -> BenchConfig:
        """Sizes for a run of about a minute (explicit options given later still win)."""
        return dataclasses.replace(
            self,
            quick=True,
            messages=10_000,
            duration_s=4.0,
            nonces=100_000,
            codec_ops=5_000,
            repeats=3,
            latency_rounds=1,
            steady_duration_s=10.0,
        )
