"""Plans: one action per recommendation, ids derived from the input digest, strict parsing."""

from __future__ import annotations

import pytest

from consumers.plans import Plan, make_plan
from producers.model import StandInModel, prompts


def test_one_action_per_recommendation() -> None:
    model = StandInModel()
    for prompt in prompts(30):
        result = model.generate(prompt)
        plan = make_plan(result, source_digest=b"\x01" * 32)
        assert len(plan.actions) == result.output.count(".")
        assert plan.prompt_id == prompt.prompt_id
        assert plan.source_model == model.model_id
        assert [a.action_id for a in plan.actions] == [
            f"{plan.plan_id}/{i}" for i in range(len(plan.actions))
        ]


def test_ids_follow_the_input_digest() -> None:
    result = StandInModel().generate(next(prompts(1)))
    first = make_plan(result, source_digest=b"\x01" * 32)
    assert make_plan(result, source_digest=b"\x01" * 32) == first
    assert make_plan(result, source_digest=b"\x02" * 32).plan_id != first.plan_id


def test_payload_round_trip() -> None:
    plan = make_plan(StandInModel().generate(next(prompts(1))), source_digest=b"\x03" * 32)
    assert Plan.from_payload(plan.to_payload()) == plan


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"kind": "inference_result"},
        {"kind": "plan", "plan_id": "p", "prompt_id": "x", "source_model": "m"},
        {"kind": "plan", "plan_id": "p", "prompt_id": "x", "source_model": "m", "actions": [1]},
        {
            "kind": "plan",
            "plan_id": "",
            "prompt_id": "x",
            "source_model": "m",
            "actions": [],
        },
    ],
)
def test_wrong_shapes_are_value_errors(payload: object) -> None:
    with pytest.raises(ValueError):
        Plan.from_payload(payload)
