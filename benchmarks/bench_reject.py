"""What rejecting a crafted record value costs, against rejecting random bytes of the same size.

    .venv/bin/python benchmarks/bench_reject.py [--size BYTES] [--rounds N]

A verifier sees whatever a holder of produce rights writes. Each shape in
signed_bus.bench.crafted (nested arrays and maps, many small ints, long nil arrays, deep
nesting, ext types, huge declared lengths, oversized v1 headers) fills the size cap (default
1 MiB, the Verifier's default) and is rejected before any signature check; random bytes of the
same size are the baseline. Per shape: the median rejection time over the rounds, the peak
memory one rejection allocates (tracemalloc), the reason, and the ratio to the baseline.

Target: the worst shape costs at most 10x random bytes (PASS/MISS). For scale only, a
maximum-size envelope with a known key and a bad signature is also timed: its cost is hashing
the bytes, the same as verifying an honest record of that size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc

from signed_bus._envelope import encode_envelope, encode_header, signed_message
from signed_bus._keys import HmacKey, Keyring
from signed_bus._verifier import Verifier
from signed_bus.bench.crafted import SHAPES, crafted
from signed_bus.errors import VerificationError

TARGET = 10.0
BATCH = 1_000
TOPIC = "inference.results"


def reject(verifier: Verifier, value: bytes) -> str:
    try:
        verifier.verify(value, topic=TOPIC, key=None)
    except VerificationError as exc:
        return exc.reason
    return "accepted"


def timed(verifier: Verifier, values: list[bytes], rounds: int) -> float:
    """Median microseconds per rejection, cycling through ``values``."""
    samples = []
    for i in range(rounds):
        value = values[i % len(values)]
        t0 = time.perf_counter_ns()
        reject(verifier, value)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(samples)


def peak_bytes(verifier: Verifier, value: bytes) -> int:
    tracemalloc.start()
    try:
        reject(verifier, value)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bad_signature_value(ring: Keyring, size: int) -> bytes:
    protected = encode_header(
        alg="HS256",
        kid="k",
        issuer="agent",
        model="m",
        content_type="application/octet-stream",
        topic=TOPIC,
        key_digest=None,
        created_at=0,
        nonce=b"\x00" * 16,
    )
    body = b"\x00" * (size - len(encode_envelope(protected, b"", b"\x00" * 32)) - 4)
    key = ring.get("k")
    assert key is not None
    signature = bytearray(key.sign(signed_message(protected, body)))
    signature[0] ^= 1
    return encode_envelope(protected, body, bytes(signature))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_048_576, help="value size (default 1 MiB)")
    parser.add_argument("--rounds", type=int, default=21, help="timed rejections per shape")
    args = parser.parse_args(argv)
    ring = Keyring([HmacKey("k", os.urandom(32), issuers=["agent"])])
    verifier = Verifier(ring, max_envelope_bytes=args.size, audit=True)

    randoms = [os.urandom(args.size) for _ in range(16)]
    base = timed(verifier, randoms, max(args.rounds, 64))
    base_peak = max(peak_bytes(verifier, v) for v in randoms[:4])
    print(f"rejecting a {args.size}-byte value (median of {args.rounds} rejections per shape)")
    width = max(len(name) for name in SHAPES) + 2
    print(f"  {'shape':<{width}} {'us':>10} {'x random':>9} {'peak KiB':>9}  reason")
    print(
        f"  {'random bytes':<{width}} {base:10.1f} {1.0:9.1f} {base_peak / 1024:9.1f}  (baseline)"
    )
    worst = 0.0
    worst_name = ""
    for name in SHAPES:
        value = crafted(name, args.size)
        cost = timed(verifier, [value], args.rounds)
        ratio = cost / base
        if ratio > worst:
            worst, worst_name = ratio, name
        peak = peak_bytes(verifier, value)
        reason = reject(verifier, value)
        print(f"  {name:<{width}} {cost:10.1f} {ratio:9.1f} {peak / 1024:9.1f}  {reason}")
    scale = bad_signature_value(ring, args.size)
    cost = timed(verifier, [scale], args.rounds)
    print(
        f"  for scale: bad signature, known key {cost:10.1f} {cost / base:9.1f} "
        f"{peak_bytes(verifier, scale) / 1024:9.1f}  {reject(verifier, scale)}"
        "  (hashing the bytes, as for an honest record)"
    )
    # What one consumer batch of the worst shape holds the event loop for (the consumer verifies
    # a getmany batch, default up to 1,000 records, without awaiting in between).
    worst_value = crafted(worst_name, args.size)
    t0 = time.perf_counter_ns()
    for _ in range(BATCH):
        reject(verifier, worst_value)
    batch_ms = (time.perf_counter_ns() - t0) / 1e6
    print(f"a batch of {BATCH} such records: {batch_ms:.1f} ms without a yield to the event loop")
    ok = worst <= TARGET
    print(
        f"{'PASS' if ok else 'MISS'}  worst crafted shape ({worst_name}) / random bytes "
        f"<= {TARGET:.0f}x: measured {worst:.1f}x"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
