"""Edge speed: one specialist and the same prompts on torch and on llama.cpp at F16, Q8_0 and Q4_K_M, merged and
base + LoRA, called directly and through `niche serve` (so niche's own overhead shows).

The specialist is a short LoRA training of SmolLM2-135M on the cloudsec example (cached in build/bench-edge).
`niche export` writes its GGUF files (F16, Q8_0, Q4_K_M merged, the F16 base and the LoRA) with its parity
check. Every variant answers the same held-out findings at batch 1, greedy, decoding `--tokens` tokens past
end-of-turn (`ignore_eos`), so every side decodes the same number of tokens:

- torch, raw (the merged checkpoint, transformers): the eager loop (a DynamicCache grown token by token) and
  the competitor's best configuration, a StaticCache with the decode step compiled (`torch.compile`, fullgraph,
  static shapes, inductor with weight freezing unless `--no-inductor-freezing`); its prefill runs eager (the
  prompt lengths vary), so its time to first token is not the compiler's;
- llama.cpp, raw (llama-cpp-python's `Llama.eval` in a loop, argmax), each prompt evaluated from an empty cache,
  and base + LoRA once more keeping the prompt prefix evaluated for the previous prompt, as niche's llamacpp
  engine does;
- niche serve: a `niche serve` subprocess (torch engine with the unmerged PEFT adapter, or `--engine
  llamacpp`: the F16 GGUF base with the GGUF LoRA), streamed with the official openai client on loopback.
  Both engines keep the prompt prefix (the system prompt) between requests.

torch runs in fp32 and, where the CPU computes bf16 natively (AVX512-BF16 or AMX: the dtype niche picks there),
in bf16 as well. Each raw variant lives in its own process and each server is its own process, all started
before the rounds (load, warm-up generation and compilation timed apart, never inside a round); then
harness.interleave runs the variants round by round (one warm-up round of one prompt dropped, >= 3 measured,
the order rotating). A round of a variant answers every prompt; its time to first token is the median over
the prompts, its decode rate all tokens after the first over the time they took.

Same work: every comparison checks that both sides generated the same number of tokens (and, against a
server, that it counted the same prompt tokens). Sides on the same weights at the same precision must give
the same greedy answers (whole generated sequences: token ids between raw sides, text against a server) on all
but SAME_WEIGHTS_TOLERANCE of the prompts, or the ratio is recorded invalid. Across precisions (fp32, bf16,
F16, Q8_0, Q4_K_M) answers legitimately differ: their agreement is recorded, not required. The server
comparison also checks that both sides reused the prompt prefix on the same number of prompts: prefix reuse
only shortens the prefill, so it shows in the time to first token, never in the decode rate.

Resident memory, per process: after loading and one warm-up generation (compilation included; freed heap
handed back with malloc_trim in the raw processes), the model's share (that minus the process after importing
its libraries), and the peak during the rounds (the peak counter reset at steady state, so the load transient
is excluded). With freezing, the compiled torch process holds the weights twice (the compiled step's frozen
constants and the module's own, which the prefill uses). A server's numbers are its whole process. Cost per
million generated tokens from the median decode rate and `--price-per-hour`. Results:
bench/results/edge_speed.json.

    python bench/edge_speed.py [--prompts 6] [--tokens 64] [--repeats 3] [--train-steps 40]
                               [--price-per-hour 0.10] [--no-inductor-freezing] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Report,
    WorkCheck,
    add_arguments,
    format_range,
    interleave,
    ratio,
    same_answers,
    same_count,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
WORKDIR = REPO / "build" / "bench-edge"
SHORT = {"float32": "fp32", "bfloat16": "bf16"}
# Greedy decoding 64 tokens past end-of-turn meets near-ties; a different summation order (a compiled kernel,
# the PEFT adapter unmerged) may flip one and the rest of that answer follows it.
SAME_WEIGHTS_TOLERANCE = 0.25
COMPILE = {"fullgraph": True, "dynamic": False, "mode": "default"}
WARMUP_ROUNDS = 1


# ---- memory -------------------------------------------------------------------------------------------------


def rss_mb(pid: int | None = None, field_name: str = "VmRSS") -> float:
    """Resident memory of a process (VmHWM: its peak since start or since reset_peak_rss)."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field_name))) / 1024


