"""The replay guard's Redis layout recomputed from docs/OPERATIONS.md ("Layout (v1)", the
byte-exact recipe) with hashlib and struct only: another implementation sharing the guard
follows that text, so the library must agree with it byte for byte."""

from __future__ import annotations

import hashlib

import pytest

from signed_bus._replay import bucket_key, nonce_field, nonce_shard, position_value

ISSUER = "inference-agent"
NONCE = bytes(range(16))
IAT = 1_767_225_600_123


def recipe(
    prefix: str, issuer: str, nonce: bytes, iat: int, bucket_ms: int, shards: int
) -> tuple[bytes, bytes]:
    """(key, field) as the documented steps say."""
    issuer_bytes = issuer.encode("utf-8")
    d = hashlib.sha256(len(issuer_bytes).to_bytes(2, "big") + issuer_bytes + nonce).digest()
    field = d[0:16]
    shard = (d[16] * 256 + d[17]) % shards
    bucket = iat // bucket_ms
    key = (prefix + ":n:{" + str(bucket) + "}:" + str(shard)).encode("utf-8")
    return key, field


def position_recipe(topic: str, partition: int, offset: int) -> bytes:
    raw = topic.encode("utf-8")
    return hashlib.sha256(
        len(raw).to_bytes(2, "big")
        + raw
        + partition.to_bytes(4, "big", signed=True)
        + offset.to_bytes(8, "big", signed=True)
    ).digest()[0:8]


def test_known_answer() -> None:
    # Fixed inputs, fixed bytes: if this moves, every guard shared with another implementation
    # (or an older release) splits in two.
    key, field = recipe("signed-bus", ISSUER, NONCE, IAT, 1_000, 16)
    assert key == b"signed-bus:n:{1767225600}:12"
    assert field.hex() == "6c597f04f9b200f06cc39f08323526e5"
    assert position_recipe("inference.results", 3, 42).hex() == "a85839e5beed49b5"


@pytest.mark.parametrize(
    ("issuer", "bucket_ms", "shards"),
    [(ISSUER, 1_000, 16), ("planner", 1_000, 1), ("é-agent", 60_000, 7), ("x" * 255, 1, 65_535)],
)
def test_library_follows_the_recipe(issuer: str, bucket_ms: int, shards: int) -> None:
    for i in range(50):
        nonce = hashlib.sha256(i.to_bytes(2, "big")).digest()[:16]
        iat = IAT + i * 977
        key, field = recipe("p", issuer, nonce, iat, bucket_ms, shards)
        shard = nonce_shard(issuer, nonce, shards)
        assert bucket_key("p", iat // bucket_ms, shard) == key
        assert nonce_field(issuer, nonce) == field


@pytest.mark.parametrize(
    ("topic", "partition", "offset"),
    [("inference.results", 0, 0), ("t", 2**31 - 1, 2**63 - 1), ("tópico", 7, 123_456_789)],
)
def test_position_value_follows_the_recipe(topic: str, partition: int, offset: int) -> None:
    assert position_value(topic, partition, offset) == position_recipe(topic, partition, offset)
