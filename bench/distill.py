"""Distillation's worked example: a SmolLM2-135M cloudsec specialist teaches a student made from the same
model by keeping a subset of its decoder layers (every other one by default, 15 of 30), trained with logit-level
KD on the same examples; beside it, a plain-SFT student (the same cut base, LoRA, rows, steps and seed,
cross-entropy only) shows what KD adds.

Teacher: the example's recipe for `--teacher-steps` steps, trained once (seed 42, the example's) and shared by
every student. KD student: `niche distill --mode logits --student-layers ...`, LoRA r=64 on all linear layers of
the cut base, `--student-steps` steps, loss 0.5 * cross-entropy + 0.5 * forward KL on the supervised positions.
SFT student: the same with the cross-entropy alone. The two students are trained `--repeats` times (seeds 0, 1,
2, ...), interleaved with the order rotating each round; a round compares them only if both took the same
optimizer steps over the same tokens on the same cut. All are scored by `niche eval` on the same held-out rows
(constrained to the label set); the KD-over-SFT gain is the mean over seeds with a paired bootstrap 95% interval
(the held-out rows resampled, the same rows for both students).

Teacher and KD student are then timed, interleaved, with one warm-up round dropped: greedy decoding of
`--decode-tokens` tokens after each of `--decode-prompts` prompts at batch 1 (the adapter merged, fp32, a
transformers loop with its KV cache; the prefill is not timed), and the speedup is valid only if both decoded
the same number of tokens. Parameters are counted on the merged model itself (the sum of `numel` over its
parameters: a tied output head shares the embedding's tensor and is counted once).

Results: bench/results/distill.json for every other layer, distill-N-layers.json for N kept layers given as
indices (`--student-layers 0,2,3,5,...`).

    python bench/distill.py [--repeats 3] [--quick] [--teacher-steps 80] [--student-steps 80] [--rows 160]
                            [--validation-rows N] [--decode-prompts 8] [--decode-tokens 32]
                            [--student-layers every_other] [--teacher build/bench-distill/specialists/cloudsec]

--quick: 4 teacher and student steps, 16 held-out rows, 8 validation rows, 2 prompts x 8 decoded tokens, one seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
from stats import compare_correct_rows

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
WORKDIR = REPO / "build" / "bench-distill"
QUICK_WORKDIR = REPO / "build" / "bench-quick" / "distill"
KD, SFT = "KD student", "SFT student"
QUICK = {
    "teacher_steps": 4,
    "student_steps": 4,
    "rows": 16,
    "validation_rows": 8,
    "decode_prompts": 2,
    "decode_tokens": 8,
}


def results_name(student_layers: str) -> str:
    """distill for every other layer (the published default), distill-N-layers for N layers given as indices."""
    if student_layers == "every_other":
        return "distill"
    return f"distill-{len(student_layers.split(','))}-layers"


def correct_rows(report: Any) -> list[int]:
    """1 for each held-out row the specialist answered right, by niche's own label metric; checked against the
    report's accuracy so the bootstrap resamples exactly what was scored."""
    from niche.metrics import label_metrics

    specialist = report.results[-1]
    rows = [
        int(label_metrics([prediction], [reference])["accuracy"])
        for prediction, reference in zip(specialist.predictions, report.references, strict=True)
    ]
    if abs(sum(rows) / len(rows) - specialist.metrics["accuracy"]) > 1e-9:
        raise RuntimeError(f"{report.specialist}: per-row answers disagree with the reported accuracy")
    return rows


@dataclasses.dataclass
class Workspace:
    """Where a run trains and what it is scored on: the held-out rows, and the overrides every training run takes
    (its output directory, tracking off, and under --quick a validation file cut to a few rows, since one
    validation pass over the example's 120 rows costs more than a quick run's steps)."""

    directory: Path
    held_out: Path
    overrides: list[str]

    @classmethod
    def create(cls, directory: Path, rows: int, validation_rows: int | None) -> Workspace:
        directory.mkdir(parents=True, exist_ok=True)
        held_out = directory / "test.jsonl"
        held_out.write_text(first_lines(EXAMPLE / "test.jsonl", rows))
        overrides = [f"output_dir={directory / 'specialists'}", "tracking.enabled=false"]
        if validation_rows is not None:
            validation = directory / "validation.jsonl"
            validation.write_text(first_lines(EXAMPLE / "validation.jsonl", validation_rows))
            overrides.append(f"data.validation={validation}")
        return cls(directory, held_out, overrides)


def first_lines(path: Path, count: int) -> str:
    return "".join(path.read_text().splitlines(keepends=True)[:count])


def scored(specialist: Path, held_out: Path) -> dict[str, Any]:
    from niche.eval import evaluate

    report = evaluate(specialist, held_out, show_progress=False)
    rows = correct_rows(report)
    return {"accuracy": sum(rows) / len(rows), "rows": len(rows), "correct": rows}


