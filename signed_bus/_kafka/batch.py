"""What :meth:`VerifyingConsumer.getbatch` hands out: a settled batch whole, with the offsets
to commit and the offsets to seek back to (a relay commits them with its outputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from signed_bus._gate import ConsumedMessage, Entry, SkippedRange

__all__ = ["EMPTY_BATCH", "ConsumedBatch", "whole_batch"]


@dataclass(frozen=True, slots=True)
class ConsumedBatch:
    """One ``getmany`` worth of records from :meth:`VerifyingConsumer.getbatch`, not committed.

    ``messages`` are the verified records, in partition and offset order. ``offsets`` covers the
    whole batch, rejected records included (they are already dead-lettered): per partition, the
    offset after the batch's last record, which is what to commit. ``first_offsets`` is per
    partition the batch's first offset: seek there to read the batch again.
    """

    messages: tuple[ConsumedMessage, ...]
    offsets: Mapping[TopicPartition, int]
    first_offsets: Mapping[TopicPartition, int]


EMPTY_BATCH = ConsumedBatch((), {}, {})


def whole_batch(
    entries: Sequence[Entry[TopicPartition]],
    revoked: set[TopicPartition],
    skipped: Sequence[SkippedRange[TopicPartition]],
) -> ConsumedBatch:
    """The settled ``entries`` as one batch, leaving out the partitions ``revoked`` since the
    fetch (their new owner reads those records)."""
    messages: list[ConsumedMessage] = []
    offsets: dict[TopicPartition, int] = {}
    first: dict[TopicPartition, int] = {}
    for tp, next_offset, message in entries:
        if tp in revoked:
            continue
        first.setdefault(tp, next_offset - 1)
        offsets[tp] = next_offset
        if message is not None:
            messages.append(message)
    for unreadable in skipped:  # its entry holds the offset after the range
        if unreadable.tp in first:
            first[unreadable.tp] = min(first[unreadable.tp], unreadable.offset)
    return ConsumedBatch(tuple(messages), offsets, first)
