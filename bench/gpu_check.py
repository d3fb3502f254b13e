"""The GPU paths, each run for real on a machine with an NVIDIA GPU: one script, under 10 minutes.

- QLoRA (bitsandbytes NF4): train, eval and merged export (with parity) on a tiny random Llama and on SmolLM2;
- CUDA training in bf16 and in fp16 (`NICHE_DTYPE`), on SmolLM2;
- the torch serving engine on CUDA: the bf16 and fp16 specialists as two adapters in one batch, each answer
  identical to the same request served alone;
- DDP: `niche train` under torchrun on every GPU present (world size 1 on a one-GPU machine);
- `niche serve --engine vllm --launch` serving the two adapters through vLLM's OpenAI API, where vLLM is installed.

It prints a table and writes bench/results/gpu_check.json (each step: ok, failed with the tail of its output, or
not run and why). `--dry-run` prepares the same data, base and configs on CPU and checks every step's command line
(niche's own argument parser, config validation, the Python snippets compiled) without running it; CI runs that
mode, so a command that no longer parses fails there, not on the GPU machine.

    bash bench/gpu_check.sh [--dry-run] [--workdir build/gpu-check]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu_check.json"
EXAMPLE = REPO / "examples" / "cloudsec"

SERVE_CHECK = """
import json, sys, time
from niche.serve.base import SamplingParams
from niche.serve.torch_engine import TorchEngine

engine = TorchEngine(sys.argv[1], max_loaded=2)
assert engine.device == "cuda", f"the engine runs on {engine.device}, not CUDA"
params = SamplingParams(max_tokens=16, temperature=0)
texts = [json.loads(line)["text"] for line in open(sys.argv[2])][:8]
requests = [(name, text) for text in texts for name in ("smollm2-bf16", "smollm2-fp16")]
solo = [engine.complete(name, [{"role": "user", "content": text}], params).text for name, text in requests]
started = time.perf_counter()
pending = [engine.submit(name, [{"role": "user", "content": text}], params) for name, text in requests]
together = [generation.result().text for generation in pending]
seconds = time.perf_counter() - started
engine.close()
same = sum(a == b for a, b in zip(solo, together))
print(json.dumps({"requests": len(requests), "identical_to_solo": same, "peak_rows": engine.peak_rows,
                  "batched_seconds": round(seconds, 2)}))
assert same == len(requests), f"{len(requests) - same} batched answers differ from the same request alone"
assert engine.peak_rows > 1, "the two adapters never shared a batch"
"""

VLLM_CHECK = """
import json, sys, time, urllib.request
port, names = sys.argv[1], sys.argv[2].split(",")
deadline = time.time() + 420
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        break
    except OSError:
        if time.time() > deadline:
            raise SystemExit("vLLM did not become healthy within 7 minutes")
        time.sleep(3)
answers = {}
for name in names:
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "S3 bucket is public"}],
                       "max_tokens": 8, "temperature": 0}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    answers[name] = json.load(urllib.request.urlopen(request, timeout=60))["choices"][0]["message"]["content"]