def reset_peak_rss(pid: int | None = None) -> None:
    """Start VmHWM afresh from the current resident memory (Linux: 5 written to clear_refs)."""
    Path(f"/proc/{pid or 'self'}/clear_refs").write_text("5")


def hand_back_freed_memory() -> None:
    """Return the heap freed while loading (a bf16 load converts from fp32) so steady state is measured."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---- decoders (run inside a variant's own process) ----------------------------------------------------------


@dataclass
class Generated:
    ids: list[int]
    ttft_s: float
    decode_s: float
    reused_prefix: int = 0


class TorchDecoder:
    """Greedy decoding of the merged checkpoint with transformers: the eager loop, or a StaticCache with the
    one-token decode step compiled (the prefill stays eager: prompt lengths vary)."""

    libraries = ("torch", "transformers")

    def __init__(self, model_dir: Path, dtype: str, compiled: bool, max_cache_len: int, freezing: bool) -> None:
        import torch
        from transformers import AutoModelForCausalLM, StaticCache

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        self.compiled = compiled
        if compiled:
            # Freezing folds the weights into the compiled graph as constants (prepacked for the CPU's GEMM
            # library): PyTorch's recommended CPU inference setting; the module keeps its own copy for the prefill.
            torch._inductor.config.freezing = freezing
            self.cache = StaticCache(config=self.model.config, max_cache_len=max_cache_len)
            self.step = torch.compile(
                self.model.forward, fullgraph=COMPILE["fullgraph"], dynamic=COMPILE["dynamic"], mode=COMPILE["mode"]
            )

    def generate(self, prompt: list[int], tokens: int) -> Generated:
        torch = self.torch
        with torch.inference_mode():
            started = time.perf_counter()
            if self.compiled:
                self.cache.reset()
                output = self.model(
                    input_ids=torch.tensor([prompt]),
                    past_key_values=self.cache,
                    cache_position=torch.arange(len(prompt)),
                    use_cache=True,
                    logits_to_keep=1,
                )
            else:
                output = self.model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
            ids = [int(output.logits[0, -1].argmax())]
            first = time.perf_counter()
            cache = output.past_key_values
            for position in range(len(prompt), len(prompt) + tokens - 1):
                if self.compiled:
                    output = self.step(
                        input_ids=torch.tensor([[ids[-1]]]),
                        past_key_values=self.cache,
                        cache_position=torch.tensor([position]),
                        use_cache=True,
                    )
                else:
                    output = self.model(input_ids=torch.tensor([[ids[-1]]]), past_key_values=cache, use_cache=True)
                    cache = output.past_key_values
                ids.append(int(output.logits[0, -1].argmax()))
            ended = time.perf_counter()
        return Generated(ids, first - started, ended - first)


class LlamaDecoder:
    """Greedy decoding with llama-cpp-python: each prompt from an empty cache, or (prefix_reuse) keeping the
    longest prefix it shares with what was evaluated last, as niche's llamacpp engine does."""

    libraries = ("llama_cpp", "numpy")

    def __init__(self, model: Path, lora: Path | None, prefix_reuse: bool) -> None:
        from niche.gguf import LlamaCppRunner

        self.runner = LlamaCppRunner(model, lora)
        self.prefix_reuse = prefix_reuse

    def _keep_prefix(self, prompt: list[int]) -> int:
        llm = self.runner.llm
        shared = 0
        if self.prefix_reuse:
            # All but the last prompt token at most: its logits give the first answer token.
            for mine, evaluated in zip(prompt[:-1], llm.input_ids[: llm.n_tokens]):
                if mine != evaluated:
                    break
                shared += 1
        if shared and llm._ctx.kv_cache_seq_rm(-1, shared, -1):
            llm.n_tokens = shared
            return shared
        llm.reset()
        return 0

    def generate(self, prompt: list[int], tokens: int) -> Generated:
        from niche.gguf import last_logits

        llm = self.runner.llm
        started = time.perf_counter()
        reused = self._keep_prefix(prompt)
        llm.eval(prompt[reused:])
        ids = [int(last_logits(llm).argmax())]
        first = time.perf_counter()
        for _ in range(tokens - 1):
            llm.eval([ids[-1]])
            ids.append(int(last_logits(llm).argmax()))
        ended = time.perf_counter()
        return Generated(ids, first - started, ended - first, reused)


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process: more after the warm-up means a round paid for
    a recompilation."""
    if "torch._dynamo" not in sys.modules:
        return 0
    return int(sys.modules["torch._dynamo"].utils.counters["stats"]["unique_graphs"])


DECODERS = {"torch": TorchDecoder, "llama.cpp": LlamaDecoder}
_decoder: Any = None
_startup: dict[str, float] = {}


def _start_worker(kind: str, options: dict[str, Any], warm_prompt: list[int], tokens: int) -> None:
    """The worker process's initializer: load, one warm-up generation (compiles), then steady state."""
    global _decoder, _startup
    decoder_type = DECODERS[kind]
    for library in decoder_type.libraries:
        importlib.import_module(library)
    after_imports = rss_mb()
    started = time.perf_counter()
    _decoder = decoder_type(**options)
    loaded = time.perf_counter()
    _decoder.generate(warm_prompt, tokens)
    warmed = time.perf_counter()
    hand_back_freed_memory()
    steady = rss_mb()
    reset_peak_rss()
    _startup = {
        "load_s": round(loaded - started, 2),
        "warmup_generation_s": round(warmed - loaded, 2),
        "rss_after_imports_mb": round(after_imports, 1),
        "rss_steady_mb": round(steady, 1),
        "model_mb": round(steady - after_imports, 1),
        "compiled_graphs_after_warmup": compiled_graphs(),
    }


