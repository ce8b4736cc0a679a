"""The two envelope paths the bench compares in one run: the native extension (signed-bus-native)
and the pure-Python reference (docs/PERFORMANCE.md). Signers and verifiers pick their path when
they are built, so each variant builds its own under :func:`built_on`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from signed_bus import _native

__all__ = ["NATIVE", "PURE", "bench_paths", "built_on"]

NATIVE = "native"
PURE = "pure"


def bench_paths() -> tuple[str, ...]:
    """("native", "pure") where the extension loads, else ("pure",)."""
    return (NATIVE, PURE) if _native.load("") is not None else (PURE,)


@contextmanager
def built_on(path: str) -> Iterator[None]:
    """Signers and verifiers built inside this block use ``path``."""
    saved = _native._module
    _native._module = _native.load("1") if path == NATIVE else None
    try:
        yield
    finally:
        _native._module = saved
