"""Serving under load: niche's engines against each other and against llama-cpp-python's OpenAI server.

K specialists (short LoRA trainings of SmolLM2-135M on the project's cloudsec example, each with its own
system prompt and seed) and the bare base are served on loopback, each server in its own subprocesses, by:

- `torch_batched`: `niche serve --max-batch-size 16` (requests for any specialist decoded together);
- `torch_batch1_resident`: `niche serve --max-batch-size 1`, one request at a time with every adapter loaded
  (it never swaps adapters in or out; the active one is selected per request);
- `llamacpp`: `niche serve --engine llamacpp` (the F16 GGUF base + GGUF LoRAs, one request at a time);
- `llama_cpp_server`: llama-cpp-python's OpenAI server (`python -m llama_cpp.server`), one process per model:
  the same F16 GGUF base with one specialist's GGUF LoRA loaded once at start (or none, for the base), so it
  never reloads a model; each request goes to its model's process. Its settings: `interrupt_requests` off (on,
  its default, a queued request cuts the running stream short: the empty answers of this script's first
  version), `repeat_penalty` 1.0 per request (its default 1.1 changes greedy answers), its automatic KV prefix
  reuse, `--llama-cpp-server-threads` threads per process. Needs its server's extras, in niche's `bench` extra
  (`pip install -e '.[bench]'`; leave it out with `--no-llama-cpp-server`).

Same prompts: every request goes through /v1/completions at temperature 0. The prompt is the specialist's
stored chat template rendered once, here, by the encoders `niche serve` itself uses; niche's /v1/completions
renders its `prompt` as the user's turn through that template, so niche gets the held-out finding and the
llama.cpp server the rendered text. Both reach the model as the same tokens: before any load, each rendered
prompt is tokenized as llama-cpp-python's server tokenizes it and compared with niche's prompt ids.

Method: an answer probe first (a fixed set of held-out findings, one request at a time, on every server: the
answers compared between servers and scored against the held-out labels), then rounds (harness.interleave:
one warm-up round dropped, >= 3 measured, the order rotating). In a round each server takes its turn: an
idle probe of short requests one at a time (time to first token idle), then N clients (the official openai
client, streaming) sending requests back to back for `--round-seconds`, each client drawing (model, finding)
pairs from its own seeded sequence, the same on every server. Completion tokens are counted the same way for
every server: the answer text tokenized with the base's tokenizer (the stop token not counted).

A ratio between two servers is valid only when they did the same work: the probe's answers agree within the
tolerance of the pair (torch batched against torch batch 1: 10%; bf16 torch against the F16 GGUF: 20%;
llama.cpp against llama.cpp: 5%), so do the answers to the requests both answered under load, the probe's
completion tokens agree within 10%, and the llama.cpp server's prompts are niche's tokens exactly.

Writes bench/results/serve_load.json (harness.Report: provenance, every request's answer, per-round measurements
with median and min-max): per server, requests/s, completion tokens/s, TTFT p50 idle and under load, latency
p50/p95 under load, accuracy on the held-out labels, peak proportional memory (PSS) of all its processes; and
the ratios with their checks.

    python bench/serve_load.py [--specialists 4] [--clients 16] [--round-seconds 15] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
WORKDIR = REPO / "build" / "bench-serve"
REFERENCE = "torch_batch1_resident"  # the plain path: the runs table counts each server's probe answers equal to its
COMPETITOR = "llama_cpp_server"
# Which servers run on which numerics decides how many answers may differ between two of them.
LLAMA_CPP_SERVERS = {"llamacpp", COMPETITOR}
ANSWER_TOLERANCE = {"same engine": 0.10, "llama.cpp pair": 0.05, "torch against llama.cpp": 0.20}
TOKEN_TOLERANCE = 0.10
COMPARISONS = (
    ("torch_batched", "torch_batch1_resident"),
    ("torch_batched", COMPETITOR),
    ("llamacpp", COMPETITOR),
)
LABELS = {
    "torch_batched": "niche torch, batched (16)",
    "torch_batch1_resident": "niche torch, batch 1 (adapters resident)",
    "llamacpp": "niche --engine llamacpp",
    COMPETITOR: "llama_cpp.server (a process per model)",
}
IDLE_MAX_TOKENS = 2  # the idle probe measures the first token
# No server stops a request early: llama_cpp.server has no request timeout, niche's gets the client's.
REQUEST_TIMEOUT_S = 600


def train_specialists(count: int, steps: int) -> Path:
    """K distinct specialists on the same base (cached in build/bench-serve between runs; one trained for another
    number of steps, e.g. by a quick smoke run, is trained again)."""
    from niche.artifact import read_manifest
    from niche.config import load_config
    from niche.train import train

    root = WORKDIR / "specialists"
    for index in range(count):
        name = f"cloudsec-{index}"
        if (root / name / "niche.json").is_file():
            trained = read_manifest(root / name).hyperparameters.get("training", {}).get("max_steps")
            if trained == steps:
                continue
        config = load_config(
            EXAMPLE / "niche.yaml",
            [
                f"name={name}",
                "training.objective=generate",
                f"output_dir={root}",
                f"data.train={EXAMPLE / 'train.jsonl'}",
                f"data.validation={EXAMPLE / 'validation.jsonl'}",
                f"data.test={EXAMPLE / 'test.jsonl'}",
                f"prompt.system_prompt=Variant {index}. Classify the cloud security finding into one of: {{labels}}.",
                f"training.max_steps={steps}",
                f"training.eval_every={steps}",
                f"training.seed={index}",
            ],
        )
        train(config, show_progress=False)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


Server = tuple[subprocess.Popen, str]  # the process and its base URL


def start_server(
    specialists: Path,
    max_batch_size: int = 16,
    max_loaded: int = 8,
    engine: str = "torch",
    quiet: bool = True,
    timeout_s: float | None = None,
) -> Server:
    """`niche serve` in a subprocess on a free loopback port, once it answers /health; `timeout_s` replaces its
    request timeout (120 s)."""
    port = free_port()
    command = [
        *[sys.executable, "-m", "niche.cli", "serve", str(specialists), "--port", str(port), "--engine", engine],
        *["--max-batch-size", str(max_batch_size), "--max-loaded", str(max_loaded), "--no-routing"],
        *(["--timeout", str(timeout_s)] if timeout_s is not None else []),
    ]
    return launch(command, f"http://127.0.0.1:{port}", "/health", quiet)


def require_llama_cpp_server() -> None:
    check = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(
            "llama_cpp.server cannot start (" + check.stderr.strip().splitlines()[-1] + "): "
            "run `pip install -e '.[bench]'` (its server's extras), or pass --no-llama-cpp-server"
        )


def start_llama_cpp_server(base_gguf: Path, alias: str, lora: Path | None, threads: int) -> Server:
    """llama-cpp-python's OpenAI server holding one model: the GGUF base, with one GGUF LoRA applied at load."""
    model = {
        "model": str(base_gguf),
        "model_alias": alias,
        "n_ctx": 2048,
        "n_threads": threads,
        "n_threads_batch": threads,
        "verbose": False,
    }
    if lora is not None:
        model["lora_path"] = str(lora)
    port = free_port()
    # interrupt_requests (on by default) ends a running stream as soon as another request waits for the model.
    settings = {"host": "127.0.0.1", "port": port, "interrupt_requests": False, "models": [model]}
    WORKDIR.mkdir(parents=True, exist_ok=True)
    config = WORKDIR / f"llama-cpp-server-{alias}.json"
    config.write_text(json.dumps(settings, indent=2))
    command = [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)]
    return launch(command, f"http://127.0.0.1:{port}", "/v1/models")


