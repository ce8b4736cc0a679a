"""Two builds of the native extension, timed against each other in one process.

    .venv/bin/python benchmarks/bench_builds.py A.so B.so [--rounds N] [--ops N]

Both files are builds of signed-bus-native (``signed_bus_native.abi3.so`` inside the
``signed_bus_native`` package of a venv's site-packages, copied aside before the next ``make
venv``) with this package's interface version.
Each gets its own Verifier on the same keyring and the same 1,000 HS256 values; every round
times every case of both builds in turn (thread CPU time, the collector off), and the best round
counts. On a machine shared with other work this is the way to see a change of a few percent:
two separate runs differ by more than that. Both builds share this checkout's Python; the
"unrelated draft" case times one Python-side choice (how the message is drafted) on each.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from aiokafka.structs import ConsumerRecord

from signed_bus import _native
from signed_bus._gate import LOG_APPEND_TIME, Gate
from signed_bus._keys import Keyring
from signed_bus._message import _UNDECODED, VerifiedMessage
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.payloads import inference_results

TOPIC = "bench"
BATCH = 500


class _SameSlots:
    """A draft as messages were built before the draft became a VerifiedMessage subclass: an
    unrelated class with the same slots (its ``__class__`` assignment compares the two classes'
    slots on every message). Timed as "Opener.open, unrelated draft" against "Opener.open"."""

    __slots__ = VerifiedMessage.__slots__


def load(path: str) -> ModuleType:
    """The extension built into ``path``, loaded beside the installed one (which stays the one
    ``import signed_bus_native`` gives)."""
    installed = sys.modules.get("signed_bus_native")
    spec = importlib.util.spec_from_file_location("signed_bus_native", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a loadable extension")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if installed is not None:  # loading an extension registers it under its name
        sys.modules["signed_bus_native"] = installed
    if module.ABI_VERSION != _native.ABI_VERSION:
        raise SystemExit(
            f"{path}: interface version {module.ABI_VERSION}, not {_native.ABI_VERSION}"
        )
    return module


def cases(
    module: ModuleType, ring: Keyring, values: list[bytes]
) -> dict[str, Callable[[Any], object]]:
    with _native.using(module):
        verifier = Verifier(ring)
        unrelated = _native.opener(
            ring,
            max_envelope_bytes=verifier._max_bytes,
            freshness=verifier._freshness,
            audit=verifier._audit,
            clock=verifier._clock,
            maker=(_SameSlots, VerifiedMessage, _UNDECODED),
        )
    opener = verifier._opener
    assert type(opener) is module.Opener
    # The key cache from this build's own key objects (signed_bus._native.refresh would take
    # the installed module's).
    for kid, key in ring._keys.items():
        opener.cache[kid] = unrelated.cache[kid] = (key, _native._native_key(module, key))
    assert type(unrelated.open(values[0], TOPIC, None, None)) is VerifiedMessage
    assert type(verifier.verify(values[0], topic=TOPIC, key=None)._header) is module.Header
    gate = Gate(verifier)
    now = time.time_ns() // 1_000_000  # the broker's LogAppendTime: fresh for the whole run
    fetches = [
        {
            0: [
                ConsumerRecord(TOPIC, 0, i, now, LOG_APPEND_TIME, None, v, None, 0, len(v), ())
                for i, v in enumerate(values[n : n + BATCH])
            ]
        }
        for n in range(0, len(values), BATCH)
    ]

    def receive(index: int) -> object:
        return gate.receive(fetches[index % len(fetches)])

    return {
        "Verifier.verify": lambda value: verifier.verify(value, topic=TOPIC, key=None),
        "Opener.open": lambda value: opener.open(value, TOPIC, None, None),
        "Opener.open, unrelated draft": lambda value: unrelated.open(value, TOPIC, None, None),
        "Opener.reason": lambda value: opener.reason(value, TOPIC, None, None),
        f"Gate.receive, per record of {BATCH}": receive,
    }


#: One timed case: the function, the items it is called with, and how many values a call is.
Case = tuple[Callable[[Any], object], list[Any], int]


def best_per_value_ns(
    builds: dict[str, dict[str, Case]], rounds: int
) -> dict[tuple[str, str], float]:
    """Every case of every build in turn, ``rounds`` times (thread CPU, the collector off):
    the best nanoseconds per value of each (build, case)."""
    best: dict[tuple[str, str], float] = {}
    gc.disable()
    try:
        for _ in range(rounds):
            for build, timed in builds.items():
                for name, (function, items, per_call) in timed.items():
                    start = time.thread_time_ns()
                    for item in items:
                        function(item)
                    ns = (time.thread_time_ns() - start) / (len(items) * per_call)
                    best[build, name] = min(best.get((build, name), ns), ns)
    finally:
        gc.enable()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=20_000)
    args = parser.parse_args()
    ring = bench_keyring()
    signer = Signer(ring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
    values = [signer.sign(result, topic=TOPIC) for result in inference_results(1000, size=512)]
    inputs = [values[i % len(values)] for i in range(args.ops)]
    fetches = list(range(max(1, args.ops // BATCH)))
    builds = {}
    for build, path in (("A", args.a), ("B", args.b)):
        builds[build] = {
            name: (function, fetches, BATCH)
            if name.startswith("Gate.receive")
            else (function, inputs, 1)
            for name, function in cases(load(path), ring, values).items()
        }
    best = best_per_value_ns(builds, args.rounds)
    print(f"best of {args.rounds} rounds, thread CPU, us per value (A = {args.a}, B = {args.b})")
    for name in builds["A"]:
        a, b = best["A", name] / 1_000, best["B", name] / 1_000
        print(f"{name:36s} A {a:6.3f}   B {b:6.3f}   B/A {b / a:5.3f}")


if __name__ == "__main__":
    main()
