"""The FastStream adapter's record views and dead letters, without services: a confluent-kafka
``Message`` read as the gate's record, and letters that parse back with ``DeadLetter``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest

from signed_bus import DeadLetter, Keyring, Signer, Verifier, generate_hmac_key
from signed_bus._deadletter import Omitted
from signed_bus._gate import LOG_APPEND_TIME
from signed_bus.errors import BadSignature, ConfigurationError
from signed_bus.faststream import SignedBus
from signed_bus.faststream._records import ConfluentRecord, as_record, letter, readable_headers


class FakeConfluentMessage:
    """The accessor methods of confluent_kafka.Message."""

    def __init__(self, kind: int, value: bytes | None) -> None:
        self._kind = kind
        self._value = value

    def topic(self) -> str:
        return "results"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 41

    def timestamp(self) -> tuple[int, int]:
        return self._kind, 1_700_000_000_000

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return None


@dataclass
class Written:
    """What a dead letter looks like when read back (ConsumerRecord's fields)."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


@pytest.mark.parametrize(("kind", "expected"), [(2, LOG_APPEND_TIME), (1, 0), (0, 0)])
def test_a_confluent_message_reads_as_a_record(kind: int, expected: int) -> None:
    record = as_record(FakeConfluentMessage(kind, b"v"))
    assert record == ConfluentRecord(
        topic="results",
        partition=2,
        offset=41,
        timestamp=1_700_000_000_000,
        timestamp_type=expected,
        key=b"k",
        value=b"v",
        headers=(),
    )


def test_an_aiokafka_record_is_used_as_it_is() -> None:
    record: Any = Written(b"v", None, [])
    record.topic = "t"  # a plain attribute, not an accessor method
    assert as_record(record) is record


@pytest.mark.parametrize("omit", list(Omitted))
def test_letters_parse_back_with_the_consumers_headers(omit: Omitted) -> None:
    record = ConfluentRecord("results", 2, 41, 1_700_000_000_000, 1, b"key", b"value", ())
    error = BadSignature("signature does not verify", kid="k1", issuer="agent").with_position(
        "results", 2, 41
    )
    value, key, headers = letter(record, error, omit)
    parsed = DeadLetter.from_record(
        Written(value, key, [(name, text.encode()) for name, text in headers.items()])
    )
    assert (parsed.reason, parsed.source_topic, parsed.source_partition) == (
        "bad_signature",
        "results",
        2,
    )
    assert (parsed.source_offset, parsed.source_timestamp) == (41, 1_700_000_000_000)
    assert parsed.value == (b"value" if omit == Omitted.NOTHING else None)
    assert parsed.key == (None if omit == Omitted.VALUE_AND_KEY else b"key")
    if omit == Omitted.VALUE_AND_KEY:
        assert parsed.key_sha256 == hashlib.sha256(b"key").hexdigest()


def test_a_tombstone_letter_is_marked_null() -> None:
    record = ConfluentRecord("results", 0, 1, 5, 1, None, None, ())
    value, _, headers = letter(record, BadSignature("x").with_position("results", 0, 1))
    assert value == b"" and headers["signed-bus-value-null"] == "1"


def test_a_bus_needs_a_guard_to_verify_and_hides_its_keys() -> None:
    ring = Keyring([generate_hmac_key("k1", ["agent"])])
    signer = Signer(ring, kid="k1", issuer="agent", model="m")
    bus = SignedBus(signer=signer)
    assert "k1" in repr(bus) and "secret" not in repr(bus).lower()
    with pytest.raises(ConfigurationError):
        SignedBus(verifier=Verifier(ring))
    with pytest.raises(ConfigurationError):
        SignedBus()


def test_headers_that_are_not_text_are_dropped_before_faststream_parses() -> None:
    from aiokafka.structs import ConsumerRecord

    record = ConsumerRecord(
        "t", 0, 5, 1, 1, None, b"v", None, 0, 1, [("ok", b"text"), ("bad", b"\xff"), ("n", None)]
    )
    readable_headers((record,))
    assert list(record.headers) == [("ok", b"text")]

    class Confluent(FakeConfluentMessage):
        def __init__(self) -> None:
            super().__init__(2, b"v")
            self.set_to: list[tuple[str, bytes | None]] | None = None

        def headers(self) -> list[tuple[str, bytes | None]] | None:
            return [("ok", b"text"), ("bad", b"\xfe"), ("n", None)]

        def set_headers(self, headers: list[tuple[str, bytes | None]]) -> None:
            self.set_to = headers

    message = Confluent()
    readable_headers(message)
    assert message.set_to == [("ok", b"text"), ("n", None)]
