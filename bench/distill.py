"""Distillation's worked example: a SmolLM2-135M cloudsec specialist teaches a student made from the same
model by keeping every other decoder layer (15 of 30), trained with logit-level KD on the same examples; beside
it, a plain-SFT student (the same cut base, LoRA, rows and steps, cross-entropy only) shows what KD adds.

Teacher: the example's recipe for `--teacher-steps` steps. Student: `niche distill --mode logits
--student-layers every_other`, LoRA r=64 on all linear layers of the 15-layer base, `--student-steps` steps,
loss 0.5 * cross-entropy + 0.5 * forward KL on the supervised positions. SFT student: the same with the
cross-entropy alone. All three are scored by `niche eval` on the same held-out rows (constrained to the label
set); teacher and KD student are timed at batch 1 decoding 32 tokens after 8 prompts (the adapter merged, fp32, a
transformers loop with its KV cache) and their parameters counted on the merged model itself (the sum of
`numel` over its parameters: a tied output head shares the embedding's tensor and is counted once).
Results: bench/results/distill.json.

    python bench/distill.py [--teacher-steps 80] [--student-steps 80] [--rows 160] [--student-layers every_other]
                            [--teacher build/bench-distill/specialists/cloudsec]  # reuse a trained teacher
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
RESULTS = REPO / "bench" / "results" / "distill.json"
WORKDIR = REPO / "build" / "bench-distill"


def size_and_decode_speed(specialist: Path, prompts: list[list[int]], tokens: int = 32) -> tuple[int, float]:
    """(parameters, median decode tokens/s) of the merged specialist; `parameters()` yields a tied tensor once."""
    from niche.export import merge_into_base

    merged = WORKDIR / f"{specialist.name}-merged"
    model = merge_into_base(specialist, merged).eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    rates = []
    with torch.inference_mode():
        for prompt in [prompts[0], *prompts]:
            output = model(input_ids=torch.tensor([prompt]), use_cache=True)
            token, cache = int(output.logits[0, -1].argmax()), output.past_key_values
            started = time.perf_counter()
            for _ in range(tokens):
                output = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
                token, cache = int(output.logits[0, -1].argmax()), output.past_key_values
            rates.append(tokens / (time.perf_counter() - started))
    return parameters, statistics.median(rates[1:])


def student_config(overrides: list[str], steps: int) -> list[str]:
    """The students' shared settings: LoRA r=64 on the cut base, `steps` steps, one validation at the end."""
    return [
        *overrides,
        "training.objective=generate",
        "lora.r=64",
        "lora.alpha=128",
        f"training.max_steps={steps}",
        f"training.eval_every={steps}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-steps", type=int, default=80)
    parser.add_argument("--student-steps", type=int, default=80)
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--student-layers", default="every_other", help="every_other or indices like 0,1,2,5")
    parser.add_argument("--teacher", type=Path, help="an already trained teacher specialist (its steps as given)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from niche.distill import parse_student_layers

    layers = parse_student_layers(args.student_layers)

    from niche.artifact import load_test_examples, read_manifest
    from niche.config import load_config
    from niche.data.template import TemplateEncoder
    from niche.distill import distill_config, distill_logits
    from niche.eval import evaluate
    from niche.io import write_json_atomic
    from niche.models import load_tokenizer
    from niche.specialist import resolve_specialist_base
    from niche.train import train

    test = WORKDIR / "test.jsonl"
    test.parent.mkdir(parents=True, exist_ok=True)
    test.write_text("".join((EXAMPLE / "test.jsonl").read_text().splitlines(keepends=True)[: args.rows]))
    common = [f"output_dir={WORKDIR / 'specialists'}", "tracking.enabled=false"]
    started = time.perf_counter()
    if args.teacher is not None:
        teacher_dir, teacher_seconds = args.teacher, None
    else:
        teacher = train(
            load_config(
                EXAMPLE / "niche.yaml",
                [
                    *common,
                    "training.objective=generate",
                    f"training.max_steps={args.teacher_steps}",
                    f"training.eval_every={args.teacher_steps}",
                ],
            ),
            show_progress=False,
        )
        teacher_dir, teacher_seconds = teacher.specialist_dir, time.perf_counter() - started
    started = time.perf_counter()
    kd_config = load_config(
        EXAMPLE / "niche.yaml",
        student_config(
            [*common, "name=cloudsec-student", "distill.kind=forward_kl", "distill.alpha=0.5"], args.student_steps
        ),
    )
    student = distill_logits(kd_config, teacher_dir, layers, show_progress=False)
    student_seconds = time.perf_counter() - started
    # The SFT student trains the base distill_logits cut (same layers) on the same rows, without the teacher.
    student_base = kd_config.output_dir / f"{kd_config.name}-student-base"
    started = time.perf_counter()
    sft_student = train(
        distill_config(
            load_config(
                EXAMPLE / "niche.yaml", student_config([*common, "name=cloudsec-student-sft"], args.student_steps)
            ),
            teacher_dir,
            student_base,
        ),
        show_progress=False,
    )
    sft_student_seconds = time.perf_counter() - started

    runs = {"teacher": teacher_dir, "student": student.specialist_dir, "sft_student": sft_student.specialist_dir}
    scores = {
        name: evaluate(specialist, test, show_progress=False).results[-1].metrics["accuracy"]
        for name, specialist in runs.items()
    }
    manifest = read_manifest(teacher_dir)
    tokenizer = load_tokenizer(resolve_specialist_base(manifest))
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    examples = load_test_examples(test, manifest)[:8]
    prompts = [encoder.prompt_ids(dataclasses.replace(example, response="")) for example in examples]
    # The SFT student has the KD student's shape: same parameters, same speed; only its accuracy differs.
    sizes, speed = {}, {}
    for name in ("teacher", "student"):
        sizes[name], speed[name] = size_and_decode_speed(runs[name], prompts)
    student_layer_count = len(json.loads((student_base / "niche-student.json").read_text())["layers"])
    result = {
        "setup": {
            "teacher": "smollm2-135m, 30 layers",
            "student": f"smollm2-135m, layers {args.student_layers} ({student_layer_count})",
            "sft_student": "the KD student's cut base, LoRA, rows and steps; cross-entropy only, no teacher",
            "teacher_steps": args.teacher_steps,
            "student_steps": args.student_steps,
            "held_out_rows": args.rows,
            "parameters_counted": "sum of numel over the merged model's parameters (tied embeddings counted once)",
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "teacher_accuracy": round(scores["teacher"], 4),
        "student_accuracy": round(scores["student"], 4),
        "sft_student_accuracy": round(scores["sft_student"], 4),
        "kd_gain_over_sft_student": round(scores["student"] - scores["sft_student"], 4),
        "student_accuracy_ratio": round(scores["student"] / scores["teacher"], 4) if scores["teacher"] else None,
        "teacher_parameters": sizes["teacher"],
        "student_parameters": sizes["student"],
        "student_size_ratio": round(sizes["student"] / sizes["teacher"], 3),
        "teacher_decode_tokens_per_s": round(speed["teacher"], 1),
        "student_decode_tokens_per_s": round(speed["student"], 1),
        "student_speedup": round(speed["student"] / speed["teacher"], 2),
        "teacher_train_seconds": round(teacher_seconds, 1) if teacher_seconds is not None else None,
        "student_train_seconds": round(student_seconds, 1),
        "sft_student_train_seconds": round(sft_student_seconds, 1),
    }
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
