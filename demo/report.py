"""The demo's final accounting: what should have happened, what did, and whether they agree.

Everything honest is recomputable: the prompts and the stand-in model are deterministic, so the
orchestrator knows every result the inference agent published and every action the planner must
derive from it. The agents' ledgers (one field per delivered record position) and the action
agent's execution records are compared against that:

- an honest record missing at a hop -> LOST;
- a record at a hop that is not an honest one (unknown prompt, other content), or an honest one
  delivered at two positions (a replayed copy) -> ATTACK THROUGH;
- an action executed twice, or an action no honest plan contains -> ATTACK THROUGH / DUPLICATE;
- attacks published into a topic versus records dead-lettered from it -> every attack dropped.

The report quotes record content (prompt and action ids, dead-letter topics and reasons): it is
escaped with :func:`signed_bus.printable` where the report is formatted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from consumers.plans import make_plan
from producers.model import StandInModel, prompts
from signed_bus import printable


@dataclass(frozen=True, slots=True)
class Expected:
    """The honest run: per prompt id, the output hash and the (verb, target) actions."""

    outputs: dict[str, str]
    actions: dict[str, list[tuple[str, str]]]

    @classmethod
    def compute(cls, count: int, run_id: str, model: StandInModel | None = None) -> Expected:
        model = model or StandInModel()
        outputs: dict[str, str] = {}
        actions: dict[str, list[tuple[str, str]]] = {}
        for prompt in prompts(count, run=run_id):
            result = model.generate(prompt)
            outputs[prompt.prompt_id] = hashlib.sha256(result.output.encode()).hexdigest()
            plan = make_plan(result, source_digest=bytes(32))
            actions[prompt.prompt_id] = [(a.verb, a.target) for a in plan.actions]
        return cls(outputs, actions)

    @property
    def action_count(self) -> int:
        return sum(len(a) for a in self.actions.values())


@dataclass(slots=True)
class Findings:
    """The demo's verdict; ``problems`` empty means it passed."""

    produced: int = 0
    delivered_planner: int = 0
    plans_published: int = 0
    planner_mode: str = ""
    delivered_action_agent: int = 0
    actions_expected: int = 0
    actions_executed: int = 0
    max_executions_per_action: int = 0
    duplicate_deliveries_suppressed: int = 0
    attacks_tried: dict[str, int] = field(default_factory=dict)
    attacks_into_topic: dict[str, int] = field(default_factory=dict)
    dropped_by_topic: dict[str, dict[str, int]] = field(default_factory=dict)
    auditor_rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    through: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "produced": self.produced,
            "delivered": {
                "planner": self.delivered_planner,
                "plans_published": self.plans_published,
                "planner_mode": self.planner_mode,
                "action_agent": self.delivered_action_agent,
            },
            "actions": {
                "expected": self.actions_expected,
                "executed": self.actions_executed,
                "max_executions_per_action": self.max_executions_per_action,
                "redeliveries_suppressed": self.duplicate_deliveries_suppressed,
            },
            "attacks": {
                "tried": self.attacks_tried,
                "tried_total": sum(self.attacks_tried.values()),
                "into_topic": self.attacks_into_topic,
                "dropped_by_topic": self.dropped_by_topic,
                "dropped_total": sum(sum(r.values()) for r in self.dropped_by_topic.values()),
                "auditor_rejected": self.auditor_rejected,
            },
            "lost": self.lost,
            "through": self.through,
            "problems": self.problems,
        }


def check_planner_ledger(expected: Expected, ledger: Mapping[str, str], findings: Findings) -> None:
    """The planner's ledger: position -> {prompt_id, output_sha256, ...}."""
    positions: dict[str, list[str]] = {}
    for position, raw in ledger.items():
        entry = json.loads(raw)
        prompt_id = entry.get("prompt_id")
        if prompt_id not in expected.outputs:
            findings.through.append(f"planner received an unknown result at {position}")
            continue
        if entry.get("output_sha256") != expected.outputs[prompt_id]:
            findings.through.append(f"planner received altered output for {prompt_id}")
            continue
        positions.setdefault(prompt_id, []).append(position)
    for prompt_id, where in positions.items():
        if len(where) > 1:
            findings.through.append(
                f"planner received {prompt_id} at {len(where)} positions: {sorted(where)}"
            )
    findings.delivered_planner = len(positions)
    for prompt_id in expected.outputs:
        if prompt_id not in positions:
            findings.lost.append(f"result {prompt_id} never reached the planner")


