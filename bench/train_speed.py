"""Training speed and memory: niche vs TRL's SFTTrainer on the same model, data, LoRA config, prompt and steps.

Two workloads, each the same rows, rendered prompt and completion for every configuration:
- `label`: the banking domain of CLINC150 (15 intents), short answers (a label, ~4 supervised tokens a row);
- `extraction`: SLURP requests answered with `{"intent", "slots"}` JSON, long answers (~30 supervised tokens).
Without ../shared/datasets the label workload falls back to the project's cloudsec example and the extraction
workload to the same findings as JSON; the results file says which data ran.

Configurations (each run in its own process, so peak RSS is its own):
- niche: `niche.train.train` as a user runs it (on CPU its batch is taken in micro-batches whose activations fit
  niche's budget; the same optimizer step).
- trl-best: SFTTrainer at its fastest on this CPU: the base loaded in the dtype niche trains in (bf16 where the
  CPU computes it natively, else fp32), bf16 autocast where native, eager attention, length-grouped batches,
  completion-only loss, no activation checkpointing.
- trl-micro-batch: trl-best with the batch taken in niche's micro-batches by hand (per-device batch and gradient
  accumulation; the micro-batch niche chose for the workload).
- optional (`--configurations`): niche-whole-batch (`training.micro_batch_size` = the batch), trl-padding-free
  (reference only: PyTorch's fused attention, never counted as TRL's best), trl-default (TRL's defaults).

Measurement: every configuration runs `--steps` optimizer steps; the first step is warm-up and is dropped; time
per step is taken from the trainer's step-end callback. Throughput is credited identically: measured steps x
batch x mean tokens per row (as niche encodes the rows) / measured time. Rounds are interleaved (harness), at
least 3. "TRL best" is the TRL configuration with the highest median throughput.

Same work, checked for every niche-vs-TRL ratio: both trainers counted the same non-padding tokens over the run
(within 2%), the mean training loss agrees within 5% (the same optimisation), and the held-out score (label
accuracy, decoding constrained to the intents; extraction exact match of the parsed JSON, greedy) is within 5
points; a configuration's held-out score is taken in its first measured round (same seed every round: the same
model).

    python bench/train_speed.py [--steps 7] [--batch-size 16] [--workload label --workload extraction]
                                [--configurations niche,trl-best,trl-micro-batch] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
LEARNING_RATE = 5e-4
MAX_LENGTH = 256
DEFAULT_CONFIGURATIONS = ("niche", "trl-best", "trl-micro-batch")
ALL_CONFIGURATIONS = (*DEFAULT_CONFIGURATIONS, "niche-whole-batch", "trl-padding-free", "trl-default")
TOKEN_TOLERANCE = 0.02
LOSS_TOLERANCE = 0.05
SCORE_TOLERANCE = 0.05


@dataclass(frozen=True)
class Workload:
    name: str
    system_prompt: str
    score_name: str
    max_new_tokens: int


WORKLOADS = {
    "label": Workload(
        "label",
        "Classify the banking request into one intent: {labels}. Answer with the intent only.",
        "held-out accuracy (decoding constrained to the intents)",
        8,
    ),
    "extraction": Workload(
        "extraction",
        "Extract the request's intent and slots as JSON.",
        "held-out exact match of the parsed JSON (greedy)",
        96,
    ),
}


def label_rows() -> tuple[list[dict], list[dict], str]:
    clinc = SHARED / "clinc150"
    if (clinc / "data_full.json").is_file():
        full = json.loads((clinc / "data_full.json").read_text())
        intents = set(json.loads((clinc / "domains.json").read_text())["banking"])
        train = [{"text": text, "label": intent} for text, intent in full["train"] if intent in intents]
        held_out = [{"text": text, "label": intent} for text, intent in full["val"] if intent in intents]
        return train, held_out, "clinc150/banking (train; held out: val)"
    example = REPO / "examples" / "cloudsec"
    train = [json.loads(line) for line in (example / "train.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (example / "test.jsonl").read_text().splitlines()]
    return train, held_out, "examples/cloudsec"


def extraction_rows() -> tuple[list[dict], list[dict], str]:
    slurp = SHARED / "slurp" / "train.jsonl"
    if slurp.is_file():
        from public_data import extraction_row
        from public_data import slurp as slurp_split

        rows = [extraction_row(row) for row in slurp_split("train")]
        # The held-out rows are carved from train: SLURP's test file is read only by the quality benchmark.
        return rows[200:], rows[:200], "slurp (train; held out: its first 200 rows)"
    example = REPO / "examples" / "cloudsec"
    findings = [json.loads(line) for line in (example / "train.jsonl").read_text().splitlines()]
    rows = [{"prompt": row["text"], "completion": json.dumps({"category": row["label"]})} for row in findings]
    return rows[100:], rows[:100], "examples/cloudsec as JSON"


def write_data(workdir: Path, workload: str, seed: int, eval_rows: int) -> dict[str, Path]:
    """Train / validation / held-out JSONL files for one workload."""
    train, held_out, source = label_rows() if workload == "label" else extraction_rows()
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(held_out)
    directory = workdir / workload
    directory.mkdir(parents=True, exist_ok=True)
    paths = {split: directory / f"{split}.jsonl" for split in ("train", "validation", "test")}
    for name, rows in (("train", train), ("validation", held_out[:16]), ("test", held_out[16 : 16 + eval_rows])):
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / "source.txt").write_text(source)
    return paths


def niche_config(
    paths: dict[str, Path], workdir: Path, workload: Workload, steps: int, batch_size: int, seed: int, *extra: str
):
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
            f"prompt.system_prompt={workload.system_prompt}",
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


def held_out_answers(model, encoder, test_path: Path, workload: Workload, labels: list[str] | None) -> dict:
    from niche.data.formats import load_examples
    from niche.eval.generation import generate_answers

    examples = load_examples(test_path).examples
    model.eval()
    if workload.name == "label":
        answers = generate_answers(model, encoder, examples, batch_size=16, allowed_answers=labels)
    else:
        answers = generate_answers(model, encoder, examples, batch_size=16, max_new_tokens=workload.max_new_tokens)
    return {"score": round(held_out_score(answers, [example.response for example in examples]), 4), "answers": answers}


def held_out_score(answers: list[str], references: list[str]) -> float:
    """Exact match, of the parsed JSON where the reference is JSON (key order and spacing do not count)."""

    def parsed(text: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text.strip()

    return sum(
        parsed(answer) == parsed(reference) for answer, reference in zip(answers, references, strict=True)
    ) / len(references)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_timer():
    """A TrainerCallback recording when each optimizer step ends (the first is the warm-up, dropped later)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.started = None
            self.step_ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())

        def step_seconds(self) -> list[float]:
            edges = [self.started, *self.step_ends]
            return [later - earlier for earlier, later in zip(edges, edges[1:])]

    return StepTimer()


