"""Pure logic of the Kafka wrappers: options, backoff, batch verification (the gate), settling
(claims, holds, dead letters), delivery bookkeeping (the cursor) and dead-letter headers. No broker
and no Redis: the aiokafka objects are built, never started."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)

from signed_bus._deadletter import (
    HEADER_ERROR,
    HEADER_KEY_OMITTED,
    HEADER_KEY_SHA256,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TIMESTAMP,
    HEADER_SOURCE_TOPIC,
    HEADER_VALUE_NULL,
    HEADER_VALUE_OMITTED,
    DeadLetter,
    dead_letter_headers,
    header_map,
)
from signed_bus._freshness import Freshness
from signed_bus._gate import Gate
from signed_bus._kafka.consumer import (
    Backoff,
    ConsumedBatch,
    ConsumedMessage,
    ConsumerOptions,
    VerifyingConsumer,
)
from signed_bus._kafka.cursor import DeliveryCursor
from signed_bus._kafka.deadletters import DeadLetterSender, DeadLetterWriter, is_retriable
from signed_bus._kafka.producer import ProducerOptions, SignedProducer
from signed_bus._kafka.relay import Output, Relay
from signed_bus._kafka.settle import Settler
from signed_bus._keys import Keyring, generate_hmac_key
from signed_bus._metrics import ConsumerMetrics
from signed_bus._provenance import RecordFetcher
from signed_bus._replay.guard import ClaimRow, ClaimVerdict, RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import (
    BadSignature,
    ConfigurationError,
    Expired,
    MalformedEnvelope,
    ReplayGuardUnavailable,
    Stopped,
)

NOW = 1_800_000_000_000
TOPIC = "results"


def ring() -> Keyring:
    return Keyring([generate_hmac_key("k1", ["agent"])])


def record(
    value: bytes | None,
    *,
    offset: int,
    partition: int = 0,
    topic: str = TOPIC,
    timestamp: int = NOW,
    timestamp_type: int = 1,
    key: bytes | None = None,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=timestamp_type,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value or b""),
        headers=(),
    )


OPTIONS = ConsumerOptions(bootstrap_servers="127.0.0.1:1", group_id="g", topics=[TOPIC])


async def no_hold(seconds: float) -> bool:
    return True


def settler(
    verifier: Verifier,
    guard: RedisReplayGuard | None,
    *,
    producer: ScriptedProducer | None = None,
    hold: Any = no_hold,
) -> tuple[Gate, Settler]:
    """A gate and the settler that drives it (what VerifyingConsumer builds), with ``hold``
    standing in for the consumer's paused polling and ``producer`` for the dead-letter one."""
    gate = Gate(verifier)
    backoff = Backoff(initial_ms=1, max_ms=1)
    settling = Settler(gate, guard, backoff=backoff, hold=hold)
    if producer is not None:
        writer = DeadLetterWriter(producer, "dlq")
        settling.dead_letters = DeadLetterSender(
            writer, backoff=backoff, metrics=gate.metrics, hold=hold
        )
    return gate, settling


@pytest.fixture
async def guard() -> AsyncIterator[RedisReplayGuard]:
    # Never connects: from_url builds a lazy client; these tests make no claims (or replace
    # claim). It holds no window: every claim carries the claiming verifier's.
    g = RedisReplayGuard.from_url("redis://127.0.0.1:1/0")
    yield g
    await g.stop()


# -- options ------------------------------------------------------------------------------------


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    backoff = Backoff(initial_ms=100, max_ms=1_000, multiplier=2.0, jitter=0.2)
    middle = [backoff.delay(n, rand=lambda: 0.5) for n in range(1, 7)]
    assert middle == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(1, rand=lambda: 0.0) == pytest.approx(0.08)
    assert backoff.delay(1, rand=lambda: 1.0) == pytest.approx(0.12)
    assert backoff.delay(10_000, rand=lambda: 1.0) == pytest.approx(1.2)  # no overflow
    bad: dict[str, Any]
    for bad in (
        {"initial_ms": 0},
        {"initial_ms": 500, "max_ms": 100},
        {"multiplier": 0.5},
        {"jitter": 1.0},
    ):
        with pytest.raises(ConfigurationError):
            Backoff(**bad)


def test_consumer_options_validate_and_hide_security() -> None:
    options = ConsumerOptions(
        bootstrap_servers="b:9092",
        group_id="g",
        topics=["t"],
        security={"sasl_plain_password": "hunter2", "security_protocol": "SASL_SSL"},
    )
    assert "hunter2" not in repr(options)
    bad: dict[str, Any]
    for bad in (
        {"topics": []},
        {"topics": "t"},
        {"group_id": ""},
        {"auto_offset_reset": "none"},
        {"security": {"enable_auto_commit": True}},
    ):
        kwargs: dict[str, Any] = {"bootstrap_servers": "b", "group_id": "g", "topics": ["t"]}
        kwargs.update(bad)
        with pytest.raises(ConfigurationError):
            ConsumerOptions(**kwargs)
    dead_letters = options.dead_letter_producer()
    # acks=all, not idempotent, small batches: a refused batch is resent letter by letter
    assert dead_letters.acks == "all" and not dead_letters.enable_idempotence
    assert dead_letters.max_batch_size == 16_384 and dead_letters.security == options.security


def test_producer_options_validate_and_hide_security() -> None:
    options = ProducerOptions(bootstrap_servers="b", security={"sasl_plain_password": "hunter2"})
    assert "hunter2" not in repr(options)
    assert options.acks == "all" and options.enable_idempotence
    with pytest.raises(ConfigurationError, match="acks"):
        ProducerOptions(bootstrap_servers="b", acks=1)
    ProducerOptions(bootstrap_servers="b", acks=1, enable_idempotence=False)
    with pytest.raises(ConfigurationError, match="unknown"):
        ProducerOptions(bootstrap_servers="b", security={"linger_ms": 5})


