"""The native hot path against the pure-Python reference (signed_bus/_native.py).

Both paths run in this process: every known-answer vector and a seeded stream of 100,000
generated and mutated envelopes must give the same record bytes when signed and the same
verdict, reason and message (or the same fields) when verified; the extension's own reason
code (``Opener.reason``, which never falls back to Python) must equal the pure path's reason.
The extension must be installed: this module fails, it does not skip, without it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import signed_bus_native  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from signed_bus import _native
from signed_bus._clock import system_clock
from signed_bus._decode import decode_envelope
from signed_bus._envelope import encode_envelope, signed_message
from signed_bus._freshness import Freshness
from signed_bus._keys import Ed25519Key, HmacKey, Key, Keyring
from signed_bus._replay.layout import ClaimPlanner, ClaimRow
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import ConfigurationError, VerificationError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NOW = 1_800_000_000_000
WINDOW = Freshness(max_age_ms=300_000, future_skew_ms=5_000, max_lag_ms=3_600_000)
GENERATED = 100_000


#: Loaded here whatever SIGNED_BUS_NATIVE says (make unit runs the suite on both paths).
NATIVE = _native.load("1")


def pure_path() -> Any:
    """Build signers and verifiers on the pure path inside this block."""
    return _native.using(None)


def native_path() -> Any:
    """Build signers and verifiers on the native path inside this block."""
    return _native.using(NATIVE)


def outcome(verifier: Verifier, value: bytes, topic: str, key: bytes | None, ref: Any) -> Any:
    try:
        m = verifier.verify(value, topic=topic, key=key, reference_ms=ref)
    except VerificationError as exc:
        return (exc.reason, str(exc), exc.kid, exc.issuer)
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


class Pair:
    """A pure and a native verifier with the same settings, and the extension's raw opener."""

    def __init__(self, ring: Keyring, clock: Callable[[], int], **options: Any) -> None:
        with pure_path():
            self.pure = Verifier(ring, clock=clock, **options)
        with native_path():
            self.native = Verifier(ring, clock=clock, **options)
            self.opener = _native.opener(
                ring,
                max_envelope_bytes=self.native.max_envelope_bytes,
                freshness=self.native.freshness,
                audit=self.native.audit,
                clock=clock,
            )
        assert self.opener is not None
        with native_path():
            _native.refresh(self.opener)

    def check(self, value: bytes, topic: str, key: bytes | None, ref: Any = None) -> str:
        expected = outcome(self.pure, value, topic, key, ref)
        assert outcome(self.native, value, topic, key, ref) == expected
        native_reason = self.opener.reason(value, topic, key, ref)
        if native_reason is None:  # the keyring changed: what Verifier.verify does next
            with native_path():
                _native.refresh(self.opener)
            native_reason = self.opener.reason(value, topic, key, ref)
        assert native_reason == expected[0]
        return str(expected[0])


def test_the_extension_is_loaded_and_answers_the_handshake() -> None:
    assert NATIVE is signed_bus_native, "signed-bus-native must be installed for the unit suite"
    assert NATIVE.ABI_VERSION == _native.ABI_VERSION
    assert _native.load("0") is None
    with pytest.raises(ConfigurationError, match="SIGNED_BUS_NATIVE"):
        _native.load("yes")


def test_a_module_with_another_interface_version_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signed_bus_native, "ABI_VERSION", _native.ABI_VERSION + 1)
    assert _native.load("") is None
    with pytest.raises(ConfigurationError, match="interface version"):
        _native.load("1")


def test_native_keys_hold_no_readable_material() -> None:
    key = signed_bus_native.Key.hmac(b"s" * 32, frozenset({"a"}))
    assert "s" * 8 not in repr(key)
    with pytest.raises(TypeError):
        __import__("pickle").dumps(key)


# -- the known-answer vectors --------------------------------------------------------------------


def _vectors(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text())["vectors"]  # type: ignore[no-any-return]


def _vector_ring() -> Keyring:
    return Keyring.from_json((VECTORS / "keys.json").read_text(), source="keys.json")