def run_niche(paths, workdir, workload: Workload, steps, batch_size, seed, name, score: bool) -> dict:
    import torch

    from niche.data.template import TemplateEncoder
    from niche.specialist import load_specialist
    from niche.train import train

    extra = [f"training.micro_batch_size={batch_size}"] if name == "niche-whole-batch" else []
    config = niche_config(paths, workdir, workload, steps, batch_size, seed, *extra)
    timer = step_timer()
    result = train(config, show_progress=False, callbacks=[timer])
    peak_training = peak_rss_mib()
    metrics = result.manifest.metrics
    outcome = {
        "steps": metrics["steps"],
        "step_seconds": timer.step_seconds(),
        "tokens_seen_reported": metrics["tokens_seen"],
        "mean_train_loss": metrics["train_loss"],
        "micro_batch_size": metrics["plan"]["micro_batch_size"],
        "peak_rss_mib": peak_training,
    }
    if score:
        model, tokenizer, manifest = load_specialist(result.specialist_dir, "cpu", torch.float32)
        encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
        outcome["held_out"] = held_out_answers(model, encoder, paths["test"], workload, manifest.task.labels)
    return outcome


def template_encoder(paths: dict[str, Path], workload: Workload):
    from niche.data.formats import load_examples
    from niche.data.tasks import label_set
    from niche.data.template import TemplateEncoder, build_template
    from niche.models import load_tokenizer, resolve_base

    tokenizer = load_tokenizer(resolve_base("smollm2-135m"))
    examples = load_examples(paths["train"]).examples
    labels = label_set(examples) if workload.name == "label" else None
    return TemplateEncoder(tokenizer, build_template(tokenizer, workload.system_prompt, None, labels)), labels