print(json.dumps({"answers": answers}))
"""


@dataclass
class Step:
    name: str
    argv: list[str]
    needs: list[str] = field(default_factory=list)  # cuda, bitsandbytes, vllm
    env: dict[str, str] = field(default_factory=dict)
    timeout: int = 300
    background_server: list[str] | None = None  # started first, stopped after argv ran (vLLM)


@dataclass
class Outcome:
    name: str
    status: str  # ok, failed, not run, checked (dry run)
    seconds: float = 0.0
    command: str = ""
    detail: str = ""
    measured: dict = field(default_factory=dict)


def niche(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "niche.cli", *arguments]


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_tiny_base(directory: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer: QLoRA's code path in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from niche.models import resolve_base

    if (directory / "config.json").is_file():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(resolve_base("smollm2-135m").directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_config(path: Path, name: str, base: str, output_dir: Path, **settings: str) -> Path:
    lines = [
        f"name: {name}",
        f"base: {base}",
        f"output_dir: {output_dir}",
        f"quantization: {settings.pop('quantization', 'none')}",
        "data:",
        f"  train: {EXAMPLE / 'train.jsonl'}",
        f"  validation: {EXAMPLE / 'validation.jsonl'}",
        "prompt:",
        '  system_prompt: "Classify the cloud security finding into one category: {labels}."',
        "training:",
        f"  objective: {settings.pop('objective', 'generate')}",
        f"  max_steps: {settings.pop('max_steps', '30')}",
        "  batch_size: 8",
        "  eval_every: 10",
        "tracking:",
        "  enabled: false",
    ]
    if settings:
        raise ValueError(f"unknown settings {settings}")
    path.write_text("\n".join(lines) + "\n")
    return path


def plan(workdir: Path) -> list[Step]:
    """Every step, its data, base and configs written under `workdir` (on CPU too, for the dry run)."""
    configs = workdir / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_base(workdir / "tiny-base")
    trained, served = workdir / "specialists", workdir / "serve-specialists"
    test = str(EXAMPLE / "test.jsonl")
    steps: list[Step] = []
    for label, base in (("tiny", str(tiny)), ("smollm2", "smollm2-135m")):
        config = write_config(configs / f"{label}-qlora.yaml", f"{label}-qlora", base, trained, quantization="4bit")
        specialist = str(trained / f"{label}-qlora")
        steps += [
            Step(f"QLoRA train ({label})", niche("train", str(config)), ["cuda", "bitsandbytes"]),
            Step(f"QLoRA eval ({label})", niche("eval", specialist, "--data", test), ["cuda", "bitsandbytes"]),
            Step(
                f"QLoRA merged export ({label})",
                niche(
                    "export",
                    specialist,
                    "--to",
                    "merged",
                    "--data",
                    test,
                    "--parity-rows",
                    "8",
                    "--out",
                    str(workdir / "exports" / f"{label}-qlora-merged"),
                ),
                ["cuda", "bitsandbytes"],
            ),
        ]
    for dtype in ("bf16", "fp16"):
        config = write_config(configs / f"smollm2-{dtype}.yaml", f"smollm2-{dtype}", "smollm2-135m", served)
        variable = {"bf16": "bfloat16", "fp16": "float16"}[dtype]
        steps.append(Step(f"CUDA {dtype} train", niche("train", str(config)), ["cuda"], {"NICHE_DTYPE": variable}))
    steps.append(
        Step(
            "torch engine on CUDA, two adapters batched",
            [sys.executable, "-c", SERVE_CHECK, str(served), test],
            ["cuda"],
        )
    )
    ddp = write_config(configs / "smollm2-ddp.yaml", "smollm2-ddp", "smollm2-135m", trained)
    processes = str(max(1, gpu_count()))
    steps.append(
        Step(
            f"DDP train (torchrun, {processes} GPU)",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                processes,
                "--master_port",
                str(free_port()),
                *niche("train", str(ddp))[1:],
            ],
            ["cuda"],
        )
    )
    port = str(free_port())
    steps.append(
        Step(
            "vLLM serving two adapters (--engine vllm --launch)",
            [sys.executable, "-c", VLLM_CHECK, port, "smollm2-bf16,smollm2-fp16"],
            ["cuda", "vllm"],
            timeout=480,
            background_server=niche("serve", str(served), "--engine", "vllm", "--launch", "--port", port),
        )
    )
    return steps


def missing(step: Step) -> list[str]:
    absent = []
    for need in step.needs:
        if need == "cuda" and gpu_count() == 0:
            absent.append("no CUDA GPU")
        elif need in ("bitsandbytes", "vllm") and importlib.util.find_spec(need) is None:
            absent.append(f"{need} is not installed")
    return absent


def check_command(argv: list[str]) -> str:
    """Parse a step's command line without running it: niche's own parser (and the configs it names), Python
    snippets compiled, torchrun's module present."""
    import typer.main

    from niche.cli.app import app
    from niche.config import load_config

    if argv[1:2] == ["-c"]:
        compile(argv[2], "<step>", "exec")
        return "snippet compiles"
    arguments = argv[1:]
    if arguments[:2] == ["-m", "torch.distributed.run"]:
        if importlib.util.find_spec("torch.distributed.run") is None:
            raise RuntimeError("torch.distributed.run is missing")
        arguments = arguments[arguments.index("-m", 2) :]
    if arguments[:2] != ["-m", "niche.cli"]:
        raise RuntimeError(f"not a niche command: {shlex.join(argv)}")
    group = typer.main.get_command(app)
    name, *rest = arguments[2:]
    subcommand = group.commands[name]  # type: ignore[attr-defined]
    parsed = subcommand.make_context(name, rest)
    for value in parsed.params.values():
        if isinstance(value, Path) and value.suffix == ".yaml":
            load_config(value)
    for value in parsed.params.values():
        if isinstance(value, Path) and not value.exists() and value.suffix in (".jsonl", ".yaml"):
            raise RuntimeError(f"{value} does not exist")
    return f"niche {subcommand.name}: arguments parse"