def launch(command: list[str], url: str, probe: str, quiet: bool = True) -> Server:
    output = subprocess.DEVNULL if quiet else None
    server = subprocess.Popen(command, stdout=output, stderr=output, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}: {' '.join(command)}")
        try:
            with urllib.request.urlopen(f"{url}{probe}", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"server did not answer {probe} within 300 s: {' '.join(command)}")


def stop_servers(servers: list[Server]) -> None:
    for server, _ in servers:
        server.terminate()
    for server, _ in servers:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


class PeakMemory:
    """Samples the memory of server processes (each with its children) in a background thread.

    A name maps to one process or to several (a server made of a process per model). Resident memory (RSS)
    counts pages shared between processes once in each, so a group of processes that map the same model file
    is over-counted; `proportional` reads PSS instead, which splits each shared page among its sharers.
    """

    def __init__(
        self,
        processes: dict[str, subprocess.Popen | list[subprocess.Popen]],
        interval_s: float = 0.5,
        proportional: bool = False,
    ) -> None:
        import psutil

        self.processes = {
            name: [psutil.Process(member.pid) for member in (group if isinstance(group, list) else [group])]
            for name, group in processes.items()
        }
        self.proportional = proportional
        self.peak_mib = dict.fromkeys(processes, 0.0)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}  # (seconds, MiB)
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_mib(self, name: str) -> float:
        import psutil

        total = 0
        for process in self.processes[name]:
            for member in [process, *process.children(recursive=True)]:
                try:
                    total += member.memory_full_info().pss if self.proportional else member.memory_info().rss
                except psutil.Error:  # a child that just exited
                    continue
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name in self.processes:
                mib = self.current_mib(name)
                self.peak_mib[name] = max(self.peak_mib[name], mib)
                self.series[name].append((time.monotonic() - self._started, mib))

    def __enter__(self) -> PeakMemory:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def write_result(path: Path, result: dict) -> None:
    """Write through a temporary file and rename, so a reader never sees half a result (bench/soak.py's writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, path)


# ---- the prompts ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One request's content: the user's turn, and the prompt niche's template renders around it."""

    model: str
    item: int  # the held-out finding's line in test.jsonl
    text: str
    rendered: str
    label: str | None  # the held-out label; None for the base, which was asked nothing it could be scored on


