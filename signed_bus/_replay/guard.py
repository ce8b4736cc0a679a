"""The replay guard: one Redis nonce set shared by every consumer group.

docs/OPERATIONS.md, "Redis replay guard", says how to run and size it.

A claim is *set-if-absent-and-return-previous* with position binding. Each nonce remembers the
record position (topic, partition, offset) it was first claimed at:

* nothing stored -> :attr:`ClaimVerdict.NEW` (deliver);
* the same position stored -> :attr:`ClaimVerdict.SAME_POSITION` (deliver: another group's
  fan-out, a redelivery after a crash or rebalance, or redis-py re-sending the script after a
  timeout, which makes the claim idempotent);
* another position stored -> :attr:`ClaimVerdict.REPLAY` (drop and dead-letter).

Layout (v1), chosen for bytes per nonce (see docs/OPERATIONS.md, "Redis replay guard"):

* key ``{prefix}:n:{<bucket>}:<shard>``, a hash. ``bucket = created_at // bucket_ms``: the
  envelope's signed creation time was authenticated before the claim, so every copy of an
  envelope maps to the same bucket and exactly one bucket is checked per nonce. ``shard`` spreads
  one bucket over a few small hashes so each stays in Redis's compact listpack encoding (about
  a third of the memory of a hashtable-encoded hash). The hash tag ``{<bucket>}`` keeps all shards
  of a bucket in one cluster slot, so a batch costs one call per bucket it touches on a cluster.
* field: 16 bytes of SHA-256(u16 len(issuer) || issuer || nonce): nonces are issuer-scoped, so a
  holder of one issuer's key cannot pre-empt another issuer's nonce.
* value: 8 bytes of SHA-256 over the position. Only equality is ever asked of it.
* the bucket's TTL is extended (never shortened) on every claim into it to the claiming
  consumer's ``Freshness.retention_ms`` (max_age + max_lag + 2 x skew) plus ``bucket_ms``. The
  consumer passes its verifier's window with every claim, so the nonce outlives every moment a
  copy of its envelope could still verify by that window: the guard holds no window of its own
  that could disagree, and consumers with different windows may share it (TTLs only grow).

One Lua script claims a whole batch in one round trip on a single node; on Redis Cluster the
batch is split into one script call per hash slot (one per bucket in the batch, usually one or
two), run concurrently.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import re
import struct
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from signed_bus._freshness import MAX_WINDOW_MS, Freshness
from signed_bus._lifecycle import AsyncLifecycle
from signed_bus.errors import ConfigurationError, ReplayGuardUnavailable

__all__ = [
    "LAYOUT_VERSION",
    "Claim",
    "ClaimRow",
    "ClaimVerdict",
    "RedisReplayGuard",
    "bucket_key",
    "bucket_of",
    "estimate_memory_bytes",
    "nonce_field",
    "nonce_shard",
    "position_value",
    "recommended_shards",
]

_log = logging.getLogger("signed_bus.replay")

LAYOUT_VERSION: Final = 1
FIELD_BYTES: Final = 16
POSITION_BYTES: Final = 8
#: Bytes per nonce of Redis ``used_memory`` assumed by :func:`estimate_memory_bytes`. Measured
#: with benchmarks/bench_replay.py on Redis 7.0: about 33 with shards sized for the rate (hashes
#: stay listpacks), about 96 where hashes outgrow listpack; this covers both.
DEFAULT_BYTES_PER_NONCE: Final = 100.0

# One packed record per claim: u16 index into KEYS (0-based), field, position value.
_RECORD: Final = struct.Struct(f">H{FIELD_BYTES}s{POSITION_BYTES}s")
_U16: Final = struct.Struct(">H")
_POSITION: Final = struct.Struct(">iq")
_PARTITION: Final = struct.Struct(">i")
_MAX_KEYS_PER_CALL: Final = 0xFFFF
_CLUSTER_CONCURRENCY: Final = 16

# KEYS: the distinct bucket keys of this call. ARGV[1]: TTL in ms. ARGV[2]: packed records.
# Returns one byte per record: "0" new, "1" same position, "2" replay. Records are processed in
# order, so two records with one nonce in the same batch get NEW then SAME_POSITION/REPLAY.
# PTTL + PEXPIRE rather than PEXPIRE ... GT: GT needs Redis 7 and never sets a TTL on a key that
# has none (a persistent key counts as infinite), and TTLs must only grow because consumers with
# a longer freshness window may share the set.
_CLAIM_LUA: Final = f"""
local ttl = tonumber(ARGV[1])
local blob = ARGV[2]
local size = {_RECORD.size}
if #blob % size ~= 0 then
  return redis.error_reply('ERR signed-bus replay claim: bad record blob')
