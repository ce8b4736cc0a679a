"""The replay guard key prefixes of the bench: a fresh one per guard, so every claim is new.

A guard that finds no replay state under its prefix warns (the state may have been lost,
docs/OPERATIONS.md); under a bench prefix the state is absent by design, so while parts run
(:func:`quiet_new_bench_prefixes`) that one warning is dropped for bench prefixes only. Every
other record of the guard's logger, and that warning for any other prefix, passes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

__all__ = ["BENCH_PREFIX", "bench_prefix", "quiet_new_bench_prefixes"]

#: What every bench guard's prefix starts with.
BENCH_PREFIX: Final = "sb-bench-"
_GUARD_LOGGER: Final = "signed_bus.replay"
_NEW_PREFIX: Final = "started as a new prefix"


def bench_prefix() -> str:
    """A key prefix no guard used before."""
    return f"{BENCH_PREFIX}{uuid.uuid4().hex[:8]}"


class _NewBenchPrefix(logging.Filter):
    """Drops the guard's "no replay state, started as a new prefix" warning for a bench prefix."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        prefix = args[0]
        return not (
            isinstance(prefix, str)
            and prefix.startswith(BENCH_PREFIX)
            and _NEW_PREFIX in str(record.msg)
        )


@contextmanager
def quiet_new_bench_prefixes() -> Iterator[None]:
    """While inside, a bench guard starting its fresh prefix does not warn."""
    logger = logging.getLogger(_GUARD_LOGGER)
    quiet = _NewBenchPrefix()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
