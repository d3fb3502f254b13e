"""Distillation's worked example: a SmolLM2-135M cloudsec specialist teaches a student made from the same
model by keeping every other decoder layer (15 of 30), trained with logit-level KD on the same examples.

Teacher: the example's recipe for `--teacher-steps` steps. Student: `niche distill --mode logits
--student-layers every_other`, LoRA r=64 on all linear layers of the 15-layer base, `--student-steps` steps,
loss 0.5 * cross-entropy + 0.5 * forward KL on the supervised positions. Both are scored by `niche eval` on the
same held-out rows (constrained to the label set), and timed at batch 1 decoding 32 tokens after 8 prompts
(the adapter merged, fp32, a transformers loop with its KV cache). Results: bench/results/distill.json.

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


def decode_speed(specialist: Path, prompts: list[list[int]], tokens: int = 32) -> float:
    from niche.export import merge_into_base

    merged = WORKDIR / f"{specialist.name}-merged"
    model = merge_into_base(specialist, merged).eval()
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
    return statistics.median(rates[1:])


def parameters(specialist: Path) -> int:
    from transformers import AutoConfig

    from niche.specialist import read_manifest, resolve_specialist_base

    base = resolve_specialist_base(read_manifest(specialist))
    config = AutoConfig.from_pretrained(base.directory)
    embedding = config.vocab_size * config.hidden_size
    layer = 4 * config.hidden_size * config.hidden_size + 3 * config.hidden_size * config.intermediate_size
    return embedding + config.num_hidden_layers * layer  # tied output head: counted once


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

    from niche.config import load_config
    from niche.data.template import TemplateEncoder
    from niche.distill import distill_logits
    from niche.eval import evaluate
    from niche.eval.evaluate import load_test_examples
    from niche.models import load_tokenizer
    from niche.specialist import read_manifest, resolve_specialist_base
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
    student = distill_logits(
        load_config(
            EXAMPLE / "niche.yaml",
            [
                *common,
                "name=cloudsec-student",
                "training.objective=generate",
                "lora.r=64",
                "lora.alpha=128",
                f"training.max_steps={args.student_steps}",
                f"training.eval_every={args.student_steps}",
                "distill.kind=forward_kl",
                "distill.alpha=0.5",
            ],
        ),
        teacher_dir,
        layers,
        show_progress=False,
    )
    student_seconds = time.perf_counter() - started

    scores = {}
    for name, specialist in (("teacher", teacher_dir), ("student", student.specialist_dir)):
        report = evaluate(specialist, test, show_progress=False)
        scores[name] = report.results[-1].metrics["accuracy"]
    manifest = read_manifest(teacher_dir)
    tokenizer = load_tokenizer(resolve_specialist_base(manifest))
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    examples = load_test_examples(test, manifest)[:8]
    prompts = [encoder.prompt_ids(dataclasses.replace(example, response="")) for example in examples]
    speed = {
        name: decode_speed(path, prompts)
        for name, path in (("teacher", teacher_dir), ("student", student.specialist_dir))
    }
    sizes = {"teacher": parameters(teacher_dir), "student": parameters(student.specialist_dir)}
    result = {
        "setup": {
            "teacher": "smollm2-135m, 30 layers",
            "student": f"smollm2-135m, layers {args.student_layers}",
            "teacher_steps": args.teacher_steps,
            "student_steps": args.student_steps,
            "held_out_rows": args.rows,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "teacher_accuracy": round(scores["teacher"], 4),
        "student_accuracy": round(scores["student"], 4),
        "student_accuracy_ratio": round(scores["student"] / scores["teacher"], 4) if scores["teacher"] else None,
        "teacher_parameters": sizes["teacher"],
        "student_parameters": sizes["student"],
        "student_size_ratio": round(sizes["student"] / sizes["teacher"], 3),
        "teacher_decode_tokens_per_s": round(speed["teacher"], 1),
        "student_decode_tokens_per_s": round(speed["student"], 1),
        "student_speedup": round(speed["student"] / speed["teacher"], 2),
        "teacher_train_seconds": round(teacher_seconds, 1) if teacher_seconds is not None else None,
        "student_train_seconds": round(student_seconds, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