end
local out = {{}}
local n = 0
local byte, sub = string.byte, string.sub
for p = 1, #blob, size do
  local hi, lo = byte(blob, p, p + 1)
  local key = KEYS[hi * 256 + lo + 1]
  local field = sub(blob, p + 2, p + {1 + FIELD_BYTES})
  local pos = sub(blob, p + {2 + FIELD_BYTES}, p + {_RECORD.size - 1})
  n = n + 1
  if redis.call('HSETNX', key, field, pos) == 1 then
    out[n] = '0'
  elseif redis.call('HGET', key, field) == pos then
    out[n] = '1'
  else
    out[n] = '2'
  end
end
for i = 1, #KEYS do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return table.concat(out)
"""

# Options a guard took before the window moved into Freshness; refused by name.
_WINDOW_OPTIONS: Final = frozenset({"max_age_ms", "future_skew_ms", "max_lag_ms", "freshness"})

# Everything a Redis client can raise for an unreachable or failing server.
_REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


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


class ClaimVerdict(enum.Enum):
    """What the shared nonce set said about a claim."""

    NEW = "new"
    SAME_POSITION = "same_position"
    REPLAY = "replay"

    @property
    def deliver(self) -> bool:
        """True for NEW and SAME_POSITION: the record goes to the application."""
        return self is not ClaimVerdict.REPLAY


_VERDICTS: Final = {
    ord("0"): ClaimVerdict.NEW,
    ord("1"): ClaimVerdict.SAME_POSITION,
    ord("2"): ClaimVerdict.REPLAY,
}
# The same as a table indexed by the reply byte (None: not a verdict code).
_VERDICT_OF_BYTE: Final[tuple[ClaimVerdict | None, ...]] = tuple(
    _VERDICTS.get(code) for code in range(256)
)

#: A claim as plain values: (issuer, nonce, created_at, topic, partition, offset), the fields
#: of :class:`Claim` in order. The consumer's fast path builds these instead of Claim objects.
ClaimRow = tuple[str, bytes, int, str, int, int]
#: Cached hashing states (issuers, topic partitions) beyond this many are dropped and rebuilt:
#: a consumer sees a handful, but claim() takes any values.
_MAX_CACHED_STATES: Final = 4_096


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
    return _shard_of(_nonce_digest(issuer, nonce), shards)


def _shard_of(digest: bytes, shards: int) -> int:
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


def estimate_memory_bytes(
    rate_per_second: float,
    *,
    retention_ms: int,
    bytes_per_nonce: float = DEFAULT_BYTES_PER_NONCE,
) -> int:
    """Redis memory the nonce set needs: bytes per nonce x claim rate x retention.

    ``rate_per_second`` counts distinct envelopes (fan-out to more groups adds none);
    ``retention_ms`` is :attr:`RedisReplayGuard.retention_ms` (max_age + max_lag + 2 x skew
    + one bucket). Measure ``bytes_per_nonce`` for
    your Redis with ``python benchmarks/bench_replay.py``.
    """
    if rate_per_second < 0 or retention_ms < 0 or bytes_per_nonce <= 0:
        raise ConfigurationError("rate, retention and bytes per nonce must be positive")
    return math.ceil(rate_per_second * retention_ms / 1000 * bytes_per_nonce)


def recommended_shards(
    peak_rate_per_second: float, *, bucket_ms: int = 1_000, nonces_per_hash: int = 64
) -> int:
    """Shards per bucket so one hash holds about ``nonces_per_hash`` nonces at the peak rate.

    64 leaves room for a 2x burst under the stock ``hash-max-listpack-entries 128``. Every
    consumer sharing a prefix must use the same value, so derive it from a planned peak rate,
    not a measured one. 1,000/s with 1 s buckets gives the default, 16.
    """
    if peak_rate_per_second < 0 or bucket_ms < 1 or nonces_per_hash < 1:
        raise ConfigurationError("rate must be >= 0, bucket_ms and nonces_per_hash >= 1")
    wanted = math.ceil(peak_rate_per_second * bucket_ms / 1000 / nonces_per_hash)
    return max(1, min(0xFFFF, wanted))


# A ``password=`` query item (redis-py reads it as the password), up to the next item.
_QUERY_PASSWORD: Final = re.compile(r"(?i)([?&;]password=)[^&;#]*")


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme, userinfo, rest)`` of a URL, split on the raw text: the userinfo is everything
    between ``://`` and the LAST ``@`` (None without one).

    Parsers stop the authority at the first '/', '?' or '#', so a password holding one of those
    (``redis://user:pa/ss@host``) would otherwise be taken for a host, port or path and printed.
    Masking up to the last '@' can only mask too much (an '@' in a path or query), never a
    password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    userinfo, at, host_and_path = rest.rpartition("@")
    if not at:
        return scheme, None, rest
    return scheme, userinfo, host_and_path


def _redact_url(url: str) -> str:
    """The URL with its password (in the userinfo or a ``password=`` query item) masked.

    Works on the raw text, before any parsing. A userinfo without a colon is masked too: it is a
    username, but often a misplaced password.
    """
    scheme, userinfo, rest = _split_userinfo(url)
    if not scheme:
        return "<unparseable url>"
    shown = ""
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***@" if colon else "***@"
    masked = _QUERY_PASSWORD.sub(r"\1***", rest)
    return f"{scheme}://{shown}{masked}"


def _url_secrets(url: str) -> list[str]:
    """Every string of the URL that is or may be a secret, raw and percent-decoded."""
    _, userinfo, rest = _split_userinfo(url)
    found: list[str] = []
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        found += [password] if colon else [user]
    found += [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(rest)]
    found += [urllib.parse.unquote(s) for s in found]
    # Longest first, so a secret is never half-replaced by a shorter one inside it.
    return sorted({s for s in found if s}, key=len, reverse=True)


def _check_userinfo(url: str) -> None:
    """Refuse a URL whose userinfo a parser would read differently from the raw text.

    ``redis://user:1234#secret@host/0`` parses as host "user", port 1234 and no password: the
    client would connect somewhere else and print the password's start as a port. Such a
    userinfo must percent-encode '/', '?', '#' (and an '@' outside it too).
    """
    _, userinfo, _ = _split_userinfo(url)
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:
        netloc = ""
    parsed = netloc.rpartition("@")[0] if "@" in netloc else None
    if userinfo != parsed:
        raise ConfigurationError(
            f"Redis URL {_redact_url(url)} is ambiguous: percent-encode '/', '?' and '#' in "
            "its userinfo, and any '@' after the host"
        )


class _Call:
    """The claims of one script call: distinct keys, packed records, input indexes."""

    __slots__ = ("indexes", "key_ids", "keys", "records")

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}
        # bucket * shards + shard -> the packed u16 index of its key in ``keys``
        self.key_ids: dict[int, bytes] = {}
        self.records: list[bytes] = []
        self.indexes: list[int] = []

    @property
    def blob(self) -> bytes:
        """The packed records: u16 key index || field || position value, per claim."""
        return b"".join(self.records)


class RedisReplayGuard(AsyncLifecycle):
    """Claims the nonces of verified envelopes in a Redis nonce set shared by all groups.

    ``client`` is a built ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``;
    it is not closed by :meth:`stop` (use :meth:`from_url` to let the guard own one).

    Every consumer sharing ``prefix`` must use the same ``bucket_ms`` and ``shards`` (they decide
    where a nonce lives); :meth:`start` records them in ``{prefix}:layout`` and refuses a
    mismatch. Size ``shards`` with :func:`recommended_shards` from the planned peak rate of
    distinct envelopes (the default 16 suits up to ~1,000/s). Too few shards costs memory (a hash
    that outgrows Redis's ``hash-max-listpack-entries`` becomes a hashtable, ~3x the bytes per
    nonce); too many costs a little per key at low rates; neither affects correctness.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        prefix: str = "signed-bus",
        bucket_ms: int = 1_000,
        shards: int = 16,
        max_claims_per_call: int = 4_096,
        check_layout: bool = True,
    ) -> None:
        _check_int("bucket_ms", bucket_ms, minimum=1, maximum=MAX_WINDOW_MS)
        _check_int("shards", shards, minimum=1, maximum=0xFFFF)
        _check_int(
            "max_claims_per_call", max_claims_per_call, minimum=1, maximum=_MAX_KEYS_PER_CALL
        )
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError("prefix must be a non-empty string without '{' or '}'")
        if not isinstance(client, aioredis.Redis | RedisCluster):
            raise ConfigurationError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster"
            )
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self.prefix = prefix
        self.bucket_ms = bucket_ms
        self.shards = shards
        self.max_claims_per_call = max_claims_per_call
        self.check_layout = check_layout
        self._script: AsyncScript = client.register_script(_CLAIM_LUA)
        # SHA-256 states already fed the per-issuer prefix of a nonce field and the
        # per-(topic, partition) prefix of a position value: a claim copies and finishes them.
        self._issuer_states: dict[str, Any] = {}
        self._position_states: dict[tuple[str, int], Any] = {}
        self._owns_client = False
        self._where = f"client={type(client).__name__}"
        self._secrets: list[str] = []
        self._started = False
        self._stopped = False
        self._start_lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = "signed-bus",
        bucket_ms: int = 1_000,
        shards: int = 16,
        max_claims_per_call: int = 4_096,
        check_layout: bool = True,
        **client_options: Any,
    ) -> RedisReplayGuard:
        """Build a guard that owns its client, from ``redis://`` or ``rediss://`` (TLS).

        Credentials go in the URL (``rediss://user:password@host:6380/0``). ``cluster=True``
        makes a ``RedisCluster`` from the same URL (a seed node). ``client_options`` go to the
        client (``socket_timeout``, ``retry``, ``ssl_ca_certs`` ...); the defaults are short
        timeouts (2 s) so an outage is reported, not waited out.
        """
        stale = _WINDOW_OPTIONS.intersection(client_options)
        if stale:
            # They would reach redis-py as connection options and fail at the first claim.
            raise ConfigurationError(
                f"the replay guard takes no freshness window ({', '.join(sorted(stale))}): "
                "every claim carries the verifier's Freshness"
            )
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("redis", "rediss"):
            raise ConfigurationError("Redis URL must start with redis:// or rediss://")
        _check_userinfo(url)
        client_options.setdefault("socket_timeout", 2.0)
        client_options.setdefault("socket_connect_timeout", 2.0)
        try:
            client: aioredis.Redis | RedisCluster
            if cluster:
                client = RedisCluster.from_url(url, **client_options)
            else:
                client = aioredis.Redis.from_url(url, **client_options)
        except (ValueError, TypeError) as exc:
            # Only the type: the text of a parse error may quote any part of the URL.
            raise ConfigurationError(
                f"bad Redis URL or option for {_redact_url(url)}: {type(exc).__name__}"
            ) from None
        guard = cls(
            client,
            prefix=prefix,
            bucket_ms=bucket_ms,
            shards=shards,
            max_claims_per_call=max_claims_per_call,
            check_layout=check_layout,
        )
        guard._owns_client = True
        guard._where = f"url={_redact_url(url)!r}"
        guard._secrets = _url_secrets(url)
        return guard

    def retention_ms(self, freshness: Freshness) -> int:
        """How long a nonce claimed with ``freshness`` is kept after its last claim (the TTL a
        bucket gets from each claim into it): ``freshness.retention_ms`` + one bucket."""
        return freshness.retention_ms + self.bucket_ms

    @property
    def layout(self) -> str:
        """The layout descriptor every consumer sharing the prefix must agree on."""
        return f"v{LAYOUT_VERSION} bucket_ms={self.bucket_ms} shards={self.shards}"

    def __repr__(self) -> str:
        return (
            f"RedisReplayGuard({self._where}, prefix={self.prefix!r}, cluster={self._cluster}, "
            f"layout={self.layout!r})"
        )

    async def start(self) -> None:
        """Load the script and check the layout record. Claims start the guard if needed."""
        if self._stopped:
            raise ReplayGuardUnavailable("the replay guard was stopped")
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            try:
                if self.check_layout:
                    await self._check_layout()
                # On a cluster this loads on every primary; a node that lacks it later (a
                # failover) answers NOSCRIPT and the script object loads it again.
                await self._client.script_load(_CLAIM_LUA)
                if not self._cluster:
                    await self._warn_if_evicting()
            except _REDIS_FAILURES as exc:
                raise self._unavailable(exc) from exc
            self._started = True

    async def _check_layout(self) -> None:
        key = f"{self.prefix}:layout".encode()
        wanted = self.layout.encode()
        # SET NX then GET (not SET NX GET, which needs Redis 7): the record never changes once
        # written, so the two steps cannot interleave badly.
        await self._client.set(key, wanted, nx=True)
        stored = await self._client.get(key)
        if isinstance(stored, str):  # a client built with decode_responses=True
            stored = stored.encode()
        if stored is not None and stored != wanted:
            shown = stored.decode("utf-8", "replace")
            raise ConfigurationError(
                f"replay guard layout mismatch under prefix {self.prefix!r}: Redis has "
                f"{shown!r}, this consumer uses {self.layout!r}; every consumer sharing a "
                "prefix must use the same bucket_ms and shards (use a new prefix to change them)"
            )

    async def _warn_if_evicting(self) -> None:
        # An evicted bucket forgets its nonces: replays inside the window would pass.
        try:
            info = await self._client.info("memory")
        except RedisError:  # INFO may be forbidden by an ACL; the docs say what to set
            return
        policy = info.get("maxmemory_policy") if isinstance(info, dict) else None
        if policy not in (None, "noeviction", b"noeviction"):
            _log.warning(
                "Redis maxmemory-policy is %s: it may evict replay-guard buckets and let "
                "replays through; set maxmemory-policy noeviction",
                policy,
            )

    async def stop(self) -> None:
        """Close the client if the guard created it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._owns_client:
            try:
                await self._client.aclose()
            except _REDIS_FAILURES as exc:  # closing a dead connection is not worth raising
                _log.debug("closing the replay guard's Redis client failed: %s", type(exc))

    async def claim(
        self, claims: Sequence[ClaimRow], *, freshness: Freshness
    ) -> list[ClaimVerdict]:
        """Claim a batch of nonces; verdicts come back in the order of ``claims``.

        ``claims`` are :class:`Claim` values or plain tuples in the same field order
        (:data:`ClaimRow`: a consumer's hot path saves building an object per record).
        ``freshness`` is the window the claiming verifier accepts records by: every bucket a
        claim touches is kept for at least :meth:`retention_ms` of it.

        One Redis round trip for the batch on a single node: one script call, or one per
        ``max_claims_per_call`` claims sent as one pipeline. On a cluster, one script call per
        hash slot the batch touches (a slot per time bucket), run concurrently.
        Raises :class:`ReplayGuardUnavailable` when Redis fails; claims are idempotent, so
        retry the same batch (claims already stored come back as SAME_POSITION).
        """
        if not isinstance(freshness, Freshness):
            raise ConfigurationError("freshness must be the claiming verifier's Freshness")
        if not claims:
            return []
        if not self._started:
            await self.start()
        if self._stopped:
            raise ReplayGuardUnavailable("the replay guard was stopped")
        calls = self._plan_rows(claims)
        ttl = self.retention_ms(freshness)
        try:
            replies = await self._execute(calls, ttl)
        except _REDIS_FAILURES as exc:
            raise self._unavailable(exc) from exc
        table = _VERDICT_OF_BYTE
        verdicts: list[ClaimVerdict | None]
        if len(calls) == 1:  # one call holds the claims in input order
            verdicts = [table[code] for code in _reply_bytes(replies[0], len(claims))]
        else:
            verdicts = [None] * len(claims)
            for call, reply in zip(calls, replies, strict=True):
                codes = _reply_bytes(reply, len(call.indexes))
                for index, code in zip(call.indexes, codes, strict=True):
                    verdicts[index] = table[code]
        if None in verdicts:
            raise ReplayGuardUnavailable("Redis returned a malformed replay claim reply")
        return verdicts  # type: ignore[return-value]  # no None left

    def _plan_rows(self, rows: Iterable[ClaimRow]) -> list[_Call]:
        """Encode claims and split them into script calls (per slot on a cluster).

        Produces exactly what :func:`nonce_field`, :func:`nonce_shard`, :func:`position_value`
        and :func:`bucket_key` define, with the hashing of the per-issuer and per-partition
        prefixes done once (cached SHA-256 states, copied per claim).
        """
        bucket_ms, shards, prefix = self.bucket_ms, self.shards, self.prefix
        limit = self.max_claims_per_call
        cluster = self._cluster
        issuer_states, position_states = self._issuer_states, self._position_states
        open_calls: dict[int, _Call] = {}
        done: list[_Call] = []
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
            if cluster:
                group = slot_of_bucket.get(bucket, -1)
                if group < 0:
                    group = slot_of_bucket[bucket] = key_slot(bucket_key(prefix, bucket, 0))
            call = open_calls.get(group)
            if call is None or len(call.indexes) >= limit:
                if call is not None:
                    done.append(call)
                call = open_calls[group] = _Call()
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

    async def _execute(self, calls: list[_Call], ttl: int) -> list[Any]:
        """Run the script calls: one EVALSHA, or one pipeline (per node on a cluster)."""
        if len(calls) == 1:
            return [await self._run(calls[0], ttl)]
        if self._cluster:
            # redis-py refuses EVALSHA in cluster pipelines: one call per slot, concurrently,
            # at most _CLUSTER_CONCURRENCY at a time (a node's pool fails rather than waits
            # when it runs out of connections).
            limit = asyncio.Semaphore(_CLUSTER_CONCURRENCY)

            async def bounded(call: _Call) -> Any:
                async with limit:
                    return await self._run(call, ttl)

            return list(await asyncio.gather(*(bounded(call) for call in calls)))
        # A batch over max_claims_per_call: its calls go in one pipeline, one round trip.
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in pending:
                keys = list(calls[i].keys)
                pipe.evalsha(self._script.sha, len(keys), *keys, ttl, calls[i].blob)
            results = await pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError):
                    missing.append(i)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    replies[i] = result
            if not missing:
                return replies
            await self._client.script_load(_CLAIM_LUA)  # flushed, or a node that never had it
            pending = missing
        raise NoScriptError("the claim script is still missing after SCRIPT LOAD")

    async def _run(self, call: _Call, ttl: int) -> Any:
        # the script object loads the script again when Redis answers NOSCRIPT
        return await self._script(keys=list(call.keys), args=[ttl, call.blob])

    def _unavailable(self, exc: BaseException) -> ReplayGuardUnavailable:
        detail = _scrub(str(exc), self._secrets)
        return ReplayGuardUnavailable(
            f"Redis replay guard unavailable ({self._where}): {type(exc).__name__}: {detail}"
        )


def _reply_bytes(reply: Any, expected: int) -> bytes:
    """One script reply as bytes of verdict codes; ReplayGuardUnavailable if malformed."""
    if isinstance(reply, str):  # a client built with decode_responses=True
        reply = reply.encode()
    if not isinstance(reply, bytes) or len(reply) != expected:
        raise ReplayGuardUnavailable("Redis returned a malformed replay claim reply")
    return reply


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigurationError(f"{name} must be {bound}, got {value}")
