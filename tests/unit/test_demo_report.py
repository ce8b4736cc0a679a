"""The demo's accounting catches every way a run can go wrong, and passes a clean one."""

from __future__ import annotations

import json

from demo.report import (
    Expected,
    Findings,
    check_action_ledger,
    check_attacks,
    check_executions,
    check_planner_ledger,
    conclude,
    format_report,
)

RUN = "t"
N = 5


def clean() -> tuple[Expected, dict[str, str], dict[str, str], list[dict[str, str]]]:
    expected = Expected.compute(N, RUN)
    planner = {}
    actions = {}
    executions = []
    for i, (prompt_id, digest) in enumerate(expected.outputs.items()):
        planner[f"results:0:{i}"] = json.dumps({"prompt_id": prompt_id, "output_sha256": digest})
        acts = expected.actions[prompt_id]
        actions[f"plans:0:{i}"] = json.dumps(
            {"plan_id": f"p{i}", "prompt_id": prompt_id, "actions": [list(a) for a in acts]}
        )
        for j, (verb, target) in enumerate(acts):
            executions.append(
                {"action_id": f"p{i}/{j}", "prompt_id": prompt_id, "verb": verb, "target": target}
            )
    return expected, planner, actions, executions


def run_checks(
    expected: Expected,
    planner: dict[str, str],
    actions: dict[str, str],
    executions: list[dict[str, str]],
    effects: dict[str, int] | None = None,
    dead: dict[str, dict[str, int]] | None = None,
) -> Findings:
    findings = Findings(produced=N)
    check_planner_ledger(expected, planner, findings)
    check_action_ledger(expected, actions, findings)
    if effects is None:
        effects = {str(e["action_id"]): 1 for e in executions}
    check_executions(expected, executions, effects, findings)
    check_attacks(
        {"results": 3}, dead if dead is not None else {"results": {"replay": 3}}, findings
    )
    conclude(findings)
    return findings


def test_a_clean_run_passes() -> None:
    findings = run_checks(*clean())
    assert findings.ok, findings.problems
    assert findings.delivered_planner == findings.delivered_action_agent == N
    assert findings.actions_executed == findings.actions_expected > 0
    text = format_report(findings, trace="chain verified", elapsed_s=3)
    assert "RESULT: PASS" in text and "chain verified" in text


def test_lost_result_fails() -> None:
    expected, planner, actions, executions = clean()
    planner.pop("results:0:2")
    findings = run_checks(expected, planner, actions, executions)
    assert not findings.ok and any("never reached the planner" in x for x in findings.lost)


def test_replayed_copy_delivered_at_a_second_position_fails() -> None:
    expected, planner, actions, executions = clean()
    planner["results:1:99"] = planner["results:0:1"]
    findings = run_checks(expected, planner, actions, executions)
    assert not findings.ok and any("positions" in x for x in findings.through)


def test_altered_result_fails() -> None:
    expected, planner, actions, executions = clean()
    entry = json.loads(planner["results:0:0"])
    entry["output_sha256"] = "0" * 64
    planner["results:0:0"] = json.dumps(entry)
    findings = run_checks(expected, planner, actions, executions)
    assert any("altered" in x for x in findings.through)


def test_foreign_plan_and_action_fail() -> None:
    expected, planner, actions, executions = clean()
    prompt_id = next(iter(expected.actions))
    actions["plans:1:50"] = json.dumps(
        {"plan_id": "evil", "prompt_id": prompt_id, "actions": [["rollback", "payments"]]}
    )
    executions.append(
        {"action_id": "evil/0", "prompt_id": prompt_id, "verb": "rollback", "target": "payments"}
    )
    findings = run_checks(expected, planner, actions, executions)
    assert any("foreign plan" in x for x in findings.through)
    assert any("differ from its plan" in x for x in findings.through)


def test_action_executed_twice_fails() -> None:
    expected, planner, actions, executions = clean()
    effects = {str(e["action_id"]): 1 for e in executions}
    effects[str(executions[0]["action_id"])] = 2
    findings = run_checks(expected, planner, actions, executions, effects=effects)
    assert findings.max_executions_per_action == 2 and not findings.ok


def test_attack_not_dead_lettered_fails() -> None:
    findings = run_checks(*clean(), dead={"results": {"replay": 2}})
    assert any("only 2 dead-lettered" in x for x in findings.through)
    assert "RESULT: FAIL" in format_report(findings, trace=None, elapsed_s=1)
