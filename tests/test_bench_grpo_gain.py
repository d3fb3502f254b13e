"""bench/grpo_gain.py's own logic: the matched control counts only when it trained for GRPO's wall time, and
each accuracy difference carries its paired interval into the tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import grpo_gain  # noqa: E402


def run(seed: int, correct: list[int], seconds: float) -> dict:
    return {
        "seed": seed,
        "accuracy": sum(correct) / len(correct),
        "format_valid": 1.0,
        "rows": len(correct),
        "correct": correct,
        "train_seconds": seconds,
        "cpu_seconds": 2 * seconds,
        "steps": 20,
    }


def results(control_seconds: list[float]) -> dict:
    runs = {
        grpo_gain.BASE: [run(seed, [1, 0, 0, 0], 80.0) for seed in range(3)],
        grpo_gain.GRPO: [run(seed, [1, 1, 0, 0], 300.0) for seed in range(3)],
        grpo_gain.CONTINUED: [run(seed, [1, 1, 1, 1], seconds) for seed, seconds in enumerate(control_seconds)],
    }
    payload = {
        "setup": {"seeds": [0, 1, 2], "sft_steps": 30, "grpo_steps": 20, "held_out_rows": 4, "dtype": "cpu, bf16"},
        "summary": {name: grpo_gain.summary_of(seeded) for name, seeded in runs.items()},
        "differences": grpo_gain.differences(runs),
    }
    return json.loads(json.dumps(payload))


def test_grpo_against_its_control_is_claimed_with_a_paired_interval() -> None:
    matched = results([290.0, 310.0, 300.0])
    difference = matched["differences"][f"{grpo_gain.GRPO} - {grpo_gain.CONTINUED}"]
    assert difference["valid"] and difference["difference"] == -0.5
    assert difference["low"] <= -0.5 <= difference["high"]
    tables = grpo_gain.tables(matched)
    assert set(tables) == {"comparison", "differences"}
    assert "0.500 (0.500-0.500)" in tables["comparison"] and "-0.500 (95% CI" in tables["differences"]


def test_a_control_that_trained_far_shorter_than_grpo_makes_the_comparison_invalid() -> None:
    short = results([300.0, 200.0, 300.0])
    difference = short["differences"][f"{grpo_gain.GRPO} - {grpo_gain.CONTINUED}"]
    assert not difference["valid"]
    assert "training wall seconds (seed 1)" in difference["invalid_because"][0]
    # GRPO against its own start scored the same rows: still a valid difference.
    assert short["differences"][f"{grpo_gain.GRPO} - {grpo_gain.BASE}"]["valid"]
    assert "invalid: training wall seconds (seed 1)" in grpo_gain.tables(short)["differences"]
