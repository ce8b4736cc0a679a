"""The isolating fetch's pure parts: what a fetch reports, what is not a decode failure, and the
dead letter of an undecodable range (the real-broker cases: tests/integration/test_undecodable.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from signed_bus._deadletter import (
    HEADER_NOT_DECODED,
    HEADER_SOURCE_LAST_OFFSET,
    HEADER_SOURCE_OFFSET,
    dead_letter_headers,
    header_map,
)
from signed_bus._kafka.fetch import Fetched, Skipped, fetch_records
from signed_bus.errors import Undecodable, VerificationError

TP = TopicPartition("t", 0)


@dataclass
class Rec:
    offset: int


class RaisingConsumer:
    """Raises ``error`` from getmany, and records any seek (there must be none)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def getmany(self, *partitions: TopicPartition, **kw: Any) -> dict[Any, Any]:
        raise self.error

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


@pytest.mark.parametrize(
    "error",
    [KafkaConnectionError("down"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), KeyError()],
)
async def test_an_error_not_raised_by_the_record_parser_propagates(error: Exception) -> None:
    consumer = RaisingConsumer(error)
    with pytest.raises(type(error)):
        await fetch_records(consumer, timeout_ms=0, max_records=1)
    assert consumer.seeks == []


def test_fetched_reports_first_offsets_and_is_empty_only_without_records_and_ranges() -> None:
    other = TopicPartition("t", 1)
    records: dict[TopicPartition, Sequence[Any]] = {TP: [Rec(4), Rec(5)]}
    fetched = Fetched(records, (Skipped("t", 0, 6, 9, "E"), Skipped("t", 1, 2, 2, "E")))
    assert fetched.first_offsets() == {TP: 4, other: 2}
    assert not Fetched()
    assert Fetched({}, (Skipped("t", 0, 1, 1, "E"),))
    skipped = Skipped("t", 0, 1, 1, "E")
    assert (skipped.key, skipped.value, skipped.timestamp) == (None, None, None)
    assert skipped.headers == ()


def test_undecodable_dead_letter_says_no_bytes_were_read_and_which_offsets() -> None:
    error = Undecodable("could not decode", last_offset=12).with_position("t", 0, 10)
    assert isinstance(error, VerificationError) and error.reason == "undecodable"
    headers = header_map(dead_letter_headers(error, topic="t", partition=0, offset=10))
    assert headers[HEADER_NOT_DECODED] == b"1"
    assert headers[HEADER_SOURCE_OFFSET] == b"10"
    assert headers[HEADER_SOURCE_LAST_OFFSET] == b"12"
    plain = dead_letter_headers(VerificationError("x"), topic="t", partition=0, offset=1)
    assert HEADER_NOT_DECODED not in header_map(plain)
