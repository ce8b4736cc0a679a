"""The extension's one-call signing path (``Sealer``) against the pure-Python seal.

A signer with the default clock and nonce source seals a msgpack body without parents or expiry
in one native call that reads the wall clock and takes a nonce from a pool of its own. Its
values must be the bytes the pure path writes for the same created_at and nonce, its nonces
never repeat (also across fork), and everything it does not serve (other topics, keys, bodies,
parents, expiry, clocks, nonce sources) takes the pure path's route and errors. The extension
must be installed: this module fails, it does not skip, without it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from signed_bus import _native
from signed_bus._clock import system_clock
from signed_bus._decode import decode_envelope
from signed_bus._envelope import CONTENT_TYPE_MSGPACK, header_prefix, seal, topic_entry
from signed_bus._keys import Ed25519Key, HmacKey, Keyring
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from tests.unit.test_payload_encoder import race

NATIVE = _native.load("1")
HMAC = HmacKey("h", hashlib.sha256(b"h").digest(), issuers=["agent"])
ED = Ed25519Key.from_private_bytes("e", hashlib.sha256(b"e").digest(), issuers=["agent"])
RING = Keyring([HMAC, ED])


def _signer(kid: str = "h", **options: Any) -> Signer:
    with _native.using(NATIVE):
        return Signer(RING, kid=kid, issuer="agent", model="m", **options)


def _pure_value(signer: Signer, value: bytes, topic: str, key: bytes | None) -> bytes:
    """What the pure seal writes for the created_at and nonce ``value`` carries."""
    _, protected, body, _ = msgpack.unpackb(value)
    header = msgpack.unpackb(protected)
    rkd = None if key is None else hashlib.sha256(key).digest()
    assert header["rkd"] == rkd
    prefix = header_prefix(signer.alg, signer.kid, "agent", "m", CONTENT_TYPE_MSGPACK)
    sign = RING.get(signer.kid).sign  # type: ignore[union-attr]
    entry = topic_entry(topic)
    return seal(prefix, entry, rkd, header["iat"], header["nce"], b"\x90", None, body, sign)


def test_a_default_signer_takes_the_one_call_path() -> None:
    assert _signer()._fast is not None
    assert _signer(clock=lambda: 1)._fast is None
    assert _signer(nonce_source=lambda: b"n" * 16)._fast is None
    with _native.using(None):
        assert Signer(RING, kid="h", issuer="agent", model="m")._fast is None


@pytest.mark.parametrize("kid", ["h", "e"])
@pytest.mark.parametrize("topic", ["t", "tópico-ü", "y" * 255])
@pytest.mark.parametrize("key", [None, b"", b"record-key"])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 70_000])
def test_values_are_the_pure_seal_byte_for_byte(
    kid: str, topic: str, key: bytes | None, size: int
) -> None:
    signer = _signer(kid)
    body = msgpack.packb(b"b" * size)
    before = system_clock()
    for value in (
        signer.sign_bytes(body, content_type=CONTENT_TYPE_MSGPACK, topic=topic, key=key),
        signer.sign_bytes(body, content_type=CONTENT_TYPE_MSGPACK, topic=topic, key=key),
        signer.sign(b"b" * size, topic=topic, key=key),
    ):
        assert value == _pure_value(signer, value, topic, key)
        message = Verifier(RING).verify(value, topic=topic, key=key)
        assert before <= message.created_at <= system_clock()
        assert message.body == body
    # the first call of a topic took the pure path and handed the topic over: the second and
    # third were the extension's (proven by the call counting below)


def test_the_extension_serves_every_call_after_the_first_of_a_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signer = _signer()
    sealed: list[int] = []
    original = Signer._seal

    def counting(self: Signer, *args: Any) -> bytes:
        sealed.append(1)
        return original(self, *args)

    monkeypatch.setattr(Signer, "_seal", counting)
    for _ in range(5):
        signer.sign({"a": 1}, topic="t")
        signer.sign({"a": 1}, topic="u", key=b"k")
    assert len(sealed) == 2  # once per topic


def test_what_the_extension_does_not_serve_takes_the_pure_path_and_its_errors() -> None:
    signer = _signer()
    signer.sign({"a": 1}, topic="t")
    with pytest.raises(TypeError, match="key must be bytes or None"):
        signer.sign({"a": 1}, topic="t", key="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be bytes or None"):
        signer.sign({"a": 1}, topic="t", key=bytearray(b"k"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        signer.sign({"a": 1}, topic="z" * 256)
    with pytest.raises(TypeError, match="body must be bytes"):
        signer.sign_bytes("text", content_type=CONTENT_TYPE_MSGPACK, topic="t")  # type: ignore[arg-type]
    odd = Signer(
        RING,
        kid="h",
        issuer="agent",
        model="m",
        encoder=lambda r: bytearray(b"\x01"),  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(TypeError, match="the encoder must return bytes"):
        odd.sign(1, topic="t")
    # a bytearray body, parents, expiry and other content types are sealed by the pure path
    verifier = Verifier(RING)
    parent = hashlib.sha256(b"p").digest()
    value = signer.sign({"a": 1}, topic="t", parents=[parent], expires_at=system_clock() + 9_000)
    message = verifier.verify(value, topic="t", key=None)
    assert message.parents == (parent,)
    assert message.expires_at is not None
    value = signer.sign_bytes(
        bytearray(b"\x01"),  # type: ignore[arg-type]
        content_type=CONTENT_TYPE_MSGPACK,
        topic="t",
    )
    assert verifier.verify(value, topic="t", key=None).body == b"\x01"
    value = signer.sign_bytes(b"{}", content_type="application/json", topic="t")
    assert verifier.verify(value, topic="t", key=None).content_type == "application/json"


def test_the_topic_cache_is_bounded() -> None:
    with _native.using(NATIVE):
        sealer = _native.fast_sealer(HMAC, b"", 2)
    assert sealer.add_topic("a", b"x")
    assert sealer.add_topic("b", b"x")
    assert sealer.add_topic("a", b"x")  # already held
    assert not sealer.add_topic("c", b"x")
    assert sealer.sign(b"\x01", "c", None) is None  # not held: the pure path serves it


def test_nonces_never_repeat_across_threads() -> None:
    signer = _signer()
    signer.sign(1, topic="t")
    seen: list[bytes] = []

    def work() -> None:
        nonces = [decode_envelope(signer.sign(1, topic="t")).header.nonce for _ in range(3_000)]
        seen.extend(nonces)

    race(work)
    assert len(seen) == 12_000
    assert len(set(seen)) == 12_000


def _nonces_across_a_fork(fork: Callable[[], int], count: int) -> tuple[set[bytes], set[bytes]]:
    """The next ``count`` nonces of one signer in a child made by ``fork``, and in the parent."""
    signer = _signer()
    signer.sign(1, topic="t")  # the generator now holds a key
    read, write = os.pipe()
    pid = fork()
    assert pid >= 0
    if pid == 0:  # the child: its next nonces, to the parent
        try:
            nonces = b"".join(
                decode_envelope(signer.sign(1, topic="t")).header.nonce for _ in range(count)
            )
            os.write(write, nonces)
        finally:
            os._exit(0)
    os.close(write)
    received = b""
    while chunk := os.read(read, 4096):
        received += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child = {received[i : i + 16] for i in range(0, len(received), 16)}
    assert len(child) == count
    parent = {decode_envelope(signer.sign(1, topic="t")).header.nonce for _ in range(count)}
    return child, parent


def test_a_forked_child_does_not_hand_out_its_parents_pooled_nonces() -> None:
    child, parent = _nonces_across_a_fork(os.fork, 100)
    assert not child & parent


def test_a_fork_python_does_not_see_repeats_at_most_one_keys_nonces() -> None:
    # A fork from C (or a restored snapshot) skips os.register_at_fork: the child inherits the
    # generator and its key. A new key every 256 nonces bounds what the two processes repeat
    # (the first version kept a key for 65,536 nonces, and all 600 below repeated).
    import ctypes

    child, parent = _nonces_across_a_fork(ctypes.CDLL(None).fork, 600)
    assert len(child & parent) < 256


# -- the one call that also encodes (Signer.sign and SignedProducer.send with the default encoder)


def test_a_default_encoder_signer_encodes_inside_the_one_call() -> None:
    signer = _signer()
    seal = signer._seal_result
    assert seal is not None
    assert _signer(encoder=lambda r: msgpack.packb(r))._seal_result is None
    assert _signer(clock=lambda: 1)._seal_result is None
    signer.sign(1, topic="t")  # hands "t" over
    result = {"label": "cat", "scores": [0.25, 0.75], b"raw": None}
    value = seal(result, "t", b"k")
    assert type(value) is bytes
    assert value == _pure_value(signer, value, "t", b"k")
    assert Verifier(RING).verify(value, topic="t", key=b"k").payload == result
    # nothing served, nothing encoded: a key that is not bytes, a topic that is not str
    assert seal(result, "t", "k") is None  # type: ignore[arg-type]
    assert seal(result, 1, None) is None  # type: ignore[arg-type]
    # encoded but left to the Python path: a topic not handed over yet
    assert seal(result, "new", None) == (msgpack.packb(result),)


@pytest.mark.parametrize(
    "value",
    [{0: 0.1}, {"v": [{"ok": 1}, {1.5: "x"}]}, {True: 1}, {None: 1}, {(1, 2): "pair"}],
)
def test_the_one_call_refuses_the_map_keys_the_encoder_refuses(value: object) -> None:
    signer = _signer()
    signer.sign(1, topic="t")
    seal = signer._seal_result
    assert seal is not None
    # the extension leaves the verdict to the Python check, which raises the encoder's error
    assert seal(value, "t", None) == (msgpack.packb(value),)
    with pytest.raises(TypeError, match="map key whose form is not str or bytes"):
        signer.sign(value, topic="t")


def test_the_one_call_raises_the_encoders_errors_and_keeps_encoding() -> None:
    signer = _signer()
    signer.sign(1, topic="t")
    with pytest.raises(TypeError, match="object has no payload form"):
        signer.sign({"a": [1, 2, object()]}, topic="t")
    value = signer.sign({"b": 1}, topic="t")
    assert Verifier(RING).verify(value, topic="t", key=None).body == msgpack.packb({"b": 1})


class _Slow:
    """Encoded through the default encoder's Python hook, where threads switch."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_the_one_calls_packers_are_never_shared_by_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from signed_bus import _payload

    plain = _payload._plain
    monkeypatch.setattr(
        _payload, "_plain", lambda v: [v.n] * 3 if isinstance(v, _Slow) else plain(v)
    )
    pooled = list(_payload.PACKER_POOL)  # made before the patch: they call the old hook
    _payload.PACKER_POOL.clear()
    signer = _signer()
    signer.sign(1, topic="t")
    values = [{"i": i, "rows": [_Slow(i * 10 + j) for j in range(5)]} for i in range(200)]
    expected = [
        msgpack.packb({"i": i, "rows": [[i * 10 + j] * 3 for j in range(5)]}) for i in range(200)
    ]
    verifier = Verifier(RING)
    wrong: list[int] = []

    def work() -> None:
        for _ in range(3):
            for i, value in enumerate(values):
                signed = signer.sign(value, topic="t")
                if verifier.verify(signed, topic="t", key=None).body != expected[i]:
                    wrong.append(i)

    try:
        race(work)
    finally:
        _payload.PACKER_POOL[:] = pooled  # packers that call the patched hook leave with it
    assert wrong == []


def test_every_signer_shares_the_encoders_one_packer_pool() -> None:
    # A pool per signer kept up to 16 packers (and their buffers) for each live signer; the
    # one-call seal takes and returns packers in the default encoder's pool instead.
    from signed_bus import _payload

    pooled = list(_payload.PACKER_POOL)
    _payload.PACKER_POOL.clear()
    try:
        signers = [_signer() for _ in range(40)]
        for signer in signers:
            for _ in range(2):  # the first sign of a topic takes the Python path
                signer.sign({"a": 1}, topic="t")
        assert len(_payload.PACKER_POOL) == 1  # one packer, handed from call to call
        for signer in signers:
            signer.sign({"b": b"x" * 100_000}, topic="t")  # a packer that grew is dropped
        assert len(_payload.PACKER_POOL) == 0
    finally:
        _payload.PACKER_POOL[:] = pooled