def _decode_in_worker(prompts: list[list[int]], tokens: int) -> dict[str, Any]:
    answers = [_decoder.generate(prompt, tokens) for prompt in prompts]
    return {
        "ttft_s": [answer.ttft_s for answer in answers],
        "decode_s": [answer.decode_s for answer in answers],
        "generated": [len(answer.ids) for answer in answers],
        "prompt_tokens": [len(prompt) for prompt in prompts],
        "reused_prefix_prompts": sum(answer.reused_prefix > 0 for answer in answers),
        "ids": [answer.ids for answer in answers],
    }


def _memory_in_worker() -> dict[str, float]:
    return _startup | {
        "peak_during_rounds_mb": round(rss_mb(field_name="VmHWM"), 1),
        "compiled_graphs_after_rounds": compiled_graphs(),
    }


# ---- variants ------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One way of serving the specialist: its row's description and what runs it."""

    name: str
    side: str  # "raw" or "niche serve"
    engine: str
    dtype: str
    prefix_reuse: bool
    file_mb: float | None = None
    decoder: tuple[str, dict[str, Any]] | None = None  # raw: (kind, options)
    serve: tuple[str, str | None] | None = None  # niche serve: (engine, NICHE_DTYPE)

    def start(self, setup: Setup) -> RawProcess | NicheServer:
        if self.decoder is not None:
            return RawProcess(*self.decoder, setup)
        return NicheServer(*self.serve, setup)


class RawProcess:
    """A raw variant's own process: loaded and warmed up once, then asked for one round at a time."""

    def __init__(self, kind: str, options: dict[str, Any], setup: Setup) -> None:
        import multiprocessing

        self.executor = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(kind, options, setup.prompts[0], setup.tokens),
        )
        self.executor.submit(gc.collect).result()  # the initializer runs before the first task

    def run(self, setup: Setup, round_: int) -> dict[str, Any]:
        prompts, _ = setup.round_inputs(round_)
        return self.executor.submit(_decode_in_worker, prompts, setup.tokens).result()

    def memory(self) -> dict[str, float]:
        return self.executor.submit(_memory_in_worker).result()

    def close(self) -> None:
        self.executor.shutdown()


