"""GRPO: every reward, group normalisation, the relative judge against a real server, and a few real steps."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi import FastAPI, Request

from conftest import chat_completion, running
from niche.errors import ConfigError
from niche.train.rewards import (
    RelativeJudge,
    build_reward,
    exact_match_reward,
    label_reward,
    normalise_group,
    parse_judge_scores,
    token_f1_reward,
)

LABELS = json.dumps(["billing", "outage", "security"])


def test_each_builtin_reward_scores_as_documented() -> None:
    completions = ["billing", "outage", "weather", "  billing  ", "Billing"]
    references = ["billing", "billing", "billing", "outage", "billing"]
    assert label_reward(completions, references) == [1.0, 0.0, 0.0, 0.0, 0.0]  # as eval scores
    label_set = build_reward({"name": "label_set"}, 4)
    assert label_set(completions, labels=[LABELS] * 5) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert exact_match_reward(completions, references) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert token_f1_reward(["the site is down"], ["site down"]) == [pytest.approx(2 * 0.5 * 1 / 1.5)]
    schema = {"type": "object", "properties": {"severity": {"enum": ["low", "high"]}}, "required": ["severity"]}
    json_schema = build_reward({"name": "json", "schema": schema}, 4)
    assert json_schema(['{"severity": "low"}', '{"severity": "mid"}', "not json"]) == [1.0, 0.0, 0.0]
    assert build_reward({"name": "json"}, 4)(['{"a": 1}', "{"]) == [1.0, 0.0]
    regex = build_reward({"name": "regex", "pattern": r"[a-z]+"}, 4)
    assert regex(["outage", "Outage!", " outage "]) == [1.0, 0.0, 1.0]
    assert build_reward({"name": "regex", "pattern": "down", "search": True}, 4)(["site is down", "up"]) == [1.0, 0.0]
    length = build_reward({"name": "length", "max_words": 2}, 4)
    assert length(["one two", "one two three", "a b c d e f g"]) == [0.0, -0.5, -1.0]
    python = build_reward({"name": "python", "function": "test_grpo:first_letter_reward"}, 4)
    assert python(["bill", "out"], reference=["billing", "security"]) == [1.0, 0.0]
    assert python.__name__ == "python"


def first_letter_reward(completions: list[str], references: list[str], **_) -> list[float]:
    """A user's reward function, loaded by name through the `python` reward."""
    return [float(completion[:1] == reference[:1]) for completion, reference in zip(completions, references)]


def test_reward_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown reward 'bleu'"):
        build_reward({"name": "bleu"}, 4)
    with pytest.raises(ConfigError, match="regex: missing option 'pattern'"):
        build_reward({"name": "regex"}, 4)
    with pytest.raises(ConfigError, match="not a valid pattern"):
        build_reward({"name": "regex", "pattern": "("}, 4)
    with pytest.raises(ConfigError, match="cannot import 'no_such_module:f'"):
        build_reward({"name": "python", "function": "no_such_module:f"}, 4)


def test_group_normalisation_is_a_z_score_within_the_group() -> None:
    assert normalise_group([0.2, 0.4, 0.6]) == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4)
    assert normalise_group([0.5, 0.5]) == [0.0, 0.0]
    assert parse_judge_scores('```json\n{"scores": [10, 5, 0], "reason": "x"}\n```', 3) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="expected 'scores' with 2 numbers"):
        parse_judge_scores('{"scores": [1]}', 2)


def judge_server(replies: list[str]) -> tuple[FastAPI, dict]:
    """An OpenAI-compatible endpoint that answers judge prompts with the scripted replies, in order."""
    state = {"calls": 0, "prompts": []}
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["prompts"].append(body["messages"][0]["content"])
        content = replies[min(state["calls"], len(replies) - 1)]
        state["calls"] += 1
        return chat_completion(body["model"], content, 100, 10, state["calls"])

    return app, state


def test_relative_judge_scores_groups_caches_and_survives_malformed_replies(caplog) -> None:
    from niche.teachers import OpenAITeacher

    app, state = judge_server(['{"scores": [9, 3, 6], "reason": "first is best"}', "I refuse to grade", "not json"])
    with running(app) as url:
        teacher = OpenAITeacher(f"{url}/v1", "judge-model", max_retries=0, structured=False)
        judge = RelativeJudge(teacher, "Correct routing label.", group_size=3, price_input_per_million=2.0)
        prompts = ["ticket: site down"] * 3
        completions = ["outage", "billing", "security"]
        first = judge(prompts=prompts, completions=completions, reference=["outage"] * 3)
        assert first == pytest.approx(normalise_group([0.9, 0.3, 0.6]))
        assert (
            "Rubric: Correct routing label." in state["prompts"][0]
            and "Reference answer: outage" in state["prompts"][0]
        )
        assert judge(prompts=prompts, completions=completions, reference=["outage"] * 3) == first
        assert state["calls"] == 1 and judge.usage.cached == 1
        with caplog.at_level(logging.WARNING, logger="niche.train.rewards"):
            malformed = judge(prompts=prompts, completions=["a", "b", "c"], reference=["outage"] * 3)
        assert malformed == [0.0, 0.0, 0.0]
        assert judge.usage.failures == 1 and "malformed judge reply" in judge.usage.failure_reasons[0]
        assert "reward 0 for this group" in caplog.text
        assert judge.usage.cost == pytest.approx(2 * 100 * 2.0 / 1e6)


def test_a_few_grpo_steps_raise_the_mean_reward(tiny_config, tmp_path) -> None:
    from niche.artifact import read_manifest
    from niche.train import train

    # A briefly trained SFT specialist: its samples mix right labels, wrong labels and junk.
    sft = train(tiny_config("training.max_steps=8", "training.batch_size=8"), show_progress=False)
    config = tiny_config(
        "name=toy-grpo",
        "training.method=grpo",
        f"grpo.start_from={sft.specialist_dir}",
        "grpo.group_size=8",
        "grpo.prompts_per_step=2",
        "grpo.max_completion_length=4",
        "grpo.kl=0.0",
        "training.max_steps=16",
        "training.learning_rate=0.02",
        "grpo.rewards=[{name: label, weight: 1.0}]",
    )
    result = train(config, show_progress=False)
    metrics = result.manifest.metrics
    curve = metrics["reward_curve"]
    assert len(curve) == 16
    early, late = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    assert late > early + 0.2, curve
    manifest = read_manifest(result.specialist_dir)
    assert manifest.hyperparameters["method"] == "grpo"
    assert manifest.hyperparameters["grpo"]["rewards"][0]["name"] == "label"
    assert manifest.template.system_prompt == read_manifest(sft.specialist_dir).template.system_prompt
