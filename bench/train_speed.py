"""Training speed and memory: niche vs TRL's SFTTrainer on the same model, data, LoRA config, prompt and steps.

Each configuration runs in its own process (so peak RSS is its own) for the same number of optimizer steps
on the same examples, then is scored on the same held-out rows with niche's constrained decoding:

- niche: `niche.train.train` as a user runs it (on CPU its batch is taken in micro-batches whose activations
  fit niche's budget; the same optimizer step).
- niche-whole-batch: the same with `training.micro_batch_size` = the batch, to show what micro-batches cost.
- trl-best: SFTTrainer at its fastest on this CPU: the base loaded in the dtype niche trains in (bf16 where the
  CPU computes it natively, else fp32), bf16 autocast where native, eager attention (as niche uses for short
  rows), length-grouped batches, completion-only loss, no activation checkpointing.
- trl-padding-free: the same with padding-free batches, on PyTorch's fused attention (TRL supports padding-free
  only with flash attention, which has no CPU build: eager attention would attend across rows of the flattened
  batch, and sdpa may too). Shown for reference; never counted as TRL's best.
- trl-micro-batch: trl-best with the batch taken in niche's micro-batches by hand (per-device batch and
  gradient accumulation), to show what that alone saves in TRL.
- trl-default: SFTTrainer with its defaults (fp32 weights, bf16 autocast, activation checkpointing). On CPUs
  without native bf16 each step takes minutes, so it then gets one step and only its throughput compares.

"TRL best" in the ratios is the fastest TRL configuration that ran the full number of steps. Peak RSS is the
process's peak from start to the end of training (the held-out scoring after it is not counted).

Data: the banking domain of CLINC150 (../shared/datasets/clinc150), or the project's example if that is missing.
Writes bench/results/train_speed.json and prints the ratios.

    python bench/train_speed.py [--steps 12] [--batch-size 16] [--default-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLINC = REPO.parent / "shared" / "datasets" / "clinc150"
RESULTS = REPO / "bench" / "results" / "train_speed.json"
SYSTEM_PROMPT = "Classify the banking request into one intent: {labels}. Answer with the intent only."
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
LEARNING_RATE = 5e-4
MAX_LENGTH = 256


def write_data(workdir: Path, seed: int, eval_rows: int) -> dict[str, Path]:
    """Train / validation / held-out JSONL files in niche's label format."""
    if (CLINC / "data_full.json").is_file():
        full = json.loads((CLINC / "data_full.json").read_text())
        intents = set(json.loads((CLINC / "domains.json").read_text())["banking"])
        train = [{"text": text, "label": intent} for text, intent in full["train"] if intent in intents]
        held_out = [{"text": text, "label": intent} for text, intent in full["test"] if intent in intents]
        source = "clinc150/banking"
    else:
        example = REPO / "examples" / "cloudsec"
        train = [json.loads(line) for line in (example / "train.jsonl").read_text().splitlines()]
        held_out = [json.loads(line) for line in (example / "test.jsonl").read_text().splitlines()]
        source = "examples/cloudsec"
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(held_out)
    paths = {
        "train": workdir / "train.jsonl",
        "validation": workdir / "validation.jsonl",
        "test": workdir / "test.jsonl",
    }
    for name, rows in (("train", train), ("validation", held_out[:16]), ("test", held_out[16 : 16 + eval_rows])):
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    (workdir / "source.txt").write_text(source)
    return paths


def niche_config(paths: dict[str, Path], workdir: Path, steps: int, batch_size: int, seed: int, *extra: str):
    from niche.config import load_config

    return load_config(
        None,
        [
            f"data.train={paths['train']}",
            f"data.validation={paths['validation']}",
            f"data.test={paths['test']}",
            f"output_dir={workdir / 'out'}",
            "name=bench",
            # The comparison with TRL's SFTTrainer is of the same generative recipe.
            "training.objective=generate",
            f"prompt.system_prompt={SYSTEM_PROMPT}",
            f"lora.r={LORA['r']}",
            f"lora.alpha={LORA['alpha']}",
            f"lora.dropout={LORA['dropout']}",
            f"training.learning_rate={LEARNING_RATE}",
            "training.scheduler=constant",
            "training.warmup_ratio=0",
            f"training.max_steps={steps}",
            f"training.batch_size={batch_size}",
            f"training.max_seq_length={MAX_LENGTH}",
            f"training.eval_every={steps + 1}",
            f"training.seed={seed}",
            *extra,
        ],
    )


