"""The delivery cursor of a :class:`~signed_bus._kafka.consumer.VerifyingConsumer`: which entry
of the settled batch is handed out next, which one is in the application's hands, which offsets
are finished and not yet committed, and which partitions were revoked since the fetch.

Offsets are committed only for finished records (at-least-once): a message handed out is
finished when the next one is asked for (or :meth:`DeliveryCursor.finish`); a rejected entry is
finished when the cursor passes it. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import TopicPartition

from signed_bus._gate import ConsumedMessage, Entry
from signed_bus._metrics import ConsumerMetrics

__all__ = ["DeliveryCursor"]


class DeliveryCursor:
    """Queue, position, in-flight entry, finished offsets and revoked partitions."""

    __slots__ = ("_checked_at", "_done", "_inflight", "_metrics", "_pos", "_queue", "_revoked")

    def __init__(self, metrics: ConsumerMetrics) -> None:
        self._metrics = metrics
        self._queue: list[Entry[TopicPartition]] = []
        self._pos = 0
        self._inflight: int | None = None
        self._done: dict[TopicPartition, int] = {}
        self._revoked: set[TopicPartition] = set()
        self._checked_at = 0

    @property
    def revoked(self) -> set[TopicPartition]:
        """Partitions revoked since the current batch was fetched (their entries belong to
        the new owner)."""
        return self._revoked

    @property
    def finished(self) -> Mapping[TopicPartition, int]:
        """Per partition, the offset after the last finished entry, not yet committed."""
        return self._done

    @property
    def pending(self) -> bool:
        """True while entries of the batch remain, or one is in the application's hands."""
        return self._pos < len(self._queue) or self._inflight is not None

    def clear(self) -> None:
        """Drop the batch (before fetching the next one); finished offsets stay."""
        self._queue, self._pos, self._inflight = [], 0, None

    def fetched(self) -> set[TopicPartition]:
        """A new fetch: forget the revocations of the last one; returns the new (empty) set
        a rebalance during the fetch's settling fills."""
        self._revoked = set()
        return self._revoked

    def load(self, entries: list[Entry[TopicPartition]], checked_at: int) -> None:
        """Hand out ``entries`` (a settled batch, verified at ``checked_at``) from the start."""
        self._queue, self._pos, self._inflight = entries, 0, None
        self._checked_at = checked_at

    def due(self, now: int, after_ms: int) -> bool:
        """True when entries wait to be handed out and more than ``after_ms`` passed since they
        were checked: hand none out before :meth:`waiting` went through a re-check."""
        return now - self._checked_at > after_ms and self._pos < len(self._queue)

    def waiting(self) -> list[Entry[TopicPartition]]:
        """The entries not handed out yet (a copy; the one handed out and rewound included)."""
        return self._queue[self._pos :]

    def rechecked(self, entries: list[Entry[TopicPartition]], now: int) -> None:
        """Put back :meth:`waiting` after a re-check at ``now`` (stale ones now rejected)."""
        self._queue[self._pos :] = entries
        self._checked_at = now

    def next(self) -> ConsumedMessage | None:
        """The next deliverable message; rejected entries passed are finished."""
        return self.next_unless_due(None, 0)

    def next_unless_due(self, now: int | None, after_ms: int) -> ConsumedMessage | None:
        """:meth:`next`, or None without handing anything out when :meth:`due` at ``now``
        (None: never due). One call per delivered record on the consumer's fast path."""
        queue, pos, done, revoked = self._queue, self._pos, self._done, self._revoked
        if now is not None and now - self._checked_at > after_ms and pos < len(queue):
            return None
        while pos < len(queue):
            tp, next_offset, message = queue[pos]
            pos += 1
            if revoked and tp in revoked:
                continue
            if message is None:
                done[tp] = next_offset
                continue
            self._pos = pos
            self._inflight = pos - 1
            self._metrics.delivered += 1
            return message
        self._pos = pos
        return None

    def finish(self) -> None:
        """The message in hand is finished: its offset may be committed."""
        if self._inflight is not None:
            tp, next_offset, _ = self._queue[self._inflight]
            self._inflight = None
            if tp not in self._revoked:
                self._done[tp] = next_offset

    def rewind(self) -> None:
        """Hand out again the message handed out and never finished."""
        if self._inflight is not None:
            self._pos = self._inflight
            self._inflight = None

    def mark_finished(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Finish whole-batch ``offsets`` (:meth:`VerifyingConsumer.commit_offsets`)."""
        self._done.update(offsets)

    def take_finished(self) -> dict[TopicPartition, int]:
        """The finished offsets, to commit now (the cursor forgets them)."""
        done, self._done = self._done, {}
        return done

    def revoke(self, revoked: set[TopicPartition]) -> dict[TopicPartition, int]:
        """A rebalance revoked ``revoked``: their remaining entries are the new owner's.
        Returns (and forgets) their finished offsets, to commit before they go."""
        self._revoked |= revoked
        finished = {tp: off for tp, off in self._done.items() if tp in revoked}
        for tp in finished:
            del self._done[tp]
        return finished