def _unhex(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


def _vector_pair(options: dict[str, Any]) -> Pair:
    return Pair(
        _vector_ring(),
        lambda: int(options["now_ms"]),
        freshness=Freshness(
            max_age_ms=options["max_age_ms"],
            future_skew_ms=options["future_skew_ms"],
            max_lag_ms=options["max_lag_ms"],
        ),
        max_envelope_bytes=options["max_envelope_bytes"],
        audit=options["audit"],
    )


@pytest.mark.parametrize(
    "vector", _vectors("positive.json") + _vectors("negative.json"), ids=lambda v: v["name"]
)
def test_every_vector_gives_the_same_verdict_on_both_paths(vector: dict[str, Any]) -> None:
    options = vector["verify"]
    reason = _vector_pair(options).check(
        bytes.fromhex(vector["envelope_hex"]),
        options["topic"],
        _unhex(options["record_key_hex"]),
        options["reference_ms"],
    )
    assert reason == vector.get("reason", "")


@pytest.mark.parametrize("vector", _vectors("positive.json"), ids=lambda v: v["name"])
def test_every_vector_is_sealed_byte_for_byte_on_both_paths(vector: dict[str, Any]) -> None:
    sign = vector["sign"]
    nonce = bytes.fromhex(sign["nonce_hex"])
    values = []
    for pure in (True, False):
        with pure_path() if pure else native_path():
            signer = Signer(
                _vector_ring(),
                kid=sign["kid"],
                issuer=sign["issuer"],
                model=sign["model"],
                clock=lambda: sign["created_at"],
                nonce_source=lambda: nonce,
            )
        values.append(
            signer.sign_bytes(
                bytes.fromhex(sign["body_hex"]),
                content_type=sign["content_type"],
                topic=sign["topic"],
                key=_unhex(sign["record_key_hex"]),
                parents=[bytes.fromhex(p) for p in sign["parents_hex"]],
                expires_at=sign["expires_at"],
            )
        )
    assert values[0].hex() == values[1].hex() == vector["envelope_hex"]


# -- generated and mutated envelopes -------------------------------------------------------------


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _keys() -> tuple[Keyring, Keyring]:
    """(the signers' ring, the verifiers' ring): the verifiers lack "gone" and pin "swap" to the
    other algorithm, so unknown_key and algorithm_mismatch are reachable with valid signatures."""
    h1 = HmacKey("h1", _seed("h1"), issuers=["agent-a", "agent-b"])
    # signs for agent-z too, which the verifiers' h1 does not allow: untrusted_issuer
    h1_signing = HmacKey("h1", _seed("h1"), issuers=["agent-a", "agent-b", "agent-z"])
    h2 = HmacKey("h2", _seed("h2") * 3, issuers=["agent-c"])  # a secret longer than a block
    e1 = Ed25519Key.from_private_bytes("e1", _seed("e1"), issuers=["agent-a", "ágent-é"])
    gone = HmacKey("gone", _seed("gone"), issuers=["agent-a"])
    swap_signing = Ed25519Key.from_private_bytes("swap", _seed("swap"), issuers=["agent-a"])
    swap_verifying = HmacKey("swap", _seed("swap"), issuers=["agent-a"])
    signing: list[Key] = [h1_signing, h2, e1, gone, swap_signing]
    return Keyring(signing), Keyring([h1, h2, e1.public(), swap_verifying])


TOPICS = ["t", "results", "tópico-ü", "x" * 40, "y" * 255]
ISSUERS = {"h1": ["agent-a", "agent-b", "agent-z"], "h2": ["agent-c"], "e1": ["agent-a", "ágent-é"]}
OFFSETS = [0, -1, 1, -300_000, -300_001, 5_000, 5_001, -3_900_000, -3_900_001, 10**9]


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.signing, self.verifying = _keys()

    def body(self) -> bytes:
        rng = self.rng
        size = rng.choice([0, 1, 31, 200, 255, 256, 512, 700, 65_535, 65_536])
        if size > 1000 and rng.random() < 0.9:
            size = 512
        return rng.randbytes(size)

    def envelope(self) -> tuple[bytes, str, bytes | None, int | None, tuple[bytes, ...]]:
        """A signed value, its record topic and key, a reference time, and the values the two
        signing paths gave (which must be equal)."""
        rng = self.rng
        kid = rng.choice(["h1", "h1", "h2", "e1", "gone", "swap"])
        issuer = rng.choice(ISSUERS.get(kid, ["agent-a"]))
        if not self.signing[kid].may_sign_for(issuer):
            issuer = sorted(self.signing[kid].issuers)[0]
        topic = rng.choice(TOPICS)
        key = None if rng.random() < 0.3 else rng.randbytes(rng.choice([0, 8, 36]))
        created_at = NOW + rng.choice(OFFSETS)
        expires_at = None
        if rng.random() < 0.3:
            expires_at = created_at + rng.choice([0, 1, 1000, 10**6])
        parents = [rng.randbytes(32) for _ in range(rng.choice([0, 0, 1, 3, 15, 16, 64]))]
        nonce = rng.randbytes(16)
        body = self.body()
        cty = rng.choice(["application/msgpack", "application/json", "a" * 100])
        model = rng.choice(["m", "model-7b@sha256:" + "ab" * 16])
        values = []
        for pure in (True, False):
            with pure_path() if pure else native_path():
                signer = Signer(
                    self.signing,
                    kid=kid,
                    issuer=issuer,
                    model=model,
                    clock=lambda: created_at,
                    nonce_source=lambda: nonce,
                )
            values.append(
                signer.sign_bytes(
                    body,
                    content_type=cty,
                    topic=topic,
                    key=key,
                    parents=parents,
                    expires_at=expires_at,
                )
            )
        record_topic = topic if rng.random() < 0.9 else rng.choice(TOPICS)
        record_key = key if rng.random() < 0.9 else rng.choice([None, b"", b"k"])
        ref = None if rng.random() < 0.5 else NOW + rng.choice(OFFSETS)
        return values[1], record_topic, record_key, ref, tuple(values)

    def resign(self, protected: bytes, body: bytes, kid: str) -> bytes:
        key = self.signing[kid]
        return encode_envelope(protected, body, key.sign(signed_message(protected, body)))

    def mutate(self, value: bytes) -> bytes:
        rng = self.rng
        kind = rng.randrange(13)
        if kind == 0 or not value:
            return value
        if kind == 1:  # a flipped bit anywhere
            i = rng.randrange(len(value))
            return value[:i] + bytes((value[i] ^ (1 << rng.randrange(8)),)) + value[i + 1 :]
        if kind == 2:  # a flipped bit in the first 300 bytes (framing and header)
            i = rng.randrange(min(300, len(value)))
            return value[:i] + bytes((value[i] ^ (1 << rng.randrange(8)),)) + value[i + 1 :]
        if kind == 3:
            return value[: rng.randrange(len(value))]
        if kind == 4:
            return value + rng.randbytes(rng.choice([1, 2, 40]))
        if kind == 5:  # a random byte replaced in the header region
            i = rng.randrange(min(200, len(value)))
            return value[:i] + bytes((rng.randrange(256),)) + value[i + 1 :]
        if kind == 6:
            return rng.randbytes(rng.choice([0, 1, 15, 16, 64, 600]))
        if kind == 7:  # another version's tag
            tag = rng.choice(["signed-bus/v2", "", "x" * 40, "signed-bus/v1"])
            return msgpack.packb([tag, *([b"p"] * rng.randrange(4))])  # type: ignore[no-any-return]
        try:
            env = decode_envelope(value)
        except VerificationError:
            return value
        header: dict[str, Any] = msgpack.unpackb(env.protected)
        if kind == 8:  # a field given another value or type, re-signed
            field = rng.choice([*header, "zzz", "exp"])
            header[field] = rng.choice(
                [
                    None, True, -1, 0, 1.5, 2**63 - 1, 2**63, 2**64 - 1, "", "x", "é" * 128,
                    b"", b"\x00" * 16, b"\x00" * 32, b"\x00" * 33, [], [b"\x00" * 32] * 65,
                    [b"\x00" * 31], {"a": 1}, header.get("iat", 0) - 1, header.get("iat", 0),
                ]
            )  # fmt: skip
            protected = msgpack.packb(header)
        elif kind == 9:  # a field removed, re-signed
            del header[rng.choice(list(header))]
            protected = msgpack.packb(header)
        elif kind == 10:  # the same header in another key order, re-signed
            items = list(header.items())
            rng.shuffle(items)
            protected = msgpack.packb(dict(items))
        elif kind == 12:  # one key or value in a wider encoding than the shortest, re-signed
            if rng.random() < 0.5:
                header["iat"] = rng.choice([0, 5, 127, 128, 255, 256, 65_535, 65_536, 2**32])
                header.pop("exp", None)
            protected = _pack_widened(header, rng)
        else:  # a non-shortest integer or a duplicated key, re-signed
            protected = env.protected
            if rng.random() < 0.5:
                protected = protected.replace(
                    b"\xa3iat", b"\xa3iat\xcf" + header["iat"].to_bytes(8, "big") + b"\xa3iat", 1
                )
                protected = bytes((protected[0] + 1,)) + protected[1:]
            else:
                protected = protected.replace(b"\xa3par\x90", b"\xa3par\xdc\x00\x00", 1)
        kid = env.header.kid if env.header.kid in {"h1", "h2", "e1", "gone", "swap"} else "h1"
        return self.resign(protected, env.body, kid)


def _wide(value: object, rng: random.Random) -> bytes:
    """``value`` in msgpack, in a random form that fits it (often not the shortest)."""
    if type(value) is int and value >= 0:
        forms = [(0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8), (0xD0, 1), (0xD1, 2), (0xD2, 4)]
        forms.append((0xD3, 8))
        fitting = [(tag, n) for tag, n in forms if value < 2 ** (8 * n - (1 if tag >= 0xD0 else 0))]
        tag, n = rng.choice(fitting)
        return bytes((tag,)) + value.to_bytes(n, "big")
    if isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        tags = [0xD9, 0xDA, 0xDB] if isinstance(value, str) else [0xC4, 0xC5, 0xC6]
        i = rng.choice([i for i in range(3) if len(raw) < 2 ** (8 * 2**i)])
        return bytes((tags[i],)) + len(raw).to_bytes(2**i, "big") + raw
    if isinstance(value, list):
        tag, n = rng.choice([(0xDC, 2), (0xDD, 4)])
        inner = b"".join(msgpack.packb(item) for item in value)
        return bytes((tag,)) + len(value).to_bytes(n, "big") + inner
    return msgpack.packb(value)  # type: ignore[no-any-return]


def _pack_widened(header: dict[str, Any], rng: random.Random) -> bytes:
    """The header map with one key or value (or the map header) widened."""
    victim = rng.randrange(2 * len(header) + 1)
    size = len(header)
    out = [b"\xde" + size.to_bytes(2, "big") if victim == 0 else bytes((0x80 | size,))]
    for i, (key, value) in enumerate(header.items()):
        out.append(_wide(key, rng) if victim == 2 * i + 1 else msgpack.packb(key))
        out.append(_wide(value, rng) if victim == 2 * i + 2 else msgpack.packb(value))
    return b"".join(out)


def test_100000_generated_and_mutated_envelopes_agree() -> None:
    gen = Generator(seed=20261130)
    pairs = [
        Pair(gen.verifying, lambda: NOW, freshness=WINDOW, max_envelope_bytes=70_000),
        Pair(gen.verifying, lambda: NOW, freshness=WINDOW, audit=True),
        Pair(gen.verifying, lambda: NOW, freshness=WINDOW, max_envelope_bytes=600),
    ]
    reasons: dict[str, int] = {}
    checked = 0
    while checked < GENERATED:
        value, topic, key, ref, sealed = gen.envelope()
        assert sealed[0] == sealed[1], "the two signing paths disagree"
        for _ in range(4):
            mutated = gen.mutate(value)
            pair = pairs[0] if gen.rng.random() < 0.9 else gen.rng.choice(pairs[1:])
            reason = pair.check(mutated, topic, key, ref)
            reasons[reason] = reasons.get(reason, 0) + 1
            checked += 1
    # The stream reaches every verdict, so no check is compared only on its happy side.
    assert set(reasons) == {
        "",
        "oversized",
        "malformed",
        "unsupported_version",
        "unknown_key",
        "algorithm_mismatch",
        "untrusted_issuer",
        "bad_signature",
        "wrong_topic",
        "wrong_key",
        "expired",
        "not_yet_valid",
    }, reasons


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=400), st.binary(max_size=4))
def test_hypothesis_splices_agree(noise: bytes, at: int, cut: bytes) -> None:
    gen = Generator(seed=at)
    value, topic, key, ref, _ = gen.envelope()
    spliced = value[:at] + noise + value[at + len(cut) :]
    Pair(gen.verifying, lambda: NOW, freshness=WINDOW).check(spliced, topic, key, ref)