async def test_a_handed_in_kafka_consumer_is_refused(guard: RedisReplayGuard) -> None:
    # aiokafka's documented API cannot tell auto commit, the group or the isolation level of a
    # built consumer: VerifyingConsumer builds its own from options, and takes nothing else.
    verifier = Verifier(ring())
    consumer = AIOKafkaConsumer(
        bootstrap_servers="127.0.0.1:1",
        group_id="g",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        with pytest.raises(ConfigurationError, match="ConsumerOptions"):
            VerifyingConsumer.from_options(consumer, verifier=verifier, guard=guard)
        with pytest.raises(TypeError):  # no positional first argument any more
            VerifyingConsumer(OPTIONS, verifier=verifier, guard=guard)  # type: ignore[call-arg]
    finally:
        await consumer.stop()


def test_consumer_options_refuse_extra_options_the_library_owns() -> None:
    base: dict[str, Any] = {"bootstrap_servers": "b", "group_id": "g", "topics": ["t"]}
    owned_names = ("enable_auto_commit", "isolation_level", "group_id", "sasl_plain_password")
    for owned in (*owned_names, "fetch_min_bytes"):
        with pytest.raises(ConfigurationError, match=owned):
            ConsumerOptions(**base, extra={owned: "x"})
    options = ConsumerOptions(**base, extra={"metadata_max_age_ms": 2, "retry_backoff_ms": 50})
    assert "metadata_max_age_ms" not in repr(options)


async def test_consumer_needs_a_guard_unless_auditing(guard: RedisReplayGuard) -> None:
    keys = ring()
    build = VerifyingConsumer.from_options
    with pytest.raises(ConfigurationError, match="replay guard"):
        build(OPTIONS, verifier=Verifier(keys))
    with pytest.raises(ConfigurationError, match="audit"):
        build(OPTIONS, verifier=Verifier(keys, audit=True), guard=guard)
    build(OPTIONS, verifier=Verifier(keys, audit=True))
    with pytest.raises(ConfigurationError, match="dead_letter_producer"):
        build(
            OPTIONS,
            verifier=Verifier(keys),
            guard=guard,
            dead_letter_producer=object(),
        )
    with pytest.raises(ConfigurationError):
        build(OPTIONS, verifier=Verifier(keys), guard=guard, max_records=0)


async def test_a_stopped_consumer_refuses_start_and_use_with_stopped(
    guard: RedisReplayGuard,
) -> None:
    consumer = VerifyingConsumer.from_options(OPTIONS, verifier=Verifier(ring()), guard=guard)
    await consumer.stop()  # never started: stopping still ends it
    with pytest.raises(Stopped):
        await consumer.start()
    with pytest.raises(Stopped):
        await consumer.getbatch()
    with pytest.raises(Stopped):
        await consumer.commit()
    with pytest.raises(Stopped):
        await consumer.run(lambda m: asyncio.sleep(0))
    assert [m async for m in consumer] == []  # async for just ends


async def test_every_claim_carries_the_verifiers_window(guard: RedisReplayGuard) -> None:
    # The guard holds no window that could be shorter than the verifier's (what the consumer
    # used to refuse): the consumer hands its verifier's Freshness with every claim, and the
    # guard keeps each nonce for that window's retention (the TTL in Redis:
    # tests/integration/test_replay_guard.py). Any window is accepted with any guard.
    keys = ring()
    short = Freshness(max_age_ms=60_000, future_skew_ms=1_000, max_lag_ms=0)
    seen: list[tuple[list[ClaimRow], Freshness]] = []

    async def claim(claims: Sequence[ClaimRow], *, freshness: Freshness) -> list[ClaimVerdict]:
        seen.append((list(claims), freshness))
        return [ClaimVerdict.NEW] * len(claims)

    guard.claim = claim  # type: ignore[method-assign]
    signer = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW)
    tp = TopicPartition(TOPIC, 2)
    for window in (short, Freshness(), Freshness(max_age_ms=10 * 3_600_000)):
        verifier = Verifier(keys, freshness=window, clock=lambda: NOW)
        assert verifier.freshness is window
        gate, settling = settler(verifier, guard)
        values = [signer.sign({"x": i}, topic=TOPIC) for i in range(3)]
        batch = gate.receive(
            {tp: [record(v, offset=5 + i, partition=2) for i, v in enumerate(values)]}
        )
        entries = await settling.settle(batch, set())
        assert entries is not None
        assert [m.offset for _, _, m in entries if m is not None] == [5, 6, 7]
        rows, freshness = seen.pop()
        assert not seen  # one claim for the batch
        assert freshness is window  # the very value the verifier checked the records with
        nonces = [Verifier(keys, audit=True).verify(v, topic=TOPIC, key=None).nonce for v in values]
        assert [tuple(row) for row in rows] == [
            ("agent", nonce, NOW, TOPIC, 2, 5 + i) for i, nonce in enumerate(nonces)
        ]


# -- batch verification ------------------------------------------------------------------------