class NicheServer:
    """A `niche serve` subprocess on loopback, warmed up with one request, streamed with the openai client."""

    def __init__(self, engine: str, dtype: str | None, setup: Setup) -> None:
        import openai

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = os.environ | ({"NICHE_DTYPE": dtype} if dtype else {})
        command = [sys.executable, "-m", "niche.cli", "serve", str(setup.specialists), "--port", str(port)]
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [*command, "--no-routing", "--engine", engine],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="bench", max_retries=0, timeout=600)
        deadline = time.monotonic() + 300
        while True:
            try:
                self.client.models.list()
                break
            except openai.APIConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"niche serve --engine {engine} did not start") from None
                time.sleep(0.5)
        loaded = time.perf_counter()
        self._request(setup.texts[0], setup.tokens)
        warmed = time.perf_counter()
        self.startup = {
            "load_s": round(loaded - started, 2),
            "warmup_generation_s": round(warmed - loaded, 2),
            "rss_steady_mb": round(rss_mb(self.process.pid), 1),
        }
        reset_peak_rss(self.process.pid)

    def _request(self, text: str, tokens: int) -> dict[str, Any]:
        started = time.perf_counter()
        first = None
        pieces: list[str] = []
        usage = None
        stream = self.client.chat.completions.create(
            model="cloudsec",
            messages=[{"role": "user", "content": text}],
            temperature=0,
            max_tokens=tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        ended = time.perf_counter()
        return {
            "ttft_s": (first or ended) - started,
            "decode_s": ended - (first or ended),
            "generated": usage.completion_tokens if usage else 0,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "text": "".join(pieces),
        }

    def run(self, setup: Setup, round_: int) -> dict[str, Any]:
        _, texts = setup.round_inputs(round_)
        hits_before = prefix_cache_hits(self.url)
        answers = [self._request(text, setup.tokens) for text in texts]
        return {
            "ttft_s": [answer["ttft_s"] for answer in answers],
            "decode_s": [answer["decode_s"] for answer in answers],
            "generated": [answer["generated"] for answer in answers],
            "prompt_tokens": [answer["prompt_tokens"] for answer in answers],
            "reused_prefix_prompts": prefix_cache_hits(self.url) - hits_before,
            "texts": [answer["text"] for answer in answers],
        }

    def memory(self) -> dict[str, float]:
        return self.startup | {"peak_during_rounds_mb": round(rss_mb(self.process.pid, "VmHWM"), 1)}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prefix_cache_hits(url: str) -> int:
    """niche serve's count of prompts whose cached prefix was reused (its Prometheus metrics)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("niche_prefix_cache_hits"):
                return int(float(line.split()[-1]))
    raise RuntimeError(f"{url}/metrics reports no niche_prefix_cache_hits")


# ---- the specialist, its exports and the prompts -------------------------------------------------------------


@dataclass
class Setup:
    specialists: Path
    prompts: list[list[int]]
    texts: list[str]
    tokens: int

    def round_inputs(self, round_: int) -> tuple[list[list[int]], list[str]]:
        """Every prompt; the warm-up round (dropped) only the first."""
        if round_ < WARMUP_ROUNDS:
            return self.prompts[:1], self.texts[:1]
        return self.prompts, self.texts


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


def merged_checkpoint(specialist_dir: Path) -> Path:
    from niche.export import merge_into_base

    merged_dir = WORKDIR / "merged"
    if not (merged_dir / "config.json").is_file():
        merge_into_base(specialist_dir, merged_dir)
    return merged_dir


def held_out_prompts(specialist_dir: Path, count: int) -> tuple[list[list[int]], list[str], Any]:
    """The prompts' token ids (the specialist's template, system prompt included), their texts, the tokenizer."""
    import dataclasses

    from niche.artifact import load_test_examples, read_manifest
    from niche.data.template import TemplateEncoder
    from niche.models import load_tokenizer
    from niche.specialist import resolve_specialist_base

    manifest = read_manifest(specialist_dir)
    tokenizer = load_tokenizer(resolve_specialist_base(manifest))
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    examples = load_test_examples(EXAMPLE / "test.jsonl", manifest)[:count]
    prompts = [encoder.prompt_ids(dataclasses.replace(example, response="")) for example in examples]
    return prompts, [example.input_text for example in examples], tokenizer


def size_mb(*paths: Path) -> float:
    return round(sum(path.stat().st_size for path in paths) / 1e6, 1)


def variants(
    setup: Setup, merged_dir: Path, exported: dict[str, Path], torch_dtypes: list[str], freezing: bool
) -> list[Variant]:
    max_cache_len = max(len(prompt) for prompt in setup.prompts) + setup.tokens
    found: list[Variant] = []
    for dtype in torch_dtypes:
        for compiled, how in ((False, "eager loop"), (True, "static cache + compile")):
            found.append(
                Variant(
                    f"torch {SHORT[dtype]} merged, {how} (raw)",
                    "raw",
                    f"transformers, {how}",
                    dtype,
                    prefix_reuse=False,
                    file_mb=size_mb(merged_dir / "model.safetensors"),  # fp32 on disk; a bf16 load converts it
                    decoder=(
                        "torch",
                        {
                            "model_dir": merged_dir,
                            "dtype": dtype,
                            "compiled": compiled,
                            "max_cache_len": max_cache_len,
                            "freezing": freezing,
                        },
                    ),
                )
            )
    for quant, directory in exported.items():
        model = directory / f"model-{quant}.gguf"
        found.append(
            Variant(
                f"llama.cpp {quant} merged (raw)",
                "raw",
                "llama-cpp-python",
                f"GGUF {quant.upper()}",
                prefix_reuse=False,
                file_mb=size_mb(model),
                decoder=("llama.cpp", {"model": model, "lora": None, "prefix_reuse": False}),
            )
        )
    base_gguf, lora = exported["f16"] / "base-f16.gguf", exported["f16"] / "adapter-f16.gguf"
    for prefix_reuse, suffix in ((False, ""), (True, ", prefix reuse")):
        found.append(
            Variant(
                f"llama.cpp f16 base + LoRA (raw{suffix})",
                "raw",
                "llama-cpp-python",
                "GGUF F16",
                prefix_reuse=prefix_reuse,
                file_mb=size_mb(base_gguf, lora),
                decoder=("llama.cpp", {"model": base_gguf, "lora": lora, "prefix_reuse": prefix_reuse}),
            )
        )
    for dtype in torch_dtypes:
        found.append(
            Variant(
                f"niche serve torch {SHORT[dtype]} (PEFT, unmerged)",
                "niche serve",
                "niche serve, torch engine",
                dtype,
                prefix_reuse=True,
                serve=("torch", dtype),
            )
        )
    found.append(
        Variant(
            "niche serve llamacpp f16 base + LoRA",
            "niche serve",
            "niche serve, llamacpp engine",
            "GGUF F16",
            prefix_reuse=True,
            serve=("llamacpp", None),
        )
    )
    return found


# ---- comparisons ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """numerator's decode rate over the denominator's; `same_weights`: their answers must agree."""

    name: str
    numerator: str
    denominator: str
    same_weights: bool
    prefix_reuse_matched: bool = False


def comparisons(torch_dtypes: list[str]) -> list[Comparison]:
    found = []
    for dtype in torch_dtypes:
        short = SHORT[dtype]
        found.append(
            Comparison(
                f"torch {short}: static cache + compile vs the eager loop",
                f"torch {short} merged, static cache + compile (raw)",
                f"torch {short} merged, eager loop (raw)",
                same_weights=True,
            )
        )
    for dtype in torch_dtypes:
        short = SHORT[dtype]
        for quant in ("q4_k_m", "f16"):
            found.append(
                Comparison(
                    f"llama.cpp {quant.upper()} vs torch {short} static cache + compile (raw, merged)",
                    f"llama.cpp {quant} merged (raw)",
                    f"torch {short} merged, static cache + compile (raw)",
                    same_weights=False,
                )
            )
    found.append(
        Comparison(
            "niche serve llamacpp vs llama-cpp-python direct (F16 base + LoRA, both reusing the prompt prefix)",
            "niche serve llamacpp f16 base + LoRA",
            "llama.cpp f16 base + LoRA (raw, prefix reuse)",
            same_weights=True,
            prefix_reuse_matched=True,
        )
    )
    for dtype in torch_dtypes:
        short = SHORT[dtype]
        found.append(
            Comparison(
                f"niche serve torch {short} vs torch {short} static cache + compile (raw, merged)",
                f"niche serve torch {short} (PEFT, unmerged)",
                f"torch {short} merged, static cache + compile (raw)",
                same_weights=True,
            )
        )
        found.append(
            Comparison(
                f"niche serve llamacpp (F16) vs niche serve torch {short}",
                "niche serve llamacpp f16 base + LoRA",
                f"niche serve torch {short} (PEFT, unmerged)",
                same_weights=False,
            )
        )
    return found


def answers_of(measurement: dict[str, Any], tokenizer: Any, as_text: bool) -> list[Any]:
    """The generated answers: token ids, or the text niche serve streams (special tokens skipped)."""
    if "ids" not in measurement:
        return measurement["texts"]
    if as_text:
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in measurement["ids"]]
    return [tuple(ids) for ids in measurement["ids"]]


def common_prefix_share(reference: Sequence[Sequence[Any]], candidate: Sequence[Sequence[Any]]) -> float:
    """How far, on average, the answers agree before they first differ (a share of the longer answer)."""
    shares = []
    for left, right in zip(reference, candidate, strict=True):
        agreeing = next((index for index, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
        shares.append(agreeing / max(len(left), len(right), 1))
    return round(statistics.mean(shares), 4) if shares else 0.0


def compare(comparison: Comparison, measured: dict[str, list[dict[str, Any]]], tokenizer: Any) -> dict[str, Any]:
    numerator, denominator = measured[comparison.numerator], measured[comparison.denominator]
    checks: list[WorkCheck] = [
        same_count(
            sum(sum(run["generated"]) for run in denominator),
            sum(sum(run["generated"]) for run in numerator),
            what="generated tokens",
        ),
        same_count(
            sum(sum(run["prompt_tokens"]) for run in denominator),
            sum(sum(run["prompt_tokens"]) for run in numerator),
            what="prompt tokens",
        ),
    ]
    if comparison.prefix_reuse_matched:
        checks.append(
            same_count(
                sum(run["reused_prefix_prompts"] for run in denominator),
                sum(run["reused_prefix_prompts"] for run in numerator),
                what="prompts evaluated on a reused prefix",
            )
        )
    as_text = "ids" not in numerator[0] or "ids" not in denominator[0]
    reference, candidate = answers_of(denominator[0], tokenizer, as_text), answers_of(numerator[0], tokenizer, as_text)
    unit = "generated texts" if as_text else "generated token sequences"
    if comparison.same_weights:
        agreement = same_answers(reference, candidate, tolerance=SAME_WEIGHTS_TOLERANCE, what=unit)
        checks.append(agreement)
    else:
        agreement = agreement_recorded(reference, candidate, unit)
    result = ratio(decode_rates(numerator), decode_rates(denominator), checks)
    return result | {
        "name": comparison.name,
        "numerator": comparison.numerator,
        "denominator": comparison.denominator,
        "answers": (
            f"required: same weights and precision, {SAME_WEIGHTS_TOLERANCE:.0%} of the prompts may differ"
            if comparison.same_weights
            else "recorded, not required: different precisions legitimately answer differently"
        ),
        "answer_agreement": agreement.as_dict(),
        "common_prefix_share": common_prefix_share(reference, candidate),
    }


def agreement_recorded(reference: Sequence[Any], candidate: Sequence[Any], what: str) -> WorkCheck:
    """How many answers agree across precisions: recorded, never a condition of the comparison."""
    agreeing = sum(left == right for left, right in zip(reference, candidate, strict=True))
    detail = f"{agreeing}/{len(reference)} {what} agree (recorded, not required)"
    return WorkCheck(True, what, detail, round(agreeing / max(len(reference), 1), 4))


def decode_rates(runs: list[dict[str, Any]]) -> list[float]:
    """Each round's decode rate: all tokens after the first over the time they took."""
    return [sum(generated - 1 for generated in run["generated"]) / sum(run["decode_s"]) for run in runs]


