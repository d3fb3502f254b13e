"""bench/serve_load.py's same-work logic: which answers two servers must share, how accuracy is scored, and the
tables rendered from a results file (no server is started)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
import serve_load  # noqa: E402
from serve_load import Prompt  # noqa: E402

LABELS = ["network-exposure", "identity-access"]


def prompts() -> dict[tuple[str, int], Prompt]:
    return {
        (model, item): Prompt(model, item, f"finding {item}", f"<rendered {model} {item}>", label)
        for model in ("cloudsec-0", "base")
        for item in range(2)
        for label in [LABELS[item] if model != "base" else None]
    }


def run(probe_answers: list[str], load_answers: list[str], rates: list[float]) -> dict:
    """A server's summary as summarize_side writes it, from the probe's and the load's answers."""
    keys = [("cloudsec-0", 0), ("cloudsec-0", 1), ("base", 0), ("base", 1)]
    return {
        "requests_per_s": harness.summarize(rates),
        "completion_tokens_per_s": harness.summarize([rate * 5 for rate in rates]),
        "ttft_p50_ms_under_load": harness.summarize([100.0 / rate for rate in rates]),
        "ttft_p50_ms_idle": harness.summarize([40.0, 42.0, 44.0]),
        "latency_p95_ms_under_load": harness.summarize([900.0, 950.0, 1000.0]),
        "accuracy_probe": {"correct": 1, "scored": 2, "accuracy": 0.5},
        "accuracy_under_load": {"correct": 1, "scored": 2, "accuracy": 0.5},
        "probe": {
            "answers": probe_answers,
            "completion_tokens": sum(len(answer.split("-")) for answer in probe_answers),
        },
        "requests_answered": {
            "round": [1] * len(keys),
            "model": [model for model, _ in keys],
            "item": [item for _, item in keys],
            "answer": load_answers,
            "completion_tokens": [3] * len(keys),
        },
        "peak_pss_mib": 700.0,
        "failed_requests": {"under_load": 0, "probe": 0, "first_errors": []},
        "empty_answers_under_load": sum(not answer for answer in load_answers),
    }


def test_accuracy_scores_specialist_answers_against_the_held_out_label_and_skips_the_base():
    requests = [
        {"model": "cloudsec-0", "item": 0, "answer": " network-exposure\n"},
        {"model": "cloudsec-0", "item": 1, "answer": "network-exposure"},
        {"model": "base", "item": 0, "answer": "network-exposure"},
    ]
    assert serve_load.accuracy(requests, prompts()) == {"correct": 1, "scored": 2, "accuracy": 0.5}


def test_answer_tolerance_follows_the_numerics_of_the_pair():
    assert serve_load.answer_tolerance("torch_batched", "torch_batch1_resident")[0] == 0.10
    assert serve_load.answer_tolerance("llamacpp", "llama_cpp_server")[0] == 0.05
    assert serve_load.answer_tolerance("torch_batched", "llama_cpp_server")[0] == 0.20


def test_empty_answers_make_the_comparison_invalid():
    answers = ["network-exposure", "identity-access", "S3 bucket", "a firewall"]
    ours = run(answers, answers, [4.0, 5.0, 6.0])
    theirs = run(["", "", "", ""], ["", "", "", ""], [2.0, 2.0, 2.0])
    compared = serve_load.compare(
        {"torch_batched": ours, "llama_cpp_server": theirs}, "torch_batched", "llama_cpp_server", None
    )
    speed = compared["requests_per_s"]
    assert not speed["valid"] and speed["value"] is None
    assert any("probe answers" in reason for reason in speed["invalid_because"])
    assert any("under load" in reason for reason in speed["invalid_because"])


