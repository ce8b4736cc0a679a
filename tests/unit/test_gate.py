"""The sans-I/O gate: no Kafka client, no redis, no asyncio, and the whole decision path (verify,
claim rows, verdicts, fail open, held re-checks, rejections) driven by plain calls."""

from __future__ import annotations

import ast
import dataclasses
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from signed_bus._gate import HELD_FOR_GUARD, HELD_FOR_RELAY, ConsumedMessage, Gate
from signed_bus._keys import Keyring, generate_hmac_key
from signed_bus._replay.guard import ClaimVerdict
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import ReplayGuardUnavailable

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000_000
TOPIC = "results"
FORBIDDEN = ("aiokafka", "redis", "asyncio")

# Loads signed_bus._gate with the package's __init__ skipped (it re-exports the Kafka wrappers)
# and every import of a forbidden module failing, then lists what got loaded.
_PROBE = """
import importlib.abc, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {forbidden!r}:
            raise ImportError("blocked: " + name)
        return None
sys.meta_path.insert(0, Block())
package = types.ModuleType("signed_bus")
package.__path__ = [{package!r}]
sys.modules["signed_bus"] = package
import signed_bus._gate
print(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r}))
"""


def test_the_gate_imports_no_kafka_client_no_redis_and_no_asyncio() -> None:
    probe = _PROBE.format(forbidden=FORBIDDEN, package=str(ROOT / "signed_bus"))
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_gate_module_names_no_forbidden_import() -> None:
    tree = ast.parse((ROOT / "signed_bus" / "_gate.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in FORBIDDEN]


@dataclass(frozen=True)
class Rec:
    """A record as a non-aiokafka front would hand it in (the Record protocol)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = NOW
    timestamp_type: int = 1
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Range:
    topic: str
    partition: int
    offset: int
    last_offset: int
    error: str

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


def keys() -> Keyring:
    return Keyring([generate_hmac_key("k1", ["agent"])])


def signer(ring: Keyring, at: int = NOW) -> Signer:
    return Signer(ring, kid="k1", issuer="agent", model="m", clock=lambda: at)


def test_a_batch_settles_in_order_with_replays_rejected_and_skipped_ranges_last() -> None:
    ring = keys()
    gate = Gate(Verifier(ring, clock=lambda: NOW))
    sign = signer(ring).sign
    p0, p1 = (TOPIC, 0), (TOPIC, 1)
    batch = gate.receive(
        {
            p0: [Rec(TOPIC, 0, 0, sign({"a": 0}, topic=TOPIC)), Rec(TOPIC, 0, 1, b"junk")],
            p1: [Rec(TOPIC, 1, 5, sign({"a": 1}, topic=TOPIC)), Rec(TOPIC, 1, 6, None)],
        },
        [Range(TOPIC, 1, 7, 9, "CorruptRecordError")],
    )
    rows = gate.claims(batch)
    assert [(r[3], r[4], r[5]) for r in rows] == [(TOPIC, 0, 0), (TOPIC, 1, 5)]
    gate.settle(batch, [ClaimVerdict.SAME_POSITION, ClaimVerdict.REPLAY])
    assert [(tp, nxt, m is not None) for tp, nxt, m in batch.entries] == [
        (p0, 1, True),
        (p0, 2, False),
        (p1, 6, False),
        (p1, 7, False),
        (p1, 10, False),
    ]
    delivered = batch.entries[0][2]
    assert delivered is not None and delivered.claim is ClaimVerdict.SAME_POSITION
    rejected = gate.take_rejected(batch)
    assert [(r.partition, r.offset, e.reason) for r, e in rejected] == [
        (0, 1, "malformed"),
        (1, 5, "replay"),
        (1, 6, "malformed"),
        (1, 7, "undecodable"),
    ]
    assert all(f"offset={r.offset}" in str(e) for r, e in rejected)  # positioned
    assert batch.rejected == [] and gate.take_rejected(batch) == []
    metrics = gate.metrics
    assert (metrics.records, metrics.batches, metrics.same_position) == (5, 1, 1)
    assert metrics.rejected == {"malformed": 2, "replay": 1, "undecodable": 1}


def test_a_wrong_number_of_verdicts_is_the_guard_failing() -> None:
    ring = keys()
    gate = Gate(Verifier(ring, clock=lambda: NOW))
    batch = gate.receive({(TOPIC, 0): [Rec(TOPIC, 0, 0, signer(ring).sign({}, topic=TOPIC))]})
    with pytest.raises(ReplayGuardUnavailable):
        gate.settle(batch, [])
    with pytest.raises(ValueError):  # no verdicts is only for audit mode
        gate.settle(batch)


def test_audit_mode_makes_no_claim_rows_and_settles_without_verdicts() -> None:
    ring = keys()
    gate = Gate(Verifier(ring, audit=True))
    old = signer(ring, at=NOW - 10 * 3_600_000).sign({}, topic=TOPIC)
    batch = gate.receive({(TOPIC, 0): [Rec(TOPIC, 0, 3, old)]})
    assert gate.claims(batch) == []
    gate.settle(batch)
    ((_, nxt, message),) = batch.entries
    assert nxt == 4 and message is not None and message.claim is None


def test_fail_open_settles_unchecked_and_counts_it() -> None:
    ring = keys()
    gate = Gate(Verifier(ring, clock=lambda: NOW), fail_open=True)
    batch = gate.receive({(TOPIC, 0): [Rec(TOPIC, 0, 0, signer(ring).sign({}, topic=TOPIC))]})
    assert gate.fail_open
    gate.unchecked(batch, ReplayGuardUnavailable("down"))
    assert gate.metrics.unchecked == 1 and batch.verified == []
    ((_, _, message),) = batch.entries
    assert message is not None and message.claim is None


def test_held_records_are_rechecked_with_their_reference_time() -> None:
    ring = keys()
    now = [NOW]
    gate = Gate(Verifier(ring, clock=lambda: now[0]))
    sign = signer(ring).sign
    batch = gate.receive(
        {
            (TOPIC, 0): [
                Rec(TOPIC, 0, 0, sign({"x": 0}, topic=TOPIC, expires_at=NOW + 1_000)),
                Rec(TOPIC, 0, 1, sign({"x": 1}, topic=TOPIC)),
            ]
        }
    )
    assert gate.drop_stale(batch, HELD_FOR_GUARD) == 0  # nothing waited yet
    now[0] += 2_000
    assert gate.drop_stale(batch, HELD_FOR_GUARD) == 1
    assert [r.offset for _, _, r, _ in batch.verified] == [1]
    ((_, error),) = batch.rejected
    assert error.reason == "expired" and "Redis" in str(error)
    gate.settle(batch, [ClaimVerdict.NEW])
    # A relay's transform ran long: the delivered record leaves the window too.
    now[0] += 10 * 3_600_000
    stale = gate.recheck(batch.entries, set(), HELD_FOR_RELAY)
    assert [(r.offset, e.reason) for r, e in stale] == [(1, "expired")]
    assert all(m is None for _, _, m in batch.entries)
    assert gate.recheck(batch.entries, set(), HELD_FOR_RELAY) == []


def test_a_revoked_partition_is_not_rechecked() -> None:
    ring = keys()
    now = [NOW]
    gate = Gate(Verifier(ring, clock=lambda: now[0]))
    value = signer(ring).sign({}, topic=TOPIC, expires_at=NOW + 1)
    batch = gate.receive({(TOPIC, 0): [Rec(TOPIC, 0, 0, value)]})
    gate.settle(batch, [ClaimVerdict.NEW])
    now[0] += 1_000
    assert gate.recheck(batch.entries, {(TOPIC, 0)}, HELD_FOR_RELAY) == []
    assert batch.entries[0][2] is not None


def test_settled_messages_are_the_dataclass_its_constructor_builds() -> None:
    ring = keys()
    gate = Gate(Verifier(ring, clock=lambda: NOW))
    sign = signer(ring).sign
    records = [Rec(TOPIC, 0, n, sign({"n": n}, topic=TOPIC)) for n in range(3)]
    batch = gate.receive({(TOPIC, 0): records})
    rows = gate.claims(batch)
    expected_rows = [
        (m.issuer, m.nonce, m.created_at, r.topic, r.partition, r.offset)
        for _, _, r, m in batch.verified
    ]
    assert rows == expected_rows
    built = [ConsumedMessage(m, r, ClaimVerdict.NEW) for _, _, r, m in batch.verified]
    gate.settle(batch, [ClaimVerdict.NEW] * 3)
    delivered = [m for _, _, m in batch.entries]
    assert delivered == built
    assert [hash(m) for m in delivered] == [hash(m) for m in built]
    assert [repr(m) for m in delivered] == [repr(m) for m in built]
    # settle builds each message as a draft whose class is then set: what it hands out is
    # exactly a ConsumedMessage, which pickles and compares as a constructed one
    assert all(type(m) is ConsumedMessage for m in delivered)
    assert [pickle.loads(pickle.dumps(m)) for m in delivered] == built
    first = delivered[0]
    assert first is not None and first.payload == {"n": 0} and first.offset == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.claim = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del first.record
