"""The replay guard's Redis layout (v1) and its one claim script, without any I/O.

docs/OPERATIONS.md, "Redis replay guard", says how to run and size it. Nothing here imports
asyncio or a Redis client: the async :class:`~signed_bus._replay.guard.RedisReplayGuard` runs
:data:`CLAIM_SCRIPT` with what :class:`ClaimPlanner` packs, and a synchronous guard on
``redis.Redis`` would reuse this module unchanged.

A claim is *set-if-absent-and-return-previous* with position binding. Each nonce remembers the
record position (topic, partition, offset) it was first claimed at:

* nothing stored -> :attr:`ClaimVerdict.NEW` (deliver);
* the same position stored -> :attr:`ClaimVerdict.SAME_POSITION` (deliver: another group's
  fan-out, a redelivery after a crash or rebalance, or redis-py re-sending the script after a
  timeout, which makes the claim idempotent);
* another position stored -> :attr:`ClaimVerdict.REPLAY` (drop and dead-letter).

Layout (v1), chosen for bytes per nonce:

* key ``{prefix}:n:{<bucket>}:<shard>``, a hash. ``bucket = created_at // bucket_ms``: the
  envelope's signed creation time was authenticated before the claim, so every copy of an
  envelope maps to the same bucket and exactly one bucket is checked per nonce. ``shard`` spreads
  one bucket over a few small hashes so each stays in Redis's compact listpack encoding. The
  hash tag ``{<bucket>}`` keeps all shards of a bucket in one cluster slot.
* field: 16 bytes of SHA-256(u16 len(issuer) || issuer || nonce): nonces are issuer-scoped, so a
  holder of one issuer's key cannot pre-empt another issuer's nonce.
* value: 8 bytes of SHA-256 over the position. Only equality is ever asked of it.
* the bucket's TTL is extended (never shortened) on every claim into it to the claiming
  consumer's ``Freshness.retention_ms`` plus ``bucket_ms``.
* ``{prefix}:layout`` holds :func:`layout_descriptor`; every consumer sharing a prefix must
  agree on it.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple

import signed_bus._native as _native  # no I/O: the optional extension's planner, or None
from signed_bus.errors import ConfigurationError

__all__ = [
    "CLAIM_SCRIPT",
    "FIELD_BYTES",
    "LAYOUT_VERSION",
    "POSITION_BYTES",
    "RECORD_BYTES",
    "Claim",
    "ClaimPlanner",
    "ClaimRow",
    "ClaimVerdict",
    "ScriptCall",
    "bucket_key",
    "bucket_of",
    "check_layout_record",
    "decode_verdicts",
    "layout_descriptor",
    "layout_key",
    "nonce_field",
    "nonce_shard",
    "parse_layout_descriptor",
    "position_value",
]

LAYOUT_VERSION: Final = 1
FIELD_BYTES: Final = 16
POSITION_BYTES: Final = 8
#: Keys one script call may name: a record's key index is a u16.
MAX_KEYS_PER_CALL: Final = 0xFFFF

# One packed record per claim: u16 index into KEYS (0-based), field, position value.
_RECORD: Final = struct.Struct(f">H{FIELD_BYTES}s{POSITION_BYTES}s")
RECORD_BYTES: Final = _RECORD.size
_U16: Final = struct.Struct(">H")
_POSITION: Final = struct.Struct(">iq")
_PARTITION: Final = struct.Struct(">i")

#: The claim script: claims a batch of nonces in one call.
#:
#: ``KEYS``: the distinct bucket keys (:func:`bucket_key`) the records of this call name, at
#: most :data:`MAX_KEYS_PER_CALL`, then the epoch marker of their slot (last;
#: :func:`signed_bus._replay.epoch.marker_key`); on a cluster they must all hash to one slot.
#:
#: ``ARGV[1]``: the TTL in milliseconds each bucket key is extended to (never shortened):
#: ``Freshness.retention_ms + bucket_ms``.
#:
#: ``ARGV[2]``: the packed records, :data:`RECORD_BYTES` each: a big-endian u16 index into
#: ``KEYS`` (0-based), the 16-byte :func:`nonce_field`, the 8-byte :func:`position_value`.
#:
#: ``ARGV[3]``: the epoch the guard knows. When the marker is missing or holds another epoch,
#: Redis lost state (or another guard recovered from a loss): the script claims nothing and
#: returns ``"L"`` (:data:`signed_bus._replay.epoch.LOST_REPLY`).
#:
#: Returns a string of one byte per record, in order: ``"0"`` new, ``"1"`` same position,
#: ``"2"`` replay (see :func:`decode_verdicts`). Records are processed in order, so two records
#: with one nonce in the same batch get NEW then SAME_POSITION/REPLAY. A blob whose length is not
#: a multiple of the record size is an error reply. PTTL + PEXPIRE rather than PEXPIRE ... GT:
#: GT needs Redis 7 and never sets a TTL on a key that has none, and TTLs must only grow because
#: consumers with a longer freshness window may share the set.
CLAIM_SCRIPT: Final = f"""
local ttl = tonumber(ARGV[1])
local blob = ARGV[2]
local size = {RECORD_BYTES}
if #blob % size ~= 0 then
  return redis.error_reply('ERR signed-bus replay claim: bad record blob')