def render_prompts(renderer: Any, models: list[str], held_out: list[dict]) -> dict[tuple[str, int], Prompt]:
    """Every (model, finding) pair rendered once by the encoders `niche serve` uses (`renderer`, an EngineCore)."""
    from niche.data.examples import Example

    prompts = {}
    for model in models:
        template = renderer.template_of(model)
        for item, row in enumerate(held_out):
            example = Example(messages=({"role": "user", "content": row["text"]},), response="")
            rendered = template.render_prompt(renderer.tokenizer, example)
            label = row["label"] if model != "base" else None
            prompts[model, item] = Prompt(model, item, row["text"], rendered, label)
    return prompts


def prompt_token_identity(renderer: Any, base_gguf: Path, prompts: list[Prompt]) -> harness.WorkCheck:
    """Whether llama-cpp-python's server turns each rendered prompt into the tokens niche's engines evaluate.

    Its /v1/completions adds BOS when the GGUF asks for it, then tokenizes the text with special tokens parsed
    (llama_cpp.Llama._create_completion); niche tokenizes the same text with the base's tokenizer.
    """
    from llama_cpp import Llama

    from niche.data.examples import Example

    vocabulary = Llama(model_path=str(base_gguf), vocab_only=True, verbose=False)
    bos = [vocabulary.token_bos()] if vocabulary._model.add_bos_token() else []
    identical = 0
    for prompt in prompts:
        example = Example(messages=({"role": "user", "content": prompt.text},), response="")
        theirs = bos + vocabulary.tokenize(prompt.rendered.encode(), add_bos=False, special=True)
        identical += theirs == renderer.encoder_of(prompt.model).prompt_ids(example)
    valid = identical == len(prompts)
    detail = f"{identical}/{len(prompts)} rendered prompts tokenize to niche's prompt ids (none may differ)"
    return harness.WorkCheck(valid, "prompt tokens", detail, round(identical / len(prompts), 4))


# ---- the servers ----------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One server configuration as its clients see it."""

    name: str
    servers: dict[str, Server]  # model -> (process, url); niche's one server answers every model
    renders_template: bool  # niche renders its template around the user's turn; llama_cpp.server gets the text
    extra_body: dict[str, Any] = field(default_factory=dict)

    def url(self, model: str) -> str:
        return self.servers[model][1]

    def prompt_text(self, prompt: Prompt) -> str:
        return prompt.text if self.renders_template else prompt.rendered

    def processes(self) -> list[subprocess.Popen]:
        return list({process.pid: process for process, _ in self.servers.values()}.values())


