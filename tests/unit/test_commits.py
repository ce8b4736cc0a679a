"""Coalesced offset commits (signed_bus._kafka.commits): when finished offsets go out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from signed_bus._kafka.commits import Commits
from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._kafka.options import ConsumerOptions
from signed_bus._metrics import ConsumerMetrics
from signed_bus.errors import ConfigurationError

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeKafka:
    """The two calls Commits makes on an AIOKafkaConsumer."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.commits.append(dict(offsets))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _commits(interval_ms: int) -> tuple[Commits, DeliveryCursor, FakeKafka, Clock]:
    kafka, clock = FakeKafka(), Clock()
    metrics = ConsumerMetrics()
    cursor = DeliveryCursor(metrics)
    fake: Any = kafka
    options = ConsumerOptions(
        bootstrap_servers="b", group_id="g", topics=["t"], commit_interval_ms=interval_ms
    )
    commits = Commits(lambda: fake, cursor, metrics, options, clock=clock)
    return commits, cursor, kafka, clock


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_finished_offsets_are_committed_at_most_once_per_interval() -> None:
    commits, cursor, kafka, clock = _commits(2_000)
    for offset in range(1, 50):  # 49 batch boundaries inside one interval
        cursor.mark_finished({TP0: offset})
        await commits.at_boundary()
        commits.tick()
        clock.now += 0.02
    await _settle()
    assert kafka.commits == []  # 0.98 s < 2 s: nothing due yet
    clock.now = 102.0
    await commits.at_boundary()
    await _settle()
    assert kafka.commits == [{TP0: 49}]  # one commit, the latest finished offset
    cursor.mark_finished({TP0: 60, TP1: 3})
    clock.now = 103.9
    commits.tick()
    await _settle()
    assert len(kafka.commits) == 1
    clock.now = 104.0
    commits.tick()
    await _settle()
    assert kafka.commits[-1] == {TP0: 60, TP1: 3}


async def test_an_explicit_commit_and_stop_commit_at_once_whatever_the_interval() -> None:
    commits, cursor, kafka, _ = _commits(60_000)
    cursor.mark_finished({TP0: 5})
    commits.tick()
    await _settle()
    assert kafka.commits == []
    await commits.commit()
    assert kafka.commits == [{TP0: 5}]
    cursor.mark_finished({TP0: 9})
    await commits.commit_quietly()  # what stop() calls
    assert kafka.commits[-1] == {TP0: 9}


async def test_revocation_commits_at_once_after_the_commit_in_flight() -> None:
    commits, cursor, kafka, clock = _commits(1_000)
    cursor.mark_finished({TP0: 4, TP1: 2})
    clock.now += 1.0
    kafka.gate = asyncio.Event()
    commits.tick()  # a background commit of {TP0: 4, TP1: 2}, held in flight
    await _settle()
    cursor.mark_finished({TP0: 8, TP1: 6})
    revoking = asyncio.ensure_future(commits.on_revoked({TP0}))
    await _settle()
    assert not revoking.done()  # waits for the older commit, which must not land after it
    kafka.gate.set()
    await revoking
    assert kafka.commits == [{TP0: 4, TP1: 2}, {TP0: 8}]
    assert cursor.finished == {TP1: 6}  # kept for the next commit


async def test_an_interval_of_zero_commits_at_every_batch_boundary_only() -> None:
    commits, cursor, kafka, _ = _commits(0)
    cursor.mark_finished({TP0: 1})
    commits.tick()
    await _settle()
    assert kafka.commits == []
    await commits.at_boundary()
    await _settle()
    assert kafka.commits == [{TP0: 1}]


async def test_a_failed_background_commit_raises_at_the_next_boundary() -> None:
    commits, cursor, kafka, clock = _commits(1_000)
    kafka.fail = KafkaError("coordinator gone")
    cursor.mark_finished({TP0: 3})
    clock.now += 1.0
    commits.tick()
    await _settle()
    cursor.mark_finished({TP0: 7})
    clock.now += 1.0
    commits.tick()  # does not swallow the failure by starting over
    with pytest.raises(KafkaError, match="coordinator gone"):
        await commits.at_boundary()
    kafka.fail = None
    await commits.commit()
    assert kafka.commits == [{TP0: 7}]


def test_consumer_options_pass_the_fetch_settings_and_refuse_bad_ones() -> None:
    base: dict[str, Any] = {"bootstrap_servers": "b", "group_id": "g", "topics": ["t"]}
    options = ConsumerOptions(**base)
    assert options.commit_interval_ms == 2_000
    assert options.fetch_min_bytes * 1000 / options.fetch_max_wait_ms > 1_000_000
    for name in ("fetch_min_bytes", "fetch_max_wait_ms", "commit_interval_ms"):
        with pytest.raises(ConfigurationError):
            ConsumerOptions(**{**base, name: 0 if name == "fetch_min_bytes" else -1})


async def test_the_built_consumer_gets_the_fetch_settings() -> None:
    options = ConsumerOptions(
        bootstrap_servers="127.0.0.1:1",
        group_id="g",
        topics=["t"],
        fetch_min_bytes=12_345,
        fetch_max_wait_ms=77,
    )
    consumer = options.build()
    try:  # aiokafka keeps them for its fetcher (no public getter)
        assert consumer._fetch_min_bytes == 12_345
        assert consumer._fetch_max_wait_ms == 77
    finally:
        await consumer.stop()


def test_the_cursor_hands_out_nothing_once_its_batch_is_due_for_a_recheck() -> None:
    cursor = DeliveryCursor(ConsumerMetrics())
    first, second = object(), object()
    entries: Any = [(TP0, 1, first), (TP0, 2, None), (TP0, 3, second)]
    cursor.load(entries, checked_at=1_000)
    assert cursor.next_unless_due(1_500, 500) is first  # 500 ms after the check: not due
    assert cursor.next_unless_due(1_501, 500) is None  # due: nothing handed out
    assert cursor.waiting() == entries[1:]  # nor passed over
    assert cursor.due(1_501, 500)
    assert cursor.next_unless_due(None, 500) is second  # None: never due
    assert cursor.next_unless_due(10_000, 500) is None  # empty: nothing to hand out
    cursor.finish()
    assert cursor.finished == {TP0: 3}
