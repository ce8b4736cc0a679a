"""A small deterministic stand-in model and the inference-result shape the pipeline carries.

The demo needs results that look like a real model's (model name and version, prompt id, output
text, token counts, latency) and that every party can recompute: the orchestrator checks that
each hop received exactly the honest results, so the same prompt must always give the same
output. The "model" therefore derives its answer from a SHA-256 of the prompt; no weights, no
randomness, no network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "ACTION_VERBS",
    "InferenceResult",
    "Prompt",
    "StandInModel",
    "prompts",
]

#: Verbs the model recommends; the planner turns each recommendation into one action.
ACTION_VERBS = ("restart", "scale-out", "rollback", "notify", "open-ticket", "drain")

_SERVICES = (
    "checkout-api",
    "search",
    "payments",
    "inventory",
    "auth",
    "recommendations",
    "gateway",
    "billing",
)
_SYMPTOMS = (
    "p99 latency above 2 s",
    "error rate at 7 %",
    "memory climbing without bound",
    "consumer lag growing",
    "5xx after the last deploy",
    "CPU pinned at 100 %",
)
_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
_REASONS = (
    "to clear the degraded state",
    "to absorb the load",
    "because the regression started with the deploy",
    "so the owning team can act",
    "to keep an audit trail",
    "to move traffic off the bad hosts",
)


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request to the model: a stable id and the prompt text."""

    prompt_id: str
    text: str


def prompts(count: int, *, run: str = "demo") -> Iterator[Prompt]:
    """``count`` deterministic incident prompts; ids are ``{run}-{index:06d}``."""
    for index in range(count):
        pick = _digest(f"{run}/{index}")
        service = _SERVICES[pick[0] % len(_SERVICES)]
        symptom = _SYMPTOMS[pick[1] % len(_SYMPTOMS)]
        region = _REGIONS[pick[2] % len(_REGIONS)]
        yield Prompt(
            prompt_id=f"{run}-{index:06d}",
            text=f"Incident on {service} in {region}: {symptom}. What should we do?",
        )


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """What the inference agent publishes: one model answer and how it was produced."""

    model: str
    model_version: str
    prompt_id: str
    output: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float

    @property
    def model_id(self) -> str:
        """``name@version``, the value signed into the envelope header's model field."""
        return f"{self.model}@{self.model_version}"

    def to_payload(self) -> dict[str, object]:
        return {
            "kind": "inference_result",
            "model": self.model,
            "model_version": self.model_version,
            "prompt_id": self.prompt_id,
            "output": self.output,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_payload(cls, payload: object) -> InferenceResult:
        """Parse a verified payload; ValueError if it is not an inference result.

        The signature proves who wrote the bytes, not that they have the expected shape, so a
        consumer still validates the structure before acting on it.
        """
        if not isinstance(payload, Mapping) or payload.get("kind") != "inference_result":
            raise ValueError("not an inference result")
        usage = payload.get("usage")
        if not isinstance(usage, Mapping):
            raise ValueError("inference result without usage")
        try:
            result = cls(
                model=_str(payload, "model"),
                model_version=_str(payload, "model_version"),
                prompt_id=_str(payload, "prompt_id"),
                output=_str(payload, "output"),
                prompt_tokens=_int(usage, "prompt_tokens"),
                completion_tokens=_int(usage, "completion_tokens"),
                latency_ms=_number(payload, "latency_ms"),
            )
        except KeyError as exc:
            raise ValueError(f"inference result without {exc.args[0]}") from None
        return result


class StandInModel:
    """A deterministic "model": the same prompt always yields the same answer.

    The answer is one to three recommendations of the form ``<verb> <service>: <why>.``; the
    planner parses them back into actions. Latency is simulated (and reported), not slept.
    """

    def __init__(self, *, name: str = "incident-lm", version: str = "1.3.0") -> None:
        self.name = name
        self.version = version

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    def generate(self, prompt: Prompt) -> InferenceResult:
        pick = _digest(f"{self.model_id}/{prompt.text}/{prompt.prompt_id}")
        service = next((s for s in _SERVICES if s in prompt.text), _SERVICES[0])
        count = 1 + pick[0] % 3
        sentences = []
        first = pick[1] % len(ACTION_VERBS)
        for i in range(count):
            # Consecutive verbs from a hashed start: distinct recommendations, deterministic.
            verb = ACTION_VERBS[(first + i) % len(ACTION_VERBS)]
            reason = _REASONS[pick[4 + i] % len(_REASONS)]
            sentences.append(f"{verb} {service}: {reason}.")
        output = " ".join(sentences)
        completion_tokens = len(output.split())
        return InferenceResult(
            model=self.name,
            model_version=self.version,
            prompt_id=prompt.prompt_id,
            output=output,
            prompt_tokens=len(prompt.text.split()),
            completion_tokens=completion_tokens,
            latency_ms=round(18.0 + 2.5 * completion_tokens + pick[8] / 25.6, 1),
        )


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _str(mapping: Mapping[object, object], field: str) -> str:
    value = mapping[field]
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} is not a string")
    return value


def _int(mapping: Mapping[object, object], field: str) -> int:
    value = mapping[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"field {field!r} is not a non-negative integer")
    return value


def _number(mapping: Mapping[object, object], field: str) -> float:
    value = mapping[field]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"field {field!r} is not a number")
    return float(value)