def start_sides(
    specialists: Path, models: list[str], base_gguf: Path | None, loras: dict[str, Path], threads: int
) -> dict[str, Side]:
    """Every server, started in parallel; if one fails to start, those already up are stopped."""
    count = len(models) - 1
    niche_starts = {
        "torch_batched": lambda: start_server(specialists, 16, count, timeout_s=REQUEST_TIMEOUT_S),
        "torch_batch1_resident": lambda: start_server(specialists, 1, count, timeout_s=REQUEST_TIMEOUT_S),
        "llamacpp": lambda: start_server(specialists, 1, count, engine="llamacpp", timeout_s=REQUEST_TIMEOUT_S),
    }
    competitor_starts = {}
    if base_gguf is not None:
        competitor_starts = {
            model: (lambda model=model: start_llama_cpp_server(base_gguf, model, loras.get(model), threads))
            for model in models
        }
    starts = {("niche", name): start for name, start in niche_starts.items()} | {
        (COMPETITOR, model): start for model, start in competitor_starts.items()
    }
    with ThreadPoolExecutor(max_workers=len(starts)) as pool:
        futures = {key: pool.submit(start) for key, start in starts.items()}
    started = {key: future.result() for key, future in futures.items() if future.exception() is None}
    failed = [(key, future.exception()) for key, future in futures.items() if future.exception() is not None]
    if failed:
        stop_servers(list(started.values()))
        key, error = failed[0]
        raise RuntimeError(f"{key[1]} did not start: {error}") from error
    sides = {
        name: Side(name, dict.fromkeys(models, started["niche", name]), renders_template=True) for name in niche_starts
    }
    if competitor_starts:
        servers = {model: started[COMPETITOR, model] for model in models}
        sides[COMPETITOR] = Side(COMPETITOR, servers, renders_template=False, extra_body={"repeat_penalty": 1.0})
    return sides


def engine_counters(url: str) -> dict[str, float]:
    """niche's engine counters from /metrics (empty for a server without them)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        line.split(" ")[0]: round(float(line.split(" ")[1]), 2)
        for line in text.splitlines()
        if line.startswith(("niche_forward", "niche_prefix"))
    }


# ---- the requests ---------------------------------------------------------------------------------------------


class Clients:
    """An openai client per server URL of a side, closed together."""

    def __init__(self, side: Side) -> None:
        import openai

        self.side = side
        self.by_url = {
            url: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=REQUEST_TIMEOUT_S)
            for url in {url for _, url in side.servers.values()}
        }

    async def complete(self, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
        """One streamed /v1/completions request at temperature 0: its answer, TTFT and latency (seconds), or the
        error that ended it (a failed request is recorded, not retried, and does not stop the run)."""
        import openai

        client = self.by_url[self.side.url(prompt.model)]
        started = time.perf_counter()
        first = None
        pieces = []
        error = None
        try:
            stream = await client.completions.create(
                model=prompt.model,
                prompt=self.side.prompt_text(prompt),
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                extra_body=self.side.extra_body or None,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    pieces.append(chunk.choices[0].text)
                    first = first or time.perf_counter()
        except openai.APIError as failure:
            error = f"{type(failure).__name__}: {failure}"
        ended = time.perf_counter()
        return {
            "model": prompt.model,
            "item": prompt.item,
            "answer": "".join(pieces),
            "ttft": (first or ended) - started,
            "latency": ended - started,
            "error": error,
        }

    async def close(self) -> None:
        for client in self.by_url.values():
            await client.close()


async def one_at_a_time(side: Side, prompts: list[Prompt], max_tokens: int) -> list[dict[str, Any]]:
    clients = Clients(side)
    try:
        return [await clients.complete(prompt, max_tokens) for prompt in prompts]
    finally:
        await clients.close()


async def load(
    side: Side, prompts: list[Prompt], clients: int, seconds: float, max_tokens: int, seed: str
) -> tuple[list[dict[str, Any]], float]:
    """N clients sending requests back to back for `seconds`; the finished requests and the time taken.

    Client i draws its prompts from its own sequence (seeded by `seed` and i), the same on every server, so the
    servers answer largely the same requests and their answers can be compared request by request.
    """
    connections = Clients(side)
    results: list[dict[str, Any]] = []
    stop_at = time.perf_counter() + seconds

    async def user(index: int) -> None:
        sequence = random.Random(f"{seed}:{index}")
        while time.perf_counter() < stop_at:
            results.append(await connections.complete(sequence.choice(prompts), max_tokens))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(user(index) for index in range(clients)))
    finally:
        await connections.close()
    return results, time.perf_counter() - started


def idle_prompts(prompts: dict[tuple[str, int], Prompt], models: list[str], round_: int, count: int) -> list[Prompt]:
    """`count` prompts for the round's idle probe, cycling through the models, new findings each round (a prompt
    repeated right after itself would be all but fully cached)."""
    items = sorted({item for _, item in prompts})
    return [
        prompts[models[index % len(models)], items[(round_ * count + index) % len(items)]] for index in range(count)
    ]


def probe_prompts(prompts: dict[tuple[str, int], Prompt], models: list[str], count: int) -> list[Prompt]:
    """The fixed answer probe: the first `count` findings, the models taking turns."""
    return [prompts[models[index % len(models)], index] for index in range(count)]


def run_round(
    side: Side,
    round_: int,
    prompts: dict[tuple[str, int], Prompt],
    models: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One turn of one server: the idle probe, then the load; raw requests, summarized after all rounds."""
    idle = asyncio.run(one_at_a_time(side, idle_prompts(prompts, models, round_, args.idle_requests), IDLE_MAX_TOKENS))
    finished, elapsed = asyncio.run(
        load(side, list(prompts.values()), args.clients, args.round_seconds, args.max_tokens, f"{args.seed}:{round_}")
    )
    for request in finished:
        request["round"] = round_
    return {"idle_ttft": [request["ttft"] for request in answered(idle)], "requests": finished, "seconds": elapsed}


