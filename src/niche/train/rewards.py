"""Rewards for GRPO: a registry of scorers, each weighted, each a TRL reward function.

A reward sees one generation batch: the completions (group_size per prompt, consecutive) and the dataset
columns niche adds to every prompt row (`reference`: the expected answer, `labels`: the label set). Built-in
rewards, by the name a config uses:

- `label`: 1 when the completion is the reference label, else 0. A wrong label earns nothing: a partial score
  for "some label" would, once the format is learned, push the policy towards whatever label it already
  prefers (in a group of seven wrong labels and one junk answer the wrong labels get the positive advantage).
- `label_set`: 1 when the completion is any label of the set (format), else 0; weight it lightly.
- `exact_match`: 1 when the normalised completion equals the reference.
- `token_f1`: token-level F1 against the reference.
- `json`: 1 when the completion parses as JSON (and, with `schema`, validates against it).
- `regex`: 1 when `pattern` matches the whole completion (`search: true`: anywhere).
- `length`: 0 up to `max_words` words, then minus the share by which it runs over (a penalty, at most -1).
- `python`: a user's function `module:function(completions, references, **columns) -> list[float]`.
- `judge`: an OpenAI-compatible teacher scores the group of completions for one prompt against a rubric
  (relative judging, as OpenPipe's RULER does); scores are normalised within the group. Calls are cached,
  retried and costed like `niche synth`; unusable judge output gives 0 with the reason logged, never a crash.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from niche.errors import ConfigError
from niche.metrics import token_f1
from niche.teachers import make_teacher

log = logging.getLogger(__name__)

RewardFunction = Callable[..., list[float]]


def _normal(text: str) -> str:
    """Whitespace-normalised, case kept: the comparison `niche eval` scores with, so rewards and metrics agree."""
    return " ".join(str(text).strip().split())


def _text(completion: Any) -> str:
    """TRL passes strings for plain prompts and message lists for conversational ones."""
    if isinstance(completion, list):
        return "".join(message.get("content", "") for message in completion if isinstance(message, dict))
    return str(completion)


def label_reward(completions: Sequence[Any], reference: Sequence[str], **_: Any) -> list[float]:
    """Exact match on the label; its own function so TRL logs it as `label_reward`."""
    return exact_match_reward(completions, reference)


def label_set_reward(completions: Sequence[Any], labels: Sequence[Any], **_: Any) -> list[float]:
    rewards = []
    for completion, label_set in zip(completions, labels):
        known = {_normal(label) for label in (json.loads(label_set) if isinstance(label_set, str) else label_set)}
        rewards.append(float(_normal(_text(completion)) in known))
    return rewards


def exact_match_reward(completions: Sequence[Any], reference: Sequence[str], **_: Any) -> list[float]:
    return [float(_normal(_text(c)) == _normal(r)) for c, r in zip(completions, reference)]


def token_f1_reward(completions: Sequence[Any], reference: Sequence[str], **_: Any) -> list[float]:
    return [token_f1(_text(c), r) for c, r in zip(completions, reference)]


def json_reward(schema: dict | None = None) -> RewardFunction:
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)

    def reward(completions: Sequence[Any], **_: Any) -> list[float]:
        scores = []
        for completion in completions:
            try:
                value = json.loads(_text(completion))
            except ValueError:
                scores.append(0.0)
                continue
            scores.append(float(validator is None or validator.is_valid(value)))
        return scores

    return reward


def regex_reward(pattern: str, search: bool = False) -> RewardFunction:
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as error:
        raise ConfigError(f"grpo.rewards regex: {pattern!r} is not a valid pattern ({error})") from error
    match = compiled.search if search else compiled.fullmatch

    def reward(completions: Sequence[Any], **_: Any) -> list[float]:
        return [float(match(_text(completion).strip()) is not None) for completion in completions]

    return reward


def length_reward(max_words: int) -> RewardFunction:
    if max_words < 1:
        raise ConfigError("grpo.rewards length: max_words must be at least 1")

    def reward(completions: Sequence[Any], **_: Any) -> list[float]:
        return [-min(1.0, max(0, len(_text(c).split()) - max_words) / max_words) for c in completions]

    return reward


def python_reward(target: str) -> RewardFunction:
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise ConfigError(f"grpo.rewards python: {target!r}: expected module:function")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"grpo.rewards python: cannot import {target!r} ({error})") from error

    def reward(completions: Sequence[Any], reference: Sequence[str], **columns: Any) -> list[float]:
        return [float(score) for score in function([_text(c) for c in completions], list(reference), **columns)]

    return reward


# ---- the relative judge -----------------------------------------------------------------------------------------

JUDGE_PROMPT = """You are grading answers to the same request. Rubric: {rubric}

Request:
\"\"\"{prompt}\"\"\"
{reference}
Answers:
{answers}

