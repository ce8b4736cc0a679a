"""The default payload encoder's msgpack form (docs/ENVELOPE.md section 3),
``payload_as``, and the Signer's ``encoder`` parameter."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import subprocess
import sys
import uuid
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from pydantic import BaseModel

from signed_bus import Keyring, Signer, Verifier, encode_payload, generate_hmac_key, payload_as


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Box:
    width: int
    at: datetime.datetime


class Scored(BaseModel):
    label: str
    score: float
    box: Box


WHEN = datetime.datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (np.float32(0.5), 0.5),
        (np.float64(0.25), 0.25),
        (np.int64(-3), -3),
        (np.uint8(7), 7),
        (np.bool_(True), True),
        (np.array([[1, 2], [3, 4]], dtype=np.int16), [[1, 2], [3, 4]]),
        (np.array([0.5, 1.5], dtype=np.float32), [0.5, 1.5]),
        (WHEN, "2026-03-04T05:06:07.890000+00:00"),
        (datetime.date(2026, 3, 4), "2026-03-04"),
        (datetime.time(5, 6, 7), "05:06:07"),
        (datetime.timedelta(seconds=90, milliseconds=5), 90.005),
        (ID, "12345678-1234-5678-1234-567812345678"),
        (decimal.Decimal("1.10"), "1.10"),
        (Colour.RED, "red"),
        (Box(3, WHEN), {"width": 3, "at": "2026-03-04T05:06:07.890000+00:00"}),
        (frozenset({3, 1, 2}), [1, 2, 3]),
        (
            Scored(label="a", score=np.float32(0.5), box=Box(1, WHEN)),  # type: ignore[arg-type]
            {"label": "a", "score": 0.5, "box": {"width": 1, "at": WHEN.isoformat()}},
        ),
    ],
)
def test_each_type_encodes_to_its_documented_plain_form(value: object, plain: object) -> None:
    assert encode_payload(value) == msgpack.packb(plain)
    assert encode_payload({"v": [value]}) == msgpack.packb({"v": [plain]})


@pytest.mark.parametrize(
    "value", [object(), np.array([1 + 2j]), np.complex64(1), np.array([object()])]
)
def test_a_type_without_a_form_is_refused(value: object) -> None:
    with pytest.raises(TypeError):
        encode_payload(value)


class Level(enum.IntEnum):
    LOW = 1


class Named(enum.StrEnum):
    A = "a"


class Probabilities(BaseModel):
    by_class: dict[int, float]


@dataclasses.dataclass
class Counts:
    by_flag: dict[bool, int]


@pytest.mark.parametrize(
    "value",
    [
        {0: 0.1, 1: 0.9},  # int keys: what a label -> probability map often has
        {"label_probs": {0: 0.1, 1: 0.9}},
        {"v": [{"ok": 1}, {1.5: "x"}]},
        {True: 1},
        {None: 1},
        {(1, 2): "pair"},
        {Level.LOW: "low"},  # an IntEnum key is an int
        {ID: {Level.LOW: 1}},  # a key the encoder maps to str is fine, one inside it is not
        Probabilities(by_class={0: 0.1}),  # maps inside Pydantic models
        [Counts(by_flag={True: 1})],  # and dataclasses
    ],
)
def test_a_map_key_the_decoding_profile_refuses_is_refused(value: object) -> None:
    # msgpack writes such keys, and every verifier would refuse the signed body as malformed
    ring = Keyring([generate_hmac_key("k", ["me"])])
    signer = Signer(ring, kid="k", issuer="me", model="m")
    with pytest.raises(TypeError, match="map key"):
        encode_payload(value)
    with pytest.raises(TypeError, match="map key"):
        signer.sign(value, topic="t")


def test_str_and_bytes_map_keys_and_keys_encoded_as_str_are_kept() -> None:
    value = {"a": {b"raw": 1, Named.A: [{"deep": {"er": 2}}]}, b"": None, Colour.RED: ID, ID: 3}
    ring = Keyring([generate_hmac_key("k", ["me"])])
    signed = Signer(ring, kid="k", issuer="me", model="m").sign(value, topic="t")
    payload = Verifier(ring, audit=True).verify(signed, topic="t", key=None).payload
    assert payload == {
        "a": {b"raw": 1, "a": [{"deep": {"er": 2}}]},
        b"": None,
        "red": str(ID),
        str(ID): 3,
    }


def test_the_form_uses_no_extension_types() -> None:
    body = encode_payload(
        {"t": WHEN, "a": np.arange(3), "m": Scored(label="x", score=1, box=Box(1, WHEN))}
    )

    def no_ext(code: int, data: bytes) -> object:
        raise AssertionError(f"extension type {code}")

    msgpack.unpackb(body, ext_hook=no_ext)


def test_payload_as_builds_only_the_type_asked_for() -> None:
    plain = msgpack.unpackb(
        encode_payload(Scored(label="a", score=np.float32(0.5), box=Box(1, WHEN)))  # type: ignore[arg-type]
    )
    model = payload_as(Scored, plain)
    assert model == Scored(label="a", score=0.5, box=Box(1, WHEN))
    assert isinstance(model.box, Box) and model.box.at == WHEN
    assert payload_as(Box, {"width": 2, "at": WHEN.isoformat()}) == Box(2, WHEN)
    assert payload_as(list[Box], [{"width": 2, "at": WHEN.isoformat()}]) == [Box(2, WHEN)]
    # an extension value in the payload (the strict reader yields msgpack.ExtType) builds nothing
    with pytest.raises(ValueError, match="Box"):
        payload_as(Box, {"width": msgpack.ExtType(42, b"os.system"), "at": WHEN.isoformat()})


def test_a_misfit_names_fields_never_values() -> None:
    with pytest.raises(ValueError) as caught:
        payload_as(Scored, {"label": "a", "score": "secret-token-value", "box": {}})
    assert "secret-token-value" not in str(caught.value)
    assert "score" in str(caught.value)


def test_signer_encodes_with_its_encoder() -> None:
    ring = Keyring([generate_hmac_key("k", ["me"])])
    verifier = Verifier(ring, audit=True)
    default = Signer(ring, kid="k", issuer="me", model="m")
    value = default.sign({"score": np.float32(0.5), "at": WHEN}, topic="t")
    assert verifier.verify(value, topic="t", key=None).payload == {
        "score": 0.5,
        "at": WHEN.isoformat(),
    }
    custom = Signer(ring, kid="k", issuer="me", model="m", encoder=lambda r: msgpack.packb([r]))
    assert verifier.verify(custom.sign(1, topic="t"), topic="t", key=None).payload == [1]
    wrong = Signer(ring, kid="k", issuer="me", model="m", encoder=lambda r: "text")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        wrong.sign(1, topic="t")


def test_importing_and_signing_imports_no_optional_library() -> None:
    code = (
        "import sys, signed_bus;"
        "ring = signed_bus.Keyring([signed_bus.generate_hmac_key('k', ['me'])]);"
        "signed_bus.Signer(ring, kid='k', issuer='me', model='m').sign({'a': 1}, topic='t');"
        "print(sorted(m for m in ('faststream', 'pydantic', 'numpy', 'confluent_kafka')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


# -- the encoder's pooled packers -----------------------------------------------------------------


@dataclasses.dataclass
class _Row:
    name: str
    score: float


def race(work: Callable[[], None], threads: int = 4) -> None:
    """Run ``work`` on ``threads`` threads at once, switching between them every microsecond,
    so that state two calls share mid-call shows up as wrong answers."""
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        running = [threading.Thread(target=work) for _ in range(threads)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()
    finally:
        sys.setswitchinterval(interval)


def test_pooled_packers_are_never_shared_by_threads() -> None:
    # _Row goes through the Python hook, where threads switch mid-encoding: a packer shared by
    # two calls at once would interleave their bytes.
    values = [{"i": i, "rows": [_Row(f"r{i}-{j}", j / 7) for j in range(5)]} for i in range(300)]
    expected = [msgpack.packb(_plain_form(v)) for v in values]
    wrong: list[int] = []

    def work() -> None:
        for _ in range(5):
            for i, value in enumerate(values):
                if encode_payload(value) != expected[i]:
                    wrong.append(i)

    race(work)
    assert wrong == []


def _plain_form(value: dict[str, object]) -> dict[str, object]:
    rows = value["rows"]
    assert isinstance(rows, list)
    return {"i": value["i"], "rows": [dataclasses.asdict(row) for row in rows]}


def test_an_encoding_inside_the_hook_gets_its_own_packer() -> None:
    from pydantic import field_serializer

    class Wrapped(BaseModel):
        x: int

        @field_serializer("x")
        def _inner(self, x: int) -> bytes:
            return encode_payload({"inner": x, "row": _Row("n", 0.5)})

    inner = msgpack.packb({"inner": 3, "row": {"name": "n", "score": 0.5}})
    assert encode_payload({"outer": Wrapped(x=3)}) == msgpack.packb({"outer": {"x": inner}})


def test_a_failed_encoding_leaves_no_bytes_behind() -> None:
    with pytest.raises(TypeError):
        encode_payload({"a": [1, 2, object()]})
    assert encode_payload({"b": 1}) == msgpack.packb({"b": 1})


def test_a_packer_that_grew_large_is_not_kept() -> None:
    from signed_bus import _payload

    encode_payload(1)
    pooled = list(_payload.PACKER_POOL)
    assert pooled
    encode_payload(b"x" * 200_000)  # takes the last pooled packer and drops it after
    assert pooled[:-1] == _payload.PACKER_POOL
