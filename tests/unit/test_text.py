"""printable(): the one escaping function for record text shown on terminals and in logs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signed_bus import printable

BIDI = [
    "\u061c",
    "\u200e",
    "\u200f",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
]


def test_plain_text_is_unchanged() -> None:
    for text in ("incident-lm@1.3.0", "planner", "résumé-modèle", "模型", "a b", ""):
        assert printable(text) == text


def test_terminal_controls_are_escaped() -> None:
    forged = "m\r\x1b[2K chain verified\n\tfake\x07\x00\x7f"
    assert printable(forged) == "m\\x0d\\x1b[2K chain verified\\x0a\\x09fake\\x07\\x00\\x7f"


def test_every_c0_and_c1_control_is_escaped() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        shown = printable(chr(code))
        assert shown.startswith("\\") and shown.isprintable() and shown.isascii(), hex(code)
    assert printable("\x85") == "\\u0085"  # NEL: a C1 line break


@pytest.mark.parametrize("char", [*BIDI, "\u2028", "\u2029", "\u200b", "\ufeff", "\udc80"])
def test_bidi_controls_separators_and_invisible_characters_are_escaped(char: str) -> None:
    shown = printable(f"a{char}b")
    assert shown == f"a\\u{ord(char):04x}b"


def test_backslash_is_escaped_so_escapes_cannot_be_forged() -> None:
    # Text that spells an escape stays distinguishable from an escaped control character.
    assert printable("\\x1b") == "\\\\x1b"
    assert printable("\\x1b") != printable("\x1b")


def test_bytes_invalid_utf8_shown_as_byte_escapes() -> None:
    assert printable(b"ok") == "ok"
    assert printable("é".encode()) == "é"
    assert printable(b"a\xffb\xc3") == "a\\xffb\\xc3"
    # A C1 control encoded in UTF-8 and the raw byte of the same value are told apart.
    assert printable("\x85".encode()) == "\\u0085" and printable(b"\x85") == "\\x85"
    assert printable(b"\x1b[2K\r") == "\\x1b[2K\\x0d"


def test_other_values_are_shown_not_raised_on() -> None:
    assert printable(None) == "None"  # type: ignore[arg-type]
    assert printable(42) == "42"  # type: ignore[arg-type]


@given(st.one_of(st.text(), st.binary()))
def test_output_is_always_one_safe_line(value: str | bytes) -> None:
    shown = printable(value)
    assert shown.isprintable()
    assert all(ch == "\\" or ch.isprintable() for ch in shown)


@given(st.text())
def test_escaping_is_injective_on_text(text: str) -> None:
    # Decoding the escapes gives the text back: no two texts are shown the same.
    shown = printable(text)
    assert shown.encode("ascii", "backslashreplace").decode("unicode_escape") == text


# -- where it is applied ---------------------------------------------------------------------

FORGED = "x\n\r\x1b[2Kchain verified\u202e"
RAW = ("\n", "\r", "\x1b", "\u202e")


def assert_one_safe_line(text: str) -> None:
    for char in RAW:
        assert char not in text, repr(text)
    assert "\\x1b[2K" in text and "\\u202e" in text


def test_verification_error_str_escapes_record_context_and_message() -> None:
    from signed_bus.errors import UntrustedIssuer

    error = UntrustedIssuer(f"about {FORGED}", kid="k\x1b", issuer=FORGED).with_position(
        "t\r", 1, 2
    )
    text = str(error)
    assert_one_safe_line(text)
    assert text.startswith("untrusted_issuer: about x\\x0a")
    assert "partition=1, offset=2" in text and "kid='k\\x1b'" in text
    assert_one_safe_line(repr(error))
    # Escaped for output only: the attributes keep what the record said.
    assert error.issuer == FORGED and error.topic == "t\r"


def test_trace_link_describe_escapes_record_text() -> None:
    from signed_bus._keys import Keyring, generate_ed25519_key
    from signed_bus._provenance import Position, TraceLink, TraceReport
    from signed_bus._signer import Signer
    from signed_bus._verifier import Verifier

    ring = Keyring([generate_ed25519_key("k1", ["agent"])])
    value = Signer(ring, kid="k1", issuer="agent", model=FORGED).sign({}, topic="t", key=None)
    message = Verifier(ring, audit=True).verify(value, topic="t", key=None)
    ok = TraceLink(
        depth=0, digest=bytes(32), status="ok", position=Position("t", 0, 1), message=message
    )
    bad = TraceLink(
        depth=1,
        digest=bytes(32),
        status="invalid",
        position=Position("t\x1b", 0, 2),
        reason="bad_signature",
        detail=FORGED,
    )
    lines = TraceReport([ok, bad]).format().split("\n")
    assert len(lines) == 3 and lines[-1].startswith("chain BROKEN")
    for line in lines[:2]:
        assert_one_safe_line(line)


def test_demo_report_escapes_what_records_and_dead_letters_say() -> None:
    from demo.report import Findings, format_report

    findings = Findings(
        produced=1,
        dropped_by_topic={f"t{FORGED}": {f"r{FORGED}": 1}},
        through=[f"planner received altered output for {FORGED}"],
        problems=["1 sign(s) of an attack getting through"],
    )
    text = format_report(findings, trace=None, elapsed_s=1)
    for line in text.split("\n"):
        for char in RAW[1:]:
            assert char not in line
    assert "altered output for x\\x0a\\x0d\\x1b[2Kchain verified\\u202e" in text
    assert not any(line.startswith("chain verified") for line in text.split("\n"))


def test_a_quote_in_error_context_cannot_forge_another_field() -> None:
    from signed_bus.errors import UntrustedIssuer

    text = str(UntrustedIssuer("no", kid="k", issuer="a', topic='forged"))
    assert "topic='forged'" not in text
    assert "issuer='a\\', topic=\\'forged'" in text


async def test_a_garbled_provenance_entry_reads_as_not_indexed() -> None:
    from signed_bus._provenance import Position, ProvenanceIndex

    class Entries:
        def __init__(self, value: object) -> None:
            self.value = value

        async def get(self, key: str) -> object:
            return self.value

    for raw in (b"garbage", b"\xff:1:t", b"1:x:t", b"-1:2:t", b"1:2:", b"\x1b[2K:1:t"):
        index = ProvenanceIndex(Entries(raw), ttl_ms=1_000)  # type: ignore[arg-type]
        assert await index.lookup(b"\x00" * 32) is None, raw
    index = ProvenanceIndex(Entries(b"3:7:inference.results"), ttl_ms=1_000)  # type: ignore[arg-type]
    assert await index.lookup(b"\x00" * 32) == Position("inference.results", 3, 7)