# ---- what the requests show -----------------------------------------------------------------------------------


def count_tokens(tokenizer: Any, requests: list[dict[str, Any]]) -> None:
    """Completion tokens, counted the same way for every server: the answer text in the base's tokens."""
    for request in requests:
        request["completion_tokens"] = len(tokenizer(request["answer"], add_special_tokens=False)["input_ids"])


def is_correct(answer: str, label: str) -> bool:
    return answer.strip() == label


def accuracy(requests: list[dict[str, Any]], prompts: dict[tuple[str, int], Prompt]) -> dict[str, Any]:
    """The share of answers to specialists that are the held-out label (the base is asked no labels)."""
    scored = [
        is_correct(request["answer"], label)
        for request in requests
        if (label := prompts[request["model"], request["item"]].label) is not None
    ]
    return {
        "correct": sum(scored),
        "scored": len(scored),
        "accuracy": round(sum(scored) / len(scored), 4) if scored else None,
    }


def answered(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [request for request in requests if request["error"] is None]


def round_measurement(measured: dict[str, Any]) -> dict[str, float]:
    requests = answered(measured["requests"])
    ttfts = [request["ttft"] * 1000 for request in requests]
    latencies = [request["latency"] * 1000 for request in requests]
    seconds = measured["seconds"]
    return {
        "requests": len(requests),
        "requests_per_s": len(requests) / seconds,
        "completion_tokens_per_s": sum(request["completion_tokens"] for request in requests) / seconds,
        "ttft_p50_ms_under_load": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p95_ms_under_load": percentile(ttfts, 0.95),
        "latency_p50_ms_under_load": statistics.median(latencies) if latencies else float("nan"),
        "latency_p95_ms_under_load": percentile(latencies, 0.95),
        "ttft_p50_ms_idle": statistics.median(measured["idle_ttft"]) * 1000 if measured["idle_ttft"] else float("nan"),
    }


def summarize_side(
    rounds: list[dict[str, Any]], probe: list[dict[str, Any]], prompts: dict[tuple[str, int], Prompt]
) -> dict[str, Any]:
    """Per-round measurements (median, min-max), accuracy, and every answer (the probe's and each request's)."""
    per_round = [round_measurement(measured) for measured in rounds]
    failed = [request for measured in rounds for request in measured["requests"] if request["error"] is not None]
    requests = answered([request for measured in rounds for request in measured["requests"]])
    return {
        **{key: harness.summarize([measurement[key] for measurement in per_round]) for key in per_round[0]},
        "failed_requests": {
            "under_load": len(failed),
            "probe": sum(request["error"] is not None for request in probe),
            "first_errors": sorted({request["error"] for request in failed + probe if request["error"]})[:5],
        },
        "empty_answers_under_load": sum(not request["answer"].strip() for request in requests),
        "accuracy_under_load": accuracy(requests, prompts),
        "accuracy_probe": accuracy(probe, prompts),
        "probe": {
            "answers": [request["answer"] for request in probe],
            "completion_tokens": sum(request["completion_tokens"] for request in probe),
        },
        "requests_answered": {
            key: [request[key] for request in requests]
            for key in ("round", "model", "item", "answer", "completion_tokens")
        },
    }


def answer_tolerance(ours: str, theirs: str) -> tuple[float, str]:
    """How many answers may differ between two servers, and why: the numerics they decode with."""
    if ours in LLAMA_CPP_SERVERS and theirs in LLAMA_CPP_SERVERS:
        return ANSWER_TOLERANCE["llama.cpp pair"], "llama.cpp pair"
    if ours in LLAMA_CPP_SERVERS or theirs in LLAMA_CPP_SERVERS:
        return ANSWER_TOLERANCE["torch against llama.cpp"], "torch against llama.cpp"
    return ANSWER_TOLERANCE["same engine"], "same engine"


def first_answers(answered: dict[str, list]) -> dict[tuple[str, int], str]:
    """Each (model, finding) a server answered under load, with its first answer to it."""
    answers: dict[tuple[str, int], str] = {}
    for model, item, answer in zip(answered["model"], answered["item"], answered["answer"], strict=True):
        answers.setdefault((model, item), answer)
    return answers


def normalized(answer: str) -> str:
    return answer.strip()


def work_checks(
    ours: dict[str, Any], theirs: dict[str, Any], tolerance: float, prompt_check: harness.WorkCheck | None
) -> list[harness.WorkCheck]:
    """Whether two servers did the same work: the same answers (probe and shared requests under load), the same
    completion tokens on the probe, no failed request, and (against llama_cpp.server) the same prompt tokens."""
    equal = lambda left, right: normalized(left) == normalized(right)  # noqa: E731
    checks = [
        harness.same_answers(theirs["probe"]["answers"], ours["probe"]["answers"], tolerance, "probe answers", equal)
    ]
    our_load, their_load = first_answers(ours["requests_answered"]), first_answers(theirs["requests_answered"])
    shared = sorted(our_load.keys() & their_load.keys())
    checks.append(
        harness.same_answers(
            [their_load[key] for key in shared],
            [our_load[key] for key in shared],
            tolerance,
            "answers to the requests both answered under load",
            equal,
        )
    )
    checks.append(
        harness.same_count(
            theirs["probe"]["completion_tokens"],
            ours["probe"]["completion_tokens"],
            TOKEN_TOLERANCE,
            "probe completion tokens",
        )
    )
    failures = {
        side: run["failed_requests"]["under_load"] + run["failed_requests"]["probe"]
        for side, run in (("ours", ours), ("theirs", theirs))
    }
    checks.append(
        harness.WorkCheck(
            not any(failures.values()),
            "failed requests",
            f"{failures['ours']} and {failures['theirs']} requests failed (none may)",
        )
    )
    if prompt_check is not None:
        checks.append(prompt_check)
    return checks


def compare(
    runs: dict[str, dict[str, Any]], ours: str, theirs: str, prompt_check: harness.WorkCheck | None
) -> dict[str, Any]:
    """`ours` against `theirs`: throughput ratios (higher is better for ours), TTFT ratios theirs / ours."""
    tolerance, reason = answer_tolerance(ours, theirs)
    checks = work_checks(runs[ours], runs[theirs], tolerance, prompt_check if COMPETITOR in (ours, theirs) else None)

    def runs_of(side: str, key: str) -> list[float]:
        return runs[side][key]["runs"]

    return {
        "ours": ours,
        "theirs": theirs,
        "answer_tolerance": {"share": tolerance, "because": reason},
        "requests_per_s": harness.ratio(runs_of(ours, "requests_per_s"), runs_of(theirs, "requests_per_s"), checks),
        "completion_tokens_per_s": harness.ratio(
            runs_of(ours, "completion_tokens_per_s"), runs_of(theirs, "completion_tokens_per_s"), checks
        ),
        "ttft_p50_under_load": harness.ratio(
            runs_of(theirs, "ttft_p50_ms_under_load"), runs_of(ours, "ttft_p50_ms_under_load"), checks
        ),
        "ttft_p50_idle": harness.ratio(runs_of(theirs, "ttft_p50_ms_idle"), runs_of(ours, "ttft_p50_ms_idle"), checks),
    }


def torch_dtype() -> str:
    from niche.hardware import detect_hardware

    return str(detect_hardware().dtype).removeprefix("torch.")


# ---- the run --------------------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specialists", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--round-seconds", type=float, default=15, help="load time per server per round")
    parser.add_argument("--probe-requests", type=int, default=40, help="the fixed answer probe, one at a time")
    parser.add_argument("--idle-requests", type=int, default=6, help="per round, one at a time, for TTFT idle")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--llama-cpp-server-threads",
        type=int,
        default=1,
        help="threads per llama_cpp.server process (one process per model, several busy at once under load)",
    )
    parser.add_argument("--no-llama-cpp-server", action="store_true", help="leave llama_cpp.server out")
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.specialists, args.clients, args.round_seconds, args.max_tokens = 2, 4, 4, 8
        args.probe_requests, args.idle_requests = 3, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    report = harness.Report("serve_load", args)
    warmup = 0 if report.quick else 1
    from niche.serve.base import EngineCore

    specialists = train_specialists(args.specialists, args.train_steps)
    models = [f"cloudsec-{index}" for index in range(args.specialists)] + ["base"]
    held_out = [json.loads(line) for line in (EXAMPLE / "test.jsonl").read_text().splitlines()]
    # The engine core alone loads no model: it is niche serve's specialists, tokenizer and stored templates.
    renderer = EngineCore(specialists)
    prompts = render_prompts(renderer, models, held_out)
    base_gguf, loras, prompt_check = None, {}, None
    if not args.no_llama_cpp_server:
        from niche.gguf import lora_gguf, shared_base_gguf

        require_llama_cpp_server()
        base_gguf = shared_base_gguf(renderer.base)
        loras = {name: lora_gguf(directory, renderer.base) for name, (directory, _) in renderer.specialists.items()}
        prompt_check = prompt_token_identity(renderer, base_gguf, list(prompts.values()))
        print(f"prompt tokens: {prompt_check.detail}")
    sides = start_sides(specialists, models, base_gguf, loras, args.llama_cpp_server_threads)
    probe_set = probe_prompts(prompts, models, args.probe_requests)
    try:
        groups = {name: side.processes() for name, side in sides.items()}
        with PeakMemory(groups, proportional=True) as memory:
            probes = {name: answer_probe(side, probe_set, args.max_tokens) for name, side in sides.items()}
            configurations = {
                name: (lambda round_, side=side: run_round(side, round_, prompts, models, args))
                for name, side in sides.items()
            }
            measured, schedule = harness.interleave(
                configurations, repeats=report.repeats, warmup=warmup, on_result=print_round
            )
        counters = {name: engine_counters(side.url(models[0])) for name, side in sides.items() if side.renders_template}
    finally:
        stop_servers([server for side in sides.values() for server in set(side.servers.values())])
    for name in sides:
        count_tokens(renderer.tokenizer, probes[name])
        for rounds in measured[name]:
            count_tokens(renderer.tokenizer, rounds["requests"])
    runs = {name: summarize_side(measured[name], probes[name], prompts) for name in sides}
    for name, run in runs.items():
        run["peak_pss_mib"] = round(memory.peak_mib[name], 1)
        run["processes"] = len(groups[name])
        run["engine"] = counters.get(name, {})
    comparisons = {
        f"{ours}_vs_{theirs}": compare(runs, ours, theirs, prompt_check)
        for ours, theirs in COMPARISONS
        if ours in runs and theirs in runs
    }
    results = {
        "dtype": f"torch engines {torch_dtype()}, llama.cpp on the F16 GGUF",
        "setup": {
            "base": renderer.base_spec,
            "specialists": args.specialists,
            "models_in_mix": models,
            "clients": args.clients,
            "round_seconds": args.round_seconds,
            "warmup_rounds": warmup,
            "probe_requests": args.probe_requests,
            "idle_requests_per_round": args.idle_requests,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "endpoint": "/v1/completions, streamed",
            "llama_cpp_server_threads": args.llama_cpp_server_threads,
            "answer_tolerance": ANSWER_TOLERANCE,
            "token_tolerance": TOKEN_TOLERANCE,
            "reference": REFERENCE,
        },
        "schedule": schedule.as_dict(),
        "prompt_tokens_check": prompt_check.as_dict() if prompt_check else None,
        "runs": runs,
        "comparisons": comparisons,
        # The headline: batched against batch 1 (None when that comparison is invalid), and the batched server's
        # idle time to first token.
        "ratio_throughput": comparisons.get(HEADLINE, {}).get("requests_per_s", {}).get("value"),
        "ttft_p50_ms": median_of(runs.get("torch_batched", {}).get("ttft_p50_ms_idle")),
    }
    for name, table in tables(results).items():
        print(f"\n{name}:\n{table}")
    report.write(results)


