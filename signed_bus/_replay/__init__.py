"""The Redis replay guard: one nonce set shared by every consumer group.

:mod:`.layout` is the key layout and the claim script, :mod:`.core` and :mod:`.steps` the
guards' settings and steps (no I/O), :mod:`.guard` the async :class:`RedisReplayGuard` and
:mod:`.sync_guard` the sync one (each only the I/O that runs the steps), :mod:`.sizing` memory
and shard estimates.
docs/OPERATIONS.md, "Redis replay guard", says how to run and size it.
"""

from signed_bus._replay.guard import RedisReplayGuard
from signed_bus._replay.layout import (
    CLAIM_SCRIPT,
    LAYOUT_VERSION,
    Claim,
    ClaimPlanner,
    ClaimRow,
    ClaimVerdict,
    ScriptCall,
    bucket_key,
    bucket_of,
    decode_verdicts,
    nonce_field,
    nonce_shard,
    position_value,
)
from signed_bus._replay.rebuild import RebuildSource
from signed_bus._replay.sizing import (
    DEFAULT_BYTES_PER_NONCE,
    estimate_memory_bytes,
    recommended_shards,
)

__all__ = [
    "CLAIM_SCRIPT",
    "DEFAULT_BYTES_PER_NONCE",
    "LAYOUT_VERSION",
    "Claim",
    "ClaimPlanner",
    "ClaimRow",
    "ClaimVerdict",
    "RebuildSource",
    "RedisReplayGuard",
    "ScriptCall",
    "bucket_key",
    "bucket_of",
    "decode_verdicts",
    "estimate_memory_bytes",
    "nonce_field",
    "nonce_shard",
    "position_value",
    "recommended_shards",
]