def trl_rows(paths: dict[str, Path], encoder) -> list[dict[str, str]]:
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


def run_trl(paths, workdir, workload: Workload, steps, batch_size, seed, name, score: bool, micro_batch: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from niche.hardware import detect_hardware
    from niche.models import resolve_base

    base = resolve_base("smollm2-135m")
    encoder, labels = template_encoder(paths, workload)
    dataset = Dataset.from_list(trl_rows(paths, encoder))
    micro = micro_batch if name == "trl-micro-batch" else batch_size
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
        **{"max_length": MAX_LENGTH, **trl_settings(name)},
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
        attention = "sdpa" if name == "trl-padding-free" else "eager"
        model = AutoModelForCausalLM.from_pretrained(
            base.directory, dtype=detect_hardware().dtype, attn_implementation=attention
        )
    timer = step_timer()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=encoder.tokenizer,
        peft_config=lora,
        callbacks=[timer],
    )
    output = trainer.train()
    peak_training = peak_rss_mib()
    outcome = {
        "steps": trainer.state.global_step,
        "step_seconds": timer.step_seconds(),
        "tokens_seen_reported": trainer.state.num_input_tokens_seen,
        "mean_train_loss": output.training_loss,
        "weights_dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
        "peak_rss_mib": peak_training,
    }
    if score:
        outcome["held_out"] = held_out_answers(trainer.model.float(), encoder, paths["test"], workload, labels)
    return outcome


def child(args: argparse.Namespace) -> None:
    workload = WORKLOADS[args.child_workload]
    directory = args.workdir / workload.name
    paths = {split: directory / f"{split}.jsonl" for split in ("train", "validation", "test")}
    common = (paths, args.workdir / f"run-{args.child}", workload, args.steps, args.batch_size, args.seed, args.child)
    if args.child.startswith("niche"):
        result = run_niche(*common, args.score)
    else:
        result = run_trl(*common, args.score, args.micro_batch)
    print("RESULT " + json.dumps(result), flush=True)


def tokens_per_example(paths: dict[str, Path], workload: Workload) -> tuple[float, float]:
    """Mean (total, supervised) tokens of a training row as niche encodes it; the same rows for every run.

    Throughput is this work divided by wall time, so every configuration is credited for the same tokens,
    whatever its trainer counts.
    """
    from niche.data.formats import load_examples

    encoder, _ = template_encoder(paths, workload)
    encoded = [encoder.training_example(example) for example in load_examples(paths["train"]).examples]
    total = sum(len(item.input_ids) for item in encoded) / len(encoded)
    return total, sum(item.supervised_tokens for item in encoded) / len(encoded)


