"""bench/distill.py's own logic: which results file a student cut writes, the KD-over-SFT gain's paired interval,
and a gain claimed only when both students did the same work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import distill  # noqa: E402
import harness  # noqa: E402
import stats  # noqa: E402


def test_every_other_layer_writes_distill_json_and_explicit_layers_name_their_count() -> None:
    assert distill.results_name("every_other") == "distill"
    assert distill.results_name("0,2,3,5,6,8,9,11,12,14,15,17,18,20,21,23,24,26,27,29") == "distill-20-layers"


def test_the_paired_bootstrap_averages_seeds_and_brackets_the_difference() -> None:
    same = [[1, 0, 1, 1], [0, 1, 1, 0]]
    unchanged = stats.paired_bootstrap_of_correct_rows(same, same)
    assert (unchanged["difference"], unchanged["low"], unchanged["high"]) == (0.0, 0.0, 0.0)
    better = [[1] * 40, [1] * 30 + [0] * 10]
    worse = [[0] * 40, [0] * 40]
    gain = stats.paired_bootstrap_of_correct_rows(better, worse, resamples=2000)
    assert gain["difference"] == pytest.approx(0.875) and gain["seeds"] == 2 and gain["rows"] == 40
    assert 0.75 < gain["low"] <= 0.875 <= gain["high"] <= 1.0
    with pytest.raises(ValueError):
        stats.paired_bootstrap_of_correct_rows([[1, 0]], [[1, 0, 1]])


def student(seed: int, correct: list[int], steps: int = 80, layers: tuple[int, ...] = (0, 2)) -> dict:
    return {
        "seed": seed,
        "specialist": f"s{seed}",
        "train_seconds": 100.0 + seed,
        "steps": steps,
        "tokens_seen": 5000,
        "layers": list(layers),
        "accuracy": sum(correct) / len(correct),
        "rows": len(correct),
        "correct": correct,
    }


def results(kd: list[dict], sft: list[dict]) -> dict:
    tokens = harness.same_count(64, 64, what="tokens decoded")
    payload = {
        "setup": {
            "student": "smollm2-135m, layers every_other (15)",
            "student_steps": 80,
            "teacher_steps": 80,
            "held_out_rows": 4,
            "training_dtype": "cpu, bf16",
        },
        "teacher": {"accuracy": 0.75},
        "students": {distill.KD: distill.summary_of(kd, 0.75), distill.SFT: distill.summary_of(sft, 0.75)},
        "kd_gain_over_sft_student": stats.compare_correct_rows(
            [run["correct"] for run in kd], [run["correct"] for run in sft], distill.student_checks(kd, sft)
        ),
        "parameters": {"teacher": 134_515_008, distill.KD: 81_413_568},
        "tokens_per_s": {name: harness.summarize([10.0, 11.0, 12.0]) for name in ("teacher", distill.KD)},
        "speedup": harness.ratio([20.0, 21.0, 22.0], [10.0, 11.0, 12.0], [tokens]),
    }
    return json.loads(json.dumps(payload))


def test_tables_show_the_gain_with_its_interval_from_the_results_alone() -> None:
    kd = [student(seed, [1, 1, 1, 0]) for seed in range(3)]
    sft = [student(seed, [1, 0, 0, 0]) for seed in range(3)]
    tables = distill.tables(results(kd, sft))
    assert set(tables) == {"students", "kd_gain"}
    assert "0.750 (0.750-0.750)" in tables["students"] and "speedup 1.91x" in tables["students"]
    assert "+0.500 (95% CI" in tables["kd_gain"]


def test_a_student_pair_that_trained_different_steps_or_cuts_claims_no_gain() -> None:
    kd = [student(0, [1, 1, 1, 0]), student(1, [1, 1, 1, 0], layers=(0, 1))]
    sft = [student(0, [1, 0, 0, 0], steps=60), student(1, [1, 0, 0, 0])]
    gain = results(kd, sft)["kd_gain_over_sft_student"]
    assert gain["valid"] is False
    assert any("optimizer steps (seed 0)" in reason for reason in gain["invalid_because"])
    assert any("kept layer indices (seed 1)" in reason for reason in gain["invalid_because"])
    assert "invalid: optimizer steps (seed 0)" in distill.tables(results(kd, sft))["kd_gain"]
