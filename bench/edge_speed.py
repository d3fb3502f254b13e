"""Edge speed: the same specialist and prompts on torch and on llama.cpp at F16, Q8_0 and Q4_K_M, merged and
base + LoRA, through niche serve and through llama-cpp-python directly (so niche's own overhead shows).

The specialist is a short LoRA training of SmolLM2-135M on the cloudsec example (cached in build/bench-edge).
`niche export` writes its GGUF files (F16, Q8_0, Q4_K_M merged, the F16 base and the LoRA) with the parity
check. Every variant then answers the same held-out findings at batch 1, greedy, decoding `--tokens` tokens
past end-of-turn (`ignore_eos`) so decode speed is measured on equal lengths:
- raw: llama-cpp-python's Llama.eval in a loop (argmax), or a transformers loop with its KV cache for torch;
- niche serve: a `niche serve` subprocess (torch engine, or `--engine llamacpp`), streamed with the
  official openai client on loopback.
torch runs in fp32 and, where the CPU computes bf16 natively (AVX512-BF16 or AMX, the dtype niche itself picks
there), in bf16 as well; every row records its dtype (GGUF rows: the weights' format).
Time to first token, decode tokens/s, model file size and resident memory (each raw run in its own process:
its peak minus what it held before loading; a server: its whole peak, Python and libraries included); cost
per million generated
tokens from the measured decode rate and `--price-per-hour`. Results: bench/results/edge_speed.json.

    python bench/edge_speed.py [--prompts 8] [--tokens 64] [--train-steps 40] [--price-per-hour 0.10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from serve_load import EXAMPLE, free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "edge_speed.json"
WORKDIR = REPO / "build" / "bench-edge"
SHORT = {"float32": "fp32", "bfloat16": "bf16"}


def rss_mb(pid: int | None = None, field: str = "VmRSS") -> float:
    """Resident memory of a process (VmHWM: its peak so far)."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field))) / 1024