async def test_verify_uses_append_time_and_warns_once_per_create_time_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = ring()
    hour_ago = NOW - 3_600_000
    signer = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: hour_ago)
    # The consumer's own clock says NOW: by it every envelope is an hour old.
    consumer = Gate(Verifier(keys, clock=lambda: NOW))
    value = signer.sign({"x": 1}, topic=TOPIC)
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition("legacy", 0)
    records = {
        tp0: [
            record(value, offset=7, timestamp=hour_ago + 10),  # append time: fresh
            record(None, offset=8),  # tombstone
            record(b"\xc1junk", offset=9),
            record(signer.sign({"x": 2}, topic=TOPIC), offset=10, timestamp=NOW),  # old by now
        ],
        tp1: [
            record(
                signer.sign({"x": 3}, topic="legacy"), offset=0, topic="legacy", timestamp_type=0
            ),
            record(
                signer.sign({"x": 4}, topic="legacy"), offset=1, topic="legacy", timestamp_type=0
            ),
        ],
    }
    with caplog.at_level(logging.WARNING, logger="signed_bus.consumer"):
        batch = consumer.receive(records)
    assert [(e[0], e[1]) for e in batch.entries] == [
        (tp0, 8),
        (tp0, 9),
        (tp0, 10),
        (tp0, 11),
        (tp1, 1),
        (tp1, 2),
    ]
    assert all(e[2] is None for e in batch.entries)  # nothing deliverable before the claim
    assert [(index, tp, r.offset) for index, tp, r, _ in batch.verified] == [(0, tp0, 7)]
    reasons = [(r.offset, e.reason) for r, e in batch.rejected]
    assert reasons == [
        (8, "malformed"),
        (9, "malformed"),
        (10, "expired"),
        (0, "expired"),
        (1, "expired"),
    ]
    warnings = [r for r in caplog.records if "CreateTime" in r.getMessage()]
    assert len(warnings) == 1 and "legacy" in warnings[0].getMessage()
    assert consumer.metrics.records == 6 and consumer.metrics.batches == 1


async def test_a_verifier_bug_rejects_the_record_instead_of_stopping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Verifier):
        def verify(self, *args: Any, **kwargs: Any) -> Any:
            raise ZeroDivisionError("bug")

    gate = Gate(Broken(ring()))
    with caplog.at_level(logging.ERROR, logger="signed_bus.consumer"):
        batch = gate.receive({TopicPartition(TOPIC, 0): [record(b"v", offset=0)]})
    ((_, error),) = batch.rejected
    assert error.reason == "malformed" and "ZeroDivisionError" in str(error)


# -- a batch held while the replay guard is unavailable -----------------------------------------


async def test_a_record_that_expires_while_held_for_redis_is_dead_lettered_not_claimed(
    guard: RedisReplayGuard, caplog: pytest.LogCaptureFixture
) -> None:
    keys = ring()
    now = [NOW]
    verifier = Verifier(keys, clock=lambda: now[0])
    window = verifier.freshness.max_age_ms + verifier.freshness.max_lag_ms
    assert verifier.freshness.oldest_acceptable(NOW) == NOW - window
    # Signed at the very edge of the window: verifies now, expires 1 ms later.
    edge = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW - window)
    fresh = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW)
    claimed: list[list[ClaimRow]] = []
    windows: list[Freshness] = []

    async def claim(claims: Sequence[ClaimRow], *, freshness: Freshness) -> list[ClaimVerdict]:
        claimed.append(list(claims))
        windows.append(freshness)
        if len(claimed) == 1:
            raise ReplayGuardUnavailable("redis down")
        return [ClaimVerdict.NEW] * len(claims)

    guard.claim = claim  # type: ignore[method-assign]
    producer = ScriptedProducer("ok")

    async def hold(seconds: float) -> bool:  # Redis stays down past the edge record's window
        now[0] += 5_000
        return True

    consumer, settling = settler(verifier, guard, producer=producer, hold=hold)
    tp = TopicPartition(TOPIC, 0)
    # Appended when signed (LogAppendTime); a consumer lagging by max_lag still takes it.
    records = {
        tp: [
            record(edge.sign({"x": 1}, topic=TOPIC), offset=0, timestamp=NOW - window),
            record(fresh.sign({"x": 2}, topic=TOPIC), offset=1),
        ]
    }
    batch = consumer.receive(records)
    assert [r.offset for _, _, r, _ in batch.verified] == [0, 1]  # both fresh when fetched
    with caplog.at_level(logging.WARNING, logger="signed_bus.consumer"):
        entries = await settling.settle(batch, set())
    assert entries is not None
    # First attempt (before the hold) claimed both; the retry claimed only the fresh one.
    assert [[row[5] for row in rows] for rows in claimed] == [[0, 1], [1]]
    assert windows == [verifier.freshness] * 2  # the retry claims with the same window
    assert all(w is verifier.freshness for w in windows)
    delivered = [m.offset for _, _, m in entries if m is not None]
    assert delivered == [1]
    assert [(t, o) for t, o, _ in entries] == [(tp, 1), (tp, 2)]  # 0 is still committed past
    assert consumer.metrics.rejected == {"expired": 1}
    assert consumer.metrics.dead_lettered == 1 and consumer.metrics.guard_retries == 1
    (letter,) = [DeadLetter.from_record(stored_letter(sent)) for sent in producer.sent]
    assert (letter.reason, letter.source_offset) == ("expired", 0)
    assert "held" in letter.error and "Redis" in letter.error
    rejected_logs = [r for r in caplog.records if "rejected record" in r.getMessage()]
    assert len(rejected_logs) == 1 and "held" in rejected_logs[0].getMessage()


