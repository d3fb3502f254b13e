"""Serving under load: niche's engines against each other and against llama-cpp-python's own OpenAI server.

K specialists (short LoRA trainings of SmolLM2-135M on the project's cloudsec example, each with its own
system prompt and seed) and the bare base are served on loopback, each server in subprocesses, by:

- `torch_batched`: `niche serve --max-batch-size 16` (requests for any specialist decoded together);
- `torch_batch1_resident`: `niche serve --max-batch-size 1`, one request at a time with every adapter loaded
  (it never swaps adapters in or out; the active one is selected per request);
- `llamacpp`: `niche serve --engine llamacpp` (GGUF base + GGUF LoRAs, one request at a time);
- `llama_cpp_server`: `python -m llama_cpp.server --config_file` with one entry per specialist (the same GGUF
  base and LoRA files niche's export makes) and one for the base; it holds one model at a time and reloads on
  a switch. Needs its server's extras, in niche's `bench` extra (`pip install -e '.[bench]'`; skip it with
  `--no-llama-cpp-server`).

N clients (the official openai client, streaming) send mixed requests (a random model, a random held-out
finding) for a bounded time; the servers stay up and take turns in short rounds, so that the noise of a
shared machine falls on all alike. First, an idle-server probe sends short prompts one by one to each. The
llama.cpp server gets each specialist's system prompt as a system message (niche renders it from the stored
template), so both see the same prompt text.

Prints and writes bench/results/serve_load.json: per server, throughput (requests/s and completion tokens/s),
time to first token p50/p95 idle and under load, latency p50/p95 under load, peak resident memory of all its
processes; and the ratios of torch_batched against the batch-1 row and against llama_cpp_server.

    python bench/serve_load.py [--specialists 4] [--clients 16] [--seconds 60] [--rounds 4] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
RESULTS = REPO / "bench" / "results" / "serve_load.json"
WORKDIR = REPO / "build" / "bench-serve"
IDLE_PROMPTS = [f"Public S3 bucket #{index} found" for index in range(18)]  # short, and not repeated


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
Messages = list[dict[str, str]]


def start_server(
    specialists: Path, max_batch_size: int = 16, max_loaded: int = 8, engine: str = "torch", quiet: bool = True
) -> Server:
    """`niche serve` in a subprocess on a free loopback port, once it answers /health."""
    port = free_port()
    command = [
        *[sys.executable, "-m", "niche.cli", "serve", str(specialists), "--port", str(port), "--engine", engine],
        *["--max-batch-size", str(max_batch_size), "--max-loaded", str(max_loaded), "--no-routing"],
    ]
    return launch(command, f"http://127.0.0.1:{port}", "/health", quiet)


def start_llama_cpp_server(specialists: Path) -> Server:
    """llama-cpp-python's OpenAI server on the same GGUF base and GGUF LoRAs that `--engine llamacpp` uses."""
    from niche.artifact import discover_specialists
    from niche.gguf import lora_gguf, shared_base_gguf
    from niche.specialist import resolve_specialist_base

    check = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(
            "llama_cpp.server cannot start (" + check.stderr.strip().splitlines()[-1] + "): "
            "run `pip install -e '.[bench]'` (its server's extras), or pass --no-llama-cpp-server"
        )
    found = discover_specialists(specialists)
    base = resolve_specialist_base(next(iter(found.values()))[1])
    base_gguf = str(shared_base_gguf(base))
    common = {"model": base_gguf, "n_ctx": 2048, "n_threads": os.cpu_count() or 1, "verbose": False}
    models = [common | {"model_alias": "base"}] + [
        common | {"model_alias": name, "lora_path": str(lora_gguf(directory, base))}
        for name, (directory, _) in found.items()
    ]
    port = free_port()
    config = WORKDIR / f"llama-cpp-server-{port}.json"
    config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}, indent=2))
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
    """Samples the resident memory of server processes (each with its children) in a background thread."""

    def __init__(self, processes: dict[str, subprocess.Popen], interval_s: float = 0.5) -> None:
        import psutil

        self.processes = {name: psutil.Process(process.pid) for name, process in processes.items()}
        self.peak_mib = dict.fromkeys(processes, 0.0)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}  # (seconds, MiB)
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_mib(self, name: str) -> float:
        import psutil

        total = 0
        process = self.processes[name]
        for member in [process, *process.children(recursive=True)]:
            try:
                total += member.memory_info().rss
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


