"""The plan shape the planner publishes and the action agent executes.

A plan turns one verified inference result into actions. Its ``plan_id`` is derived from the
digest of the result envelope it was made from, and each action id from the plan id, so planning
the same input twice (an at-least-once hop re-processing after a crash) yields the same action
ids: the action agent keys its exactly-once execution record on them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from producers.model import ACTION_VERBS, InferenceResult

__all__ = ["Action", "Plan", "make_plan"]

_RECOMMENDATION = re.compile(r"(?P<verb>[a-z-]+) (?P<target>[a-z0-9-]+): (?P<reason>[^.]+)\.")


@dataclass(frozen=True, slots=True)
class Action:
    action_id: str
    verb: str
    target: str
    reason: str

    def to_payload(self) -> dict[str, object]:
        return {
            "action_id": self.action_id,
            "verb": self.verb,
            "target": self.target,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    prompt_id: str
    source_model: str
    actions: tuple[Action, ...]

    def to_payload(self) -> dict[str, object]:
        return {
            "kind": "plan",
            "plan_id": self.plan_id,
            "prompt_id": self.prompt_id,
            "source_model": self.source_model,
            "actions": [action.to_payload() for action in self.actions],
        }

    @classmethod
    def from_payload(cls, payload: object) -> Plan:
        """Parse a verified payload; ValueError if it is not a plan."""
        if not isinstance(payload, Mapping) or payload.get("kind") != "plan":
            raise ValueError("not a plan")
        raw_actions = payload.get("actions")
        if not isinstance(raw_actions, list):
            raise ValueError("plan without actions")
        actions = []
        for raw in raw_actions:
            if not isinstance(raw, Mapping):
                raise ValueError("plan action is not a map")
            actions.append(
                Action(
                    action_id=_str(raw, "action_id"),
                    verb=_str(raw, "verb"),
                    target=_str(raw, "target"),
                    reason=_str(raw, "reason"),
                )
            )
        return cls(
            plan_id=_str(payload, "plan_id"),
            prompt_id=_str(payload, "prompt_id"),
            source_model=_str(payload, "source_model"),
            actions=tuple(actions),
        )


def make_plan(result: InferenceResult, *, source_digest: bytes) -> Plan:
    """One action per recommendation in the model's output (unknown verbs are skipped)."""
    plan_id = hashlib.sha256(b"plan\x00" + source_digest).hexdigest()[:24]
    actions: list[Action] = []
    for match in _RECOMMENDATION.finditer(result.output):
        if match["verb"] not in ACTION_VERBS:
            continue
        actions.append(
            Action(
                action_id=f"{plan_id}/{len(actions)}",
                verb=match["verb"],
                target=match["target"],
                reason=match["reason"].strip(),
            )
        )
    return Plan(
        plan_id=plan_id,
        prompt_id=result.prompt_id,
        source_model=result.model_id,
        actions=tuple(actions),
    )


def _str(mapping: Mapping[object, object], field: str) -> str:
    value = mapping.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"plan field {field!r} missing or not a string")
    return value