async def test_a_held_batch_whose_records_all_expire_claims_nothing(
    guard: RedisReplayGuard,
) -> None:
    keys = ring()
    now = [NOW]
    verifier = Verifier(keys, clock=lambda: now[0])
    window = verifier.freshness.max_age_ms + verifier.freshness.max_lag_ms
    edge = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW - window)
    calls: list[int] = []

    async def claim(claims: Sequence[ClaimRow], *, freshness: Freshness) -> list[ClaimVerdict]:
        calls.append(len(claims))
        raise ReplayGuardUnavailable("redis down")

    guard.claim = claim  # type: ignore[method-assign]

    async def hold(seconds: float) -> bool:
        now[0] += 1
        return True

    consumer, settling = settler(verifier, guard, hold=hold)
    value = edge.sign({"x": 1}, topic=TOPIC)
    batch = consumer.receive(
        {TopicPartition(TOPIC, 0): [record(value, offset=4, timestamp=NOW - window)]}
    )
    entries = await settling.settle(batch, set())
    assert entries is not None and all(m is None for _, _, m in entries)
    assert calls == [1]  # no retry: nothing left to claim
    assert consumer.metrics.rejected == {"expired": 1} and not consumer.metrics.guard_waiting


# -- delivery bookkeeping --------------------------------------------------------------------------


def message(offset: int, partition: int = 0) -> ConsumedMessage:
    keys = ring()
    value = Signer(keys, kid="k1", issuer="agent", model="m").sign({"o": offset}, topic=TOPIC)
    verified = Verifier(keys).verify(value, topic=TOPIC, key=None)
    return ConsumedMessage(
        verified, record(value, offset=offset, partition=partition), ClaimVerdict.NEW
    )


async def test_offsets_finish_in_order_and_an_unfinished_message_comes_again() -> None:
    metrics = ConsumerMetrics()
    consumer = DeliveryCursor(metrics)
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    # p0: 0 delivered, 1 rejected, 2 delivered; p1: 5 rejected, 6 delivered, 7 rejected.
    consumer.load(
        [
            (p0, 1, message(0)),
            (p0, 2, None),
            (p0, 3, message(2)),
            (p1, 6, None),
            (p1, 7, message(6, 1)),
            (p1, 8, None),
        ],
        0,
    )
    first = consumer.next()
    assert first is not None and first.offset == 0
    assert consumer.finished == {}  # handed out, not finished
    consumer.finish()
    assert consumer.finished == {p0: 1}
    second = consumer.next()
    assert second is not None and second.offset == 2
    assert consumer.finished == {p0: 2}  # the rejected record before it is finished
    consumer.rewind()  # the handler failed: 2 was never finished and comes again
    again = consumer.next()
    assert again is second and consumer.finished == {p0: 2}
    consumer.finish()
    third = consumer.next()
    assert third is not None and (third.partition, third.offset) == (1, 6)
    assert consumer.finished == {p0: 3, p1: 6}
    consumer.finish()
    assert consumer.next() is None
    assert consumer.finished == {p0: 3, p1: 8}  # trailing rejected records finished too
    assert metrics.delivered == 4  # 2 was handed out twice


async def test_revoked_partitions_are_skipped_and_never_marked_finished() -> None:
    consumer = DeliveryCursor(ConsumerMetrics())
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.load([(p0, 1, message(0)), (p1, 1, message(0, 1)), (p1, 2, None)], 0)
    first = consumer.next()
    assert first is not None
    assert consumer.revoked == set()
    # A rebalance took both while 0 was being handled: nothing finished to commit yet.
    assert consumer.revoke({p0, p1}) == {}
    assert consumer.revoked == {p0, p1}
    consumer.finish()
    assert consumer.next() is None
    assert consumer.finished == {}


def test_consumed_message_reads_through_to_the_envelope_and_the_record() -> None:
    m = message(3, partition=1)
    assert m.payload == {"o": 3} and m.body == m.verified.body
    assert (m.topic, m.partition, m.offset, m.timestamp, m.timestamp_type) == (TOPIC, 1, 3, NOW, 1)
    assert m.key is None and m.headers == () and m.claim is ClaimVerdict.NEW
    with pytest.raises(AttributeError):
        m.claim = None  # type: ignore[misc]


# -- dead letters -------------------------------------------------------------------------------


def test_dead_letter_headers_round_trip_without_payload() -> None:
    error = BadSignature("signature does not verify", kid="k1", issuer="agent").with_position(
        TOPIC, 2, 41
    )
    headers = dead_letter_headers(error, topic=TOPIC, partition=2, offset=41, timestamp=NOW)
    found = header_map(headers)
    assert found[HEADER_REASON] == b"bad_signature"
    assert found[HEADER_SOURCE_TOPIC] == TOPIC.encode()
    assert found[HEADER_SOURCE_PARTITION] == b"2" and found[HEADER_SOURCE_OFFSET] == b"41"
    assert found[HEADER_SOURCE_TIMESTAMP] == str(NOW).encode()
    assert found[HEADER_ERROR] == str(error).encode()
    stored = record(b"original", offset=0, key=b"k")
    stored.headers = tuple(headers)
    letter = DeadLetter.from_record(stored)
    assert (letter.reason, letter.source_topic, letter.source_partition, letter.source_offset) == (
        "bad_signature",
        TOPIC,
        2,
        41,
    )
    assert letter.value == b"original" and letter.key == b"k" and letter.source_timestamp == NOW
    assert "offset=41" in letter.error and not letter.value_omitted


def test_dead_letter_error_header_is_capped_and_foreign_records_are_refused() -> None:
    error = Expired("x" * 5_000)
    headers = header_map(dead_letter_headers(error, topic=TOPIC, partition=0, offset=0))
    assert len(headers[HEADER_ERROR]) == 512
    with pytest.raises(ValueError, match="dead letter"):
        DeadLetter.from_record(record(b"v", offset=0))


def test_timeouts_and_lost_connections_are_retriable_dead_letter_failures() -> None:
    # aiokafka flags KafkaTimeoutError retriable=False, yet a short broker outage raises it.
    assert not KafkaTimeoutError.retriable
    for transient in (
        KafkaTimeoutError(),
        KafkaConnectionError(),
        NodeNotReadyError(),
        RequestTimedOutError(),
        NotLeaderForPartitionError(),
    ):
        assert is_retriable(transient), type(transient).__name__
    for permanent in (
        TopicAuthorizationFailedError(),
        UnsupportedVersionError(),
        ValueError("not kafka"),
    ):
        assert not is_retriable(permanent), type(permanent).__name__