async def one_request(client, model: str, messages: Messages, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    tokens = pieces = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            first = first or time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ended = time.perf_counter()
    # A server that sends no usage chunk streams a token per chunk: count those.
    return {"ttft": (first or ended) - started, "latency": ended - started, "tokens": tokens or pieces}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def bench_client(url: str):
    import openai

    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)


def user_turn(model: str, text: str) -> Messages:
    """What niche gets: the user's turn; the server renders the specialist's stored template around it."""
    return [{"role": "user", "content": text}]


def with_system_prompts(specialists: Path):
    """What a server that knows nothing of niche's templates gets: the specialist's system prompt, then the turn."""
    from niche.artifact import discover_specialists

    prompts = {
        name: manifest.template.system_prompt for name, (_, manifest) in discover_specialists(specialists).items()
    }

    def messages(model: str, text: str) -> Messages:
        system = prompts.get(model)
        return ([{"role": "system", "content": system}] if system else []) + user_turn(model, text)

    return messages


async def idle_probe(url: str, model: str, messages) -> list[dict]:
    """Short prompts one by one on an otherwise idle server; the first few warm it up."""
    client = bench_client(url)
    idle = [await one_request(client, model, messages(model, text), 8) for text in IDLE_PROMPTS]
    await client.close()
    return idle[3:]