def run_once(name: str, workload: str, args: argparse.Namespace, workdir: Path, score: bool, micro_batch: int) -> dict:
    command = [sys.executable, __file__, "--child", name, "--child-workload", workload, "--workdir", str(workdir)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    command += ["--micro-batch", str(micro_batch)] + (["--score"] if score else [])
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"{workload}/{name} failed:\n{completed.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    measured = result["step_seconds"][1:]
    if not measured:
        raise SystemExit(f"{workload}/{name}: {len(result['step_seconds'])} step(s) timed; --steps must be at least 2")
    result["measured_steps"] = len(measured)
    result["measured_seconds"] = sum(measured)
    score_text = f", held-out {result['held_out']['score']:.3f}" if "held_out" in result else ""
    print(
        f"   {workload}/{name}: {result['measured_seconds'] / len(measured):.2f} s/step (warm-up step "
        f"{result['step_seconds'][0]:.2f} s dropped), peak RSS {result['peak_rss_mib']:.0f} MiB, "
        f"mean loss {result['mean_train_loss']:.4f}{score_text}",
        flush=True,
    )
    return result


def measure_workload(workload: str, names: list[str], args: argparse.Namespace, workdir: Path, repeats: int) -> dict:
    """Every configuration of one workload, interleaved over the rounds."""
    paths = write_data(workdir, workload, args.seed, args.eval_rows)
    total, supervised = tokens_per_example(paths, WORKLOADS[workload])
    # trl-micro-batch takes, by hand, the micro-batch niche chose for this workload: niche runs first in round 0.
    chosen: dict[str, int] = {}

    def run(name: str, round_: int) -> dict:
        if name == "trl-micro-batch" and "niche" not in chosen:
            raise SystemExit("trl-micro-batch needs niche's micro-batch: niche must run before it")
        result = run_once(name, workload, args, workdir, round_ == 0, chosen.get("niche", args.batch_size))
        if name == "niche":
            chosen["niche"] = result["micro_batch_size"]
        return result

    names = ["niche", *[name for name in names if name != "niche"]]
    configurations = {name: (lambda round_, name=name: run(name, round_)) for name in names}
    print(f"== {workload}: {', '.join(names)}; {repeats} rounds of {args.steps} steps of batch {args.batch_size}")
    measured, schedule = harness.interleave(configurations, repeats=repeats)
    runs = {}
    for name, results in measured.items():
        tokens_per_s = [
            (result["measured_steps"] * args.batch_size * total) / result["measured_seconds"] for result in results
        ]
        runs[name] = {
            "tokens_per_s": harness.summarize(tokens_per_s),
            "seconds_per_step": harness.summarize(
                [result["measured_seconds"] / result["measured_steps"] for result in results]
            ),
            "peak_rss_mib": harness.summarize([result["peak_rss_mib"] for result in results]),
            "mean_train_loss": results[0]["mean_train_loss"],
            "tokens_seen_reported": [result["tokens_seen_reported"] for result in results],
            "held_out_score": results[0]["held_out"]["score"],
            "held_out_answers": results[0]["held_out"]["answers"],
            "warmup_step_seconds": [result["step_seconds"][0] for result in results],
            **{key: results[0][key] for key in ("micro_batch_size", "weights_dtype") if key in results[0]},
        }
    return {
        "data": (workdir / workload / "source.txt").read_text(),
        "score": WORKLOADS[workload].score_name,
        "tokens_per_example": total,
        "supervised_tokens_per_example": supervised,
        "trl_micro_batch": chosen["niche"],
        "schedule": schedule.as_dict(),
        "runs": runs,
        **comparisons(runs),
    }


def work_checks(niche: dict, rival: dict) -> list[harness.WorkCheck]:
    tokens = harness.same_count(
        niche["tokens_seen_reported"][0], rival["tokens_seen_reported"][0], TOKEN_TOLERANCE, "non-padding tokens seen"
    )
    loss = harness.same_count(niche["mean_train_loss"], rival["mean_train_loss"], LOSS_TOLERANCE, "mean training loss")
    gap = abs(niche["held_out_score"] - rival["held_out_score"])
    score = harness.WorkCheck(
        gap <= SCORE_TOLERANCE,
        "held-out score",
        f"{niche['held_out_score']:.3f} against {rival['held_out_score']:.3f} (tolerance {SCORE_TOLERANCE:.2f})",
        round(1 - gap, 4),
    )
    return [tokens, loss, score]


def comparisons(runs: dict) -> dict:
    niche = runs["niche"]
    trl_names = [name for name in runs if name.startswith("trl") and name != "trl-padding-free"]
    best = max(trl_names, key=lambda name: runs[name]["tokens_per_s"]["median"])
    compared = {"trl_best": best}
    for name in trl_names:
        checks = work_checks(niche, runs[name])
        compared[f"niche_vs_{name}"] = {
            "tokens_per_s": harness.ratio(niche["tokens_per_s"]["runs"], runs[name]["tokens_per_s"]["runs"], checks),
            "peak_memory": harness.ratio(niche["peak_rss_mib"]["runs"], runs[name]["peak_rss_mib"]["runs"], checks),
        }
    compared["ratio_tokens_per_s"] = compared[f"niche_vs_{best}"]["tokens_per_s"]
    compared["ratio_peak_memory"] = compared[f"niche_vs_{best}"]["peak_memory"]
    return compared


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per run; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-rows", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--configurations", default=",".join(DEFAULT_CONFIGURATIONS))
    harness.add_arguments(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-workload", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--score", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_arguments()
    if args.child:
        child(args)
        return
    names = [name.strip() for name in args.configurations.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ALL_CONFIGURATIONS))
    if unknown or "niche" not in names or not any(name.startswith("trl") for name in names):
        raise SystemExit(
            f"--configurations {args.configurations}: needs niche and a TRL row, from {ALL_CONFIGURATIONS}"
        )
    report = harness.Report("train_speed", args)
    if args.quick:
        args.steps, args.batch_size, args.eval_rows = 3, 4, 8
    from niche.hardware import detect_hardware

    workdir = Path(tempfile.mkdtemp(prefix="niche-bench-train-"))
    workloads = {
        workload: measure_workload(workload, names, args, workdir, report.repeats)
        for workload in (args.workload or list(WORKLOADS))
    }
    report.write(
        {
            "model": "smollm2-135m",
            "dtype": str(detect_hardware().dtype).removeprefix("torch."),
            "lora": LORA,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "measured_steps": args.steps - 1,
            "max_length": MAX_LENGTH,
            "held_out_rows": args.eval_rows,
            "tolerances": {"tokens": TOKEN_TOLERANCE, "loss": LOSS_TOLERANCE, "held_out_score": SCORE_TOLERANCE},
            "workloads": workloads,
            # The headline, the short-label workload against TRL at its best (None when that comparison is invalid).
            "ratio_tokens_per_s": workloads.get("label", {}).get("ratio_tokens_per_s", {}).get("value"),
            "ratio_peak_memory": workloads.get("label", {}).get("ratio_peak_memory", {}).get("value"),
        }
    )
    for name, workload in workloads.items():
        print(
            f"{name}: niche / {workload['trl_best']}: "
            f"{harness.format_range(workload['ratio_tokens_per_s'], suffix='x')} tokens/s, "
            f"{harness.format_range(workload['ratio_peak_memory'], suffix='x')} peak memory"
            + (
                ""
                if workload["ratio_tokens_per_s"]["valid"]
                else f" INVALID: {workload['ratio_tokens_per_s']['invalid_because']}"
            )
        )