class ScriptedProducer:
    """Stands in for ``AIOKafkaProducer.send``: each call takes the next outcome, raised by
    ``send`` itself (an exception instance), failing the delivery future (``("fail", exc)``)
    or delivered (``"ok"``)."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        self.sent.append((topic, value, key, list(headers or [])))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(outcome, tuple):
            future.set_exception(outcome[1])
        else:
            future.set_result(None)
        return future


class Sending:
    """A DeadLetterSender over a scripted producer, with its metrics."""

    def __init__(self, producer: ScriptedProducer) -> None:
        self.metrics = ConsumerMetrics()
        self.holds: list[float] = []

        async def hold(seconds: float) -> bool:  # no broker to poll: just count the waits
            self.holds.append(seconds)
            return True

        writer = DeadLetterWriter(producer, "dlq")
        self.sender = DeadLetterSender(
            writer, backoff=Backoff(initial_ms=1, max_ms=1), metrics=self.metrics, hold=hold
        )


def dead_lettering(producer: ScriptedProducer) -> Sending:
    return Sending(producer)


async def test_dead_letter_timeouts_are_retried_with_backoff_not_raised(
    guard: RedisReplayGuard,
) -> None:
    producer = ScriptedProducer(
        KafkaTimeoutError(),  # send() itself: no metadata while the broker is away
        ("fail", KafkaTimeoutError()),  # the batch expired in the accumulator
        ("fail", KafkaConnectionError()),
        "ok",
    )
    consumer = dead_lettering(producer)
    rejected = [(record(b"garbage", offset=7), BadSignature("no"))]
    assert await consumer.sender.send(rejected)
    assert consumer.metrics.dead_lettered == 1
    assert consumer.metrics.dead_letter_retries == 3
    assert len(producer.sent) == 3 and producer.sent[-1][1] == b"garbage"


async def test_a_permanent_dead_letter_failure_is_raised(
    guard: RedisReplayGuard,
) -> None:
    consumer = dead_lettering(ScriptedProducer(("fail", TopicAuthorizationFailedError())))
    with pytest.raises(TopicAuthorizationFailedError):
        await consumer.sender.send([(record(b"garbage", offset=0), BadSignature("no"))])
    consumer = dead_lettering(ScriptedProducer(TopicAuthorizationFailedError()))
    with pytest.raises(TopicAuthorizationFailedError):
        await consumer.sender.send([(record(b"garbage", offset=0), BadSignature("no"))])


def too_large() -> MessageSizeTooLargeError:
    return MessageSizeTooLargeError("The message is 1049000 bytes when serialized")


def stored_letter(sent: tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]) -> Any:
    _, value, key, headers = sent
    stored = record(value, offset=0, key=key)
    stored.headers = tuple(headers)
    return stored


async def test_a_key_too_large_for_the_producer_is_left_out_and_named_by_its_digest() -> None:
    key = b"k" * 1_000
    # send() refuses the whole letter, then the letter without its value (the key is the bulk).
    producer = ScriptedProducer(too_large(), too_large(), "ok")
    writer = DeadLetterWriter(producer, "dlq")
    error = BadSignature("no").with_position(TOPIC, 0, 3)
    await writer.send(record(b"garbage", offset=3, key=key), error)
    ((topic, value, sent_key, headers),) = producer.sent
    assert (topic, value, sent_key) == ("dlq", b"", None)
    found = header_map(headers)
    assert found[HEADER_VALUE_OMITTED] == b"1" and found[HEADER_KEY_OMITTED] == b"1"
    assert found[HEADER_KEY_SHA256] == hashlib.sha256(key).hexdigest().encode()
    letter = DeadLetter.from_record(stored_letter(producer.sent[0]))
    assert letter.value is None and letter.key is None
    assert letter.value_omitted and letter.key_omitted
    assert letter.key_sha256 == hashlib.sha256(key).hexdigest()
    assert (letter.reason, letter.source_offset) == ("bad_signature", 3)

    # A letter that fits keeps its key and carries no omission headers.
    fits = ScriptedProducer("ok")
    await DeadLetterWriter(fits, "dlq").send(record(b"garbage", offset=3, key=b"k"), error)
    letter = DeadLetter.from_record(stored_letter(fits.sent[0]))
    assert (letter.value, letter.key, letter.key_omitted, letter.key_sha256) == (
        b"garbage",
        b"k",
        False,
        None,
    )


async def test_a_dead_letter_too_large_even_without_value_and_key_is_dropped_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Record 0: refused by send() at every level. Record 1: fits.
    producer = ScriptedProducer(too_large(), too_large(), too_large(), "ok")
    consumer = dead_lettering(producer)
    rejected = [
        (record(b"garbage", offset=0, key=b"k" * 100), BadSignature("no")),
        (record(b"other", offset=1), BadSignature("no")),
    ]
    with caplog.at_level(logging.ERROR, logger="signed_bus.consumer"):
        assert await consumer.sender.send(rejected)
    assert consumer.metrics.dead_letters_dropped == 1 and consumer.metrics.dead_lettered == 1
    assert [value for _, value, _, _ in producer.sent] == [b"other"]
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "dead letter dropped" in logged.getMessage()
    assert "kkkk" not in logged.getMessage()


async def test_a_broker_refusing_a_dead_letter_as_too_large_leaves_out_value_then_key(
    guard: RedisReplayGuard,
) -> None:
    # The broker's limit is below the producer's: each level is refused by the broker.
    refused = ("fail", too_large())
    producer = ScriptedProducer(refused, refused, refused)
    consumer = dead_lettering(producer)
    rejected = [(record(b"garbage", offset=0, key=b"key"), BadSignature("no"))]
    assert await consumer.sender.send(rejected)
    shapes = [(v, k, HEADER_KEY_OMITTED in header_map(h)) for _, v, k, h in producer.sent]
    assert shapes == [(b"garbage", b"key", False), (b"", b"key", False), (b"", None, True)]
    assert consumer.metrics.dead_letters_dropped == 1 and consumer.metrics.dead_lettered == 0
    assert consumer.metrics.dead_letter_retries == 0  # nothing to wait for: no backoff


async def test_letters_refused_as_too_large_together_are_sent_again_alone_whole() -> None:
    # The broker bounds a record batch: two letters refused in one batch may each fit alone.
    refused = ("fail", too_large())
    producer = ScriptedProducer(refused, refused, "ok", "ok")
    consumer = dead_lettering(producer)
    rejected = [
        (record(b"first", offset=0), BadSignature("no")),
        (record(b"second", offset=1), BadSignature("no")),
    ]
    assert await consumer.sender.send(rejected)
    assert [value for _, value, _, _ in producer.sent] == [b"first", b"second"] * 2
    assert not any(HEADER_VALUE_OMITTED in header_map(h) for _, _, _, h in producer.sent)
    assert consumer.metrics.dead_lettered == 2 and consumer.metrics.dead_letters_dropped == 0


async def test_lone_resends_wait_for_the_backoff_once_one_of_them_fails_retriably() -> None:
    # The dead-letter topic goes away during the lone resends: the next lone letter is not
    # sent (and waited for) in that round, but after the backoff, as any retriable failure.
    refused = ("fail", too_large())
    producer = ScriptedProducer(refused, refused, ("fail", KafkaTimeoutError()), "ok", "ok")
    consumer = dead_lettering(producer)
    sent_at_hold: list[int] = []

    async def hold(seconds: float) -> bool:
        sent_at_hold.append(len(producer.sent))
        return True

    consumer.sender._hold = hold
    rejected = [
        (record(b"first", offset=0), BadSignature("no")),
        (record(b"second", offset=1), BadSignature("no")),
    ]
    assert await consumer.sender.send(rejected)
    sent = [value for _, value, _, _ in producer.sent]
    assert sent_at_hold == [3]  # "second" was not sent alone before the backoff
    # together, refused; "first" alone, timed out: "second" is not sent until the retry
    assert sent[:3] == [b"first", b"second", b"first"]
    assert sorted(sent[3:]) == [b"first", b"second"]
    assert consumer.metrics.dead_letter_retries == 1 and consumer.metrics.dead_lettered == 2


def test_metrics_snapshot_is_a_plain_copy() -> None:
    metrics = ConsumerMetrics()
    metrics.rejected["replay"] += 2
    metrics.committed[(TOPIC, 0)] = 5
    snapshot = metrics.snapshot()
    metrics.rejected["replay"] += 1
    assert snapshot["rejected"] == {"replay": 2} and snapshot["rejected_total"] == 2
    assert snapshot["committed"] == {f"{TOPIC}:0": 5}
    assert snapshot["dead_letters_dropped"] == 0


async def test_dead_letters_dropped_is_a_metric(
    guard: RedisReplayGuard,
) -> None:
    consumer = dead_lettering(ScriptedProducer(too_large(), too_large(), too_large()))
    assert await consumer.sender.send([(record(b"garbage", offset=0), BadSignature("no"))])
    assert consumer.metrics.dead_letters_dropped == 1
    assert consumer.metrics.snapshot()["dead_letters_dropped"] == 1


# -- read_committed only ----------------------------------------------------------------------


async def test_a_consumer_that_reads_uncommitted_records_is_refused() -> None:
    # aiokafka's default is read_uncommitted: a copy inside an aborted transaction would claim.
    for extra in ({}, {"isolation_level": "read_uncommitted"}):
        consumer = AIOKafkaConsumer(
            bootstrap_servers="127.0.0.1:1", group_id="g", enable_auto_commit=False, **extra
        )
        try:
            with pytest.raises(ConfigurationError, match='isolation_level="read_committed"'):
                RecordFetcher(consumer)
        finally:
            await consumer.stop()
    with pytest.raises(ConfigurationError, match='isolation_level must be "read_committed"'):
        ConsumerOptions(
            bootstrap_servers="b", group_id="g", topics=["t"], isolation_level="read_uncommitted"
        )
    with pytest.raises(ConfigurationError, match="isolation_level"):
        ConsumerOptions(
            bootstrap_servers="b",
            group_id="g",
            topics=["t"],
            extra={"isolation_level": "read_uncommitted"},
        )


# -- the whole freshness window, again, for records that waited ------------------------------


def scripted_guard(
    guard: RedisReplayGuard, *, down_for: int, windows: list[Freshness] | None = None
) -> list[list[int]]:
    """Make ``guard``'s first ``down_for`` claims fail (Redis down), then claim everything NEW;
    returns the offsets of every claim attempt (and appends each attempt's window to
    ``windows``)."""
    attempts: list[list[int]] = []

    async def claim(claims: Sequence[ClaimRow], *, freshness: Freshness) -> list[ClaimVerdict]:
        attempts.append([row[5] for row in claims])
        if windows is not None:
            windows.append(freshness)
        if len(attempts) <= down_for:
            raise ReplayGuardUnavailable("redis down")
        return [ClaimVerdict.NEW] * len(claims)

    guard.claim = claim  # type: ignore[method-assign]
    return attempts


class Holding:
    """A gate and its settler whose every hold lasts ``step_ms`` on the verifier's clock."""

    def __init__(
        self,
        guard: RedisReplayGuard,
        verifier: Verifier,
        producer: ScriptedProducer,
        now: list[int],
        step_ms: int,
    ) -> None:
        async def hold(seconds: float) -> bool:
            now[0] += step_ms
            return True

        self.gate, self.settler = settler(verifier, guard, producer=producer, hold=hold)
        self.metrics = self.gate.metrics

    def verify(self, records: Any) -> Any:
        return self.gate.receive(records)

    async def settle(self, batch: Any) -> Any:
        return await self.settler.settle(batch, set())


