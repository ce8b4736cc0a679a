"""Part 5 (codec) runs without services: every contender round-trips and gets timed."""

from __future__ import annotations

import dataclasses
import math

import pytest

from signed_bus.bench.codec import measure_codec, naive_sign, naive_verify
from signed_bus.bench.config import BenchConfig


def test_naive_design_round_trips_and_rejects_a_changed_body() -> None:
    secret = b"k" * 32
    body, signature = naive_sign(secret, {"b": 1, "a": [1.5, "x"]})
    assert naive_verify(secret, body, signature) == {"a": [1.5, "x"], "b": 1}
    with pytest.raises(ValueError):
        naive_verify(secret, body.replace(b"1.5", b"2.5"), signature)


def test_codec_part_measures_every_contender() -> None:
    pytest.importorskip("standardwebhooks")
    config = dataclasses.replace(BenchConfig(), codec_ops=50, repeats=1)
    part = measure_codec(config)
    assert part.error is None
    assert {row.baseline_label for row in part.rows} == {
        "naive JSON+HMAC",
        "standardwebhooks",
        "pure vs native",  # the core seal and open on both paths (the extension is installed)
    }
    assert [target.name for target in part.targets] == [
        "HS256 seal per 512-byte result, body encoded (native)",
        "HS256 open per 512-byte result (native)",
    ]
    for row in part.rows:
        assert row.ratio is not None and math.isfinite(row.ratio) and row.ratio > 0
    us = part.details["us_per_op"]
    assert set(us) >= {"hs256_sign", "hs256_verify", "eddsa_sign", "eddsa_verify"}
    assert set(us) >= {"core_seal_native", "core_seal_pure", "core_open_native", "core_open_pure"}
    assert part.details["bytes_per_message"]["payload_msgpack"] == 512
