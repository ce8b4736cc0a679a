"""DeadLetter.from_record: every malformed letter is one typed ValueError, never a crash."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signed_bus import DeadLetter
from signed_bus._deadletter import (
    HEADER_ERROR,
    HEADER_KEY_OMITTED,
    HEADER_KEY_SHA256,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TIMESTAMP,
    HEADER_SOURCE_TOPIC,
    HEADER_VALUE_OMITTED,
    dead_letter_headers,
)
from signed_bus.errors import BadSignature, MalformedDeadLetter

OWN = [
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_TIMESTAMP,
    HEADER_ERROR,
    HEADER_VALUE_OMITTED,
    HEADER_KEY_OMITTED,
    HEADER_KEY_SHA256,
]


@dataclass
class Rec:
    headers: Any
    value: Any = b"original"
    key: Any = b"k"
    topic: str = "results.dlq"
    partition: int = 0
    offset: int = 7
    extra: dict[str, Any] = field(default_factory=dict)


def good_headers() -> list[tuple[str, bytes]]:
    error = BadSignature("signature does not verify", kid="k1", issuer="agent")
    return dead_letter_headers(error, topic="results", partition=2, offset=41, timestamp=5)


def replaced(name: str, value: object) -> list[tuple[str, object]]:
    return [(n, value if n == name else v) for n, v in good_headers()]


def test_a_letter_the_writer_makes_parses() -> None:
    letter = DeadLetter.from_record(Rec(good_headers()))
    assert (letter.reason, letter.source_topic, letter.source_partition) == (
        "bad_signature",
        "results",
        2,
    )
    assert letter.source_offset == 41 and letter.source_timestamp == 5
    assert letter.value == b"original" and letter.key == b"k"
    assert "kid='k1'" in letter.error
    # Foreign headers (tracing) are ignored, also when repeated.
    extra = [("traceparent", b"00-1"), ("traceparent", None), *good_headers()]
    assert DeadLetter.from_record(Rec(extra)).reason == "bad_signature"


@pytest.mark.parametrize("name", [HEADER_REASON, HEADER_SOURCE_TOPIC, HEADER_SOURCE_OFFSET])
def test_null_header_value_is_malformed(name: str) -> None:
    with pytest.raises(MalformedDeadLetter, match=name):
        DeadLetter.from_record(Rec(replaced(name, None)))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (HEADER_SOURCE_PARTITION, b"two"),
        (HEADER_SOURCE_PARTITION, b"-1"),
        (HEADER_SOURCE_PARTITION, b" 2"),
        (HEADER_SOURCE_PARTITION, b"1_0"),
        (HEADER_SOURCE_PARTITION, "\u0662".encode()),  # an Arabic-Indic digit: int() takes it
        (HEADER_SOURCE_OFFSET, b"9" * 5000),  # int() would parse it, slowly
        (HEADER_SOURCE_OFFSET, str(2**63).encode()),
        (HEADER_SOURCE_TIMESTAMP, b"now"),
        (HEADER_REASON, b"\xff\xfe"),
        (HEADER_REASON, b"bad signature\x1b[2K"),
        (HEADER_REASON, b"r" * 65),
        (HEADER_SOURCE_TOPIC, b"results\r\n"),
        (HEADER_SOURCE_TOPIC, b"t" * 250),
        (HEADER_SOURCE_TOPIC, b""),
        (HEADER_ERROR, b"e" * 5000),
        (HEADER_ERROR, "text"),  # not bytes
    ],
)
def test_garbage_header_value_is_malformed(name: str, value: object) -> None:
    with pytest.raises(MalformedDeadLetter, match=name) as info:
        DeadLetter.from_record(Rec(replaced(name, value)))
    assert isinstance(info.value, ValueError)
    assert "\x1b" not in str(info.value) and "\r" not in str(info.value)


def test_duplicate_own_header_is_malformed() -> None:
    for name in (HEADER_REASON, HEADER_SOURCE_TOPIC, HEADER_SOURCE_OFFSET):
        headers = [*good_headers(), (name, dict(good_headers())[name])]
        with pytest.raises(MalformedDeadLetter, match="more than once"):
            DeadLetter.from_record(Rec(headers))


def test_missing_header_and_bad_flags_are_malformed() -> None:
    for name in (HEADER_REASON, HEADER_SOURCE_TOPIC, HEADER_SOURCE_PARTITION, HEADER_SOURCE_OFFSET):
        with pytest.raises(MalformedDeadLetter, match="missing"):
            DeadLetter.from_record(Rec([h for h in good_headers() if h[0] != name]))
    with pytest.raises(MalformedDeadLetter, match=HEADER_VALUE_OMITTED):
        DeadLetter.from_record(Rec([*good_headers(), (HEADER_VALUE_OMITTED, b"yes")]))
    key_omitted = [*good_headers(), (HEADER_VALUE_OMITTED, b"1"), (HEADER_KEY_OMITTED, b"1")]
    with pytest.raises(MalformedDeadLetter, match=HEADER_KEY_SHA256):
        DeadLetter.from_record(Rec(key_omitted, key=None, value=b""))
    with pytest.raises(MalformedDeadLetter, match=HEADER_KEY_SHA256):
        DeadLetter.from_record(Rec([*key_omitted, (HEADER_KEY_SHA256, b"ABC")], key=None))
    letter = DeadLetter.from_record(
        Rec([*key_omitted, (HEADER_KEY_SHA256, b"a" * 64)], key=None, value=b"")
    )
    assert letter.key_omitted and letter.value_omitted and letter.key_sha256 == "a" * 64
    assert letter.key is None and letter.value is None


@pytest.mark.parametrize(
    "headers",
    [None, "signed-bus-reason", b"xx", 42, [("only-a-name",)], [42], [(HEADER_REASON, b"x", b"y")]],
)
def test_header_list_of_the_wrong_shape_is_malformed_or_empty(headers: object) -> None:
    with pytest.raises(MalformedDeadLetter):
        DeadLetter.from_record(Rec(headers))


def test_value_or_key_that_is_not_bytes_is_malformed() -> None:
    with pytest.raises(MalformedDeadLetter, match="bytes"):
        DeadLetter.from_record(Rec(good_headers(), value="text"))
    with pytest.raises(MalformedDeadLetter, match="bytes"):
        DeadLetter.from_record(Rec(good_headers(), key=3))


def test_null_value_is_a_letter_without_value() -> None:
    assert DeadLetter.from_record(Rec(good_headers(), value=None, key=None)).value is None


_names = st.one_of(st.sampled_from(OWN), st.text(max_size=30), st.binary(max_size=5), st.none())
_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from([b"1", b"0", b"-1", b"bad_signature", b"results", b"a" * 64, b"9" * 30]),
    st.text(max_size=10),
    st.integers(),
)
_item = st.one_of(
    st.tuples(_names, _values), st.lists(_values, max_size=3), st.none(), st.integers()
)


@given(
    st.lists(_item, max_size=14),
    st.one_of(st.none(), st.binary(max_size=8), st.text(max_size=3)),
    st.one_of(st.none(), st.binary(max_size=8), st.integers()),
)
def test_arbitrary_header_lists_parse_or_raise_malformed_only(
    headers: list[object], value: object, key: object
) -> None:
    try:
        letter = DeadLetter.from_record(Rec(headers, value=value, key=key))
    except MalformedDeadLetter as exc:
        assert isinstance(exc, ValueError) and str(exc).isprintable()
        return
    assert letter.source_topic.isprintable() and letter.reason.isprintable()
    assert letter.source_partition >= 0 and letter.source_offset >= 0


@given(st.permutations(good_headers()))
def test_header_order_does_not_matter(headers: list[tuple[str, bytes]]) -> None:
    assert DeadLetter.from_record(Rec(headers)).source_offset == 41


def test_an_undecodable_letter_names_its_skipped_range() -> None:
    from signed_bus.errors import Undecodable

    error = Undecodable("UnsupportedCodecError", last_offset=9).with_position("results", 2, 7)
    headers = dead_letter_headers(error, topic="results", partition=2, offset=7)
    letter = DeadLetter.from_record(Rec(headers, value=None, key=None))
    assert letter.reason == "undecodable"
    assert letter.not_decoded and letter.source_last_offset == 9
    assert (letter.source_offset, letter.value, letter.key) == (7, None, None)
    plain = DeadLetter.from_record(
        Rec(dead_letter_headers(BadSignature("x"), topic="results", partition=0, offset=1))
    )
    assert not plain.not_decoded and plain.source_last_offset is None
    backwards = [(n, b"3" if n.endswith("last-offset") else v) for n, v in headers]
    with pytest.raises(MalformedDeadLetter):  # a range cannot end before it starts
        DeadLetter.from_record(Rec(backwards, value=None, key=None))


def test_a_refused_letter_goes_alone_first_then_gives_up_value_then_key_then_is_dropped() -> None:
    """The one ladder both fronts' dead-letter senders climb after a "too large" refusal."""
    from signed_bus._deadletter import Omitted, after_refusal

    assert after_refusal(Omitted.NOTHING, False) == (Omitted.NOTHING, True)
    assert after_refusal(Omitted.VALUE, False) == (Omitted.VALUE, True)
    assert after_refusal(Omitted.NOTHING, True) == (Omitted.VALUE, True)
    assert after_refusal(Omitted.VALUE, True) == (Omitted.VALUE_AND_KEY, True)
    assert after_refusal(Omitted.VALUE_AND_KEY, True) is None