def test_a_key_added_or_removed_after_the_first_call_is_seen() -> None:
    signing, verifying = _keys()
    pair = Pair(verifying, lambda: NOW, freshness=WINDOW)
    with native_path():
        signer = Signer(signing, kid="h1", issuer="agent-a", model="m", clock=lambda: NOW)
    value = signer.sign_bytes(b"x", content_type="c", topic="t")
    assert pair.check(value, "t", None) == ""
    verifying.remove("h1")
    assert pair.check(value, "t", None) == "unknown_key"
    verifying.add(HmacKey("h1", _seed("other"), issuers=["agent-a"]))
    assert pair.check(value, "t", None) == "bad_signature"
    verifying.add(HmacKey("h1", _seed("h1"), issuers=["agent-a"]), replace=True)
    assert pair.check(value, "t", None) == ""


# -- claim-row planning --------------------------------------------------------------------------


def _plans(
    planner: ClaimPlanner, rows: Iterable[ClaimRow]
) -> list[tuple[list[bytes], bytes, list[int]]]:
    return [(list(call.keys), call.blob, call.indexes) for call in planner.plan(rows)]


def test_claim_planning_gives_the_same_calls_on_both_paths() -> None:
    rng = random.Random(7)
    planned = 0
    for round_ in range(300):
        options: dict[str, Any] = {
            "prefix": rng.choice(["sb", "tenant-ü:{x}"]),
            "bucket_ms": rng.choice([1, 60_000, 3_600_000]),
            "shards": rng.choice([1, 3, 64, 4096]),
            "max_claims_per_call": rng.choice([1, 7, 500]),
        }
        with pure_path():
            pure = ClaimPlanner(**options)
        with native_path():
            native = ClaimPlanner(**options)
        rows = [
            (
                rng.choice(["agent-a", "ágent", "x" * 300]),
                rng.randbytes(16),
                NOW + rng.randrange(-(10**8), 10**8),
                rng.choice(["t", "tópico", "y" * 255]),
                rng.choice([0, 1, 2**31 - 1]),
                rng.choice([0, 1, rng.randrange(2**63)]),
            )
            for _ in range(rng.choice([0, 1, 5, 600]))
        ]
        expected = _plans(pure, rows)
        assert _plans(native, rows) == expected, (round_, options)
        assert _plans(native, iter(rows)) == expected  # any iterable, as the pure planner takes
        planned += len(rows)
    assert planned > 10_000