Score every answer from 0 to 10 against the rubric, comparing them with each other. Reply with JSON only:
{{"scores": [one number per answer, in order], "reason": "one sentence"}}"""


JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"scores": {"type": "array", "items": {"type": "number"}}, "reason": {"type": "string"}},
    "required": ["scores"],
}


@dataclass
class JudgeUsage:
    calls: int = 0
    cached: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    failure_reasons: list[str] = field(default_factory=list)


class RelativeJudge:
    """Scores each group of completions for one prompt in one teacher call, normalised within the group."""

    def __init__(
        self,
        teacher: Any,
        rubric: str,
        group_size: int,
        price_input_per_million: float = 0.0,
        price_output_per_million: float = 0.0,
    ) -> None:
        self.teacher = teacher
        self.rubric = rubric
        self.group_size = group_size
        self.prices = (price_input_per_million, price_output_per_million)
        self.cache: dict[str, list[float]] = {}
        self.usage = JudgeUsage()
        self.__name__ = "judge"

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], reference: Sequence[str] | None = None, **_: Any
    ) -> list[float]:
        rewards: list[float] = []
        for start in range(0, len(completions), self.group_size):
            group = [_text(c) for c in completions[start : start + self.group_size]]
            expected = reference[start] if reference else None
            rewards += normalise_group(self.scores(_text(prompts[start]), group, expected))
        return rewards

    def scores(self, prompt: str, answers: list[str], reference: str | None) -> list[float]:
        """Raw 0-10 scores for one group (cached); 0 for every answer when the judge's reply is unusable."""
        key = hashlib.sha256(json.dumps([self.rubric, prompt, answers, reference]).encode()).hexdigest()
        if key in self.cache:
            self.usage.cached += 1
            return self.cache[key]
        text = JUDGE_PROMPT.format(
            rubric=self.rubric,
            prompt=prompt,
            reference=f"Reference answer: {reference}\n" if reference else "",
            answers="\n".join(f"{index + 1}. {answer}" for index, answer in enumerate(answers)),
        )
        self.usage.calls += 1
        try:
            reply = self.teacher.complete(text, temperature=0.0, max_tokens=256, seed=0, schema=JUDGE_SCHEMA)
        except Exception as error:  # noqa: BLE001 - a dead judge costs this group its reward, not the run
            return self._failed(answers, f"judge call failed: {error}")
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        self.usage.cost += (reply.prompt_tokens * self.prices[0] + reply.completion_tokens * self.prices[1]) / 1_000_000
        try:
            scores = parse_judge_scores(reply.text, len(answers))
        except ValueError as error:
            return self._failed(answers, f"malformed judge reply ({error}): {reply.text[:200]!r}")
        self.cache[key] = scores
        return scores

    def _failed(self, answers: list[str], reason: str) -> list[float]:
        self.usage.failures += 1
        self.usage.failure_reasons.append(reason)
        log.warning("judge: %s; reward 0 for this group", reason)
        return [0.0] * len(answers)


def parse_judge_scores(text: str, count: int) -> list[float]:
    """The `scores` list from a judge reply (JSON, possibly inside a code fence); ValueError otherwise."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        raise ValueError("no JSON object")
    payload = json.loads(match.group(0))
    scores = payload.get("scores") if isinstance(payload, dict) else None
    if not isinstance(scores, list) or len(scores) != count:
        raise ValueError(f"expected 'scores' with {count} numbers")
    if not all(isinstance(score, (int, float)) and not isinstance(score, bool) for score in scores):
        raise ValueError("scores must be numbers")
    return [min(10.0, max(0.0, float(score))) / 10 for score in scores]


def normalise_group(scores: list[float]) -> list[float]:
    """Scores relative to their group: (score - mean) / std, 0 for every answer when they all score the same."""
    if len(scores) < 2:
        return [0.0] * len(scores)
    mean, spread = statistics.fmean(scores), statistics.pstdev(scores)
    return [0.0 if spread == 0 else (score - mean) / spread for score in scores]


# ---- the registry ---------------------------------------------------------------------------------------------


def build_reward(spec: dict[str, Any], group_size: int) -> RewardFunction:
    """One reward function from its config entry ({name: ..., weight: ..., options...})."""
    options = {key: value for key, value in spec.items() if key not in ("name", "weight")}
    name = spec.get("name")
    builders: dict[str, Callable[[], RewardFunction]] = {
        "label": lambda: label_reward,
        "label_set": lambda: label_set_reward,
        "exact_match": lambda: exact_match_reward,
        "token_f1": lambda: token_f1_reward,
        "json": lambda: json_reward(options.get("schema")),
        "regex": lambda: regex_reward(options["pattern"], bool(options.get("search", False))),
        "length": lambda: length_reward(int(options.get("max_words", 16))),
        "python": lambda: python_reward(options["function"]),
        "judge": lambda: _judge(options, group_size),
    }
    if name not in builders:
        raise ConfigError(f"grpo.rewards: unknown reward {name!r}; expected one of {', '.join(builders)}")
    try:
        function = builders[name]()
    except KeyError as error:
        raise ConfigError(f"grpo.rewards {name}: missing option {error}") from error
    if not hasattr(function, "__name__") or function.__name__ == "reward":
        function.__name__ = name  # TRL logs each reward under its function's name
    return function


def _judge(options: dict[str, Any], group_size: int) -> RelativeJudge:
    teacher = options.get("teacher")
    if not teacher:
        raise ConfigError("grpo.rewards judge: needs teacher (an OpenAI-compatible URL or local:NAME)")
    extra = {} if str(teacher).startswith("local:") else {"api_key_env": options.get("api_key_env", "OPENAI_API_KEY")}
    return RelativeJudge(
        make_teacher(teacher, options.get("model"), **extra),
        options.get("rubric", "Correct, complete and concise answers score higher."),
        group_size,
        float(options.get("price_input_per_million", 0.0)),
        float(options.get("price_output_per_million", 0.0)),
    )