STARTUP_KEYS = ("load_s", "warmup_generation_s", "compiled_graphs_after_warmup", "compiled_graphs_after_rounds")


def row(variant: Variant, runs: list[dict[str, Any]], process: dict[str, float], tokenizer: Any, price: float) -> dict:
    """The variant's published row; `process` is what its process reported (startup times and memory)."""
    decode = summarize([round(rate, 2) for rate in decode_rates(runs)])
    ttft = summarize([round(statistics.median(run["ttft_s"]) * 1000, 1) for run in runs])
    answers = [answers_of(run, tokenizer, as_text=True) for run in runs]
    return {
        "side": variant.side,
        "engine": variant.engine,
        "dtype": variant.dtype,
        "prompt_prefix_reused": variant.prefix_reuse,
        "ttft_p50_ms": ttft["median"],
        "decode_tokens_per_s": decode["median"],
        "ttft_ms": ttft,
        "decode": decode,
        "file_mb": variant.file_mb,
        "startup": {key: process[key] for key in STARTUP_KEYS if key in process},
        "memory": {key: value for key, value in process.items() if key not in STARTUP_KEYS},
        "cost_per_million_tokens": round(price / (decode["median"] * 3600) * 1e6, 4),
        "answers": answers[0],
        "answers_same_every_round": all(round_answers == answers[0] for round_answers in answers),
    }