def holding_consumer(
    guard: RedisReplayGuard,
    verifier: Verifier,
    producer: ScriptedProducer,
    now: list[int],
    step_ms: int,
) -> Holding:
    return Holding(guard, verifier, producer, now, step_ms)


async def test_a_record_whose_exp_passes_while_held_for_redis_is_rejected_not_claimed(
    guard: RedisReplayGuard,
) -> None:
    keys = ring()
    now = [NOW]
    verifier = Verifier(keys, clock=lambda: now[0])
    signer = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW)
    windows: list[Freshness] = []
    attempts = scripted_guard(guard, down_for=1, windows=windows)
    producer = ScriptedProducer("ok")
    consumer = holding_consumer(guard, verifier, producer, now, step_ms=2_000)
    tp = TopicPartition(TOPIC, 0)
    batch = consumer.verify(
        {
            tp: [
                record(signer.sign({"x": 1}, topic=TOPIC, expires_at=NOW + 1_000), offset=0),
                record(signer.sign({"x": 2}, topic=TOPIC), offset=1),
            ]
        }
    )
    assert len(batch.verified) == 2  # both fresh when fetched
    entries = await consumer.settle(batch)
    assert entries is not None
    assert attempts == [[0, 1], [1]]  # the record past its exp was not claimed again
    assert len(windows) == 2 and all(w is verifier.freshness for w in windows)
    assert [m.offset for _, _, m in entries if m is not None] == [1]
    assert consumer.metrics.rejected == {"expired": 1}
    (letter,) = [DeadLetter.from_record(stored_letter(sent)) for sent in producer.sent]
    assert (letter.reason, letter.source_offset) == ("expired", 0)
    assert "expires_at" in letter.error and "Redis" in letter.error


