"""The confluent front's dead-letter sender on a scripted librdkafka producer: a letter refused
as too large in company is sent again alone, whole; once a lone letter fails for a reason a
retry may cure, the rest waits for the backoff instead of a flush each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from signed_bus._kafka.options import Backoff
from signed_bus._metrics import ConsumerMetrics
from signed_bus.confluent._settle import DeadLetters
from signed_bus.errors import BadSignature
from tests.unit.test_consumer_unit import record

Report = Callable[[KafkaError | None, object], None]


class ScriptedProducer:
    """produce() queues; flush() answers each queued letter with the next scripted outcome
    (None: delivered, or a KafkaError), recording what each flush carried."""

    def __init__(self, *outcomes: KafkaError | None) -> None:
        self.outcomes = list(outcomes)
        self.queued: list[tuple[bytes, Report]] = []
        self.flushes: list[list[bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, **kwargs: Any) -> None:
        self.queued.append((value, kwargs["on_delivery"]))

    def flush(self, timeout: float) -> int:
        if self.queued:
            self.flushes.append([value for value, _ in self.queued])
        for _, report in self.queued:
            report(self.outcomes.pop(0), None)
        self.queued.clear()
        return 0

    def poll(self, timeout: float) -> int:
        return 0


def _letters(producer: ScriptedProducer) -> tuple[DeadLetters, ConsumerMetrics]:
    metrics = ConsumerMetrics()
    letters = DeadLetters(
        producer,  # type: ignore[arg-type]
        "dlq",
        backoff=Backoff(initial_ms=1, max_ms=1),
        metrics=metrics,
    )
    return letters, metrics


TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)


def _rejected(*values: bytes) -> list[tuple[Any, BadSignature]]:
    return [(record(v, offset=n), BadSignature("no")) for n, v in enumerate(values)]


def test_letters_refused_together_are_sent_again_alone_whole() -> None:
    producer = ScriptedProducer(TOO_LARGE, TOO_LARGE, None, None)
    letters, metrics = _letters(producer)
    holds: list[float] = []

    def hold(seconds: float) -> bool:
        holds.append(seconds)
        return True

    assert letters.send(_rejected(b"first", b"second"), hold)
    assert producer.flushes == [[b"first", b"second"], [b"first"], [b"second"]]
    assert metrics.dead_lettered == 2 and metrics.dead_letters_dropped == 0 and holds == []


def test_a_lone_letter_failing_retriably_sends_the_rest_after_the_backoff() -> None:
    producer = ScriptedProducer(TOO_LARGE, TOO_LARGE, TIMED_OUT, None, None)
    letters, metrics = _letters(producer)
    flushes_at_hold: list[int] = []

    def hold(seconds: float) -> bool:
        flushes_at_hold.append(len(producer.flushes))
        return True

    assert letters.send(_rejected(b"first", b"second"), hold)
    assert flushes_at_hold == [2]  # "second" was not flushed alone before the backoff
    assert producer.flushes[:2] == [[b"first", b"second"], [b"first"]]
    assert sorted(v for flush in producer.flushes[2:] for v in flush) == [b"first", b"second"]
    assert metrics.dead_lettered == 2 and metrics.dead_letter_retries == 1