async def load(
    url: str, messages, models: list[str], texts: list[str], clients: int, seconds: float, max_tokens: int, seed: int
) -> tuple[list[dict], float]:
    """N clients sending mixed requests back to back for `seconds`; the finished requests and the time taken."""
    client = bench_client(url)
    rng = random.Random(seed)
    results: list[dict] = []
    stop_at = time.perf_counter() + seconds

    async def user() -> None:
        while time.perf_counter() < stop_at:
            model = rng.choice(models)
            results.append(await one_request(client, model, messages(model, rng.choice(texts)), max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await client.close()
    return results, elapsed


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


def summarize(
    results: list[dict], elapsed: float, idle: list[dict], counters: dict[str, float], peak_mib: float
) -> dict:
    ttfts = [result["ttft"] * 1000 for result in results]
    latencies = [result["latency"] * 1000 for result in results]
    idle_ttfts = [result["ttft"] * 1000 for result in idle]
    return {
        "requests": len(results),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(len(results) / elapsed, 3),
        "completion_tokens_per_s": round(sum(result["tokens"] for result in results) / elapsed, 2),
        "ttft_p50_ms_under_load": round(statistics.median(ttfts), 1) if ttfts else None,
        "ttft_p95_ms_under_load": round(percentile(ttfts, 0.95), 1),
        "latency_p50_ms_under_load": round(statistics.median(latencies), 1) if latencies else None,
        "latency_p95_ms_under_load": round(percentile(latencies, 0.95), 1),
        "ttft_p50_ms_idle": round(statistics.median(idle_ttfts), 1),
        "ttft_p95_ms_idle": round(percentile(idle_ttfts, 0.95), 1),
        "peak_rss_mib": round(peak_mib, 1),
        "engine": counters,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 2) if numerator and denominator else None


def ratios(runs: dict[str, dict], ours: str, theirs: str) -> dict[str, float | None]:
    """`ours` against `theirs`: throughput ratios (higher is better for ours) and TTFT ratios theirs/ours."""
    a, b = runs[ours], runs[theirs]
    return {
        "throughput": ratio(a["requests_per_s"], b["requests_per_s"]),
        "tokens_per_s": ratio(a["completion_tokens_per_s"], b["completion_tokens_per_s"]),
        "ttft_p50_under_load": ratio(b["ttft_p50_ms_under_load"], a["ttft_p50_ms_under_load"]),
        "ttft_p50_idle": ratio(b["ttft_p50_ms_idle"], a["ttft_p50_ms_idle"]),
        "peak_rss": ratio(a["peak_rss_mib"], b["peak_rss_mib"]),
    }


def write_result(path: Path, result: dict) -> None:
    """Write through a temporary file and rename, so a reader never sees half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specialists", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60, help="load time per server, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="turns each server takes, alternating")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-llama-cpp-server", action="store_true", help="leave llama_cpp.server out")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the result (e.g. for a smoke run)")
    args = parser.parse_args()

    specialists = train_specialists(args.specialists, args.train_steps)
    models = [f"cloudsec-{index}" for index in range(args.specialists)] + ["base"]
    texts = [json.loads(line)["text"] for line in (EXAMPLE / "test.jsonl").read_text().splitlines()]
    starts = {
        "torch_batched": lambda: start_server(specialists, 16, args.specialists),
        "torch_batch1_resident": lambda: start_server(specialists, 1, args.specialists),
        "llamacpp": lambda: start_server(specialists, 1, args.specialists, engine="llamacpp"),
    }
    if not args.no_llama_cpp_server:
        starts["llama_cpp_server"] = lambda: start_llama_cpp_server(specialists)
    prompts = {name: user_turn for name in starts} | {"llama_cpp_server": with_system_prompts(specialists)}
    servers: dict[str, Server] = {}
    try:
        for name, start in starts.items():
            servers[name] = start()
        with PeakMemory({name: process for name, (process, _) in servers.items()}) as memory:
            idle = {name: asyncio.run(idle_probe(url, models[0], prompts[name])) for name, (_, url) in servers.items()}
            # All servers stay up and take turns, so a slow spell on this shared machine falls on each alike.
            results: dict[str, list[dict]] = {name: [] for name in servers}
            elapsed = dict.fromkeys(servers, 0.0)
            for round_index in range(args.rounds):
                for name, (_, url) in servers.items():
                    finished, seconds = asyncio.run(
                        load(
                            url,
                            prompts[name],
                            models,
                            texts,
                            args.clients,
                            args.seconds / args.rounds,
                            args.max_tokens,
                            args.seed + round_index,
                        )
                    )
                    results[name] += finished
                    elapsed[name] += seconds
                    print(f"round {round_index + 1}/{args.rounds} {name}: {len(finished) / seconds:.2f} requests/s")
        runs = {
            name: summarize(results[name], elapsed[name], idle[name], engine_counters(url), memory.peak_mib[name])
            for name, (_, url) in servers.items()
        }
    finally:
        stop_servers(list(servers.values()))
    for name, run in runs.items():
        print(name, json.dumps(run))
    batched, single = runs["torch_batched"], runs["torch_batch1_resident"]
    result = {
        "setup": {
            "base": "smollm2-135m",
            "specialists": args.specialists,
            "models_in_mix": models,
            "clients": args.clients,
            "seconds_per_server": args.seconds,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "dtype": os.environ.get("NICHE_DTYPE", "from hardware"),
        },
        **runs,
        # torch_batched against the batch-1 row (target: throughput >= 4x).
        "ratio_throughput": ratio(batched["requests_per_s"], single["requests_per_s"]),
        "ratio_tokens_per_s": ratio(batched["completion_tokens_per_s"], single["completion_tokens_per_s"]),
        "ratio_ttft_p50_under_load": ratio(single["ttft_p50_ms_under_load"], batched["ttft_p50_ms_under_load"]),
        # Time to first token means on an idle server (one request at a time); under load has its own key.
        "ttft_p50_ms": batched["ttft_p50_ms_idle"],
        "ttft_p50_ms_idle": batched["ttft_p50_ms_idle"],
        "ttft_p50_ms_under_load": batched["ttft_p50_ms_under_load"],
    }
    if "llama_cpp_server" in runs:
        result["vs_llama_cpp_server"] = {
            name: ratios(runs, name, "llama_cpp_server") for name in ("torch_batched", "llamacpp")
        }
    write_result(args.out, result)
    print(
        f"throughput x{result['ratio_throughput']} (requests/s {batched['requests_per_s']} vs "
        f"{single['requests_per_s']}), tokens/s x{result['ratio_tokens_per_s']}, TTFT p50 "
        f"{result['ttft_p50_ms_idle']} ms idle, {result['ttft_p50_ms_under_load']} ms under load; "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
