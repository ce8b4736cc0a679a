"""The reference auditor survives forged dead letters: bounded tables, escaped logs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from consumers.auditor import (
    MAX_EXTRA_TOPICS,
    OTHER,
    Auditor,
    format_summary,
    reason_codes,
    tail_dead_letters,
)
from signed_bus._deadletter import dead_letter_headers
from signed_bus.errors import BadSignature, ReplayDetected

AUDITED = ["results", "plans"]


@dataclass
class Rec:
    headers: Any
    value: bytes | None = b"v"
    key: bytes | None = None
    topic: str = "results.dlq"
    partition: int = 0
    offset: int = 0


def letter(topic: str = "results", reason: str | None = None) -> Rec:
    headers = dead_letter_headers(
        BadSignature("no", kid="k1", issuer="a"), topic=topic, partition=0, offset=1
    )
    if reason is not None:
        headers = [(n, reason.encode() if n == "signed-bus-reason" else v) for n, v in headers]
    return Rec(headers)


def forged() -> list[Rec]:
    """What anyone with write rights on a dead-letter topic can put there."""
    null = [(name, None) for name, _ in letter().headers]
    evil = "x\n\r\x1b[2Kauditor: all clear\u202e"
    return [
        Rec(null),
        Rec(None),
        Rec([("signed-bus-reason", b"replay")] * 2),
        Rec([(n, evil.encode()) for n, _ in letter().headers]),
        *(letter(topic=f"t{i}") for i in range(500)),  # topic labels without end
        *(letter(reason=f"r{i}") for i in range(500)),  # reason labels without end
    ]


class FakeConsumer:
    """getmany() hands out the given batches, then sets ``stop``."""

    def __init__(self, batches: list[list[Rec]], stop: asyncio.Event) -> None:
        self.batches = batches
        self.stop = stop
        self.commits = 0

    async def getmany(self, **_: Any) -> dict[str, list[Rec]]:
        if not self.batches:
            self.stop.set()
            return {}
        return {"tp": self.batches.pop(0)}

    async def commit(self) -> None:
        self.commits += 1


def labels(auditor: Auditor) -> tuple[set[str], set[str]]:
    topics = set(auditor.dead_letters)
    reasons = {r for counts in auditor.dead_letters.values() for r in counts}
    return topics, reasons


async def test_forged_letters_neither_stop_the_auditor_nor_grow_its_tables(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auditor = Auditor(index=None, topics=AUDITED)  # type: ignore[arg-type]
    stop = asyncio.Event()
    records = [letter("results", "replay"), *forged(), letter("plans", "expired")]
    consumer = FakeConsumer([records[:300], records[300:]], stop)
    log = logging.getLogger("test-auditor")
    with caplog.at_level(logging.WARNING, logger="test-auditor"):
        await asyncio.wait_for(tail_dead_letters(auditor, consumer, stop, log), 10)
    assert consumer.commits == 2  # both batches read past, nothing left to crash on again
    assert auditor.malformed_dead_letters == 4
    topics, reasons = labels(auditor)
    assert {"results", "plans", OTHER} <= topics
    assert len(topics) <= len(AUDITED) + MAX_EXTRA_TOPICS + 1
    assert reasons <= reason_codes() | {OTHER}
    assert auditor.dead_letters["results"]["replay"] == 1
    assert auditor.dead_letters["plans"]["expired"] == 1
    counted = sum(sum(c.values()) for c in auditor.dead_letters.values())
    assert counted + auditor.malformed_dead_letters == len(records)  # nothing silently lost
    messages = [r.getMessage() for r in caplog.records if r.name == "test-auditor"]
    assert len(messages) == 4 and all("is not a dead letter" in m for m in messages)
    for text in [*messages, format_summary(auditor.summary({}))]:
        assert text.isprintable(), repr(text)


def test_malformed_letters_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    from consumers.auditor import count_dead_letter

    auditor = Auditor(index=None)  # type: ignore[arg-type]
    log = logging.getLogger("test-auditor-rate")
    with caplog.at_level(logging.WARNING, logger="test-auditor-rate"):
        for offset in range(2500):
            count_dead_letter(auditor, Rec([("signed-bus-reason", None)], offset=offset), log)
    assert auditor.malformed_dead_letters == 2500
    ours = [r for r in caplog.records if r.name == "test-auditor-rate"]  # not other threads'
    assert len(ours) == 10 + 2  # the first ten, then at 1000 and 2000
    assert "2000 such record(s) so far" in ours[-1].getMessage()


def test_reason_codes_are_the_library_codes() -> None:
    codes = reason_codes()
    assert {"bad_signature", "replay", "expired", "malformed", "unknown_key"} <= codes
    assert ReplayDetected.reason in codes and OTHER not in codes


def test_summary_line_escapes_topic_and_reason_labels() -> None:
    summary = {
        "topics": {"t\x1b": {"ok": 1, "rejected": {"r\r": 2}, "records": 3}},
        "dead_letters": {"d\n": {"e\u202e": 1}},
        "malformed_dead_letters": 2,
        "indexed": 1,
    }
    text = format_summary(summary)
    assert text.isprintable()
    assert "t\\x1b: ok=1 rejected[r\\x0d=2]" in text and "dlq(d\\x0a): e\\u202e=1" in text
    assert "dlq malformed=2" in text