def in_child(function, *arguments):
    """Run one measurement in a fresh process, so its peak memory is its own and nothing stays warm."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


def specialist(steps: int) -> Path:
    from niche.config import load_config
    from niche.train import train

    target = WORKDIR / "specialists" / "cloudsec"
    if not (target / "niche.json").is_file():
        config = load_config(
            EXAMPLE / "niche.yaml",
            [
                f"output_dir={target.parent}",
                "training.objective=generate",
                f"training.max_steps={steps}",
                f"training.eval_every={steps}",
            ],
        )
        train(config, show_progress=False)
    return target


def exports(specialist_dir: Path) -> dict[str, Path]:
    from niche.export import export_specialist

    paths = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        out = WORKDIR / "exports" / f"gguf-{quant}"
        if not (out / "export.json").is_file():
            export_specialist(specialist_dir, "gguf", out, quant=quant, parity_rows=32)
        paths[quant] = out
    return paths


def summary(ttfts: list[float], rates: list[float]) -> dict[str, float]:
    return {
        "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1),
        "decode_tokens_per_s": round(statistics.median(rates), 1),
    }


def raw_llama(model: Path, lora: Path | None, prompts: list[list[int]], tokens: int) -> dict:
    from niche.gguf import LlamaCppRunner
    from niche.serve.llamacpp import last_logits

    before = rss_mb()  # after the imports: what the model itself adds is measured
    runner = LlamaCppRunner(model, lora)
    llm = runner.llm
    ttfts, rates = [], []
    for prompt in [prompts[0], *prompts]:  # the first one warms up
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        token = int(last_logits(llm).argmax())
        first = time.perf_counter()
        for _ in range(tokens - 1):
            llm.eval([token])
            token = int(last_logits(llm).argmax())
        ended = time.perf_counter()
        ttfts.append(first - started)
        rates.append((tokens - 1) / (ended - first))
    runner.close()
    return summary(ttfts[1:], rates[1:]) | {"resident_mb": round(rss_mb(field="VmHWM") - before, 1)}


def raw_torch(merged_dir: Path, prompts: list[list[int]], tokens: int, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    before = rss_mb()
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=getattr(torch, dtype)).eval()
    ttfts, rates = [], []
    with torch.inference_mode():
        for prompt in [prompts[0], *prompts]:
            started = time.perf_counter()
            output = model(input_ids=torch.tensor([prompt]), use_cache=True)
            token = int(output.logits[0, -1].argmax())
            first = time.perf_counter()
            cache = output.past_key_values
            for _ in range(tokens - 1):
                output = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
                token, cache = int(output.logits[0, -1].argmax()), output.past_key_values
            ended = time.perf_counter()
            ttfts.append(first - started)
            rates.append((tokens - 1) / (ended - first))
    return summary(ttfts[1:], rates[1:]) | {"resident_mb": round(rss_mb(field="VmHWM") - before, 1)}


def through_serve(specialists: Path, engine: str, texts: list[str], tokens: int, dtype: str | None = None) -> dict:
    import openai

    port = free_port()
    env = os.environ | ({"NICHE_DTYPE": dtype} if dtype else {})
    command = [sys.executable, "-m", "niche.cli", "serve", str(specialists), "--port", str(port), "--no-routing"]
    server = subprocess.Popen(
        [*command, "--engine", engine], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"niche serve --engine {engine} did not start") from None
                time.sleep(0.5)
        ttfts, rates = [], []
        for text in [texts[0], *texts]:
            started = time.perf_counter()
            first = None
            stream = client.chat.completions.create(
                model="cloudsec",
                messages=[{"role": "user", "content": text}],
                temperature=0,
                max_tokens=tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            generated = tokens
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                if chunk.usage is not None:
                    generated = chunk.usage.completion_tokens
            ended = time.perf_counter()
            ttfts.append((first or ended) - started)
            rates.append((generated - 1) / (ended - (first or ended)))
        return summary(ttfts[1:], rates[1:]) | {"resident_mb": round(rss_mb(server.pid, "VmHWM"), 1)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--price-per-hour", type=float, default=0.10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import dataclasses

    from niche.artifact import load_test_examples, read_manifest
    from niche.data.template import TemplateEncoder
    from niche.export import merge_into_base
    from niche.hardware import cpu_has_native_bf16
    from niche.io import write_json_atomic
    from niche.models import load_tokenizer
    from niche.specialist import resolve_specialist_base

    native_bf16 = cpu_has_native_bf16()
    torch_dtypes = ["float32", "bfloat16"] if native_bf16 else ["float32"]
    specialist_dir = specialist(args.train_steps)
    manifest = read_manifest(specialist_dir)
    exported = exports(specialist_dir)
    merged_dir = WORKDIR / "merged"
    if not (merged_dir / "config.json").is_file():
        merge_into_base(specialist_dir, merged_dir)
    base = resolve_specialist_base(manifest)
    tokenizer = load_tokenizer(base)
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    examples = load_test_examples(EXAMPLE / "test.jsonl", manifest)[: args.prompts]
    prompts = [encoder.prompt_ids(dataclasses.replace(example, response="")) for example in examples]
    texts = [example.input_text for example in examples]
    base_gguf, lora = exported["f16"] / "base-f16.gguf", exported["f16"] / "adapter-f16.gguf"

    def size_mb(*paths: Path) -> float:
        return round(sum(path.stat().st_size for path in paths) / 1e6, 1)

    rows = {}
    merged_weights = merged_dir / "model.safetensors"
    for dtype in torch_dtypes:
        rows[f"torch {SHORT[dtype]} merged (raw)"] = in_child(raw_torch, merged_dir, prompts, args.tokens, dtype) | {
            "dtype": dtype,
            "file_mb": size_mb(merged_weights),  # fp32 on disk; a bf16 load converts it
        }
    for quant, directory in exported.items():
        model = directory / f"model-{quant}.gguf"
        rows[f"llama.cpp {quant} merged (raw)"] = in_child(raw_llama, model, None, prompts, args.tokens) | {
            "dtype": f"GGUF {quant.upper()}",
            "file_mb": size_mb(model),
        }
    rows["llama.cpp f16 base + LoRA (raw)"] = in_child(raw_llama, base_gguf, lora, prompts, args.tokens) | {
        "dtype": "GGUF F16",
        "file_mb": size_mb(base_gguf, lora),
    }
    for dtype in torch_dtypes:
        rows[f"niche serve torch {SHORT[dtype]} (PEFT, unmerged)"] = through_serve(
            specialist_dir.parent, "torch", texts, args.tokens, dtype
        ) | {"dtype": dtype}
    rows["niche serve llamacpp f16 base + LoRA"] = through_serve(
        specialist_dir.parent, "llamacpp", texts, args.tokens
    ) | {"dtype": "GGUF F16"}
    for row in rows.values():
        row["cost_per_million_tokens"] = round(args.price_per_hour / (row["decode_tokens_per_s"] * 3600) * 1e6, 4)
        print(json.dumps(row))

    parity = {}
    for directory in exported.values():
        for entry in json.loads((directory / "export.json").read_text())["parity"]:
            parity[entry["variant"]] = {
                key: entry[key] for key in ("identical_rate", "max_logit_diff", "metric_trained", "metric_exported")
            }
    decode = {name: row["decode_tokens_per_s"] for name, row in rows.items()}
    result = {
        "setup": {
            "base": "smollm2-135m",
            "torch_dtypes": torch_dtypes,
            "cpu_native_bf16": native_bf16,
            "prompts": len(prompts),
            "decode_tokens": args.tokens,
            "price_per_hour": args.price_per_hour,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "rows": rows,
        "parity": parity,
        "f16_identical_rate": parity["f16 merged (llama.cpp)"]["identical_rate"],
        "ratio_decode_niche_llamacpp_vs_raw": round(
            decode["niche serve llamacpp f16 base + LoRA"] / decode["llama.cpp f16 base + LoRA (raw)"], 3
        ),
        "ratio_decode_llamacpp_q4_vs_torch": round(
            decode["llama.cpp q4_k_m merged (raw)"] / decode["torch fp32 merged (raw)"], 2
        ),
        "ratio_decode_niche_llamacpp_vs_niche_torch": round(
            decode["niche serve llamacpp f16 base + LoRA"] / decode["niche serve torch fp32 (PEFT, unmerged)"], 2
        ),
    }
    if native_bf16:
        result |= {
            "ratio_decode_llamacpp_q4_vs_torch_bf16": round(
                decode["llama.cpp q4_k_m merged (raw)"] / decode["torch bf16 merged (raw)"], 2
            ),
            "ratio_decode_niche_llamacpp_vs_niche_torch_bf16": round(
                decode["niche serve llamacpp f16 base + LoRA"] / decode["niche serve torch bf16 (PEFT, unmerged)"], 2
            ),
        }
    write_json_atomic(args.out, result)
    print(
        f"decode: llama.cpp Q4_K_M {result['ratio_decode_llamacpp_q4_vs_torch']}x torch fp32; niche serve llamacpp "
        f"at {result['ratio_decode_niche_llamacpp_vs_raw']:.0%} of raw llama.cpp; F16 identical rate "
        f"{result['f16_identical_rate']:.0%}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
