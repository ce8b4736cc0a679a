"""Two builds of the native extension, timed against each other on the signing side.

    .venv/bin/python benchmarks/bench_seal_builds.py A.so B.so [--rounds N] [--ops N]

The seal side's companion of benchmarks/bench_builds.py (the same loading and rules: both files
are builds of signed-bus-native with this package's interface version, copied aside before the
next ``make venv``). Each build gets its own HS256 Signer on the same keyring; every round times
every case of both builds in turn on the same 512-byte results and their msgpack bodies (thread
CPU time, the collector off), and the best round counts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType
from typing import Any

import msgpack
from bench_builds import best_per_value_ns, load  # the same loading and timing

from signed_bus import _native
from signed_bus._envelope import CONTENT_TYPE_MSGPACK
from signed_bus._keys import Keyring
from signed_bus._signer import Signer
from signed_bus.bench.codec import HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.payloads import inference_results

TOPIC = "bench"


def cases(module: ModuleType, ring: Keyring) -> dict[str, tuple[Callable[[Any], object], str]]:
    """Per case: the function and which inputs it takes (``body`` or ``result``)."""
    with _native.using(module):
        signer = Signer(ring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
    sealer: Any = signer._fast
    assert type(sealer) is module.Sealer
    signer.sign({}, topic=TOPIC)  # hands the topic over
    return {
        "Signer.sign_bytes": (
            lambda body: signer.sign_bytes(body, content_type=CONTENT_TYPE_MSGPACK, topic=TOPIC),
            "body",
        ),
        "Sealer.sign (body)": (lambda body: sealer.sign(body, TOPIC, None), "body"),
        "Signer.sign": (lambda result: signer.sign(result, topic=TOPIC), "result"),
        "Sealer.seal (result)": (lambda result: sealer.seal(result, TOPIC, None), "result"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=20_000)
    args = parser.parse_args()
    ring = bench_keyring()
    results = inference_results(1000, size=512)
    inputs: dict[str, list[Any]] = {
        "result": [results[i % len(results)] for i in range(args.ops)],
        "body": [msgpack.packb(results[i % len(results)]) for i in range(args.ops)],
    }
    builds = {
        build: {
            name: (function, inputs[kind], 1)
            for name, (function, kind) in cases(load(path), ring).items()
        }
        for build, path in (("A", args.a), ("B", args.b))
    }
    best = best_per_value_ns(builds, args.rounds)
    print(f"best of {args.rounds} rounds, thread CPU, ns per call (A = {args.a}, B = {args.b})")
    for name in builds["A"]:
        a, b = best["A", name], best["B", name]
        print(f"{name:22s} A {a:7.0f}   B {b:7.0f}   B-A {b - a:+6.0f}   B/A {b / a:5.3f}")


if __name__ == "__main__":
    main()