def export_parity(exported: dict[str, Path]) -> dict[str, dict[str, Any]]:
    import json

    parity = {}
    for directory in exported.values():
        for entry in json.loads((directory / "export.json").read_text())["parity"]:
            parity[entry["variant"]] = {
                key: entry[key] for key in ("identical_rate", "max_logit_diff", "metric_trained", "metric_exported")
            }
    return parity


# ---- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=6, help="held-out findings answered per round")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per answer (past end-of-turn)")
    parser.add_argument("--train-steps", type=int, default=40, help="the specialist's training, if not cached")
    parser.add_argument("--price-per-hour", type=float, default=0.10)
    parser.add_argument(
        "--no-inductor-freezing",
        dest="inductor_freezing",
        action="store_false",
        help="compile torch's decode step without weight freezing (one copy of the weights instead of two)",
    )
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("edge_speed", args)
    if args.quick:
        args.prompts, args.tokens = 2, 16

    from niche.hardware import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    torch_dtypes = ["float32", "bfloat16"] if native_bf16 and not args.quick else ["float32"]
    specialist_dir = specialist(args.train_steps)
    exported = exports(specialist_dir)
    merged_dir = merged_checkpoint(specialist_dir)
    prompts, texts, tokenizer = held_out_prompts(specialist_dir, args.prompts)
    setup = Setup(specialist_dir.parent, prompts, texts, args.tokens)

    chosen = variants(setup, merged_dir, exported, torch_dtypes, args.inductor_freezing)
    running: dict[str, RawProcess | NicheServer] = {}
    try:
        for variant in chosen:
            print(f"starting {variant.name}", flush=True)
            running[variant.name] = variant.start(setup)

        def progress(name: str, round_: int, run: dict[str, Any]) -> None:
            print(f"  round {round_}: {name}: {decode_rates([run])[0]:.1f} tokens/s", flush=True)

        measured, schedule = interleave(
            {name: (lambda round_, runner=runner: runner.run(setup, round_)) for name, runner in running.items()},
            repeats=report.repeats,
            warmup=WARMUP_ROUNDS,
            on_result=progress,
        )
        processes = {name: runner.memory() for name, runner in running.items()}
    finally:
        for runner in running.values():
            runner.close()

    rows = {
        variant.name: row(variant, measured[variant.name], processes[variant.name], tokenizer, args.price_per_hour)
        for variant in chosen
    }
    results = {comparison.name: compare(comparison, measured, tokenizer) for comparison in comparisons(torch_dtypes)}
    report.write(
        {
            "setup": {
                "base": "smollm2-135m",
                "torch_dtypes": torch_dtypes,
                "cpu_native_bf16": native_bf16,
                "prompts": len(prompts),
                "prompt_tokens": [len(prompt) for prompt in prompts],
                "decode_tokens": args.tokens,
                "price_per_hour": args.price_per_hour,
                "torch_compile": COMPILE | {"inductor_freezing": args.inductor_freezing},
                "same_weights_tolerance": SAME_WEIGHTS_TOLERANCE,
                "schedule": schedule.as_dict(),
                "memory": MEMORY_NOTE,
            },
            "rows": rows,
            "comparisons": results,
            "parity": export_parity(exported),
        }
    )
    print_summary(rows, results)