LABELS = {
    "niche": "niche (micro-batches chosen by niche)",
    "niche-whole-batch": "niche, whole batches",
    "trl-best": "TRL, whole batches (bf16 weights, eager, grouped)",
    "trl-micro-batch": "TRL, niche's micro-batches set by hand",
    "trl-padding-free": "TRL, padding-free (sdpa; reference only)",
    "trl-default": "TRL defaults (fp32 weights, bf16 autocast, checkpointing)",
}


def tables(results: dict) -> dict[str, str]:
    """Per workload: every configuration's medians (min-max), and the niche / TRL ratios with their checks."""
    rendered = {}
    for workload_name, workload in results["workloads"].items():
        lines = [
            f"| configuration ({results['dtype']}) | s/step | tokens/s | peak RSS (MiB) | mean train loss | {workload['score']} |",
            "|---|---|---|---|---|---|",
        ]
        for name, run in workload["runs"].items():
            lines.append(
                f"| {LABELS.get(name, name)} | {harness.format_range(run['seconds_per_step'])} | "
                f"{harness.format_range(run['tokens_per_s'], 0)} | {harness.format_range(run['peak_rss_mib'], 0)} | "
                f"{run['mean_train_loss']:.4f} | {run['held_out_score']:.3f} |"
            )
        rendered[f"{workload_name}-runs"] = "\n".join(lines)
        ratio_lines = ["| niche against | tokens/s | peak memory | same work |", "|---|---|---|---|"]
        for key, compared in workload.items():
            if not key.startswith("niche_vs_"):
                continue
            rival = key.removeprefix("niche_vs_")
            best = " (**TRL best**)" if rival == workload["trl_best"] else ""
            speed = compared["tokens_per_s"]
            verdict = "yes" if speed["valid"] else "no: " + "; ".join(speed["invalid_because"])
            ratio_lines.append(
                f"| {LABELS.get(rival, rival)}{best} | {harness.format_range(speed, suffix='x')} | "
                f"{harness.format_range(compared['peak_memory'], suffix='x')} | {verdict} |"
            )
        rendered[f"{workload_name}-ratios"] = "\n".join(ratio_lines)
    return rendered


if __name__ == "__main__":
    main()