@pytest.mark.parametrize(
    "row",
    [
        ("a", b"\x00" * 16, NOW, "t", 2**31, 0),  # partition past i32
        ("a", b"\x00" * 16, NOW, "t", 0, 2**63),  # offset past i64
        ("a" * 70_000, b"\x00" * 16, NOW, "t", 0, 0),  # issuer past u16 length
    ],
)
def test_a_row_the_layout_cannot_encode_raises_the_same_error(row: ClaimRow) -> None:
    options: dict[str, Any] = {"prefix": "p", "bucket_ms": 1000, "shards": 4}
    errors = []
    for path in (pure_path, native_path):
        with path():
            planner = ClaimPlanner(max_claims_per_call=10, **options)
        with pytest.raises(ValueError) as caught:
            planner.plan([row])
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def _fixed_clock(at: int) -> Callable[[], int]:
    return lambda: at


def test_the_system_clock_is_read_the_same_way_on_both_paths() -> None:
    # The extension reads the wall clock itself when the verifier's clock is system_clock.
    signing, verifying = _keys()
    pair = Pair(verifying, system_clock, freshness=WINDOW)
    verdicts = set()
    for age in (0, 1_000, WINDOW.max_age_ms + 1_000, -WINDOW.future_skew_ms - 1_000):
        created = system_clock() - age
        with native_path():
            signer = Signer(
                signing, kid="h1", issuer="agent-a", model="m", clock=_fixed_clock(created)
            )
        value = signer.sign_bytes(b"x", content_type="c", topic="t")
        verdicts.add(pair.check(value, "t", None, None if age < 1_000 else created + age))
    assert verdicts == {"", "expired", "not_yet_valid"}