def answer_probe(side: Side, probe_set: list[Prompt], max_tokens: int) -> list[dict[str, Any]]:
    started = time.perf_counter()
    answers = asyncio.run(one_at_a_time(side, probe_set, max_tokens))
    failed = sum(request["error"] is not None for request in answers)
    empty = sum(not request["answer"].strip() for request in answers)
    print(
        f"answer probe {side.name}: {len(answers)} requests in {time.perf_counter() - started:.0f} s, "
        f"{empty} empty, {failed} failed",
        flush=True,
    )
    return answers


def print_round(name: str, round_: int, measured: dict[str, Any]) -> None:
    requests = answered(measured["requests"])
    empty = sum(not request["answer"].strip() for request in requests)
    failed = len(measured["requests"]) - len(requests)
    print(
        f"round {round_} {name}: {len(requests) / measured['seconds']:.2f} requests/s, "
        f"{empty}/{len(requests)} empty answers, {failed} failed, "
        f"TTFT idle p50 {statistics.median(measured['idle_ttft'] or [float('nan')]) * 1000:.0f} ms",
        flush=True,
    )


# ---- the tables -----------------------------------------------------------------------------------------------


def share(scored: dict[str, Any]) -> str:
    return f"{scored['accuracy']:.3f} ({scored['correct']}/{scored['scored']})" if scored["scored"] else "-"


