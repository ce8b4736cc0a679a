"""Batch verification (Verifier.verify_batch, the gate's receive path) against record-by-record.

A fetched batch is verified in one call (on the native path, its Ed25519 signatures on several
threads): every answer must be what :meth:`Verifier.verify` gives that record alone, on both
paths, for batches of mixed good, tampered and foreign records, and the gate must settle and
reject the same records with the same errors either way. The extension must be installed.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from typing import Any

import msgpack

from signed_bus._gate import Gate
from signed_bus._keys import Ed25519Key, HmacKey, Keyring
from signed_bus._signer import Signer
from signed_bus._verifier import BatchItem, VerifiedMessage, Verifier
from signed_bus.errors import VerificationError
from tests.unit.test_gate import Rec
from tests.unit.test_native_differential import (
    NOW,
    WINDOW,
    Generator,
    _keys,
    _seed,
    native_path,
    pure_path,
)

#: signed_bus_native's batch: fewer Ed25519 checks than twice this run on one thread.
MIN_PER_THREAD = 8


def answer(result: VerifiedMessage | Exception) -> tuple[object, ...]:
    """What a caller can observe of one answer: every field, or the exception's type, reason,
    message and context."""
    if isinstance(result, VerifiedMessage):
        m = result
        return (
            "",
            m.body,
            m.content_type,
            m.issuer,
            m.model,
            m.kid,
            m.alg,
            m.created_at,
            m.expires_at,
            m.nonce,
            m.parents,
            m.topic,
            m.digest,
        )
    if isinstance(result, VerificationError):
        return (type(result), result.reason, str(result), result.kid, result.issuer, result.topic)
    return (type(result), str(result))


def one_by_one(verifier: Verifier, items: list[BatchItem]) -> list[tuple[object, ...]]:
    """The answers of Verifier.verify, record by record."""
    answers = []
    for value, topic, key, ref in items:
        try:
            answers.append(answer(verifier.verify(value, topic=topic, key=key, reference_ms=ref)))
        except Exception as exc:
            answers.append(answer(exc))
    return answers


def verifiers(ring: Keyring, clock: Callable[[], int], **options: Any) -> list[Verifier]:
    """(pure, native) verifiers with the same settings."""
    with pure_path():
        pure = Verifier(ring, clock=clock, **options)
    with native_path():
        native = Verifier(ring, clock=clock, **options)
    assert pure._opener is None and native._opener is not None
    return [pure, native]


def mixed_batch(gen: Generator, size: int) -> list[BatchItem]:
    """Good, tampered and foreign records, shuffled: signed by every key of the generator (its
    Ed25519 key among them), with record topics, keys and reference times that sometimes
    differ from the signed ones."""
    rng = gen.rng
    items: list[BatchItem] = []
    while len(items) < size:
        value, topic, key, ref, _ = gen.envelope()
        kind = rng.random()
        if kind < 0.5:
            items.append((value, topic, key, ref))
        elif kind < 0.85:
            items.append((gen.mutate(value), topic, key, ref))
        elif kind < 0.93:  # a foreign value: plain msgpack, as an unsigned producer writes it
            items.append((msgpack.packb({"score": rng.random()}), topic, key, ref))
        else:
            items.append((rng.randbytes(rng.choice([0, 3, 90])), topic, key, ref))
    return items


def test_batches_of_mixed_records_give_verifys_answers_in_order_on_both_paths() -> None:
    gen = Generator(seed=20261201)
    sizes = [0, 1, 2, 3, 17, 64, 250, 400]
    paths = [
        verifiers(gen.verifying, lambda: NOW, freshness=WINDOW, max_envelope_bytes=70_000),
        verifiers(gen.verifying, lambda: NOW, freshness=WINDOW, audit=True),
    ]
    reasons: dict[object, int] = {}
    most_ed25519 = 0
    for round_ in range(12):
        items = mixed_batch(gen, sizes[round_ % len(sizes)])
        pure, native = paths[round_ % 2]
        expected = one_by_one(pure, items)
        assert one_by_one(native, items) == expected
        for verifier in (pure, native):
            got = [answer(a) for a in verifier.verify_batch(items)]
            assert got == expected, "verify_batch differs from verify"
        for a in expected:
            reasons[a[1] if a[0] != "" else ""] = reasons.get(a[1] if a[0] != "" else "", 0) + 1
        most_ed25519 = max(
            most_ed25519, sum(1 for a in expected if a[:1] == ("",) and a[6] == "EdDSA")
        )
    # Both verdicts of every stage, and enough Ed25519 records in one batch for several threads.
    assert {"", "malformed", "bad_signature", "unknown_key", "wrong_topic", "expired"} <= set(
        reasons
    ), reasons
    assert most_ed25519 >= 2 * MIN_PER_THREAD


def test_an_ed25519_batch_split_across_threads_keeps_each_verdict() -> None:
    """Mostly Ed25519, every other record tampered in its signature: any verdict that moved to
    another record's slot would show."""
    gen = Generator(seed=7)
    pure, native = verifiers(gen.verifying, lambda: NOW, freshness=WINDOW)
    items: list[BatchItem] = []
    while len(items) < 6 * MIN_PER_THREAD + 5:
        value, topic, key, ref, _ = gen.envelope()
        if b"\xa5EdDSA" not in value or one_by_one(pure, [(value, topic, key, ref)])[0][0] != "":
            continue
        if len(items) % 2:
            value = value[:-1] + bytes((value[-1] ^ 1,))
        items.append((value, topic, key, ref))
    expected = one_by_one(pure, items)
    assert [answer(a) for a in native.verify_batch(items)] == expected
    verdicts = [a[1] if a[0] != "" else "" for a in expected]
    assert verdicts == ["", "bad_signature"] * (len(items) // 2) + [""]


def test_a_key_added_or_removed_between_batches_is_seen() -> None:
    signing, verifying = _keys()
    pure, native = verifiers(verifying, lambda: NOW, freshness=WINDOW)
    with native_path():
        signer = Signer(signing, kid="h1", issuer="agent-a", model="m", clock=lambda: NOW)
    items: list[BatchItem] = [
        (signer.sign_bytes(b"x", content_type="c", topic="t"), "t", None, None) for _ in range(3)
    ]

    def check() -> object:
        expected = one_by_one(pure, items)
        assert [answer(a) for a in native.verify_batch(items)] == expected
        return expected[0][0] if expected[0][0] == "" else expected[0][1]

    assert check() == ""
    verifying.remove("h1")
    assert check() == "unknown_key"
    verifying.add(HmacKey("h1", _seed("other"), issuers=["agent-a"]))
    assert check() == "bad_signature"
    verifying.add(HmacKey("h1", _seed("h1"), issuers=["agent-a"]), replace=True)
    assert check() == ""


class Key(bytes):
    """A bytes subclass: Verifier.verify refuses it as a record key."""


def test_items_the_extension_leaves_to_python_get_verifys_answer() -> None:
    gen = Generator(seed=3)
    value, topic, key, _, _ = gen.envelope()
    pure, native = verifiers(gen.verifying, lambda: NOW, freshness=WINDOW)
    odd: list[Any] = [
        (bytearray(value), topic, key, None),
        (memoryview(value), topic, key, None),
        (value, topic, "not bytes", None),
        (value, topic, Key(key or b""), None),
        (value, topic, None if key is None else bytearray(key), None),
        (value, 5, key, None),
        (value, topic, key, "soon"),
        (value, topic, key, NOW),
        (None, topic, key, None),
    ]
    expected = one_by_one(pure, odd)
    assert len({a[0] for a in expected}) >= 3  # verified, refused and a caller bug
    for verifier in (pure, native):
        assert [answer(a) for a in verifier.verify_batch(odd)] == expected


def test_a_clock_that_raises_is_every_fresh_records_answer_not_the_batchs_end() -> None:
    gen = Generator(seed=11)
    calls = [0]

    def clock() -> int:
        calls[0] += 1
        if calls[0] % 3 == 0:
            raise ZeroDivisionError("clock")
        return NOW

    items = mixed_batch(gen, 40)
    _, native = verifiers(gen.verifying, clock, freshness=WINDOW)
    got = [type(a) for a in native.verify_batch(items)]
    assert ZeroDivisionError in got and VerifiedMessage in got
    assert len(got) == len(items)


def test_a_subclass_that_overrides_verify_has_it_called_for_every_record() -> None:
    seen: list[bytes] = []

    class Counting(Verifier):
        def verify(self, *args: Any, **kwargs: Any) -> VerifiedMessage:
            seen.append(args[0])
            return super().verify(*args, **kwargs)

    gen = Generator(seed=5)
    items = mixed_batch(gen, 9)
    with native_path():
        answers = Counting(gen.verifying, clock=lambda: NOW, freshness=WINDOW).verify_batch(items)
    assert seen == [item[0] for item in items] and len(answers) == 9


def fetch(gen: Generator, rng: random.Random) -> dict[tuple[str, int], list[Rec]]:
    records: dict[tuple[str, int], list[Rec]] = {}
    for partition in range(3):
        batch = mixed_batch(gen, rng.choice([0, 5, 30]))
        records[("results", partition)] = [
            Rec(
                topic=topic,
                partition=partition,
                offset=offset,
                value=None if rng.random() < 0.05 else value,
                timestamp=NOW if ref is None else ref,
                timestamp_type=0 if ref is None else 1,
                key=key,
            )
            for offset, (value, topic, key, ref) in enumerate(batch)
        ]
    return records


def test_the_gate_settles_and_rejects_the_same_records_on_both_paths() -> None:
    gen = Generator(seed=99)
    rng = random.Random(99)
    gates = [Gate(v) for v in verifiers(gen.verifying, lambda: NOW, freshness=WINDOW)]
    for _ in range(6):
        records = fetch(gen, rng)
        seen = []
        for gate in gates:
            batch = gate.receive(records)
            verified = [(i, tp, r, answer(m)) for i, tp, r, m in batch.verified]
            rejected = [(r, answer(e)) for r, e in gate.take_rejected(batch)]
            seen.append((batch.entries, verified, rejected))
        assert seen[0] == seen[1]
        # record by record, as the gate verified before batches
        pure = gates[0].verifier
        flat = [r for rs in records.values() for r in rs if r.value is not None]
        by_record = one_by_one(
            pure,
            [
                (r.value or b"", r.topic, r.key, r.timestamp if r.timestamp_type else None)
                for r in flat
            ],
        )
        assert [a for a in by_record if a[0] == ""] == [m for *_, m in seen[0][1]]
    assert gates[0].metrics.rejected == gates[1].metrics.rejected


def test_every_way_a_message_is_built_decodes_its_payload_once() -> None:
    ring = Keyring([HmacKey("h1", _seed("h1"), issuers=["agent-a"])])
    with native_path():
        signer = Signer(ring, kid="h1", issuer="agent-a", model="m", clock=lambda: NOW)
    value = signer.sign({"score": 0.5}, topic="t")
    items: list[BatchItem] = [(value, "t", None, None)] * 2
    built: list[Any] = []
    for verifier in verifiers(ring, lambda: NOW, freshness=WINDOW):
        built.append(verifier.verify(value, topic="t", key=None))
        built.extend(verifier.verify_batch(items))
    built.append(pickle.loads(pickle.dumps(built[0])))
    m = built[0]
    built.append(
        VerifiedMessage(
            body=m.body,
            content_type=m.content_type,
            issuer=m.issuer,
            model=m.model,
            kid=m.kid,
            alg=m.alg,
            created_at=m.created_at,
            expires_at=None,
            nonce=m.nonce,
            parents=[],
            digest=m.digest,
            topic=m.topic,
        )
    )
    for message in built:
        first = message.payload
        assert first == {"score": 0.5} and message.payload is first


class Spy:
    """Counts the per-record ``open`` calls of a native opener (``verify`` makes them)."""

    __module__ = "signed_bus_native"  # signed_bus._native.refresh finds the extension by it

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.opens = 0

    @property
    def cache(self) -> Any:
        return self.inner.cache

    @property
    def keyring(self) -> Any:
        return self.inner.keyring

    def open(self, *args: Any) -> Any:
        self.opens += 1
        return self.inner.open(*args)

    def open_batch(self, items: Any) -> Any:
        return self.inner.open_batch(items)

    def forget_last(self) -> None:
        self.inner.forget_last()


def test_the_first_batch_after_a_key_change_is_still_verified_in_one_call() -> None:
    """A new verifier's key cache is empty, and a key change makes it stale: the batch call
    refreshes it and checks the whole batch again, rather than leaving every record to
    verify one by one (which would verify the first fetch's signatures on one core)."""
    signing, verifying = _keys()
    with native_path():
        signer = Signer(signing, kid="e1", issuer="agent-a", model="m", clock=lambda: NOW)
    items: list[BatchItem] = [
        (signer.sign_bytes(b"x", content_type="c", topic="t"), "t", None, None) for _ in range(20)
    ]
    _, native = verifiers(verifying, lambda: NOW, freshness=WINDOW)
    spy = Spy(native._opener)
    native._opener = spy
    for change in (None, "replace"):
        if change:
            e1 = signing["e1"]
            assert isinstance(e1, Ed25519Key)
            verifying.add(e1.public(), replace=True)
        answers = native.verify_batch(items)
        assert all(isinstance(a, VerifiedMessage) for a in answers), answers
        assert spy.opens == 0
