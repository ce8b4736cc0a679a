"""``getmany`` that a record the Kafka client cannot decode does not stop.

aiokafka decodes fetched record batches lazily, inside ``getmany()``. A batch it cannot decode
(a compression codec without its decoder, a bad CRC, a corrupt or truncated batch, a record
header key that is not UTF-8, a deserializer that raises) raises out of ``getmany()``: the
records of other partitions taken in that call are dropped although their positions moved on,
the records of the failing partition decoded before the bad one are dropped too, and its
position stays put, so every later call, and every restart, fails on the same record.

:func:`fetch_records` is the one place that calls ``getmany()``: it returns every record that
decoded, in order (none lost, none twice), plus the range of offsets that did not
(:class:`Skipped`), and seeks past that range. The unit skipped is the rest of one record
batch, from the first offset not decoded to the batch's last offset: aiokafka re-parses a batch
from its start whatever the fetch offset, so nothing after a bad record in its batch is readable
with it either. (A record that parsed but that the consumer's own key or value deserializer
rejects is skipped alone.) What the consumers do with a skipped range: docs/OPERATIONS.md,
"Records the Kafka client cannot decode".

How the failure is located: aiokafka raises out of its own loops and keeps nothing, so the
partition, the records already decoded and the failing batch exist only in the frames of the
traceback (``Fetcher.fetched_records``, ``FetchResult.getall``,
``PartitionRecords._unpack_records``). Only an error whose traceback runs through the record
parser is isolated; anything else (connection, authorization, a stopped consumer, cancellation)
propagates. If an aiokafka release renames those frames, the error propagates as before and
tests/integration/test_undecodable.py fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

__all__ = ["Fetched", "Skipped", "fetch_records"]

_FETCHER = "aiokafka.consumer.fetcher"


@dataclass(frozen=True, slots=True)
class Skipped:
    """Offsets ``offset`` to ``last_offset`` of a partition that the client could not decode.

    The fetch has already sought past them. ``error`` names what the client raised (its type,
    and aiokafka's own text for aiokafka errors; never record bytes). There is nothing else to
    read: ``key`` and ``value`` are None, ``timestamp`` is None (unknown), ``headers`` empty.
    """

    topic: str
    partition: int
    offset: int
    last_offset: int
    error: str

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def key(self) -> None:
        return None

    @property
    def value(self) -> None:
        return None

    @property
    def timestamp(self) -> None:
        return None

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        return ()


@dataclass(frozen=True, slots=True)
class Fetched:
    """One fetch: ``records`` as ``getmany()`` returns them, and the ranges ``skipped``.

    A skipped range of a partition comes after every record of that partition in ``records``.
    False when both are empty.
    """

    records: Mapping[TopicPartition, Sequence[Any]] = field(default_factory=dict)
    skipped: Sequence[Skipped] = ()

    def __bool__(self) -> bool:
        return bool(self.records) or bool(self.skipped)

    def first_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the first offset this fetch covers: seek there to read it again."""
        first: dict[TopicPartition, int] = {}
        for tp, records in self.records.items():
            if records:
                first[tp] = records[0].offset
        for skipped in self.skipped:
            first.setdefault(skipped.tp, skipped.offset)
        return first


async def fetch_records(
    consumer: AIOKafkaConsumer,
    *partitions: TopicPartition,
    timeout_ms: int,
    max_records: int,
) -> Fetched:
    """``consumer.getmany(*partitions, timeout_ms=..., max_records=...)``, except that a record
    batch the client cannot decode is skipped (sought past) and reported in
    :attr:`Fetched.skipped` instead of raised; the records decoded in the same call are kept."""
    try:
        records = await consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
    except Exception as exc:
        fetched = _isolate(consumer, exc)
        if fetched is None:
            raise
        return fetched
    return Fetched(records)


def _isolate(consumer: AIOKafkaConsumer, exc: Exception) -> Fetched | None:
    """The records decoded before ``exc`` and the range it made unreadable; None when ``exc``
    was not raised by aiokafka's record parser (or aiokafka's frames are not recognised)."""
    frames = _fetcher_frames(exc)
    loop, getall, parser = (frames.get(n) for n in ("fetched_records", "getall", "_unpack_records"))
    if loop is None or getall is None or parser is None:
        return None
    try:
        tp = loop.f_locals["tp"]
        drained: dict[TopicPartition, list[Any]] = dict(loop.f_locals["drained"])
        decoded: list[Any] = list(getall.f_locals["ret_list"])
        if "_consumer_record" in frames:
            # The record parsed and the consumer's own deserializer raised: only that record
            # is lost, a fetch from the next offset reads on in its batch.
            first = last = int(parser.f_locals["record"].offset)
        else:
            first = int(parser.f_locals["self"].next_fetch_offset)
            batch = parser.f_locals.get("next_batch")
            last = int(batch.next_offset) - 1 if batch is not None else first
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    if not isinstance(tp, TopicPartition):
        return None
    last = max(last, first)
    # ``drained`` partitions already moved past their records; the failing partition did not
    # move at all: its decoded records are handed out here and it continues after the range.
    if decoded:
        drained[tp] = decoded
    consumer.seek(tp, last + 1)
    skipped = Skipped(tp.topic, tp.partition, first, last, _describe(exc))
    return Fetched(drained, (skipped,))


def _fetcher_frames(exc: BaseException) -> dict[str, FrameType]:
    frames: dict[str, FrameType] = {}
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__") == _FETCHER:
            frames[frame.f_code.co_name] = frame
        tb = tb.tb_next
    return frames


def _describe(exc: Exception) -> str:
    # aiokafka's messages are its own (codec names, "Invalid CRC - tp"); other errors from the
    # parser (UnicodeDecodeError, struct.error, ...) may quote record bytes: type only.
    name = type(exc).__name__
    if isinstance(exc, KafkaError):
        text = str(exc)  # aiokafka's errors already start with their class name
        return (text if text.startswith(name) else f"{name}: {text}")[:200]
    return name
