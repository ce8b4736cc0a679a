"""The stand-in model is deterministic and its results round-trip through the payload shape."""

from __future__ import annotations

import pytest

from producers.model import ACTION_VERBS, InferenceResult, StandInModel, prompts


def test_prompts_are_deterministic_and_numbered() -> None:
    first = list(prompts(5, run="r1"))
    assert first == list(prompts(5, run="r1"))
    assert [p.prompt_id for p in first] == [f"r1-{i:06d}" for i in range(5)]
    assert first != list(prompts(5, run="r2"))


def test_same_prompt_same_result() -> None:
    model = StandInModel()
    for prompt in prompts(20):
        assert model.generate(prompt) == model.generate(prompt)


def test_result_looks_like_a_model_answer() -> None:
    model = StandInModel(name="m", version="2.0")
    result = model.generate(next(prompts(1)))
    assert result.model_id == "m@2.0"
    assert result.prompt_tokens > 0
    assert result.completion_tokens == len(result.output.split())
    assert result.latency_ms > 0
    sentences = [s for s in result.output.split(".") if s.strip()]
    assert 1 <= len(sentences) <= 3
    verbs = [s.split()[0] for s in sentences]
    assert all(v in ACTION_VERBS for v in verbs)
    assert len(set(verbs)) == len(verbs)


def test_payload_round_trip() -> None:
    result = StandInModel().generate(next(prompts(1)))
    assert InferenceResult.from_payload(result.to_payload()) == result


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"kind": "plan"},
        {"kind": "inference_result"},
        {"kind": "inference_result", "usage": {}},
        {
            "kind": "inference_result",
            "model": "m",
            "model_version": "1",
            "prompt_id": "p",
            "output": "o",
            "usage": {"prompt_tokens": True, "completion_tokens": 1},
            "latency_ms": 1,
        },
        {
            "kind": "inference_result",
            "model": "m",
            "model_version": 1,
            "prompt_id": "p",
            "output": "o",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "latency_ms": 1,
        },
    ],
)
def test_wrong_shapes_are_value_errors(payload: object) -> None:
    with pytest.raises(ValueError):
        InferenceResult.from_payload(payload)