def run_step(step: Step, dry_run: bool, log_dir: Path) -> Outcome:
    command = shlex.join(step.argv)
    if dry_run:
        detail = check_command(step.argv)
        if step.background_server:
            detail += "; server: " + check_command(step.background_server)
        return Outcome(step.name, "checked", command=command, detail=detail)
    absent = missing(step)
    if absent:
        return Outcome(step.name, "not run", command=command, detail="; ".join(absent))
    env = os.environ | step.env
    server = None
    log = log_dir / (step.name.replace(" ", "_").replace("/", "-") + ".log")
    started = time.perf_counter()
    try:
        if step.background_server:
            server = subprocess.Popen(step.background_server, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        completed = subprocess.run(
            step.argv, env=env, capture_output=True, text=True, timeout=step.timeout, cwd=REPO, check=False
        )
        output = completed.stdout + completed.stderr
        status = "ok" if completed.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as error:
        output, status = f"timed out after {step.timeout} s: {error}", "failed"
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    seconds = time.perf_counter() - started
    (log_dir / (log.stem + ".step.log")).write_text(output)
    measured = {}
    last = output.strip().splitlines()[-1] if output.strip() else ""
    if last.startswith("{"):
        try:
            measured = json.loads(last)
        except json.JSONDecodeError:
            measured = {}
    tail = "" if status == "ok" else "\n".join(output.strip().splitlines()[-12:])
    return Outcome(step.name, status, round(seconds, 1), command, tail, measured)


def read_results(workdir: Path) -> dict:
    """What the trained specialists and their exports report, for the results file."""
    found = {}
    for manifest in sorted(workdir.glob("*specialists/*/niche.json")):
        record = json.loads(manifest.read_text())
        found[record["name"]] = {
            "hardware": record.get("hardware"),
            "steps": record.get("metrics", {}).get("steps"),
            "eval_loss": record.get("metrics", {}).get("eval_loss"),
        }
    for export in sorted(workdir.glob("exports/*/export.json")):
        record = json.loads(export.read_text())
        found[f"export {export.parent.name}"] = {
            row["variant"]: row["identical_rate"] for row in record.get("parity", [])
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="check every command line on CPU, run nothing")
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "gpu-check")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from provenance import code_provenance, machine

    args.workdir.mkdir(parents=True, exist_ok=True)
    logs = args.workdir / "logs"
    logs.mkdir(exist_ok=True)
    started = time.perf_counter()
    outcomes = [run_step(step, args.dry_run, logs) for step in plan(args.workdir)]
    print(f"{'step':<55} {'status':<9} {'seconds':>8}  detail")
    for outcome in outcomes:
        lines = (json.dumps(outcome.measured) if outcome.measured else outcome.detail).splitlines()
        print(f"{outcome.name:<55} {outcome.status:<9} {outcome.seconds:>8}  {lines[-1] if lines else ''}")
    payload = {
        "code": code_provenance(),
        "dry_run": args.dry_run,
        "gpus": gpu_names(),
        "machine": machine(),
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "steps": [asdict(outcome) for outcome in outcomes],
        "specialists": {} if args.dry_run else read_results(args.workdir),
    }
    target = args.workdir / "gpu_check.dry-run.json" if args.dry_run else RESULTS
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(target)
    print(f"wrote {target}")
    if any(outcome.status == "failed" for outcome in outcomes):
        raise SystemExit(1)


def gpu_names() -> list[str]:
    try:
        import torch

        return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    except ImportError:
        return []


if __name__ == "__main__":
    main()
