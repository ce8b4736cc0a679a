"""How a replay guard notices that Redis lost its nonces, and what it does then; no I/O.

Redis state can vanish: a restart without persistence, a FLUSH, an eviction, a failover to a
replica that had not received the last claims. Every nonce stored before that moment is gone,
and a copy of an envelope created before it would come back NEW. Two records make the loss
visible inside the claim script itself (no extra round trip):

* ``{prefix}:epoch``, the **epoch record**, a hash: ``epoch`` (a random token), ``lost_at``
  (ms, the guard clock when the last loss was detected; 0 for a prefix that never lost
  anything), ``covered`` (the comma-separated topics a rebuild re-claimed after that loss) and
  ``state`` (``ready``, or ``rebuilding`` while a recovery runs: every guard holds).
* **markers**: a plain key holding the epoch token, one per place a claim can land. On a single
  node one key, ``{prefix}:mark``; on Redis Cluster one per hash slot,
  ``{prefix}:mark:{<tag>}`` where ``<tag>`` is a string of that slot (:func:`slot_tag`), so a
  claim call (all of whose keys share one slot) names the marker of its own slot. Markers are
  written for every slot when an epoch starts, so a bucket never claimed before finds one: a
  fresh bucket is not mistaken for a lost one. A lost one cannot pass as fresh either: the
  marker lives and dies with the slot's data (same node, same restart, same replication stream).

:data:`~signed_bus._replay.layout.CLAIM_SCRIPT` takes the marker as its last key and the epoch the
guard knows as ``ARGV[3]``; a missing or different marker answers :data:`LOST_REPLY` before any
claim is made. The guard then recovers (:data:`RECOVER_SCRIPT`: a new epoch, once, whichever
guard sees the loss first), restores the layout record and the markers, and raises
:class:`~signed_bus.errors.ReplayStateLost` so the consumer holds the batch as for an outage.

After a loss, a record whose signed ``created_at`` is at most ``lost_at + future_skew_ms`` may
have been claimed before it; unless a rebuild re-claimed its topic from Kafka (``covered``)
it is :attr:`~signed_bus._replay.layout.ClaimVerdict.QUARANTINED` (dead-lettered with reason
``quarantined``, redrivable; never claimed, never delivered as new). A guard that starts against
an emptied Redis cannot tell it from a new prefix: after a known loss, run ``signed-bus guard
rebuild`` before starting consumers (docs/OPERATIONS.md, "Losing Redis state").
"""

from __future__ import annotations

import binascii
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from signed_bus._replay.layout import ClaimRow, ClaimVerdict
from signed_bus.errors import ReplayStateLost

__all__ = [
    "LOST_REPLY",
    "READY",
    "READY_SCRIPT",
    "REBUILDING",
    "RECOVER_SCRIPT",
    "SLOTS",
    "EpochState",
    "epoch_key",
    "is_lost",
    "lost_error",
    "marker_key",
    "merge_verdicts",
    "new_epoch",
    "parse_epoch_record",
    "quarantine_split",
    "slot_tag",
]

#: Redis Cluster's hash slots.
SLOTS: Final = 16_384
#: What the claim script answers when the call's marker is missing or names another epoch.
LOST_REPLY: Final = b"L"
READY: Final = "ready"
REBUILDING: Final = "rebuilding"

#: Starts a new epoch after a loss, or the first one of a prefix; atomic on the epoch record.
#:
#: ``KEYS[1]``: the epoch record (:func:`epoch_key`).
#: ``ARGV[1]``: the epoch the caller knew (``""`` for none: the first one of a prefix),
#: ``ARGV[2]``: the new epoch, ``ARGV[3]``: the time of the loss (ms; ``0`` for a first epoch),
#: ``ARGV[4]``: the state to start in (``ready`` or ``rebuilding``).
#:
#: The new epoch is written only if the record is missing or still names ``ARGV[1]``: when two
#: guards see one loss, the first starts the new epoch and the second adopts it. One exception:
#: a guard that saw a loss (``ARGV[1]`` set) never adopts another epoch whose ``lost_at`` is 0,
#: one a guard starting on the emptied prefix took for a new prefix: it replaces it, so the
#: loss is recorded and that guard's claims find their marker changed and read the record
#: again. Returns the record as it is afterwards (a flat field/value list).
RECOVER_SCRIPT: Final = """
local cur = redis.call('HGET', KEYS[1], 'epoch')
local unaware = cur ~= false and ARGV[1] ~= '' and cur ~= ARGV[1]
  and redis.call('HGET', KEYS[1], 'lost_at') == '0'
if cur == false or (ARGV[1] ~= '' and cur == ARGV[1]) or unaware then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'lost_at', ARGV[3], 'covered', '',
             'state', ARGV[4])
end
return redis.call('HGETALL', KEYS[1])
"""