def test_the_same_answers_give_a_valid_ratio_paired_by_round():
    answers = ["network-exposure", "identity-access", "S3 bucket", "a firewall"]
    spaced = [f" {answer}\n" for answer in answers]  # whitespace around an answer is not a different answer
    runs = {
        "torch_batched": run(answers, answers, [4.0, 5.0, 6.0]),
        "torch_batch1_resident": run(spaced, answers, [1.0, 1.0, 2.0]),
    }
    compared = serve_load.compare(runs, "torch_batched", "torch_batch1_resident", None)
    assert compared["requests_per_s"]["valid"]
    assert compared["requests_per_s"]["value"] == 5.0
    assert (compared["requests_per_s"]["min"], compared["requests_per_s"]["max"]) == (3.0, 5.0)


def test_a_failed_prompt_token_check_invalidates_only_comparisons_with_llama_cpp_server():
    answers = ["network-exposure", "identity-access", "S3 bucket", "a firewall"]
    runs = {
        name: run(answers, answers, [1.0, 1.0, 1.0])
        for name in ("torch_batched", "torch_batch1_resident", "llama_cpp_server")
    }
    mismatch = harness.WorkCheck(False, "prompt tokens", "3/4 rendered prompts tokenize to niche's prompt ids")
    assert serve_load.compare(runs, "torch_batched", "torch_batch1_resident", mismatch)["requests_per_s"]["valid"]
    assert not serve_load.compare(runs, "torch_batched", "llama_cpp_server", mismatch)["requests_per_s"]["valid"]


def test_tables_render_medians_ranges_and_invalid_comparisons_from_the_results_alone():
    answers = ["network-exposure", "identity-access", "S3 bucket", "a firewall"]
    runs = {
        "torch_batched": run(answers, answers, [4.0, 5.0, 6.0]),
        "torch_batch1_resident": run(answers, answers, [1.0, 1.0, 2.0]),
        "llama_cpp_server": run(["", "", "", ""], ["", "", "", ""], [2.0, 2.0, 2.0]),
    }
    results = {
        "dtype": "torch engines bfloat16, llama.cpp on the F16 GGUF",
        "setup": {"reference": "torch_batch1_resident"},
        "runs": runs,
        "comparisons": {
            f"{ours}_vs_{theirs}": serve_load.compare(runs, ours, theirs, None)
            for ours, theirs in (("torch_batched", "torch_batch1_resident"), ("torch_batched", "llama_cpp_server"))
        },
    }
    rendered = serve_load.tables(results)
    assert set(rendered) == {"runs", "ratios"}
    assert "bfloat16" in rendered["runs"] and "5.00 (4.00-6.00)" in rendered["runs"]
    assert "0/4" in rendered["runs"]  # llama_cpp_server's probe answers against the reference's
    assert "| 4 / 0 |" in rendered["runs"]  # its empty answers under load
    assert "5.00x (3.00-5.00)" in rendered["ratios"]
    assert "**invalid**" in rendered["ratios"]


def test_idle_probe_takes_new_findings_each_round_cycling_through_the_models():
    four = {(model, item): Prompt(model, item, "", "", None) for model in ("cloudsec-0", "base") for item in range(4)}
    first = serve_load.idle_prompts(four, ["cloudsec-0", "base"], 0, 2)
    second = serve_load.idle_prompts(four, ["cloudsec-0", "base"], 1, 2)
    assert [(prompt.model, prompt.item) for prompt in first] == [("cloudsec-0", 0), ("base", 1)]
    assert [(prompt.model, prompt.item) for prompt in second] == [("cloudsec-0", 2), ("base", 3)]


def test_a_failed_request_makes_the_comparison_invalid():
    answers = ["network-exposure", "identity-access", "S3 bucket", "a firewall"]
    runs = {name: run(answers, answers, [1.0, 1.0, 1.0]) for name in ("torch_batched", "torch_batch1_resident")}
    runs["torch_batch1_resident"]["failed_requests"]["under_load"] = 2
    speed = serve_load.compare(runs, "torch_batched", "torch_batch1_resident", None)["requests_per_s"]
    assert not speed["valid"]
    assert speed["invalid_because"] == ["failed requests: 0 and 2 requests failed (none may)"]