def check_action_ledger(expected: Expected, ledger: Mapping[str, str], findings: Findings) -> None:
    """The action agent's ledger: position -> {plan_id, prompt_id, actions, ...}."""
    plans: dict[str, set[str]] = {}
    positions: Counter[str] = Counter()
    for position, raw in ledger.items():
        entry = json.loads(raw)
        prompt_id = entry.get("prompt_id")
        actions = [tuple(a) for a in entry.get("actions", [])]
        if prompt_id not in expected.actions or actions != expected.actions[prompt_id]:
            findings.through.append(f"action agent received a foreign plan at {position}")
            continue
        plans.setdefault(prompt_id, set()).add(str(entry.get("plan_id")))
        positions[prompt_id] += 1
    for prompt_id, count in positions.items():
        if count > 1:
            findings.through.append(f"action agent received a plan for {prompt_id} {count} times")
        if len(plans[prompt_id]) > 1:
            findings.through.append(f"{prompt_id} has {len(plans[prompt_id])} different plans")
    findings.delivered_action_agent = len(positions)
    for prompt_id in expected.actions:
        if prompt_id not in positions:
            findings.lost.append(f"no plan for {prompt_id} reached the action agent")


def check_executions(
    expected: Expected,
    executions: Iterable[Mapping[str, Any]],
    effects: Mapping[str, int],
    findings: Findings,
) -> None:
    """Execution records (one per executed action) and the per-action effect counters."""
    done: dict[str, list[tuple[str, str]]] = {}
    for record in executions:
        prompt_id = str(record.get("prompt_id"))
        done.setdefault(prompt_id, []).append((str(record.get("verb")), str(record.get("target"))))
    findings.actions_expected = expected.action_count
    findings.actions_executed = sum(len(v) for v in done.values())
    findings.max_executions_per_action = max(effects.values(), default=0)
    for action_id, count in effects.items():
        if count != 1:
            findings.through.append(f"action {action_id} executed {count} times")
    for prompt_id, actions in done.items():
        want = expected.actions.get(prompt_id)
        if want is None or sorted(actions) != sorted(want):
            findings.through.append(f"executed actions for {prompt_id} differ from its plan")
    for prompt_id, want in expected.actions.items():
        if want and prompt_id not in done:
            findings.lost.append(f"the actions of {prompt_id} were never executed")


def check_attacks(
    tried_by_topic: Mapping[str, int],
    dead_letters: Mapping[str, Mapping[str, int]],
    findings: Findings,
) -> None:
    """Every forgery published into a topic must come out of that topic's dead-letter topic."""
    findings.attacks_into_topic = dict(tried_by_topic)
    findings.dropped_by_topic = {t: dict(r) for t, r in dead_letters.items()}
    for topic, tried in tried_by_topic.items():
        dropped = sum(dead_letters.get(topic, {}).values())
        if dropped < tried:
            findings.through.append(
                f"{tried} attacks published into {topic}, only {dropped} dead-lettered"
            )


def conclude(findings: Findings) -> None:
    if findings.lost:
        findings.problems.append(f"{len(findings.lost)} honest record(s) lost")
    if findings.through:
        findings.problems.append(f"{len(findings.through)} sign(s) of an attack getting through")
    if findings.produced == 0:
        findings.problems.append("nothing was produced")


def format_report(findings: Findings, *, trace: str | None, elapsed_s: float) -> str:
    data = findings.to_json()
    attacks = data["attacks"]
    lines = [
        "",
        "=" * 72,
        f"signed-bus demo report ({elapsed_s:.0f} s)",
        "=" * 72,
        f"honest results produced ........ {findings.produced}",
        f"  delivered to the planner ..... {findings.delivered_planner}",
        f"  plans published .............. {findings.plans_published}"
        + (f" ({findings.planner_mode})" if findings.planner_mode else ""),
        f"  plans delivered to actions ... {findings.delivered_action_agent}",
        f"actions executed ............... {findings.actions_executed} of "
        f"{findings.actions_expected} (max {findings.max_executions_per_action} execution(s) "
        f"per action; {findings.duplicate_deliveries_suppressed} repeat(s) suppressed)",
        f"attacks tried .................. {attacks['tried_total']}",
    ]
    for kind, count in sorted(findings.attacks_tried.items()):
        lines.append(f"    {printable(kind):<24} {count}")
    lines.append(f"attacks dropped (dead letters) . {attacks['dropped_total']}")
    for topic, reasons in sorted(findings.dropped_by_topic.items()):
        into = findings.attacks_into_topic.get(topic, 0)
        detail = ", ".join(f"{printable(r)}={n}" for r, n in sorted(reasons.items()))
        lines.append(f"    {printable(topic)}: {sum(reasons.values())} of {into} ({detail})")
    if trace:
        # Already escaped where it was built (TraceReport.format and the demo's header line).
        lines += ["", "provenance of one executed action (signed-bus trace):", trace]
    lines.append("")
    if findings.ok:
        lines.append(
            "RESULT: PASS: no attack got through, no honest record was lost, every "
            "action executed exactly once"
        )
    else:
        lines.append("RESULT: FAIL")
        for problem in findings.problems:
            lines.append(f"  - {problem}")
        for item in (findings.lost + findings.through)[:20]:
            lines.append(f"    {printable(item)}")
    lines.append("=" * 72)
    return "\n".join(lines)
