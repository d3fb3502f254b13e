"""Does GRPO pay? SFT alone, the same SFT followed by GRPO, and the same SFT continued for GRPO's wall time
(the matched control: what the same minutes of plain SFT would have bought), on the cloudsec example's held-out
split.

SFT: SmolLM2-135M, LoRA r16 all-linear, `--sft-steps` steps at batch 8 (the example's recipe, shortened so
there is something left to gain). GRPO: from that specialist's adapter, `--grpo-steps` steps of `--prompts-per-step`
prompts with 8 completions each of at most 8 tokens, temperature 1.0, no KL term, learning rate
`--grpo-learning-rate` with the example's cosine schedule, rewards `label` (1 right, 0 anything else) and
`label_set` (weight 0.2: the answer is one of the labels). Continued SFT: the SFT specialist's adapter trained
further with the SFT recipe, `training.time_budget` set to GRPO's measured wall time (niche's SFT starts a fresh
LoRA, so this benchmark loads the SFT adapter's weights into it before training; same LoRA config, same rows).
All three are scored with `niche eval` on the same held-out rows, decoding greedily and freely (not constrained
to the label set), so format validity can move: task accuracy, and the share of answers that are a label at
all. The mean reward over the first and last tenth of the GRPO steps shows whether it learned. Wall-clock
seconds are reported for each phase, and CPU seconds (summed over both cores).

    python bench/grpo_gain.py [--sft-steps 30] [--grpo-steps 40] [--prompts-per-step 2] [--rows 160] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
RESULTS = REPO / "bench" / "results" / "grpo_gain.json"
WORKDIR = REPO / "build" / "bench-grpo"


def scored(specialist: Path, test: Path) -> dict[str, float]:
    from niche.eval import evaluate

    report = evaluate(specialist, test, constrain=False, show_progress=False)
    metrics = report.results[-1].metrics
    return {
        "accuracy": round(metrics["accuracy"], 4),
        "format_valid": round(1 - metrics["out_of_label_set"] / report.rows, 4),
        "rows": report.rows,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--grpo-learning-rate", type=float, default=1e-4)
    parser.add_argument("--rows", type=int, default=160, help="held-out rows scored")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from niche.config import load_config
    from niche.io import write_json_atomic
    from niche.train import train

    test = WORKDIR / "test.jsonl"
    test.parent.mkdir(parents=True, exist_ok=True)
    test.write_text("".join((EXAMPLE / "test.jsonl").read_text().splitlines(keepends=True)[: args.rows]))
    common = [f"output_dir={WORKDIR / 'specialists'}", "tracking.enabled=false"]

    started, cpu_started = time.perf_counter(), time.process_time()
    sft = train(
        load_config(
            EXAMPLE / "niche.yaml",
            [
                *common,
                "name=cloudsec-sft",
                "training.objective=generate",
                f"training.max_steps={args.sft_steps}",
                f"training.eval_every={args.sft_steps}",
            ],
        ),
        show_progress=False,
    )
    sft_seconds, sft_cpu = time.perf_counter() - started, time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    grpo = train(
        load_config(
            EXAMPLE / "niche.yaml",
            [
                *common,
                "name=cloudsec-grpo",
                "training.method=grpo",
                f"grpo.start_from={sft.specialist_dir}",
                "grpo.group_size=8",
                f"grpo.prompts_per_step={args.prompts_per_step}",
                "grpo.max_completion_length=8",
                "grpo.kl=0.0",
                "grpo.rewards=[{name: label, weight: 1.0}, {name: label_set, weight: 0.2}]",
                f"training.max_steps={args.grpo_steps}",
                f"training.learning_rate={args.grpo_learning_rate}",
            ],
        ),
        show_progress=True,
    )
    grpo_seconds, grpo_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    metrics = grpo.manifest.metrics
    history = json.loads((grpo.specialist_dir / "training_log.json").read_text())
    zero_spread = [entry["frac_reward_zero_std"] for entry in history if "frac_reward_zero_std" in entry]
    correct = [entry["rewards/label_reward/mean"] for entry in history if "rewards/label_reward/mean" in entry]
    tenth = max(1, len(correct) // 10)

    started, cpu_started = time.perf_counter(), time.process_time()
    with continuing_from(sft.specialist_dir):
        continued = train(
            load_config(
                EXAMPLE / "niche.yaml",
                [
                    *common,
                    "name=cloudsec-sft-continued",
                    "training.objective=generate",
                    f"training.time_budget={grpo_seconds:.0f}",
                ],
            ),
            show_progress=False,
        )
    continued_seconds, continued_cpu = time.perf_counter() - started, time.process_time() - cpu_started

    sft_scores, grpo_scores = scored(sft.specialist_dir, test), scored(grpo.specialist_dir, test)
    continued_scores = scored(continued.specialist_dir, test)
    result = {
        "setup": {
            "base": "smollm2-135m",
            "sft_steps": args.sft_steps,
            "grpo_steps": args.grpo_steps,
            "group_size": 8,
            "prompts_per_step": args.prompts_per_step,
            "grpo_learning_rate": args.grpo_learning_rate,
            "rewards": "label 1.0 (1 right, else 0) + label_set 0.2",
            "sft_continued": "from the SFT adapter, the SFT recipe, training.time_budget = GRPO's wall seconds",
            "decoding": "niche eval, greedy, unconstrained (the same for all three)",
            "held_out_rows": sft_scores["rows"],
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "sft_accuracy": sft_scores["accuracy"],
        "grpo_accuracy": grpo_scores["accuracy"],
        "sft_continued_accuracy": continued_scores["accuracy"],
        "sft_format_valid": sft_scores["format_valid"],
        "grpo_format_valid": grpo_scores["format_valid"],
        "sft_continued_format_valid": continued_scores["format_valid"],
        "comparison": {
            "base SFT": sft_scores | {"train_seconds": round(sft_seconds, 1), "steps": args.sft_steps},
            "SFT + GRPO": grpo_scores | {"train_seconds": round(grpo_seconds, 1), "steps": args.grpo_steps},
            "SFT continued (matched wall time)": continued_scores
            | {"train_seconds": round(continued_seconds, 1), "steps": continued.manifest.metrics["steps"]},
        },
        "reward_first": round(metrics["reward_first"], 4),
        "reward_last": round(metrics["reward_last"], 4),
        "correct_share_first": round(sum(correct[:tenth]) / tenth, 4) if correct else None,
        "correct_share_last": round(sum(correct[-tenth:]) / tenth, 4) if correct else None,
        # A tenth of 40 steps is 8 prompts: noisy. Halves show the trend with 5x the samples.
        "correct_share_by_half": [
            round(sum(half) / len(half), 4) for half in (correct[: len(correct) // 2], correct[len(correct) // 2 :])
        ]
        if len(correct) >= 2
        else None,
        "mean_frac_groups_without_spread": round(sum(zero_spread) / len(zero_spread), 4) if zero_spread else None,
        "sft_seconds": round(sft_seconds, 1),
        "grpo_seconds": round(grpo_seconds, 1),
        "sft_cpu_seconds": round(sft_cpu, 1),
        "grpo_cpu_seconds": round(grpo_cpu, 1),
        "sft_continued_seconds": round(continued_seconds, 1),
        "sft_continued_cpu_seconds": round(continued_cpu, 1),
        "grpo_seconds_per_step": round(metrics["seconds_per_step"], 2),
        "reward_curve": [round(value, 4) for value in metrics["reward_curve"]],
    }
    write_json_atomic(args.out, result)
    print(json.dumps({key: value for key, value in result.items() if key != "reward_curve"}, indent=2))


if __name__ == "__main__":
    main()