end
local buckets = #KEYS - 1
if redis.call('GET', KEYS[#KEYS]) ~= ARGV[3] then
  return 'L'
end
local out = {{}}
local n = 0
local byte, sub = string.byte, string.sub
for p = 1, #blob, size do
  local hi, lo = byte(blob, p, p + 1)
  local key = KEYS[hi * 256 + lo + 1]
  local field = sub(blob, p + 2, p + {1 + FIELD_BYTES})
  local pos = sub(blob, p + {2 + FIELD_BYTES}, p + {RECORD_BYTES - 1})
  n = n + 1
  if redis.call('HSETNX', key, field, pos) == 1 then
    out[n] = '0'
  elseif redis.call('HGET', key, field) == pos then
    out[n] = '1'
  else
    out[n] = '2'
  end
end
for i = 1, buckets do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return table.concat(out)
"""

#: Cached hashing states (issuers, topic partitions) beyond this many are dropped and rebuilt:
#: a consumer sees a handful, but a claim takes any values.
_MAX_CACHED_STATES: Final = 4_096


class Claim(NamedTuple):
    """One verified envelope at one record position (a :data:`ClaimRow` with field names).

    ``issuer``, ``nonce`` and ``created_at`` come from the *verified* protected header; the
    position is where the record was read.
    """

    issuer: str
    nonce: bytes
    created_at: int
    topic: str
    partition: int
    offset: int


#: A claim as plain values: (issuer, nonce, created_at, topic, partition, offset), the fields
#: of :class:`Claim` in order. The consumer's fast path builds these instead of Claim objects.
ClaimRow = tuple[str, bytes, int, str, int, int]


class ClaimVerdict(enum.Enum):
    """What the shared nonce set said about a claim."""

    NEW = "new"
    SAME_POSITION = "same_position"
    REPLAY = "replay"
    #: Created before a loss of the replay state on a topic no rebuild covered: it may have
    #: been claimed before, so it is dead-lettered (reason ``quarantined``), never claimed.
    QUARANTINED = "quarantined"

    @property
    def deliver(self) -> bool:
        """True for NEW and SAME_POSITION: the record goes to the application."""
        return self is ClaimVerdict.NEW or self is ClaimVerdict.SAME_POSITION


# The verdict of each reply byte (None: not a verdict code).
_VERDICT_OF_BYTE: Final[tuple[ClaimVerdict | None, ...]] = tuple(
    {
        ord("0"): ClaimVerdict.NEW,
        ord("1"): ClaimVerdict.SAME_POSITION,
        ord("2"): ClaimVerdict.REPLAY,
    }.get(code)
    for code in range(256)
)


def _nonce_digest(issuer: str, nonce: bytes) -> bytes:
    raw = issuer.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("issuer is longer than 65535 bytes")
    return hashlib.sha256(_U16.pack(len(raw)) + raw + nonce).digest()


def nonce_field(issuer: str, nonce: bytes) -> bytes:
    """The hash field of a nonce: SHA-256(u16 len(issuer) || issuer || nonce)[:16]."""
    return _nonce_digest(issuer, nonce)[:FIELD_BYTES]


def nonce_shard(issuer: str, nonce: bytes, shards: int) -> int:
    """The shard of a nonce: digest bytes 16-17 (not stored in the field) modulo ``shards``."""
    digest = _nonce_digest(issuer, nonce)
    return int.from_bytes(digest[FIELD_BYTES : FIELD_BYTES + 2], "big") % shards


def position_value(topic: str, partition: int, offset: int) -> bytes:
    """The stored position: SHA-256(u16 len(topic) || topic || i32 partition || i64 offset)[:8].

    Only equality is compared. Two positions of one envelope colliding would let a copy through
    as SAME_POSITION; the verifier pins the topic to the signed destination and the broker picks
    partition and offset, so a copy would need a write at one specific unknowable position out
    of 2**64: not reachable.
    """
    raw = topic.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("topic is longer than 65535 bytes")
    try:
        packed = _POSITION.pack(partition, offset)
    except struct.error:
        raise ValueError(f"partition {partition} / offset {offset} out of range") from None
    return hashlib.sha256(_U16.pack(len(raw)) + raw + packed).digest()[:POSITION_BYTES]


def bucket_of(created_at: int, bucket_ms: int) -> int:
    """The time bucket of a signed creation time (floor division, also for negatives)."""
    return created_at // bucket_ms


def bucket_key(prefix: str, bucket: int, shard: int) -> bytes:
    """``{prefix}:n:{<bucket>}:<shard>``: the hash tag keeps a bucket's shards in one slot."""
    return f"{prefix}:n:{{{bucket}}}:{shard}".encode()


def layout_key(prefix: str) -> bytes:
    """``{prefix}:layout``: the key of the layout record."""
    return f"{prefix}:layout".encode()


def layout_descriptor(bucket_ms: int, shards: int) -> str:
    """What the layout record holds; every consumer sharing a prefix must agree on it."""
    return f"v{LAYOUT_VERSION} bucket_ms={bucket_ms} shards={shards}"


def parse_layout_descriptor(stored: bytes | str | None) -> tuple[int, int] | None:
    """``(bucket_ms, shards)`` of a stored :func:`layout_descriptor`; None if it is not one."""
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8", "replace")
    if stored is None:
        return None
    parts = stored.split(" ")
    if len(parts) != 3 or parts[0] != f"v{LAYOUT_VERSION}":
        return None
    names = ("bucket_ms=", "shards=")
    if not all(part.startswith(name) for part, name in zip(parts[1:], names, strict=True)):
        return None
    try:
        bucket_ms, shards = (int(part.split("=", 1)[1]) for part in parts[1:])
    except ValueError:
        return None
    if bucket_ms < 1 or not 1 <= shards <= 0xFFFF:
        return None
    return bucket_ms, shards


def check_layout_record(prefix: str, stored: bytes | str | None, wanted: str) -> None:
    """ConfigurationError unless the stored layout record (after ``SET NX``) is ``wanted``."""
    if isinstance(stored, str):  # a client built with decode_responses=True
        stored = stored.encode()
    if stored is not None and stored != wanted.encode():
        shown = stored.decode("utf-8", "replace")
        raise ConfigurationError(
            f"replay guard layout mismatch under prefix {prefix!r}: Redis has "
            f"{shown!r}, this consumer uses {wanted!r}; every consumer sharing a "
            "prefix must use the same bucket_ms and shards (use a new prefix to change them)"
        )


class ScriptCall:
    """The claims of one :data:`CLAIM_SCRIPT` call: its ``KEYS`` (:attr:`keys`, in order), its
    record blob (:attr:`blob`, ``ARGV[2]``) and the input index of each record
    (:attr:`indexes`)."""

    __slots__ = ("indexes", "key_ids", "keys", "records")

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}
        # bucket * shards + shard -> the packed u16 index of its key in ``keys``
        self.key_ids: dict[int, bytes] = {}
        self.records: list[bytes] = []
        self.indexes: list[int] = []

    @property
    def blob(self) -> bytes:
        return b"".join(self.records)

    @classmethod
    def planned(cls, keys: list[bytes], blob: bytes, indexes: list[int]) -> ScriptCall:
        """A call the native planner packed (signed_bus._native.claim_planner)."""
        call = cls()
        call.keys = {key: i for i, key in enumerate(keys)}
        call.records = [blob]
        call.indexes = indexes
        return call


class ClaimPlanner:
    """Packs claims into :class:`ScriptCall` values for one layout.

    Produces exactly what :func:`nonce_field`, :func:`nonce_shard`, :func:`position_value` and
    :func:`bucket_key` define, with the hashing of the per-issuer and per-partition prefixes done
    once (cached SHA-256 states, copied per claim). ``slot_of`` (a cluster's key -> slot
    function, e.g. ``redis.crc.key_slot``) groups the calls by hash slot; without it every claim
    goes in one call per ``max_claims_per_call``.
    """

    __slots__ = (
        "_issuer_states",
        "_native_plan",
        "_position_states",
        "bucket_ms",
        "max_claims_per_call",
        "prefix",
        "shards",
        "slot_of",
    )

    def __init__(
        self,
        *,
        prefix: str,
        bucket_ms: int,
        shards: int,
        max_claims_per_call: int,
        slot_of: Callable[[bytes], int] | None = None,
    ) -> None:
        self.prefix = prefix
        self.bucket_ms = bucket_ms
        self.shards = shards
        self.max_claims_per_call = max_claims_per_call
        self.slot_of = slot_of
        self._issuer_states: dict[str, Any] = {}
        self._position_states: dict[tuple[str, int], Any] = {}
        self._native_plan = None if slot_of is not None else _native.claim_planner()

    def plan(self, rows: Iterable[ClaimRow]) -> list[ScriptCall]:
        """The script calls for ``rows`` (ValueError for an issuer, topic, partition or offset
        the layout cannot encode)."""
        if self._native_plan is not None:  # the same calls from the extension, one call
            rows = rows if type(rows) is list else list(rows)
            planned = self._native_plan(self.prefix, self.bucket_ms, self.shards,
                                        self.max_claims_per_call, rows)  # fmt: skip
            if planned is not None:
                return [ScriptCall.planned(*call) for call in planned]
        bucket_ms, shards, prefix = self.bucket_ms, self.shards, self.prefix
        limit = self.max_claims_per_call
        slot_of = self.slot_of
        issuer_states, position_states = self._issuer_states, self._position_states
        open_calls: dict[int, ScriptCall] = {}
        done: list[ScriptCall] = []
        slot_of_bucket: dict[int, int] = {}
        last_issuer: str | None = None
        last_topic: str | None = None
        last_partition = -1
        issuer_state: Any = None
        position_state: Any = None
        for index, (issuer, nonce, created_at, topic, partition, offset) in enumerate(rows):
            if issuer != last_issuer:
                issuer_state = issuer_states.get(issuer)
                if issuer_state is None:
                    issuer_state = self._issuer_state(issuer)
                last_issuer = issuer
            if partition != last_partition or topic != last_topic:
                position_state = position_states.get((topic, partition))
                if position_state is None:
                    position_state = self._position_state(topic, partition)
                last_topic, last_partition = topic, partition
            h = issuer_state.copy()
            h.update(nonce)
            digest = h.digest()
            try:
                packed_offset = offset.to_bytes(8, "big", signed=True)
            except (OverflowError, AttributeError, TypeError):
                raise ValueError(f"partition {partition} / offset {offset} out of range") from None
            h = position_state.copy()
            h.update(packed_offset)
            bucket = created_at // bucket_ms
            shard = (digest[FIELD_BYTES] << 8 | digest[FIELD_BYTES + 1]) % shards
            group = 0
            if slot_of is not None:
                group = slot_of_bucket.get(bucket, -1)
                if group < 0:
                    group = slot_of_bucket[bucket] = slot_of(bucket_key(prefix, bucket, 0))
            call = open_calls.get(group)
            if call is None or len(call.indexes) >= limit:
                if call is not None:
                    done.append(call)
                call = open_calls[group] = ScriptCall()
            where = bucket * shards + shard
            key_id = call.key_ids.get(where)
            if key_id is None:
                keys = call.keys
                key_id = call.key_ids[where] = _U16.pack(len(keys))
                keys[bucket_key(prefix, bucket, shard)] = len(keys)
            call.records.append(key_id + digest[:FIELD_BYTES] + h.digest()[:POSITION_BYTES])
            call.indexes.append(index)
        done.extend(open_calls.values())
        return done

    def _issuer_state(self, issuer: str) -> Any:
        """A SHA-256 state fed u16 len(issuer) || issuer (see :func:`nonce_field`)."""
        raw = issuer.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("issuer is longer than 65535 bytes")
        if len(self._issuer_states) >= _MAX_CACHED_STATES:
            self._issuer_states.clear()
        state = self._issuer_states[issuer] = hashlib.sha256(_U16.pack(len(raw)) + raw)
        return state

    def _position_state(self, topic: str, partition: int) -> Any:
        """A SHA-256 state fed u16 len(topic) || topic || i32 partition (see
        :func:`position_value`)."""
        raw = topic.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("topic is longer than 65535 bytes")
        try:
            packed = _PARTITION.pack(partition)
        except struct.error:
            raise ValueError(f"partition {partition} out of range") from None
        if len(self._position_states) >= _MAX_CACHED_STATES:
            self._position_states.clear()
        state = hashlib.sha256(_U16.pack(len(raw)) + raw + packed)
        self._position_states[(topic, partition)] = state
        return state


def _reply_bytes(reply: object, expected: int) -> bytes | None:
    if isinstance(reply, str):  # a client built with decode_responses=True
        reply = reply.encode()
    if not isinstance(reply, bytes) or len(reply) != expected:
        return None
    return reply


def decode_verdicts(
    calls: Sequence[ScriptCall], replies: Sequence[object], count: int
) -> list[ClaimVerdict] | None:
    """The verdicts of ``count`` claims in input order, from the replies of their ``calls``;
    None if any reply is malformed (wrong type, length or code)."""
    table = _VERDICT_OF_BYTE
    verdicts: list[ClaimVerdict | None]
    if len(calls) == 1:  # one call holds the claims in input order
        codes = _reply_bytes(replies[0], count)
        if codes is None:
            return None
        verdicts = [table[code] for code in codes]
    else:
        verdicts = [None] * count
        for call, reply in zip(calls, replies, strict=True):
            codes = _reply_bytes(reply, len(call.indexes))
            if codes is None:
                return None
            for index, code in zip(call.indexes, codes, strict=True):
                verdicts[index] = table[code]
    if None in verdicts:
        return None
    return verdicts  # type: ignore[return-value]  # no None left