def student_overrides(workspace: Workspace, name: str, steps: int, seed: int) -> list[str]:
    """The students' shared settings: LoRA r=64 on the cut base, `steps` steps, one validation at the end."""
    return [
        *workspace.overrides,
        f"name={name}",
        "training.objective=generate",
        "lora.r=64",
        "lora.alpha=128",
        f"training.max_steps={steps}",
        f"training.eval_every={steps}",
        f"training.seed={seed}",
    ]


def train_teacher(workspace: Workspace, steps: int) -> tuple[Path, float]:
    from niche.config import load_config
    from niche.train import train

    overrides = [
        *workspace.overrides,
        "training.objective=generate",
        f"training.max_steps={steps}",
        f"training.eval_every={steps}",
    ]
    started = time.perf_counter()
    teacher = train(load_config(EXAMPLE / "niche.yaml", overrides), show_progress=False)
    return teacher.specialist_dir, time.perf_counter() - started


def cut_base(workspace: Workspace, teacher_dir: Path, layers: list[int] | str) -> Path:
    """The SFT student's base: the teacher's base with the kept layers (the KD student's cut, made the same way)."""
    from niche.artifact import read_manifest
    from niche.distill import student_from_layers
    from niche.specialist import resolve_specialist_base

    base = resolve_specialist_base(read_manifest(teacher_dir))
    return student_from_layers(base, layers, workspace.directory / "specialists" / "sft-student-base")


def kept_layers(student_base: Path) -> list[int]:
    return json.loads((student_base / "niche-student.json").read_text())["layers"]


def train_kd_student(
    workspace: Workspace, teacher_dir: Path, layers: list[int] | str, steps: int, seed: int
) -> dict[str, Any]:
    from niche.config import load_config
    from niche.distill import distill_logits

    config = load_config(
        EXAMPLE / "niche.yaml",
        [
            *student_overrides(workspace, "cloudsec-student", steps, seed),
            "distill.kind=forward_kl",
            "distill.alpha=0.5",
        ],
    )
    started = time.perf_counter()
    student = distill_logits(config, teacher_dir, layers, show_progress=False)
    seconds = time.perf_counter() - started
    student_base = config.output_dir / f"{config.name}-student-base"
    return trained_record(student, seconds, kept_layers(student_base), seed, workspace.held_out)


def train_sft_student(
    workspace: Workspace, teacher_dir: Path, student_base: Path, steps: int, seed: int
) -> dict[str, Any]:
    from niche.config import load_config
    from niche.distill import distill_config
    from niche.train import train

    config = load_config(EXAMPLE / "niche.yaml", student_overrides(workspace, "cloudsec-student-sft", steps, seed))
    started = time.perf_counter()
    student = train(distill_config(config, teacher_dir, student_base), show_progress=False)
    seconds = time.perf_counter() - started
    return trained_record(student, seconds, kept_layers(student_base), seed, workspace.held_out)


def trained_record(student: Any, seconds: float, layers: list[int], seed: int, held_out: Path) -> dict[str, Any]:
    metrics = student.manifest.metrics
    return {
        "seed": seed,
        "specialist": str(student.specialist_dir),
        "train_seconds": seconds,
        "steps": metrics["steps"],
        "tokens_seen": metrics["tokens_seen"],
        "layers": layers,
        **scored(student.specialist_dir, held_out),
    }


def student_checks(kd: Sequence[dict], sft: Sequence[dict]) -> list[harness.WorkCheck]:
    """Per round: the same cut, the same optimizer steps over the same tokens, the same held-out rows."""
    checks = []
    for kd_run, sft_run in zip(kd, sft, strict=True):
        seed = kd_run["seed"]
        checks += [
            harness.same_answers(kd_run["layers"], sft_run["layers"], what=f"kept layer indices (seed {seed})"),
            harness.same_count(kd_run["steps"], sft_run["steps"], what=f"optimizer steps (seed {seed})"),
            harness.same_count(kd_run["tokens_seen"], sft_run["tokens_seen"], what=f"tokens trained on (seed {seed})"),
            harness.same_count(kd_run["rows"], sft_run["rows"], what=f"held-out rows scored (seed {seed})"),
        ]
    return checks


def held_out_prompts(teacher_dir: Path, held_out: Path, count: int) -> list[list[int]]:
    from niche.artifact import load_test_examples, read_manifest
    from niche.data.template import TemplateEncoder
    from niche.models import load_tokenizer
    from niche.specialist import resolve_specialist_base

    manifest = read_manifest(teacher_dir)
    encoder = TemplateEncoder(load_tokenizer(resolve_specialist_base(manifest)), manifest.template.to_template())
    examples = load_test_examples(held_out, manifest)[:count]
    return [encoder.prompt_ids(dataclasses.replace(example, response="")) for example in examples]


