"""Serving under load: mixed-adapter continuous batching vs swapping adapters one request at a time.

K specialists (short LoRA trainings of SmolLM2-135M on the project's cloudsec example, each with its own
system prompt and seed) and the bare base are served by `niche serve` in a subprocess on loopback. N clients
(the official openai client, streaming) send mixed requests (a random model, a random held-out finding) for a
bounded time against two servers: `--max-batch-size 16` (requests for any specialist are decoded together)
and `--max-batch-size 1` (one request at a time, the active adapter switched per request, as a single-adapter
server does). Both stay up and take turns in short rounds, so that the noise of a shared machine falls on both
alike. First, an idle-server probe sends short prompts one by one to each.

Prints and writes bench/results/serve_load.json: throughput (requests/s and completion tokens/s), time to
first token p50/p95 and latency p50/p95 under load, idle time to first token p50, and their ratios.

    python bench/serve_load.py [--specialists 4] [--clients 16] [--seconds 60] [--rounds 4]
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
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudsec"
RESULTS = REPO / "bench" / "results" / "serve_load.json"
WORKDIR = REPO / "build" / "bench-serve"
IDLE_PROMPTS = [f"Public S3 bucket #{index} found" for index in range(18)]  # short, and not repeated


def train_specialists(count: int, steps: int) -> Path:
    """K distinct specialists on the same base (cached in build/bench-serve between runs)."""
    from niche.config import load_config
    from niche.train import train

    root = WORKDIR / "specialists"
    for index in range(count):
        name = f"cloudsec-{index}"
        if (root / name / "niche.json").is_file():
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


def start_server(specialists: Path, max_batch_size: int, max_loaded: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "niche.cli",
        "serve",
        str(specialists),
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--max-loaded",
        str(max_loaded),
        "--no-routing",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"niche serve exited with {server.returncode}: {' '.join(command)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("niche serve did not start in 180 s")


async def one_request(client, model: str, text: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ended = time.perf_counter()
    return {"ttft": (first or ended) - started, "latency": ended - started, "tokens": tokens}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def bench_client(url: str):
    import openai

    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)


async def idle_probe(url: str, model: str) -> list[dict]:
    """Short prompts one by one on an otherwise idle server; the first few warm it up."""
    client = bench_client(url)
    idle = [await one_request(client, model, text, 8) for text in IDLE_PROMPTS]
    await client.close()
    return idle[3:]


async def load(
    url: str, models: list[str], texts: list[str], clients: int, seconds: float, max_tokens: int, seed: int
) -> tuple[list[dict], float]:
    """N clients sending mixed requests back to back for `seconds`; the finished requests and the time taken."""
    client = bench_client(url)
    rng = random.Random(seed)
    results: list[dict] = []
    stop_at = time.perf_counter() + seconds

    async def user() -> None:
        while time.perf_counter() < stop_at:
            results.append(await one_request(client, rng.choice(models), rng.choice(texts), max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await client.close()
    return results, elapsed


def engine_counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return {
            line.split(" ")[0]: round(float(line.split(" ")[1]), 2)
            for line in response.read().decode().splitlines()
            if line.startswith(("niche_forward", "niche_prefix"))
        }


def summarize(results: list[dict], elapsed: float, idle: list[dict], counters: dict[str, float]) -> dict:
    ttfts = [result["ttft"] * 1000 for result in results]
    latencies = [result["latency"] * 1000 for result in results]
    idle_ttfts = [result["ttft"] * 1000 for result in idle]
    return {
        "requests": len(results),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(len(results) / elapsed, 3),
        "completion_tokens_per_s": round(sum(result["tokens"] for result in results) / elapsed, 2),
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "ttft_p95_ms": round(percentile(ttfts, 0.95), 1),
        "latency_p50_ms": round(statistics.median(latencies), 1),
        "latency_p95_ms": round(percentile(latencies, 0.95), 1),
        "idle_ttft_p50_ms": round(statistics.median(idle_ttfts), 1),
        "idle_ttft_p95_ms": round(percentile(idle_ttfts, 0.95), 1),
        "engine": counters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specialists", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60, help="load time per mode, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="turns each mode takes, alternating")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    specialists = train_specialists(args.specialists, args.train_steps)
    models = [f"cloudsec-{index}" for index in range(args.specialists)] + ["base"]
    texts = [json.loads(line)["text"] for line in (EXAMPLE / "test.jsonl").read_text().splitlines()]
    modes = {"batched": 16, "one_at_a_time": 1}
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for mode, batch in modes.items():
            servers[mode] = start_server(specialists, batch, max_loaded=args.specialists)
        idle = {mode: asyncio.run(idle_probe(url, models[0])) for mode, (_, url) in servers.items()}
        # Both servers stay up and the modes take turns, so a slow spell on this shared machine falls on both.
        results: dict[str, list[dict]] = {mode: [] for mode in modes}
        elapsed = dict.fromkeys(modes, 0.0)
        for round_index in range(args.rounds):
            for mode, (_, url) in servers.items():
                finished, seconds = asyncio.run(
                    load(
                        url,
                        models,
                        texts,
                        args.clients,
                        args.seconds / args.rounds,
                        args.max_tokens,
                        args.seed + round_index,
                    )
                )
                results[mode] += finished
                elapsed[mode] += seconds
                print(f"round {round_index + 1}/{args.rounds} {mode}: {len(finished) / seconds:.2f} requests/s")
        runs = {
            mode: summarize(results[mode], elapsed[mode], idle[mode], engine_counters(url))
            for mode, (_, url) in servers.items()
        }
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=30)
    for mode, run in runs.items():
        print(mode, json.dumps(run))
    batched, single = runs["batched"], runs["one_at_a_time"]
    result = {
        "setup": {
            "base": "smollm2-135m",
            "specialists": args.specialists,
            "models_in_mix": models,
            "clients": args.clients,
            "seconds_per_mode": args.seconds,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "dtype": os.environ.get("NICHE_DTYPE", "from hardware"),
        },
        "batched": batched,
        "one_at_a_time": single,
        "ratio_throughput": round(batched["requests_per_s"] / single["requests_per_s"], 2),
        "ratio_tokens_per_s": round(batched["completion_tokens_per_s"] / single["completion_tokens_per_s"], 2),
        "ratio_ttft_p50_under_load": round(single["ttft_p50_ms"] / batched["ttft_p50_ms"], 2),
        "ttft_p50_ms": batched["idle_ttft_p50_ms"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"throughput x{result['ratio_throughput']} (requests/s {batched['requests_per_s']} vs "
        f"{single['requests_per_s']}), tokens/s x{result['ratio_tokens_per_s']}, "
        f"idle TTFT p50 {result['ttft_p50_ms']} ms; written to {RESULTS.relative_to(REPO)}"
    )


if __name__ == "__main__":
    main()