def held_out_accuracy(model, encoder, test_path: Path, labels: list[str]) -> float:
    from niche.data.formats import load_examples
    from niche.eval.generation import generate_answers
    from niche.metrics import label_metrics

    examples = load_examples(test_path).examples
    model.eval()
    answers = generate_answers(model, encoder, examples, batch_size=16, allowed_answers=labels)
    return label_metrics(answers, [example.label for example in examples], labels)["accuracy"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_niche(paths: dict[str, Path], workdir: Path, steps: int, batch_size: int, seed: int, name: str) -> dict:
    import torch

    from niche.data.template import TemplateEncoder
    from niche.specialist import load_specialist
    from niche.train import train

    extra = [f"training.micro_batch_size={batch_size}"] if name == "niche-whole-batch" else []
    config = niche_config(paths, workdir, steps, batch_size, seed, *extra)
    result = train(config, show_progress=False)
    peak_training = peak_rss_mib()
    metrics = result.manifest.metrics
    model, tokenizer, manifest = load_specialist(result.specialist_dir, "cpu", torch.float32)
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    return {
        "steps": metrics["steps"],
        "train_runtime_s": metrics["train_runtime_s"],
        "tokens_seen_reported": metrics["tokens_seen"],
        "mean_train_loss": metrics["train_loss"],
        "micro_batch_size": metrics["plan"]["micro_batch_size"],
        "peak_rss_mib": peak_training,
        "held_out_accuracy": held_out_accuracy(model, encoder, paths["test"], manifest.task.labels),
    }


def trl_rows(paths: dict[str, Path], encoder, labels: list[str]) -> list[dict[str, str]]:
    """The same rendered prompt and completion text niche trains on, as a TRL prompt-completion dataset."""
    from niche.data.formats import load_examples

    rows = []
    for example in load_examples(paths["train"]).examples:
        prompt = encoder.template.render_prompt(encoder.tokenizer, example)
        rows.append({"prompt": prompt, "completion": encoder.template.render_completion(encoder.tokenizer, example)})
    return rows


def trl_settings(name: str) -> dict:
    """TRL's best on CPU: bf16 autocast where native (as niche picks it), no activation checkpointing, batches of
    similar lengths (TRL's own option for less padding)."""
    from niche.hardware import cpu_has_native_bf16

    best = {
        "bf16": cpu_has_native_bf16(),
        "gradient_checkpointing": False,
        "train_sampling_strategy": "group_by_length",
    }
    return {
        "trl-best": best,
        # Padding-free batches need max_length=None without packing; every row here is far below MAX_LENGTH anyway.
        "trl-padding-free": {**best, "padding_free": True, "max_length": None},
        "trl-micro-batch": best,
        "trl-default": {},
    }[name]


def run_trl(paths: dict[str, Path], workdir: Path, steps: int, batch_size: int, seed: int, name: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from niche.data.formats import load_examples
    from niche.data.tasks import label_set
    from niche.data.template import TemplateEncoder, build_template
    from niche.models import load_tokenizer, resolve_base

    base = resolve_base("smollm2-135m")
    tokenizer = load_tokenizer(base)
    labels = label_set(load_examples(paths["train"]).examples)
    encoder = TemplateEncoder(tokenizer, build_template(tokenizer, SYSTEM_PROMPT, None, labels))
    dataset = Dataset.from_list(trl_rows(paths, encoder, labels))
    settings = trl_settings(name)
    micro = int(os.environ.get("NICHE_BENCH_MICRO_BATCH", batch_size)) if name == "trl-micro-batch" else batch_size
    args = SFTConfig(
        output_dir=str(workdir / "trl"),
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch_size // micro,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        completion_only_loss=True,
        seed=seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        **{"max_length": MAX_LENGTH, **settings},
    )
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    if name == "trl-default":
        model = AutoModelForCausalLM.from_pretrained(base.directory)
    else:
        # The weights in the dtype niche trains in, and the attention niche uses for rows this short.
        from niche.hardware import detect_hardware

        attention = "sdpa" if name == "trl-padding-free" else "eager"
        dtype = detect_hardware().dtype
        model = AutoModelForCausalLM.from_pretrained(base.directory, dtype=dtype, attn_implementation=attention)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    started = time.perf_counter()
    output = trainer.train()
    runtime = time.perf_counter() - started
    peak_training = peak_rss_mib()
    dtype_trained = str(next(trainer.model.parameters()).dtype).removeprefix("torch.")
    accuracy = held_out_accuracy(trainer.model.float(), encoder, paths["test"], labels)
    return {
        "steps": trainer.state.global_step,
        "train_runtime_s": runtime,
        "tokens_seen_reported": trainer.state.num_input_tokens_seen,
        "mean_train_loss": output.training_loss,
        "weights_dtype": dtype_trained,
        "peak_rss_mib": peak_training,
        "held_out_accuracy": accuracy,
    }


def child(name: str, workdir: Path, steps: int, batch_size: int, seed: int) -> None:
    paths = {split: workdir / f"{split}.jsonl" for split in ("train", "validation", "test")}
    if name.startswith("niche"):
        result = run_niche(paths, workdir, steps, batch_size, seed, name)
    else:
        result = run_trl(paths, workdir, steps, batch_size, seed, name)
    result["examples_seen"] = result["steps"] * batch_size
    result["seconds_per_step"] = result["train_runtime_s"] / max(result["steps"], 1)
    print("RESULT " + json.dumps(result), flush=True)


def tokens_per_example(paths: dict[str, Path]) -> tuple[float, float]:
    """Mean (total, supervised) tokens of a training row as niche encodes it; the same rows for every run.

    Throughput is this work divided by wall time, so every configuration is credited for the same tokens,
    whatever its trainer counts.
    """
    from niche.data.formats import load_examples
    from niche.data.tasks import label_set
    from niche.data.template import TemplateEncoder, build_template
    from niche.models import load_tokenizer, resolve_base

    tokenizer = load_tokenizer(resolve_base("smollm2-135m"))
    examples = load_examples(paths["train"]).examples
    encoder = TemplateEncoder(tokenizer, build_template(tokenizer, SYSTEM_PROMPT, None, label_set(examples)))
    encoded = [encoder.training_example(example) for example in examples]
    total = sum(len(item.input_ids) for item in encoded) / len(encoded)
    return total, sum(item.supervised_tokens for item in encoded) / len(encoded)


def run_configuration(name: str, workdir: Path, steps: int, batch_size: int, seed: int) -> dict:
    print(f"== {name}: {steps} steps of batch {batch_size}", flush=True)
    command = [sys.executable, __file__, "--child", name, "--workdir", str(workdir), "--steps", str(steps)]
    command += ["--batch-size", str(batch_size), "--seed", str(seed)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{completed.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    print(
        f"   {result['seconds_per_step']:.2f} s/step, "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB, mean loss {result['mean_train_loss']:.4f}, "
        f"accuracy {result['held_out_accuracy']}",
        flush=True,
    )
    return result


def cpu_model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--default-steps", type=int, help="steps for TRL's defaults (default: --steps with native bf16, else 1)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-rows", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    from niche.hardware import cpu_has_native_bf16, detect_hardware

    if args.child:
        child(args.child, args.workdir, args.steps, args.batch_size, args.seed)
        return

    workdir = Path(tempfile.mkdtemp(prefix="niche-bench-"))
    paths = write_data(workdir, args.seed, args.eval_rows)
    total_per_example, supervised_per_example = tokens_per_example(paths)
    runs = {
        name: run_configuration(name, workdir, args.steps, args.batch_size, args.seed)
        for name in ("niche", "niche-whole-batch", "trl-best", "trl-padding-free")
    }
    # TRL with the micro-batch niche chose, set by hand.
    os.environ["NICHE_BENCH_MICRO_BATCH"] = str(runs["niche"]["micro_batch_size"])
    runs["trl-micro-batch"] = run_configuration("trl-micro-batch", workdir, args.steps, args.batch_size, args.seed)
    # Without native bf16, TRL's default bf16 takes minutes a step: one step measures its throughput.
    default_steps = (
        args.default_steps if args.default_steps is not None else (args.steps if cpu_has_native_bf16() else 1)
    )
    if default_steps > 0:
        runs["trl-default"] = run_configuration("trl-default", workdir, default_steps, args.batch_size, args.seed)
    for run in runs.values():
        run["tokens_per_s"] = run["examples_seen"] * total_per_example / run["train_runtime_s"]
        run["supervised_tokens_per_s"] = run["examples_seen"] * supervised_per_example / run["train_runtime_s"]

    niche = runs["niche"]
    # TRL's defaults count towards "best" only when they ran the same number of steps (on CPUs with native bf16).
    comparable = [
        name
        for name, run in runs.items()
        if name.startswith("trl") and name != "trl-padding-free" and run["steps"] == args.steps
    ]
    best_name = max(comparable, key=lambda name: runs[name]["tokens_per_s"])
    best = runs[best_name]
    results = {
        "trl_best": best_name,
        "data": (workdir / "source.txt").read_text(),
        "model": "smollm2-135m",
        "lora": LORA,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "max_length": MAX_LENGTH,
        "held_out_rows": args.eval_rows,
        "tokens_per_example": total_per_example,
        "supervised_tokens_per_example": supervised_per_example,
        "runs": runs,
        "ratio_tokens_per_s": niche["tokens_per_s"] / best["tokens_per_s"],
        "ratio_supervised_tokens_per_s": niche["supervised_tokens_per_s"] / best["supervised_tokens_per_s"],
        "ratio_peak_memory": niche["peak_rss_mib"] / best["peak_rss_mib"],
        # Against TRL's fastest configuration with whole batches, as TRL's users run it.
        "ratio_tokens_per_s_vs_trl_whole_batch": niche["tokens_per_s"] / runs["trl-best"]["tokens_per_s"],
        "ratio_peak_memory_vs_trl_whole_batch": niche["peak_rss_mib"] / runs["trl-best"]["peak_rss_mib"],
        "ratio_tokens_per_s_whole_batch_vs_micro": runs["niche-whole-batch"]["tokens_per_s"] / niche["tokens_per_s"],
        "dtype": str(detect_hardware().dtype).removeprefix("torch."),
        "ratio_tokens_per_s_vs_trl_default": (
            niche["tokens_per_s"] / runs["trl-default"]["tokens_per_s"] if "trl-default" in runs else None
        ),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model_name(),
            "native_bf16": cpu_has_native_bf16(),
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
        "versions": {package: metadata.version(package) for package in ("torch", "transformers", "peft", "trl")},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    temporary.replace(RESULTS)
    print(
        f"\nniche / TRL best: {results['ratio_tokens_per_s']:.2f}x tokens/s, "
        f"{results['ratio_peak_memory']:.2f}x peak memory; mean loss {niche['mean_train_loss']:.4f} vs "
        f"{best['mean_train_loss']:.4f}; accuracy {niche['held_out_accuracy']:.3f} vs {best['held_out_accuracy']:.3f}"
    )
    if results["ratio_tokens_per_s_vs_trl_default"]:
        print(f"niche / TRL defaults: {results['ratio_tokens_per_s_vs_trl_default']:.1f}x tokens/s")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
