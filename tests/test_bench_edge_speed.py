"""bench/edge_speed.py's same-work logic and tables (no model is loaded, no server started): which answers two
variants must share, what only gets recorded, and the tables rendered from a results file alone."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import edge_speed  # noqa: E402
from edge_speed import Comparison, Setup, Variant  # noqa: E402

PROMPTS = [[1, 2, 3], [1, 2, 4], [1, 2, 5], [1, 2, 6]]


class CharacterTokenizer:
    """Decodes token id n to chr(n); ids below 10 are special tokens."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(token) for token in ids if token >= 10 or not skip_special_tokens)


def raw_runs(answers: list[list[int]], seconds: float, rounds: int = 3, reused: int = 0) -> list[dict]:
    return [
        {
            "ttft_s": [0.1] * len(answers),
            "decode_s": [seconds] * len(answers),
            "generated": [len(ids) for ids in answers],
            "prompt_tokens": [len(prompt) for prompt in PROMPTS],
            "reused_prefix_prompts": reused,
            "ids": answers,
        }
        for _ in range(rounds)
    ]


def served_runs(texts: list[str], generated: int, seconds: float, reused: int, rounds: int = 3) -> list[dict]:
    return [
        {
            "ttft_s": [0.05] * len(texts),
            "decode_s": [seconds] * len(texts),
            "generated": [generated] * len(texts),
            "prompt_tokens": [len(prompt) for prompt in PROMPTS],
            "reused_prefix_prompts": reused,
            "texts": texts,
        }
        for _ in range(rounds)
    ]


ANSWERS = [[65, 66, 67, 68], [69, 70, 71, 72], [73, 74, 75, 76], [77, 78, 79, 80]]


def test_the_compiled_rival_must_answer_like_the_eager_loop() -> None:
    comparison = Comparison("compiled vs eager", "compiled", "eager", same_weights=True)
    one_differs = [*ANSWERS[:3], [77, 78, 0, 0]]
    measured = {"eager": raw_runs(ANSWERS, 1.0), "compiled": raw_runs(one_differs, 0.5)}
    result = edge_speed.compare(comparison, measured, CharacterTokenizer())
    assert result["valid"] and result["value"] == 2.0  # 1 of 4 differs: within the 25% tolerance
    assert result["common_prefix_share"] == (1 + 1 + 1 + 0.5) / 4

    two_differ = [[0, 0, 0, 0], *one_differs[1:]]
    measured["compiled"] = raw_runs(two_differ, 0.5)
    result = edge_speed.compare(comparison, measured, CharacterTokenizer())
    assert not result["valid"] and result["value"] is None
    assert "2/4 generated token sequences agree" in result["invalid_because"][0]


def test_answers_across_precisions_are_recorded_not_required_but_token_counts_are() -> None:
    comparison = Comparison("q4 vs fp32", "q4", "fp32", same_weights=False)
    other_answers = [[90, 91, 92, 93]] * 4
    measured = {"fp32": raw_runs(ANSWERS, 2.0), "q4": raw_runs(other_answers, 0.5)}
    result = edge_speed.compare(comparison, measured, CharacterTokenizer())
    assert result["valid"] and result["value"] == 4.0
    assert result["answer_agreement"]["detail"] == "0/4 generated token sequences agree (recorded, not required)"

    measured["q4"] = raw_runs([ids[:3] for ids in other_answers], 0.5)
    result = edge_speed.compare(comparison, measured, CharacterTokenizer())
    assert not result["valid"]
    assert result["invalid_because"][0].startswith("generated tokens")


def test_the_server_is_compared_on_its_text_and_on_the_prompts_it_reused() -> None:
    comparison = Comparison("serve vs raw", "serve", "raw", same_weights=True, prefix_reuse_matched=True)
    with_special = [[*ids[:3], 2] for ids in ANSWERS]  # the server's text skips the special token, so must the raw's
    texts = ["ABC", "EFG", "IJK", "MNO"]
    measured = {"raw": raw_runs(with_special, 1.0, reused=4), "serve": served_runs(texts, 4, 1.0, reused=4)}
    assert edge_speed.compare(comparison, measured, CharacterTokenizer())["valid"]

    measured["serve"] = served_runs(texts, 4, 1.0, reused=3)
    result = edge_speed.compare(comparison, measured, CharacterTokenizer())
    assert not result["valid"]
    assert result["invalid_because"] == [
        "prompts evaluated on a reused prefix: 9 against 12 prompts evaluated on a reused prefix (tolerance 0%)"
    ]


def test_the_warm_up_round_answers_the_first_prompt_only() -> None:
    setup = Setup(Path("specialists"), PROMPTS, ["a", "b", "c", "d"], tokens=4)
    assert setup.round_inputs(0) == (PROMPTS[:1], ["a"])
    assert setup.round_inputs(1) == (PROMPTS, ["a", "b", "c", "d"])


def test_tables_render_from_the_results_alone_and_show_an_invalid_ratio_as_invalid() -> None:
    memory = {
        "load_s": 1.0,
        "warmup_generation_s": 30.0,
        "rss_after_imports_mb": 400.0,
        "rss_steady_mb": 950.0,
        "model_mb": 550.0,
        "peak_during_rounds_mb": 960.0,
    }
    eager = Variant("torch fp32 merged, eager loop (raw)", "raw", "transformers, eager loop", "float32", False, 538.1)
    compiled = Variant(
        "torch fp32 merged, static cache + compile (raw)", "raw", "transformers", "float32", False, 538.1
    )
    measured = {eager.name: raw_runs(ANSWERS, 1.0), compiled.name: raw_runs([[0, 0, 0, 0]] * 4, 0.5)}
    rows = {
        variant.name: edge_speed.row(variant, measured[variant.name], memory, CharacterTokenizer(), price=0.1)
        for variant in (eager, compiled)
    }
    comparison = Comparison("compiled vs eager", compiled.name, eager.name, same_weights=True)
    results = {
        "rows": rows,
        "comparisons": {comparison.name: edge_speed.compare(comparison, measured, CharacterTokenizer())},
        "parity": {
            "f16 merged (llama.cpp)": {
                "identical_rate": 1.0,
                "max_logit_diff": 0.05,
                "metric_trained": 0.6,
                "metric_exported": 0.6,
            }
        },
    }
    rendered = edge_speed.tables(results)
    assert set(rendered) == {"variants", "comparisons", "startup", "parity"}
    assert (
        "| torch fp32 merged, eager loop (raw) | fp32 | no | 100.0 (100.0-100.0) | 3.0 (3.0-3.0) |"
        in rendered["variants"]
    )
    assert "invalid (2.00x measured)" in rendered["comparisons"]
    assert "0/4 generated token sequences agree" in rendered["comparisons"]
    assert "| 30.0 |" in rendered["startup"]
