"""Does GRPO pay? SFT alone, the same SFT followed by GRPO, and the same SFT continued for GRPO's wall time
(the matched control: what the same minutes of plain SFT would have bought), on the cloudsec example's held-out
split, for `--repeats` seeds.

Each round (seed 0, 1, 2, ...) trains its own base SFT, then both competitors from it, in an order that rotates
each round:
- base SFT: SmolLM2-135M, LoRA r16 all-linear, `--sft-steps` steps at batch 8 (the example's recipe, shortened so
  there is something left to gain);
- SFT + GRPO: from that adapter, `--grpo-steps` steps of `--prompts-per-step` prompts with 8 completions each of
  at most 8 tokens, temperature 1.0, no KL term, learning rate `--grpo-learning-rate` with the example's cosine
  schedule, rewards `label` (1 right, 0 anything else) and `label_set` (weight 0.2: the answer is one of the
  labels);
- SFT continued: the base SFT's adapter trained further with the SFT recipe, `training.time_budget` set to GRPO's
  wall time (this round's when GRPO ran first, else the previous round's). niche's SFT starts a fresh LoRA, so
  this benchmark loads the SFT adapter's weights into it before training (same LoRA config, same rows).
The control counts only when its wall time came within 20% of its round's GRPO wall time.

All three are scored with `niche eval` on the same held-out rows, decoding greedily and freely (not constrained
to the label set), so format validity can move: task accuracy, and the share of answers that are a label at
all. Each accuracy difference is the mean over seeds with a paired bootstrap 95% interval (held-out rows
resampled, the same rows for both sides). The share of right completions over the first and second half of
the GRPO steps shows whether it learned. Wall-clock seconds are reported for each phase, and CPU seconds
(summed over both cores).

    python bench/grpo_gain.py [--repeats 3] [--quick] [--sft-steps 30] [--grpo-steps 20] [--prompts-per-step 2]
                              [--grpo-learning-rate 1e-4] [--rows 160] [--validation-rows N] [--answer-tokens N]

--quick: 4 SFT steps, 2 GRPO steps of 1 prompt, 16 held-out rows, 8 validation rows, answers cut at 16 tokens,
one seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
from stats import compare_correct_rows

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
WORKDIR = REPO / "build" / "bench-grpo"
QUICK_WORKDIR = REPO / "build" / "bench-quick" / "grpo"
BASE, GRPO, CONTINUED = "base SFT", "SFT + GRPO", "SFT continued"
WALL_TIME_TOLERANCE = 0.2
QUICK = {"sft_steps": 4, "grpo_steps": 2, "prompts_per_step": 1, "rows": 16, "validation_rows": 8, "answer_tokens": 16}


def scored(specialist: Path, held_out: Path, answer_tokens: int | None) -> dict[str, Any]:
    """Accuracy and format validity under free greedy decoding, and which rows were right (by niche's own label
    metric, checked against the report's accuracy so the bootstrap resamples exactly what was scored)."""
    from niche.eval import evaluate
    from niche.metrics import label_metrics

    report = evaluate(specialist, held_out, constrain=False, max_new_tokens=answer_tokens, show_progress=False)
    result = report.results[-1]
    correct = [
        int(label_metrics([prediction], [reference])["accuracy"])
        for prediction, reference in zip(result.predictions, report.references, strict=True)
    ]
    if abs(sum(correct) / len(correct) - result.metrics["accuracy"]) > 1e-9:
        raise RuntimeError(f"{specialist}: per-row answers disagree with the reported accuracy")
    return {
        "accuracy": result.metrics["accuracy"],
        "format_valid": 1 - result.metrics["out_of_label_set"] / report.rows,
        "rows": report.rows,
        "correct": correct,
    }


@contextlib.contextmanager
def continuing_from(specialist: Path) -> Iterator[None]:
    """SFT inside the block starts from `specialist`'s adapter: the fresh LoRA niche builds (same config) takes
    its saved weights before the first step."""
    from peft import load_peft_weights, set_peft_model_state_dict

    from niche.train import sft

    build = sft.build_lora_model

    def build_from_specialist(*args: Any, **kwargs: Any) -> Any:
        model = build(*args, **kwargs)
        loaded = set_peft_model_state_dict(model, load_peft_weights(str(specialist)))
        if loaded.unexpected_keys:
            raise RuntimeError(f"{specialist}: adapter weights the fresh LoRA lacks: {loaded.unexpected_keys[:3]}")
        return model

    sft.build_lora_model = build_from_specialist
    try:
        yield
    finally:
        sft.build_lora_model = build


def timed_training(overrides: list[str]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds) of one niche training run on the example's config."""
    from niche.config import load_config
    from niche.train import train

    config = load_config(EXAMPLE / "niche.yaml", overrides)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train(config, show_progress=False)
    return result, time.perf_counter() - started, time.process_time() - cpu_started


def grpo_learning(specialist: Path) -> dict[str, Any]:
    """The share of right completions over the first and second half of the GRPO steps, and how many groups had
    no spread in their rewards (no signal)."""
    history = json.loads((specialist / "training_log.json").read_text())
    correct = [entry["rewards/label_reward/mean"] for entry in history if "rewards/label_reward/mean" in entry]
    zero_spread = [entry["frac_reward_zero_std"] for entry in history if "frac_reward_zero_std" in entry]
    halves = (correct[: len(correct) // 2], correct[len(correct) // 2 :])
    return {
        "correct_share_by_half": [sum(half) / len(half) for half in halves] if all(halves) else None,
        "mean_frac_groups_without_spread": sum(zero_spread) / len(zero_spread) if zero_spread else None,
    }


def first_lines(path: Path, count: int) -> str:
    return "".join(path.read_text().splitlines(keepends=True)[:count])


class Rounds:
    """One round per seed: its base SFT (trained once, by whichever competitor runs first), then GRPO and the
    continued SFT from it."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        workdir.mkdir(parents=True, exist_ok=True)
        self.held_out = workdir / "test.jsonl"
        self.held_out.write_text(first_lines(EXAMPLE / "test.jsonl", args.rows))
        self.common = [f"output_dir={workdir / 'specialists'}", "tracking.enabled=false"]
        if args.validation_rows is not None:
            # --quick: one validation pass over the example's 120 rows would cost more than its few steps.
            validation = workdir / "validation.jsonl"
            validation.write_text(first_lines(EXAMPLE / "validation.jsonl", args.validation_rows))
            self.common.append(f"data.validation={validation}")
        self.bases: dict[int, dict[str, Any]] = {}
        self.grpo_seconds: dict[int, float] = {}

    def base(self, seed: int) -> dict[str, Any]:
        if seed not in self.bases:
            steps = self.args.sft_steps
            result, seconds, cpu = timed_training(
                [
                    *self.common,
                    f"name=cloudsec-sft-seed{seed}",
                    "training.objective=generate",
                    f"training.max_steps={steps}",
                    f"training.eval_every={steps}",
                    f"training.seed={seed}",
                ]
            )
            self.bases[seed] = {
                "seed": seed,
                "specialist": str(result.specialist_dir),
                "train_seconds": seconds,
                "cpu_seconds": cpu,
                "steps": result.manifest.metrics["steps"],
                **scored(result.specialist_dir, self.held_out, self.args.answer_tokens),
            }
        return self.bases[seed]

    def grpo(self, seed: int) -> dict[str, Any]:
        start = self.base(seed)["specialist"]
        args = self.args
        result, seconds, cpu = timed_training(
            [
                *self.common,
                f"name=cloudsec-grpo-seed{seed}",
                "training.method=grpo",
                f"grpo.start_from={start}",
                "grpo.group_size=8",
                f"grpo.prompts_per_step={args.prompts_per_step}",
                "grpo.max_completion_length=8",
                "grpo.kl=0.0",
                "grpo.rewards=[{name: label, weight: 1.0}, {name: label_set, weight: 0.2}]",
                f"training.max_steps={args.grpo_steps}",
                f"training.learning_rate={args.grpo_learning_rate}",
                f"training.seed={seed}",
            ]
        )
        self.grpo_seconds[seed] = seconds
        metrics = result.manifest.metrics
        return {
            "seed": seed,
            "train_seconds": seconds,
            "cpu_seconds": cpu,
            "steps": metrics["steps"],
            "seconds_per_step": metrics["seconds_per_step"],
            "reward_first": metrics["reward_first"],
            "reward_last": metrics["reward_last"],
            "reward_curve": metrics["reward_curve"],
            **grpo_learning(result.specialist_dir),
            **scored(result.specialist_dir, self.held_out, args.answer_tokens),
        }

    def continued(self, seed: int) -> dict[str, Any]:
        base = self.base(seed)
        # GRPO has no time budget (it runs its steps), so when the control runs first it gets the latest GRPO time.
        budget_from = seed if seed in self.grpo_seconds else max(self.grpo_seconds, default=None)
        if budget_from is None:
            raise RuntimeError("the continued SFT needs a measured GRPO wall time; GRPO runs first in round 0")
        budget = self.grpo_seconds[budget_from]
        with continuing_from(Path(base["specialist"])):
            result, seconds, cpu = timed_training(
                [
                    *self.common,
                    f"name=cloudsec-sft-continued-seed{seed}",
                    "training.objective=generate",
                    f"training.time_budget={budget:.0f}",
                    f"training.seed={seed}",
                ]
            )
        return {
            "seed": seed,
            "time_budget_seconds": round(budget),
            "time_budget_from_seed": budget_from,
            "train_seconds": seconds,
            "cpu_seconds": cpu,
            "steps": result.manifest.metrics["steps"],
            **scored(result.specialist_dir, self.held_out, self.args.answer_tokens),
        }


def differences(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """GRPO against its matched control and against its start, and the control against the start; a difference
    is claimed only when both sides scored the same rows (and, for the control, trained for the same wall time)."""

    def same_rows(left: str, right: str) -> list[harness.WorkCheck]:
        return [
            harness.same_count(a["rows"], b["rows"], what=f"held-out rows scored (seed {a['seed']})")
            for a, b in zip(runs[left], runs[right], strict=True)
        ]

    same_wall_time = [
        harness.same_count(
            grpo["train_seconds"],
            control["train_seconds"],
            tolerance=WALL_TIME_TOLERANCE,
            what=f"training wall seconds (seed {grpo['seed']})",
        )
        for grpo, control in zip(runs[GRPO], runs[CONTINUED], strict=True)
    ]
    correct = {name: [run["correct"] for run in seeded] for name, seeded in runs.items()}
    return {
        f"{GRPO} - {CONTINUED}": compare_correct_rows(
            correct[GRPO], correct[CONTINUED], same_wall_time + same_rows(GRPO, CONTINUED)
        ),
        f"{GRPO} - {BASE}": compare_correct_rows(correct[GRPO], correct[BASE], same_rows(GRPO, BASE)),
        f"{CONTINUED} - {BASE}": compare_correct_rows(correct[CONTINUED], correct[BASE], same_rows(CONTINUED, BASE)),
    }


def summary_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    fields = ("accuracy", "format_valid", "train_seconds", "cpu_seconds", "steps")
    return {field: harness.summarize([run[field] for run in runs]) for field in fields}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--grpo-steps", type=int, default=20)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--grpo-learning-rate", type=float, default=1e-4)
    parser.add_argument("--rows", type=int, default=160, help="held-out rows scored (the first N of test.jsonl)")
    parser.add_argument(
        "--validation-rows", type=int, help="validate on the first N of the example's validation rows (all: 120)"
    )
    parser.add_argument(
        "--answer-tokens", type=int, help="tokens a free answer may run to when scored (niche eval's budget if absent)"
    )
    args = parser.parse_args()
    report = harness.Report("grpo_gain", args)
    if report.quick:
        vars(args).update(QUICK)

    import trl  # noqa: F401  (imported before the first timed run, so no competitor's wall time pays for it)

    from niche.hardware import detect_hardware

    rounds = Rounds(args, QUICK_WORKDIR if report.quick else WORKDIR)
    competitors, schedule = harness.interleave(
        {GRPO: rounds.grpo, CONTINUED: rounds.continued},
        repeats=report.repeats,
        on_result=lambda name, seed, run: print(
            f"seed {seed} {name}: accuracy {run['accuracy']:.4f}, {run['train_seconds']:.0f} s", flush=True
        ),
    )
    runs = {BASE: [rounds.bases[seed] for seed in sorted(rounds.bases)], **competitors}
    payload = {
        "setup": {
            "base": "smollm2-135m",
            "seeds": sorted(rounds.bases),
            "sft_steps": args.sft_steps,
            "grpo_steps": args.grpo_steps,
            "group_size": 8,
            "prompts_per_step": args.prompts_per_step,
            "grpo_learning_rate": args.grpo_learning_rate,
            "rewards": "label 1.0 (1 right, else 0) + label_set 0.2",
            "sft_continued": "from the round's SFT adapter, the SFT recipe, training.time_budget = GRPO's wall "
            f"seconds; valid within {WALL_TIME_TOLERANCE:.0%} of the round's GRPO wall time",
            "decoding": "niche eval, greedy, unconstrained (the same for all three), "
            + (f"answers cut at {args.answer_tokens} tokens" if args.answer_tokens else "its own answer budget"),
            "held_out_rows": runs[BASE][0]["rows"],
            "validation_rows": args.validation_rows or "all of the example's (120)",
            "dtype": detect_hardware().description,
        },
        "schedule": schedule,
        "summary": {name: summary_of(seeded) for name, seeded in runs.items()},
        "differences": differences(runs),
        "grpo_correct_share_by_half": [
            harness.summarize([run["correct_share_by_half"][half] for run in runs[GRPO]])
            for half in (0, 1)
            if all(run["correct_share_by_half"] for run in runs[GRPO])
        ],
        "runs": runs,
    }
    print_summary(json.loads(report.write(payload).read_text()))


def print_summary(results: dict[str, Any]) -> None:
    for markdown in tables(results).values():
        print(markdown)


def signed(value: float) -> str:
    return f"{value:+.3f}"


def difference_text(difference: dict[str, Any]) -> str:
    if not difference["valid"]:
        return "invalid: " + "; ".join(difference["invalid_because"])
    return f"{signed(difference['difference'])} (95% CI {signed(difference['low'])} to {signed(difference['high'])})"


def tables(results: dict) -> dict[str, str]:
    """`comparison`: the three specialists side by side (medians and ranges over seeds); `differences`: each
    accuracy difference with its paired bootstrap interval, or why it is invalid."""
    setup, summary = results["setup"], results["summary"]
    seeds = len(setup["seeds"])
    names = (BASE, GRPO, CONTINUED)
    heading = (
        f"| {setup['dtype']}, median (min-max) of {seeds} seeds | base SFT ({setup['sft_steps']} steps) | "
        f"SFT + GRPO ({setup['grpo_steps']} steps) | SFT continued, GRPO's wall time |"
    )
    comparison = [
        heading,
        "|---|---|---|---|",
        f"| held-out accuracy ({setup['held_out_rows']} rows) | "
        + " | ".join(harness.format_range(summary[name]["accuracy"], 3) for name in names)
        + " |",
        "| format valid (answer is a label) | "
        + " | ".join(harness.format_range(summary[name]["format_valid"], 3) for name in names)
        + " |",
        "| wall time | "
        + " | ".join(harness.format_range(summary[name]["train_seconds"], 0, " s") for name in names)
        + " |",
        "| steps | " + " | ".join(harness.format_range(summary[name]["steps"], 0) for name in names) + " |",
    ]
    halves = results.get("grpo_correct_share_by_half")
    if halves:
        shares = " -> ".join(harness.format_range(half, 3) for half in halves)
        comparison.append(f"| right completions while training, first -> second half of the steps | | {shares} | |")
    differences = ["| accuracy difference (mean of seeds) | 95% paired bootstrap interval |", "|---|---|"]
    differences += [f"| {name} | {difference_text(value)} |" for name, value in results["differences"].items()]
    return {"comparison": "\n".join(comparison) + "\n", "differences": "\n".join(differences) + "\n"}


if __name__ == "__main__":
    main()