def probe_agreement(reference: dict[str, Any], run: dict[str, Any]) -> str:
    theirs, ours = reference["probe"]["answers"], run["probe"]["answers"]
    agreeing = sum(normalized(left) == normalized(right) for left, right in zip(theirs, ours, strict=True))
    return f"{agreeing}/{len(theirs)}"


HEADLINE = "torch_batched_vs_torch_batch1_resident"


def median_of(summary: Any) -> float | None:
    return summary.get("median") if isinstance(summary, dict) else summary


def tables(results: dict) -> dict[str, str]:
    """`runs`: each server's medians (min-max over the measured rounds), accuracy and peak memory; `ratios`: each
    comparison's ratios, or why it is invalid."""
    runs = results["runs"]
    reference = results["setup"]["reference"]
    lines = [
        f"| server ({results['dtype']}) | requests/s | completion tokens/s | TTFT p50 idle (ms) | "
        "TTFT p50 under load (ms) | latency p95 under load (ms) | accuracy, probe | accuracy under load | "
        f"probe answers as {reference} | empty / failed answers under load | peak PSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        agreement = probe_agreement(runs[reference], run) if reference in runs else "-"
        lines.append(
            f"| {LABELS.get(name, name)} | {harness.format_range(run['requests_per_s'])} | "
            f"{harness.format_range(run['completion_tokens_per_s'], 1)} | "
            f"{harness.format_range(run['ttft_p50_ms_idle'], 0)} | "
            f"{harness.format_range(run['ttft_p50_ms_under_load'], 0)} | "
            f"{harness.format_range(run['latency_p95_ms_under_load'], 0)} | {share(run['accuracy_probe'])} | "
            f"{share(run['accuracy_under_load'])} | {agreement} | "
            f"{run['empty_answers_under_load']} / {run['failed_requests']['under_load']} | {run['peak_pss_mib']:,.0f} |"
        )
    ratio_lines = [
        "| comparison | requests/s | completion tokens/s | TTFT p50 under load (theirs / ours) | "
        "TTFT p50 idle (theirs / ours) | same work |",
        "|---|---|---|---|---|---|",
    ]
    for compared in results["comparisons"].values():
        ours, theirs = compared["ours"], compared["theirs"]
        speed = compared["requests_per_s"]
        tolerance = compared["answer_tolerance"]
        checked = "; ".join(check["detail"].split(" (")[0] for check in speed["checks"])
        verdict = f"yes: {checked}" if speed["valid"] else "**invalid**: " + "; ".join(speed["invalid_because"])
        ratio_lines.append(
            f"| {LABELS.get(ours, ours)} / {LABELS.get(theirs, theirs)} "
            f"(answers may differ: {tolerance['share']:.0%}, {tolerance['because']}) | "
            f"{harness.format_range(speed, suffix='x')} | "
            f"{harness.format_range(compared['completion_tokens_per_s'], suffix='x')} | "
            f"{harness.format_range(compared['ttft_p50_under_load'], suffix='x')} | "
            f"{harness.format_range(compared['ttft_p50_idle'], suffix='x')} | {verdict} |"
        )
    return {"runs": "\n".join(lines), "ratios": "\n".join(ratio_lines)}


if __name__ == "__main__":
    main()
