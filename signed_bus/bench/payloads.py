"""Inference results as the benchmark sends them: msgpack maps of an exact encoded size.

Every part uses the same generator, so raw and signed runs carry the same results. A result
looks like what a model worker publishes (request id, model, labels with scores, a generated
text); the text is padded so that ``msgpack.packb(result)`` is exactly ``size`` bytes.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack

__all__ = ["SENT_NS_PLACEHOLDER", "inference_results", "packed_size"]

#: A nanosecond timestamp (2023-11-14), encoded as msgpack uint64 like any current time_ns().
SENT_NS_PLACEHOLDER = 1_700_000_000_000_000_000

_WORDS = (
    "route",
    "pallet",
    "inspect",
    "defect",
    "approve",
    "reject",
    "hold",
    "forklift",
    "aisle",
    "scanner",
    "priority",
    "restock",
)


def packed_size(result: object) -> int:
    return len(msgpack.packb(result))


def _result(index: int, rng: random.Random, size: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "request_id": f"req-{index:012d}",
        "model": "vision-classifier:2.3.1",
        "labels": [
            {"label": rng.choice(_WORDS), "score": round(rng.random(), 6)} for _ in range(3)
        ],
        "latency_ms": round(rng.uniform(2.0, 40.0), 3),
        "text": "",
        "seq": index,
        # The latency run overwrites this with time.time_ns(); the placeholder has the same
        # msgpack width (uint64), so stamping a send time keeps the result at ``size`` bytes.
        "sent_ns": SENT_NS_PLACEHOLDER,
    }
    # Fill to the exact size. The str header grows by 1 byte at 32 and by 2 more at 256, so
    # fix the text length by iteration rather than a single subtraction.
    text_len = max(0, size - packed_size(result))
    for _ in range(4):
        result["text"] = " ".join(rng.choice(_WORDS) for _ in range(text_len // 6 + 1))[:text_len]
        excess = packed_size(result) - size
        if excess == 0:
            break
        text_len = max(0, text_len - excess)
    if packed_size(result) != size:
        raise ValueError(f"cannot build a {size}-byte result (minimum {packed_size(result)})")
    return result


def inference_results(count: int, *, size: int = 512, seed: int = 6) -> list[dict[str, Any]]:
    """``count`` distinct results whose msgpack encoding is exactly ``size`` bytes each."""
    rng = random.Random(seed)  # noqa: S311 - synthetic payloads, not secrets
    return [_result(index, rng, size) for index in range(count)]