MEMORY_NOTE = (
    "rss_steady_mb: the process's resident memory after loading and one warm-up generation (compilation included; "
    "raw processes hand freed heap back with malloc_trim first); model_mb: that minus the raw process after "
    "importing its libraries; peak_during_rounds_mb: the process's peak during the rounds, the peak counter reset "
    "at steady state (the load transient excluded). With inductor freezing the compiled torch process holds the "
    "weights twice: the compiled decode step's frozen constants and the module's own, which the eager prefill "
    "uses. A server's numbers are its whole process: Python, the web stack, torch and the engine."
)


def print_summary(rows: dict[str, dict], results: dict[str, dict]) -> None:
    for name, values in rows.items():
        print(
            f"{name} [{values['dtype']}]: decode {format_range(values['decode'], 1)} tokens/s, "
            f"TTFT {format_range(values['ttft_ms'], 1)} ms, steady {values['memory']['rss_steady_mb']:.0f} MB, "
            f"peak during rounds {values['memory']['peak_during_rounds_mb']:.0f} MB"
        )
    for name, result in results.items():
        verdict = "valid" if result["valid"] else "INVALID: " + "; ".join(result["invalid_because"])
        print(
            f"{name}: {result['median_ratio']:.2f}x ({result['min']:.2f}-{result['max']:.2f}), {verdict}; "
            f"answers {result['answer_agreement']['detail']}"
        )