#: Marks the epoch ``ARGV[1]`` ready, unless the record names another epoch by now (another
#: guard saw a loss and replaced it while this one restored its markers): that epoch keeps its
#: state, so a guard holding for a rebuild of it is not released by a guard that finished
#: restoring the one before. ``KEYS[1]``: the epoch record. Returns the record as it is
#: afterwards (a flat field/value list).
READY_SCRIPT: Final = """
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'ready')
end
return redis.call('HGETALL', KEYS[1])
"""


@dataclass(frozen=True, slots=True)
class EpochState:
    """The epoch record as a guard knows it (see the module docstring)."""

    epoch: str
    lost_at: int
    covered: frozenset[str]
    ready: bool

    def quarantines(self, created_at: int, topic: str, future_skew_ms: int) -> bool:
        """True for a record that may have been claimed before the loss, on a topic no rebuild
        re-claimed."""
        return (
            self.lost_at > 0
            and created_at <= self.lost_at + future_skew_ms
            and topic not in self.covered
        )


def new_epoch() -> str:
    """A fresh epoch token (random: two guards never pick the same one)."""
    return secrets.token_hex(8)


def epoch_key(prefix: str) -> bytes:
    """``{prefix}:epoch``: the epoch record."""
    return f"{prefix}:epoch".encode()


_slot_tags: list[str] | None = None


def slot_tag(slot: int) -> str:
    """The smallest decimal string whose Redis Cluster hash slot is ``slot``."""
    global _slot_tags
    if _slot_tags is None:
        tags: list[str | None] = [None] * SLOTS
        missing, number = SLOTS, 0
        while missing:
            text = str(number)
            slot_of = binascii.crc_hqx(text.encode(), 0) % SLOTS
            if tags[slot_of] is None:
                tags[slot_of] = text
                missing -= 1
            number += 1
        _slot_tags = [tag for tag in tags if tag is not None]
    return _slot_tags[slot]


def marker_key(prefix: str, slot: int | None = None) -> bytes:
    """The marker of a single node (``slot`` None) or of one cluster hash slot."""
    if slot is None:
        return f"{prefix}:mark".encode()
    return f"{prefix}:mark:{{{slot_tag(slot)}}}".encode()


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def parse_epoch_record(reply: object) -> EpochState | None:
    """An :class:`EpochState` from HGETALL's reply (a mapping or a flat list); None when the
    record is missing or not one of ours."""
    if isinstance(reply, Sequence) and not isinstance(reply, str | bytes):
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    if not isinstance(reply, Mapping):
        return None
    fields = {_text(key): _text(value) for key, value in reply.items()}
    epoch, lost_at = fields.get("epoch"), fields.get("lost_at")
    covered, state = fields.get("covered"), fields.get("state")
    if not epoch or lost_at is None or covered is None or state not in (READY, REBUILDING):
        return None
    try:
        lost = int(lost_at)
    except ValueError:
        return None
    topics = frozenset(topic for topic in covered.split(",") if topic)
    return EpochState(epoch=epoch, lost_at=lost, covered=topics, ready=state == READY)


def is_lost(reply: object) -> bool:
    """True when a claim script call answered :data:`LOST_REPLY`."""
    if isinstance(reply, str):  # a client built with decode_responses=True
        reply = reply.encode()
    return reply == LOST_REPLY


def quarantine_split(
    rows: Sequence[ClaimRow], state: EpochState, future_skew_ms: int
) -> tuple[list[int], list[int]]:
    """The indexes of ``rows`` to claim and of those to quarantine (in order)."""
    if state.lost_at <= 0:
        return list(range(len(rows))), []
    claim: list[int] = []
    held: list[int] = []
    for index, row in enumerate(rows):
        (held if state.quarantines(row[2], row[3], future_skew_ms) else claim).append(index)
    return claim, held


def merge_verdicts(
    count: int, claimed: Sequence[int], verdicts: Sequence[ClaimVerdict]
) -> list[ClaimVerdict]:
    """``count`` verdicts: those of the ``claimed`` indexes, QUARANTINED for the rest."""
    merged = [ClaimVerdict.QUARANTINED] * count
    for index, verdict in zip(claimed, verdicts, strict=True):
        merged[index] = verdict
    return merged


def lost_error(prefix: str, state: EpochState | None) -> ReplayStateLost:
    """The error a claim raises while the replay state is lost or being recovered."""
    if state is None:
        detail = "the epoch record is missing or unreadable"
    elif state.ready:
        detail = "a new epoch started; the batch is retried in it"
    else:
        detail = "a recovery or rebuild is running (signed-bus guard status)"
    return ReplayStateLost(f"replay guard prefix {prefix!r} lost its Redis state: {detail}")
