"""The two envelope paths the bench compares in one run: the native extension (signed-bus-native)
and the pure-Python reference (docs/PERFORMANCE.md). Signers and verifiers pick their path when
they are built, so each variant builds its own under :func:`built_on`; a few helpers (the
encoder's map-key check, claim planning) pick theirs per call, so each variant's timed runs go
under :func:`on_path_of` too, and a "pure" row is the pure path throughout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from signed_bus import _native

__all__ = ["NATIVE", "PURE", "bench_paths", "built_on", "on_path_of"]

NATIVE = "native"
PURE = "pure"


def bench_paths() -> tuple[str, ...]:
    """("native", "pure") where the extension loads, else ("pure",)."""
    return (NATIVE, PURE) if _native.load("") is not None else (PURE,)


@contextmanager
def built_on(path: str) -> Iterator[None]:
    """Signers and verifiers built, and per-call helpers run, inside this block use ``path``."""
    with _native.using(_native.load("1") if path == NATIVE else None):
        yield


def on_path_of(variant: str) -> AbstractContextManager[None]:
    """:func:`built_on` the path a variant named ``<what>-<path>`` runs on; nothing for
    another (the raw baseline)."""
    path = variant.rsplit("-", 1)[-1]
    return built_on(path) if path in (NATIVE, PURE) else nullcontext()