# ---- tables --------------------------------------------------------------------------------------------------


def tables(results: dict) -> dict[str, str]:
    """The README tables, from the results file alone."""
    return {
        "variants": _variants_table(results),
        "comparisons": _comparisons_table(results),
        "startup": _startup_table(results),
        "parity": _parity_table(results),
    }


def _dtype_label(dtype: str) -> str:
    return SHORT.get(dtype, dtype)


def _optional(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _variants_table(results: dict) -> str:
    lines = [
        "| variant | dtype | prompt prefix reused | time to first token (ms) | decode tokens/s | file (MB) "
        "| resident after warm-up (MB) | model's share (MB) | peak during rounds (MB) | cost / 1M tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, values in results["rows"].items():
        memory = values["memory"]
        reused = "yes" if values["prompt_prefix_reused"] else "no"
        lines.append(
            f"| {name} | {_dtype_label(values['dtype'])} | {reused} | {format_range(values['ttft_ms'], 1)} "
            f"| {format_range(values['decode'], 1)} | {_optional(values['file_mb'], '.1f')} "
            f"| {memory['rss_steady_mb']:.0f} | {_optional(memory.get('model_mb'), '.0f')} "
            f"| {memory['peak_during_rounds_mb']:.0f} | {values['cost_per_million_tokens']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _comparisons_table(results: dict) -> str:
    lines = [
        "| comparison (decode tokens/s) | ratio | answers | agreement | same work |",
        "|---|---|---|---|---|",
    ]
    for name, result in results["comparisons"].items():
        ratio_text = format_range(result, 2, "x")
        if not result["valid"]:
            ratio_text = f"invalid ({result['median_ratio']:.2f}x measured)"
        same_work = "yes" if result["valid"] else "no: " + "; ".join(result["invalid_because"])
        lines.append(
            f"| {name} | {ratio_text} | {result['answers']} | {result['answer_agreement']['detail']}; "
            f"{result['common_prefix_share']:.0%} of each answer before the first difference | {same_work} |"
        )
    return "\n".join(lines) + "\n"


def _startup_table(results: dict) -> str:
    lines = [
        "| variant | load (s) | warm-up generation, compilation included (s) | graphs compiled: warm-up, by the end |",
        "|---|---|---|---|",
    ]
    for name, values in results["rows"].items():
        startup = values["startup"]
        graphs = ""
        if "compiled_graphs_after_warmup" in startup:
            graphs = f"{startup['compiled_graphs_after_warmup']}, {startup['compiled_graphs_after_rounds']}"
        lines.append(f"| {name} | {startup['load_s']:.1f} | {startup['warmup_generation_s']:.1f} | {graphs} |")
    return "\n".join(lines) + "\n"


def _parity_table(results: dict) -> str:
    lines = [
        "| export | identical greedy outputs | largest next-token logit difference | accuracy trained → exported |",
        "|---|---|---|---|",
    ]
    for name, entry in results["parity"].items():
        lines.append(
            f"| {name} | {entry['identical_rate']:.1%} | {entry['max_logit_diff']:.3f} "
            f"| {entry['metric_trained']:.3f} → {entry['metric_exported']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
