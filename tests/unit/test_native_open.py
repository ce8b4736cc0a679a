"""The native opener's answers as Verifier.verify hands them out (signed_bus/_native.py).

The extension builds the VerifiedMessage of a verified value itself (through
signed_bus._message.MAKER) and reuses the Python string of each header text from the last
record while it is the same: both must give exactly the message the pure path builds, for
headers that change from record to record as well. The extension must be installed: this
module fails, it does not skip, without it.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import pickle
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from signed_bus import _native
from signed_bus._envelope import HEADER_KEYS, K_PAR
from signed_bus._gate import Gate
from signed_bus._keys import HmacKey, Keyring
from signed_bus._message import VerifiedMessage
from signed_bus._replay.guard import ClaimVerdict
from signed_bus._signer import Signer
from signed_bus._verifier import BatchItem, Verifier
from signed_bus.errors import (
    BadSignature,
    ConfigurationError,
    MalformedEnvelope,
    UnknownKey,
    UntrustedIssuer,
    WrongTopic,
)

NATIVE = _native.load("1")
NOW = 1_800_000_000_000


def _ring() -> Keyring:
    return Keyring(
        [
            HmacKey("k1", hashlib.sha256(b"1").digest(), issuers=["agent-a", "agent-b"]),
            HmacKey("k2", hashlib.sha256(b"2").digest(), issuers=["agent-a", "ágent-é"]),
        ]
    )


def _fields(m: VerifiedMessage) -> tuple[object, ...]:
    return (*m._fields(), m.payload, type(m), m._value is not None)


def _values() -> list[tuple[bytes, str, bytes | None]]:
    """Values whose every header text changes from one to the next, then repeats."""
    ring = _ring()
    values = []
    for n in range(40):
        kid = ("k1", "k2")[n % 2]
        issuer = ("agent-a", "agent-b", "ágent-é")[n % 3] if kid == "k1" else "ágent-é"
        if kid == "k1" and issuer == "ágent-é":
            issuer = "agent-a"
        model = f"model-{n % 5}"
        topic = ("t", "tópico", "results")[n % 3]
        key = None if n % 4 else f"key-{n}".encode()
        signer = Signer(ring, kid=kid, issuer=issuer, model=model, clock=lambda: NOW - 1_000)
        content_type = ("application/msgpack", "application/json")[n % 2]
        body = b"\x81\xa1n\x05" if n % 2 == 0 else b'{"n": 5}'
        value = signer.sign_bytes(body, content_type=content_type, topic=topic, key=key)
        values.append((value, topic, key))
    return values


def test_native_messages_are_the_pure_ones_when_every_header_text_changes() -> None:
    ring = _ring()
    with _native.using(None):
        pure = Verifier(ring, clock=lambda: NOW)
    with _native.using(NATIVE):
        native = Verifier(ring, clock=lambda: NOW)
    assert native._opener is not None and pure._opener is None
    values = _values()
    for _ in range(2):  # the second pass meets the texts the first left behind
        for value, topic, key in values + values[::-1]:
            expected = pure.verify(value, topic=topic, key=key)
            got = native.verify(value, topic=topic, key=key)
            assert _fields(got) == _fields(expected)
            assert got.digest == hashlib.sha256(value).digest()
            assert pickle.loads(pickle.dumps(got)) == got
        items: list[BatchItem] = [(value, topic, key, None) for value, topic, key in values]
        batch = native.verify_batch(items)
        assert [_fields(m) for m in batch] == [  # type: ignore[arg-type]
            _fields(pure.verify(v, topic=t, key=k)) for v, t, k, _ in items
        ]


def test_a_message_pickled_before_the_module_split_still_loads() -> None:
    # VerifiedMessage moved to signed_bus._message; pickles name signed_bus._verifier._rebuild
    from signed_bus import _verifier

    ring = _ring()
    value, topic, key = _values()[0]
    message = Verifier(ring, clock=lambda: NOW).verify(value, topic=topic, key=key)
    _, (header, body, digest) = message.__reduce__()
    assert _verifier._rebuild(header, body, digest) == message


def _signed(**kw: Any) -> bytes:
    signer = Signer(_ring(), kid="k1", issuer="agent-a", model="m", clock=lambda: NOW - 1_000)
    return signer.sign_bytes(b"\x81\xa1n\x05", content_type="application/msgpack", **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"topic": "t"},
        {"topic": "t", "key": b"k", "expires_at": NOW + 5_000},
        {"topic": "t", "parents": [hashlib.sha256(b"p").digest(), hashlib.sha256(b"q").digest()]},
    ],
)
def test_a_native_message_holds_its_header_in_one_untracked_object(kw: dict[str, Any]) -> None:
    ring = _ring()
    with _native.using(None):
        pure = Verifier(ring, clock=lambda: NOW)
    with _native.using(NATIVE):
        native = Verifier(ring, clock=lambda: NOW)
    value = _signed(**kw)
    expected = pure.verify(value, topic="t", key=kw.get("key")).__reduce__()[1][0]
    got = native.verify(value, topic="t", key=kw.get("key"))
    header = got._header
    assert NATIVE is not None and type(header) is NATIVE.Header
    assert not gc.is_tracked(header)  # one object, outside the cyclic collector's work
    assert len(header) == len(expected)
    for name in HEADER_KEYS:
        assert (name in header) == (name in expected)
        assert header.get(name) == (tuple(expected[name]) if name == K_PAR else expected.get(name))
        if name in expected:
            assert header[name] == header.get(name)
    assert header.get("exp", "none") == expected.get("exp", "none")
    with pytest.raises(KeyError):
        header["nope"]
    assert list(header) == list(expected) and list(header.keys()) == list(expected)
    assert {k: (tuple(v) if k == K_PAR else v) for k, v in expected.items()} == dict(header)
    loose: Any = header  # keys of any type, as a dict takes them
    for absent in (1, None, b"iss", "\ud800", ("iss",)):  # as a dict: just not one of its keys
        assert absent not in loose and loose.get(absent, "d") == "d"
        with pytest.raises(KeyError):
            loose[absent]
    with pytest.raises(TypeError):
        header["iss"] = "someone"  # type: ignore[index]
    with pytest.raises(AttributeError):
        header.iat = 0  # type: ignore[attr-defined]


def test_both_paths_pickle_a_message_to_the_same_bytes() -> None:
    ring = _ring()
    with _native.using(None):
        pure = Verifier(ring, clock=lambda: NOW)
    with _native.using(NATIVE):
        native = Verifier(ring, clock=lambda: NOW)
    for kw in ({"topic": "t"}, {"topic": "t", "parents": [b"p" * 32], "expires_at": NOW + 9}):
        value = _signed(**kw)
        expected, got = (
            pure.verify(value, topic="t", key=None),
            native.verify(value, topic="t", key=None),
        )
        assert pickle.dumps(got) == pickle.dumps(expected)
        clone = pickle.loads(pickle.dumps(got))
        assert type(clone._header) is dict and clone._fields() == expected._fields()


def test_a_settled_native_record_leaves_three_tracked_objects() -> None:
    # The collector's work per consumed record grows with the container objects each one keeps
    # alive until its batch is dropped: the ConsumedMessage, its VerifiedMessage and the
    # batch entry; the checked header is not one of them.
    ring = _ring()
    with _native.using(NATIVE):
        gate = Gate(Verifier(ring, clock=lambda: NOW))
    values = [_signed(topic="t") for _ in range(300)]
    records = {
        0: [
            ConsumerRecord("t", 0, offset, NOW, 1, None, value, None, 0, len(value), ())
            for offset, value in enumerate(values)
        ]
    }
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        batch = gate.receive(records)
        gate.settle(batch, [ClaimVerdict.NEW] * len(gate.claims(batch)))
        kept = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert all(message is not None for _, _, message in batch.entries)
    assert kept <= 3 * len(values) + 10, kept / len(values)


def _paths() -> tuple[Verifier, Verifier]:
    ring = _ring()
    with _native.using(None):
        pure = Verifier(ring, clock=lambda: NOW)
    with _native.using(NATIVE):
        native = Verifier(ring, clock=lambda: NOW)
    return pure, native


def test_both_paths_hand_out_finished_frozen_messages() -> None:
    # Both paths build the message as a draft whose class is then set: what leaves the
    # verifier is a VerifiedMessage (never the draft), frozen, its digest and payload unread.
    from signed_bus._message import _UNDECODED, _Draft

    assert _Draft.__bases__ == (VerifiedMessage,) and _Draft.__slots__ == ()
    value = _signed(topic="t", key=b"k")
    for verifier in _paths():
        for message in (
            verifier.verify(value, topic="t", key=b"k"),
            *verifier.verify_batch([(value, "t", b"k", None)] * 2),
        ):
            assert type(message) is VerifiedMessage
            assert isinstance(message, VerifiedMessage)
            assert not isinstance(message, _Draft)
            assert message._payload is _UNDECODED and message._value == value
            with pytest.raises(AttributeError):
                _ = message._digest  # computed on first read only
            for name in (*VerifiedMessage.__slots__, "issuer", "other"):
                with pytest.raises(dataclasses.FrozenInstanceError):
                    setattr(message, name, b"")
                with pytest.raises(dataclasses.FrozenInstanceError):
                    delattr(message, name)
            assert message.payload == {"n": 5} and message.body == b"\x81\xa1n\x05"
            assert message.digest == hashlib.sha256(value).digest()


def test_the_opener_leaves_arguments_that_are_not_bytes_to_the_verifier() -> None:
    # Verifier.verify hands its arguments to the extension unchecked: a value or key that is
    # not exactly bytes (or None) is answered "" there, and checked or converted in Python.
    pure, native = _paths()
    opener = native._opener
    value = _signed(topic="t", key=b"k")
    native.verify(value, topic="t", key=b"k")  # fills the opener's key cache
    assert opener is not None and opener.open(value, "t", b"k").__class__ is VerifiedMessage
    for args in (
        (bytearray(value), "t", b"k"),
        (memoryview(value), "t", b"k"),
        ("text", "t", b"k"),
        (value, "t", bytearray(b"k")),
        (value, "t", "k"),
        (value, "t", 7),
    ):
        assert opener.open(*args) == ""
    for got_value, got_key in ((bytearray(value), b"k"), (value, memoryview(b"k"))):
        loose: Any = native
        message = loose.verify(got_value, topic="t", key=got_key)
        assert type(message) is VerifiedMessage
        assert _fields(message) == _fields(pure.verify(value, topic="t", key=b"k"))
    for verifier in (pure, native):
        either: Any = verifier
        with pytest.raises(ConfigurationError, match="record key must be bytes or None, not str"):
            either.verify(value, topic="t", key="k")
        with pytest.raises(MalformedEnvelope, match="record value is not bytes"):
            either.verify("text", topic="t", key=b"k")


def test_a_key_replaced_under_the_kid_just_used_is_seen_at_once() -> None:
    # The opener keeps the key entry of the last value's kid: a replacement in the keyring
    # (a new key object under that kid) must take effect on the very next value.
    ring = _ring()
    with _native.using(NATIVE):
        native = Verifier(ring, clock=lambda: NOW)
    old = _signed(topic="t")
    assert native.verify(old, topic="t", key=None).kid == "k1"
    ring.add(HmacKey("k1", hashlib.sha256(b"new").digest(), issuers=["agent-a"]), replace=True)
    with pytest.raises(BadSignature):
        native.verify(old, topic="t", key=None)
    signer = Signer(ring, kid="k1", issuer="agent-a", model="m", clock=lambda: NOW - 1_000)
    new = signer.sign_bytes(b"\x81\xa1n\x05", content_type="application/msgpack", topic="t")
    assert native.verify(new, topic="t", key=None).kid == "k1"
    ring.add(HmacKey("k1", hashlib.sha256(b"1").digest(), issuers=["agent-b"]), replace=True)
    with pytest.raises(UntrustedIssuer):
        native.verify(old, topic="t", key=None)
    ring.remove("k1")
    with pytest.raises(UnknownKey):
        native.verify(new, topic="t", key=None)


def test_a_key_removed_from_the_keyring_is_let_go_at_the_refresh() -> None:
    # The last value's key entry held the removed key (its secret, as Python and native
    # material) until a value of another kid came: the refresh after a keyring change drops it.
    import sys

    ring = _ring()
    key = HmacKey("k3", hashlib.sha256(b"3").digest(), issuers=["agent-a"])
    ring.add(key)
    with _native.using(NATIVE):
        native = Verifier(ring, clock=lambda: NOW)
    signer = Signer(ring, kid="k3", issuer="agent-a", model="m", clock=lambda: NOW - 1_000)
    value = signer.sign_bytes(b"\x81\xa1n\x05", content_type="application/msgpack", topic="t")
    for _ in range(2):  # the second open takes the last key entry
        assert native.verify(value, topic="t", key=None).kid == "k3"
    ring.remove("k3")
    del signer
    with pytest.raises(UnknownKey):
        native.verify(value, topic="t", key=None)
    opener: Any = native._opener
    _native.refresh(opener)
    gc.collect()
    assert sys.getrefcount(key) == 2  # this name and the call's argument: nothing else


@pytest.mark.parametrize("topic", ["t\ud800", "\udcff"])
def test_a_topic_that_is_not_utf8_gets_the_pure_verdict(topic: str) -> None:
    # A str with a lone surrogate is no topic a record was signed for: the native path raised
    # UnicodeEncodeError where the pure path says wrong_topic.
    pure, native = _paths()
    value = _signed(topic="t", key=b"k")
    outcomes = []
    for verifier in (pure, native):
        with pytest.raises(WrongTopic) as caught:
            verifier.verify(value, topic=topic, key=b"k")
        batch = verifier.verify_batch([(value, topic, b"k", None)])
        outcomes.append((str(caught.value), [type(answer) for answer in batch]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == [WrongTopic]


def test_a_verifier_in_a_cycle_through_its_clock_is_collected() -> None:
    # The opener held its clock (here a bound method of the object that holds the verifier)
    # without telling the collector: such a cycle was never freed on the native path.
    import weakref

    class App:
        def __init__(self) -> None:
            with _native.using(NATIVE):
                self.verifier = Verifier(_ring(), clock=self.now)

        def now(self) -> int:
            return NOW

    apps = [App() for _ in range(5)]
    value = _signed(topic="t")
    for app in apps:
        for _ in range(2):  # the second open takes the last key entry
            assert app.verifier.verify(value, topic="t", key=None).kid == "k1"
        assert app.verifier._opener is not None
    refs = [weakref.ref(app) for app in apps]
    del apps, app
    gc.collect()
    assert [ref() for ref in refs] == [None] * 5


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (b"alg", b"HS256"),
        (b"kid", b"k1"),
        (b"iss", b"agent-a"),
        (b"mdl", b"m"),
        (b"cty", b"application/msgpack"),
        (b"tpc", b"t"),
    ],
)
def test_a_header_text_that_is_not_utf8_is_malformed_before_any_policy_check(
    name: bytes, text: bytes
) -> None:
    # The opener checks a header text's UTF-8 only when its bytes differ from the text it
    # made a string of last: a text of the same length with one byte that is no UTF-8 must
    # still be malformed (not algorithm_mismatch, unknown_key, ...), and the held texts must
    # still serve the next good value.
    pure, native = _paths()
    good = _signed(topic="t")
    field = b"\xa3" + name + bytes([0xA0 | len(text)])
    assert good.count(field + text) == 1
    bad = good.replace(field + text, field + text[:-1] + b"\xff")
    opener: Any = native._opener
    for verifier in (pure, native):
        assert verifier.verify(good, topic="t", key=None).body == b"\x81\xa1n\x05"
        with pytest.raises(MalformedEnvelope):
            verifier.verify(bad, topic="t", key=None)
        assert verifier.verify(good, topic="t", key=None).body == b"\x81\xa1n\x05"
    assert opener.reason(bad, "t", None) == "malformed"
    assert opener.reason(good, "t", None) == ""