async def test_a_create_time_record_past_max_age_after_a_redis_hold_is_rejected(
    guard: RedisReplayGuard,
) -> None:
    # CreateTime: the reference time is the consumer's clock, so max_age (not max_age + max_lag)
    # bounds created_at, at verification and after the hold alike.
    keys = ring()
    now = [NOW]
    verifier = Verifier(keys, clock=lambda: now[0])
    edge = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW - 300_000)
    attempts = scripted_guard(guard, down_for=1)
    producer = ScriptedProducer("ok")
    consumer = holding_consumer(guard, verifier, producer, now, step_ms=1)
    value = edge.sign({"x": 1}, topic=TOPIC)
    batch = consumer.verify({TopicPartition(TOPIC, 0): [record(value, offset=0, timestamp_type=0)]})
    assert len(batch.verified) == 1  # exactly max_age old: still fresh
    entries = await consumer.settle(batch)
    assert entries is not None and all(m is None for _, _, m in entries)
    assert attempts == [[0]]
    (letter,) = [DeadLetter.from_record(stored_letter(sent)) for sent in producer.sent]
    assert letter.reason == "expired" and "reference time" in letter.error


async def test_a_record_that_expires_while_the_dead_letter_topic_is_down_is_not_delivered(
    guard: RedisReplayGuard,
) -> None:
    keys = ring()
    now = [NOW]
    verifier = Verifier(keys, clock=lambda: now[0])
    signer = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW)
    attempts = scripted_guard(guard, down_for=0)
    # The first dead letter times out once (the topic is unavailable), then everything goes.
    producer = ScriptedProducer(KafkaTimeoutError(), "ok", "ok")
    consumer = holding_consumer(guard, verifier, producer, now, step_ms=2_000)
    tp = TopicPartition(TOPIC, 0)
    batch = consumer.verify(
        {
            tp: [
                record(b"garbage", offset=0),
                record(signer.sign({"x": 1}, topic=TOPIC, expires_at=NOW + 1_000), offset=1),
                record(signer.sign({"x": 2}, topic=TOPIC), offset=2),
            ]
        }
    )
    entries = await consumer.settle(batch)
    assert entries is not None
    assert attempts == [[1, 2]]  # claimed once, before the hold
    assert [m.offset for _, _, m in entries if m is not None] == [2]
    assert [(t, o) for t, o, _ in entries] == [(tp, 1), (tp, 2), (tp, 3)]
    assert consumer.metrics.rejected == {"malformed": 1, "expired": 1}
    assert consumer.metrics.dead_letter_retries == 1 and consumer.metrics.dead_lettered == 2
    letters = [DeadLetter.from_record(stored_letter(sent)) for sent in producer.sent]
    assert [(d.reason, d.source_offset) for d in letters] == [("malformed", 0), ("expired", 1)]
    assert "dead-letter topic" in letters[1].error


async def test_dead_letters_sent_at_once_trigger_no_recheck(
    guard: RedisReplayGuard,
) -> None:
    # Without a hold the batch is delivered as verified, even if the clock moved meanwhile:
    # the re-check is for records that waited, not a second verification on the hot path.
    keys = ring()
    now = [NOW]
    verifier = Verifier(keys, clock=lambda: now[0])
    signer = Signer(keys, kid="k1", issuer="agent", model="m", clock=lambda: NOW)
    scripted_guard(guard, down_for=0)
    consumer = holding_consumer(guard, verifier, ScriptedProducer("ok"), now, step_ms=2_000)
    tp = TopicPartition(TOPIC, 0)
    batch = consumer.verify(
        {
            tp: [
                record(b"garbage", offset=0),
                record(signer.sign({"x": 1}, topic=TOPIC, expires_at=NOW + 1_000), offset=1),
            ]
        }
    )
    now[0] += 2_000  # past the exp, but nothing was held
    entries = await consumer.settle(batch)
    assert entries is not None and [m.offset for _, _, m in entries if m is not None] == [1]


