"""Per-record cost of each hot-path step on the pure-Python and the native path, in one run.

    .venv/bin/python benchmarks/bench_native.py [--repeats N] [--ops N]

No I/O: the steps a verifying consumer and a signing producer run per record, on the same
512-byte results (signed_bus.bench.payloads). Every round times every step on both paths
(interleaved, so load from other processes hits all alike); the best round counts. Then, per
path, what the cyclic collector costs the consumer loop (see :func:`collector`). The native
path needs signed-bus-native installed (make venv).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import msgpack
from aiokafka.structs import ConsumerRecord

from signed_bus._envelope import CONTENT_TYPE_MSGPACK
from signed_bus._gate import Gate
from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._replay.guard import ClaimVerdict
from signed_bus._replay.layout import ClaimPlanner
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.bench.codec import ED25519_KID, HMAC_KID, ISSUER, MODEL, bench_keyring
from signed_bus.bench.paths import bench_paths, built_on
from signed_bus.bench.payloads import inference_results

TOPIC = "bench"
BATCH = 500


def steps(path: str, ops: int) -> dict[str, tuple[Callable[[Any], object], list[Any]]]:
    ring = bench_keyring()
    results = inference_results(1000, size=512)
    bodies = [msgpack.packb(result) for result in results]
    with built_on(path):
        hs = Signer(ring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
        ed = Signer(ring, kid=ED25519_KID, issuer=ISSUER, model=MODEL)
        verifier = Verifier(ring)
        planner = ClaimPlanner(prefix="p", bucket_ms=60_000, shards=64, max_claims_per_call=BATCH)
    hs_values = [hs.sign(result, topic=TOPIC) for result in results]
    ed_values = [ed.sign(result, topic=TOPIC) for result in results]
    messages = [verifier.verify(value, topic=TOPIC, key=None) for value in hs_values]
    rows = [(m.issuer, m.nonce, m.created_at, TOPIC, 0, i) for i, m in enumerate(messages)]
    gate = Gate(verifier)
    hs_fetches = [fetch(hs_values[i : i + BATCH]) for i in range(0, len(hs_values), BATCH)]
    ed_fetches = [fetch(ed_values[:BATCH])]

    def cycle(items: list[Any]) -> list[Any]:
        return [items[i % len(items)] for i in range(ops)]

    return {
        "HS256 seal (sign_bytes, body encoded)": (
            lambda body: hs.sign_bytes(body, content_type=CONTENT_TYPE_MSGPACK, topic=TOPIC),
            cycle(bodies),
        ),
        "HS256 sign(result) (+ msgpack packb)": (
            lambda result: hs.sign(result, topic=TOPIC),
            cycle(results),
        ),
        "HS256 open (verify, body not decoded)": (
            lambda value: verifier.verify(value, topic=TOPIC, key=None),
            cycle(hs_values),
        ),
        "HS256 verify + .payload": (
            lambda value: verifier.verify(value, topic=TOPIC, key=None).payload,
            cycle(hs_values),
        ),
        "EdDSA sign(result)": (lambda result: ed.sign(result, topic=TOPIC), cycle(results)[:500]),
        "EdDSA verify": (
            lambda value: verifier.verify(value, topic=TOPIC, key=None),
            cycle(ed_values)[:500],
        ),
        f"HS256 Gate.receive, per record of {BATCH}": (
            gate.receive,
            hs_fetches * max(1, ops // 1000),
        ),
        f"HS256 Gate.receive + cursor + .payload, per record of {BATCH}": (
            lambda records: deliver(gate, records),
            hs_fetches * max(1, ops // 1000),
        ),
        f"EdDSA Gate.receive, per record of {BATCH}": (gate.receive, ed_fetches),
        f"claim planning, per row of a {BATCH}-row batch": (
            lambda batch: planner.plan(batch),
            [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)] * max(1, ops // 1000),
        ),
    }


def fetch(values: list[bytes]) -> dict[int, list[ConsumerRecord[bytes, bytes]]]:
    """One fetch of one partition, as aiokafka hands it to the gate (LogAppendTime, now)."""
    now = time.time_ns() // 1_000_000
    return {
        0: [
            ConsumerRecord(TOPIC, 0, offset, now, 1, None, value, None, 0, len(value), ())
            for offset, value in enumerate(values)
        ]
    }


def deliver(gate: Gate, records: dict[int, list[ConsumerRecord[bytes, bytes]]]) -> None:
    """What VerifyingConsumer does per fetch without I/O: verify, settle (every claim NEW),
    hand out each message through the delivery cursor and decode its payload."""
    batch = gate.receive(records)
    gate.settle(batch, [ClaimVerdict.NEW] * len(gate.claims(batch)))
    cursor = DeliveryCursor(gate.metrics)
    cursor.load(batch.entries, 0)
    while (message := cursor.next()) is not None:
        message.payload  # noqa: B018 - decode the result, as a consumer does
        cursor.finish()


def per_op_us(fn: Callable[[Any], object], items: list[Any], per: int) -> float:
    start = time.perf_counter_ns()
    for item in items:
        fn(item)
    return (time.perf_counter_ns() - start) / (len(items) * per) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops", type=int, default=5000)
    args = parser.parse_args()
    paths = bench_paths()
    cases = {path: steps(path, args.ops) for path in paths}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for name in cases[paths[0]]:
            for path in paths:
                fn, items = cases[path][name]
                per = BATCH if name.startswith("claim") or "per record of" in name else 1
                us = per_op_us(fn, items, per)
                best[(name, path)] = min(best.get((name, path), us), us)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"per record, best of {args.repeats} interleaved rounds (load {load}); us")
    print(f"{'step':60} " + " ".join(f"{path:>8}" for path in paths))
    for name in cases[paths[0]]:
        print(f"{name:60} " + " ".join(f"{best[(name, path)]:8.2f}" for path in paths))
    collector(paths, args.repeats)
    if "native" in paths:
        parallel(args.repeats)


def collector(paths: Sequence[str], repeats: int) -> None:
    """What the cyclic collector costs the no-I/O consumer loop (receive, settle, cursor,
    ``.payload``) per record: the loop with the collector on and off, the collections it ran
    per 100 fetches of 500, and the container objects a settled record keeps alive until
    its batch goes (the collector walks those while the batch lives)."""
    ring = bench_keyring()
    results = inference_results(1000, size=512)
    print(f"collector, HS256, per record of {BATCH} (best of {repeats}):")
    print(
        f"{'path':8} {'gc on us':>9} {'gc off us':>10} {'gen0/1/2 per 100 fetches':>26} {'kept':>6}"
    )
    for path in paths:
        with built_on(path):
            signer = Signer(ring, kid=HMAC_KID, issuer=ISSUER, model=MODEL)
            gate = Gate(Verifier(ring))
        values = [signer.sign(result, topic=TOPIC) for result in results]
        fetches = [fetch(values[i : i + BATCH]) for i in range(0, len(values), BATCH)] * 50
        timing: dict[bool, float] = {}
        collections: list[int] = []
        for _ in range(repeats):
            for enabled in (True, False):
                (gc.enable if enabled else gc.disable)()
                before = [stats["collections"] for stats in gc.get_stats()]
                try:
                    us = per_op_us(partial(deliver, gate), fetches, BATCH)
                finally:
                    gc.enable()
                timing[enabled] = min(timing.get(enabled, us), us)
                if enabled:
                    after = [stats["collections"] for stats in gc.get_stats()]
                    collections = [b - a for a, b in zip(before, after, strict=True)]
        kept = _kept_per_record(gate, fetches[0])
        per_100 = "/".join(str(round(n * 100 / len(fetches))) for n in collections)
        print(f"{path:8} {timing[True]:9.2f} {timing[False]:10.2f} {per_100:>26} {kept:6.2f}")


def _kept_per_record(gate: Gate, records: dict[int, list[ConsumerRecord[bytes, bytes]]]) -> float:
    """Container objects (tracked by the collector) a settled batch keeps, per record."""
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        batch = gate.receive(records)
        gate.settle(batch, [ClaimVerdict.NEW] * len(gate.claims(batch)))
        kept = len(gc.get_objects()) - before
    finally:
        gc.enable()
    return kept / len(batch.entries)


def parallel(repeats: int) -> None:
    """Wall and CPU time of the EdDSA signatures of one 500-record fetch (Gate.receive on the
    native path): CPU time above wall time is the second core at work."""
    ring = bench_keyring()
    with built_on("native"):
        ed = Signer(ring, kid=ED25519_KID, issuer=ISSUER, model=MODEL)
        gate = Gate(Verifier(ring))
    records = fetch([ed.sign(result, topic=TOPIC) for result in inference_results(BATCH, size=512)])
    print(f"EdDSA Gate.receive of {BATCH} records, native, each round (wall / CPU ms):", end="")
    for _ in range(repeats):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter_ns()
        gate.receive(records)
        wall = (time.perf_counter_ns() - start) / 1e6
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e3
        print(f"  {wall:.1f} / {cpu:.1f}", end="")
    print()


if __name__ == "__main__":
    main()