def decode_timing(model: Any, prompts: list[list[int]], tokens: int) -> dict[str, float]:
    """Greedy decoding of `tokens` tokens after each prompt at batch 1; the prefill is not timed."""
    import torch

    seconds, decoded = 0.0, 0
    with torch.inference_mode():
        for prompt in prompts:
            output = model(input_ids=torch.tensor([prompt]), use_cache=True)
            token, cache = int(output.logits[0, -1].argmax()), output.past_key_values
            started = time.perf_counter()
            for _ in range(tokens):
                output = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
                token, cache = int(output.logits[0, -1].argmax()), output.past_key_values
                decoded += 1
            seconds += time.perf_counter() - started
    return {"tokens": decoded, "seconds": seconds, "tokens_per_s": decoded / seconds}


def size_and_speed(
    workspace: Workspace, specialists: dict[str, Path], prompts: list[list[int]], tokens: int, repeats: int
) -> dict[str, Any]:
    """Parameters of each merged specialist, and their decode speeds measured interleaved (one warm-up round)."""
    from niche.export import merge_into_base

    models = {
        name: merge_into_base(path, workspace.directory / f"{path.name}-merged").eval()
        for name, path in specialists.items()
    }
    measured, schedule = harness.interleave(
        {name: lambda _round, model=model: decode_timing(model, prompts, tokens) for name, model in models.items()},
        repeats=repeats,
        warmup=1,
    )
    rates = {name: [run["tokens_per_s"] for run in runs] for name, runs in measured.items()}
    decoded = {name: sum(run["tokens"] for run in runs) for name, runs in measured.items()}
    check = harness.same_count(decoded["teacher"], decoded[KD], what="tokens decoded")
    return {
        "parameters": {
            name: sum(parameter.numel() for parameter in model.parameters()) for name, model in models.items()
        },
        "tokens_per_s": {name: harness.summarize(values) for name, values in rates.items()},
        "speedup": harness.ratio(rates[KD], rates["teacher"], checks=[check]),
        "tokens_per_measurement": tokens * len(prompts),
        "schedule": schedule,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    parser.add_argument("--teacher-steps", type=int, default=80)
    parser.add_argument("--student-steps", type=int, default=80)
    parser.add_argument("--rows", type=int, default=160, help="held-out rows scored (the first N of test.jsonl)")
    parser.add_argument(
        "--validation-rows", type=int, help="validate on the first N of the example's validation rows (all: 120)"
    )
    parser.add_argument("--decode-prompts", type=int, default=8)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--student-layers", default="every_other", help="every_other or indices like 0,1,2,5")
    parser.add_argument("--teacher", type=Path, help="an already trained teacher specialist (its steps as given)")
    args = parser.parse_args()
    report = harness.Report("distill", args)
    # One script writes both published files; "benchmark" stays the script's name so tables.py finds it.
    report.path = report.path.with_name(f"{results_name(args.student_layers)}.json")
    if report.quick:
        vars(args).update(QUICK)

    from niche.distill import parse_student_layers
    from niche.hardware import detect_hardware

    layers = parse_student_layers(args.student_layers)
    workspace = Workspace.create(QUICK_WORKDIR if report.quick else WORKDIR, args.rows, args.validation_rows)
    if args.teacher is not None:
        teacher_dir, teacher_seconds = args.teacher, None
    else:
        teacher_dir, teacher_seconds = train_teacher(workspace, args.teacher_steps)
    teacher = scored(teacher_dir, workspace.held_out)
    student_base = cut_base(workspace, teacher_dir, layers)
    students, schedule = harness.interleave(
        {
            KD: lambda seed: train_kd_student(workspace, teacher_dir, layers, args.student_steps, seed),
            SFT: lambda seed: train_sft_student(workspace, teacher_dir, student_base, args.student_steps, seed),
        },
        repeats=report.repeats,
        on_result=lambda name, seed, run: print(f"seed {seed} {name}: accuracy {run['accuracy']:.4f}", flush=True),
    )
    gain = compare_correct_rows(
        [run["correct"] for run in students[KD]],
        [run["correct"] for run in students[SFT]],
        student_checks(students[KD], students[SFT]),
    )
    # The SFT student has the KD student's shape: same parameters, same speed; only its accuracy differs.
    prompts = held_out_prompts(teacher_dir, workspace.held_out, args.decode_prompts)
    specialists = {"teacher": teacher_dir, KD: Path(students[KD][-1]["specialist"])}
    timed = size_and_speed(workspace, specialists, prompts, args.decode_tokens, report.repeats)
    payload = {
        "setup": {
            "teacher": f"smollm2-135m, 30 layers, {args.teacher_steps} steps, seed 42, trained once"
            + (f" (reused from {args.teacher})" if args.teacher is not None else ""),
            "student": f"smollm2-135m, layers {args.student_layers} ({len(students[KD][0]['layers'])})",
            "kd_student": "LoRA r64 all-linear on the cut base; 0.5 cross-entropy + 0.5 forward KL to the teacher",
            "sft_student": "the KD student's cut base, LoRA, rows, steps and seed; cross-entropy only, no teacher",
            "teacher_steps": args.teacher_steps,
            "student_steps": args.student_steps,
            "student_seeds": [run["seed"] for run in students[KD]],
            "held_out_rows": teacher["rows"],
            "validation_rows": args.validation_rows or "all of the example's (120)",
            "training_dtype": detect_hardware().description,
            "decode": f"batch 1, greedy, {args.decode_tokens} tokens after each of {len(prompts)} prompts, merged, "
            "fp32, transformers with its KV cache, prefill not timed, one warm-up round dropped",
            "parameters_counted": "sum of numel over the merged model's parameters (tied embeddings counted once)",
        },
        "teacher": {"accuracy": teacher["accuracy"], "train_seconds": teacher_seconds, "correct": teacher["correct"]},
        "students": {name: summary_of(runs, teacher["accuracy"]) for name, runs in students.items()},
        "student_schedule": schedule,
        "kd_gain_over_sft_student": gain,
        **timed,
    }
    print_summary(json.loads(report.write(payload).read_text()))


def summary_of(runs: list[dict], teacher_accuracy: float) -> dict[str, Any]:
    return {
        "accuracy": harness.summarize([run["accuracy"] for run in runs]),
        "accuracy_ratio_to_teacher": harness.summarize([run["accuracy"] / teacher_accuracy for run in runs])
        if teacher_accuracy
        else None,
        "train_seconds": harness.summarize([run["train_seconds"] for run in runs]),
        "runs": runs,
    }


def print_summary(results: dict[str, Any]) -> None:
    for markdown in tables(results).values():
        print(markdown)


def signed(value: float) -> str:
    return f"{value:+.3f}"


def gain_text(gain: dict[str, Any]) -> str:
    if not gain["valid"]:
        return "invalid: " + "; ".join(gain["invalid_because"])
    return f"{signed(gain['difference'])} (95% CI {signed(gain['low'])} to {signed(gain['high'])})"


def tables(results: dict) -> dict[str, str]:
    """`students`: teacher, KD and SFT students side by side; `kd_gain`: what KD adds, with its interval."""
    setup, students, parameters = results["setup"], results["students"], results["parameters"]
    rates, speedup = results["tokens_per_s"], results["speedup"]
    kd, sft = students[KD], students[SFT]
    seeds = len(kd["runs"])
    steps = setup["student_steps"]
    speed = (
        "invalid: " + "; ".join(speedup["invalid_because"])
        if not speedup["valid"]
        else harness.format_range(speedup, suffix="x")
    )
    rows = [
        "| | teacher (30 layers) | KD student | SFT student |",
        "|---|---|---|---|",
        f"| held-out accuracy ({setup['held_out_rows']} rows; students: median (min-max) of {seeds} seeds) | "
        f"{results['teacher']['accuracy']:.3f} (one teacher) | {harness.format_range(kd['accuracy'], 3)} | "
        f"{harness.format_range(sft['accuracy'], 3)} |",
        f"| parameters (counted) | {parameters['teacher'] / 1e6:.1f} M | {parameters[KD] / 1e6:.1f} M "
        f"({parameters[KD] / parameters['teacher']:.3f}x) | same as KD |",
        f"| decode tokens/s, batch 1, fp32 (median (min-max) of {len(rates['teacher']['runs'])}) | "
        f"{harness.format_range(rates['teacher'], 1)} | {harness.format_range(rates[KD], 1)} (speedup {speed}) | "
        "same shape as KD |",
        f"| training ({setup['training_dtype']}) | {setup['teacher_steps']} steps | {steps} steps, "
        f"{harness.format_range(kd['train_seconds'], 0, ' s')} | {steps} steps, "
        f"{harness.format_range(sft['train_seconds'], 0, ' s')} |",
    ]
    gain = results["kd_gain_over_sft_student"]
    kd_gain = [
        "| student layers | KD student accuracy | SFT student accuracy | KD - SFT (mean of seeds) | seeds x rows |",
        "|---|---|---|---|---|",
        f"| {setup['student']} | {harness.format_range(kd['accuracy'], 3)} | {harness.format_range(sft['accuracy'], 3)} "
        f"| {gain_text(gain)} | {gain['seeds']} x {gain['rows']} |",
    ]
    return {"students": "\n".join(rows) + "\n", "kd_gain": "\n".join(kd_gain) + "\n"}


if __name__ == "__main__":
    main()
