"""The clock is injected everywhere it is read, so tests and vectors can fix time."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "system_clock"]

#: A clock returns integer milliseconds since the Unix epoch.
Clock = Callable[[], int]


def system_clock() -> int:
    """Wall-clock time in integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