# -- dead letters: character boundaries and null values ---------------------------------------


def test_the_dead_letter_error_header_is_cut_at_a_character_boundary() -> None:
    invalid_before = 0
    for pad in range(3):  # one of three alignments puts a 3-byte character across the cap
        error = Expired("x" * pad + "\u20ac" * 400)
        full = str(error).encode()
        (cut,) = [
            v
            for n, v in dead_letter_headers(error, topic=TOPIC, partition=0, offset=0)
            if n == HEADER_ERROR
        ]
        assert 510 <= len(cut) <= 512
        assert full.startswith(cut)
        cut.decode("utf-8")  # strict: raises on a split character
        try:
            full[:512].decode("utf-8")
        except UnicodeDecodeError:
            invalid_before += 1
    assert invalid_before == 2  # the cap alone splits a character in two alignments of three


async def test_a_tombstone_is_dead_lettered_marked_null_not_as_an_empty_value() -> None:
    producer = ScriptedProducer("ok", "ok", too_large(), "ok")
    writer = DeadLetterWriter(producer, "dlq")
    error = MalformedEnvelope("the record has no value").with_position(TOPIC, 0, 5)
    await writer.send(record(None, offset=5, key=b"k"), error)
    await writer.send(record(b"", offset=6, key=b"k"), error)
    # A tombstone that does not fit (its key is the bulk) loses its key, still marked null.
    await writer.send(record(None, offset=7, key=b"k"), error)
    tombstone, empty, keyless = producer.sent
    # Never a null-valued letter: that would be a tombstone on a compacted dead-letter topic.
    assert tombstone[1] == b"" and empty[1] == b"" and keyless[1] == b""
    assert header_map(tombstone[3])[HEADER_VALUE_NULL] == b"1"
    assert HEADER_VALUE_NULL not in header_map(empty[3])
    assert HEADER_VALUE_OMITTED not in header_map(tombstone[3])
    assert header_map(keyless[3])[HEADER_KEY_OMITTED] == b"1"
    assert header_map(keyless[3])[HEADER_VALUE_NULL] == b"1"
    letters = [DeadLetter.from_record(stored_letter(sent)) for sent in producer.sent]
    assert [(d.value, d.value_null, d.value_omitted) for d in letters] == [
        (None, True, False),
        (b"", False, False),
        (None, True, False),
    ]


# -- one lifecycle: start()/stop() coroutines, Stopped after stop ---------------------------------


class IdleConsumer:
    """Stands in for a VerifyingConsumer whose topic is quiet: getbatch returns empty batches."""

    def __init__(self) -> None:
        self.calls = 0
        self.polled = asyncio.Event()

    async def getbatch(self) -> Any:
        self.calls += 1
        self.polled.set()
        await asyncio.sleep(0.01)
        return ConsumedBatch((), {}, {})


def idle_relay(consumer: IdleConsumer | None = None) -> tuple[Relay, IdleConsumer]:
    consumer = consumer or IdleConsumer()
    producer = SignedProducer(
        ProducerOptions(bootstrap_servers="127.0.0.1:1"),
        signer=Signer(ring(), kid="k1", issuer="agent", model="m"),
    )

    async def transform(message: ConsumedMessage) -> list[Output]:
        return []

    relay = Relay(consumer, producer, transform, output_topic="out")  # type: ignore[arg-type]
    return relay, consumer


async def test_relay_stop_is_a_coroutine_that_waits_for_run() -> None:
    relay, consumer = idle_relay()
    async with relay:
        task = asyncio.create_task(relay.run())
        await consumer.polled.wait()
        await relay.stop()
        assert task.done()  # stop() returned only once run() had
    await task
    await relay.stop()  # idempotent


class HeldConsumer(IdleConsumer):
    """A consumer whose fetch is held (the replay guard's Redis is down) until cancelled."""

    async def getbatch(self) -> Any:
        self.calls += 1
        self.polled.set()
        await asyncio.Event().wait()  # held: only cancellation ends it


async def test_stopping_a_relay_does_not_wait_for_a_fetch_held_for_redis() -> None:
    consumer = HeldConsumer()
    relay, _ = idle_relay(consumer)
    task = asyncio.create_task(relay.run())
    await consumer.polled.wait()
    await asyncio.wait_for(relay.stop(), 2)  # waited for Redis to come back before
    assert task.done() and task.exception() is None


async def test_a_stopped_relay_refuses_start_run_and_process_with_stopped() -> None:
    relay, consumer = idle_relay()
    await relay.stop()
    with pytest.raises(Stopped):
        await relay.start()
    with pytest.raises(Stopped):
        await relay.run()
    with pytest.raises(Stopped):
        await relay.process(ConsumedBatch((), {}, {}))
    assert consumer.calls == 0


async def test_a_stopped_producer_refuses_start_and_send_with_stopped() -> None:
    producer = SignedProducer(
        ProducerOptions(bootstrap_servers="127.0.0.1:1"),
        signer=Signer(ring(), kid="k1", issuer="agent", model="m"),
    )
    await producer.stop()
    with pytest.raises(Stopped):
        await producer.start()
    with pytest.raises(Stopped):
        await producer.send(TOPIC, {"x": 1})
