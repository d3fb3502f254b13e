"""Soak: minutes of mixed traffic against `niche serve`, checking that nothing fails, hangs or leaks.

For each engine (torch, then llamacpp, by default), the specialists serve_load.py trains are served by
`niche serve` in a subprocess on loopback, and 8 clients on keep-alive connections send, back to back for
`--minutes`: chat completions (45%), streamed chat completions (35%), /v1/models (15%) and malformed requests
(5%: broken JSON, missing fields, out-of-range values, an unknown model, too many stop strings). Recorded per
engine: the count per status code, 5xx answers and streams that ended in an error event, hung requests (no
answer within `--request-timeout`), transport errors, and the server's resident memory (with its children):
idle (every adapter loaded), after `--warmup-minutes` of the same traffic, at the end, and every 15 s between.

Criteria: no 5xx, no error events, no hung request, no transport error, memory growth from the warm reading to
the end under 20%, and every malformed request answered 4xx. The warm-up is traffic like the rest: in its first
minute the torch engine fills what is bounded by design (oneDNN's kernel caches, 256 entries of ~0.7 MiB each,
`niche.hardware.bound_kernel_caches`; the batch's KV cache up to its row capacity), and a leak is growth after
that. Growth from idle is recorded beside it. Writes bench/results/soak.json (through a temporary file) and exits 1 when a
criterion fails.

    python bench/soak.py [--minutes 10] [--engine torch --engine llamacpp] [--clients 8] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from http.client import HTTPConnection, HTTPException
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from serve_load import (  # noqa: E402
    EXAMPLE,
    PeakMemory,
    percentile,
    start_server,
    stop_servers,
    train_specialists,
    write_result,
)

RESULTS = REPO / "bench" / "results" / "soak.json"
MAX_MEMORY_GROWTH = 0.20
MIX = (("chat", 45), ("stream", 35), ("models", 15), ("malformed", 5))


def malformed_bodies(model: str) -> list[bytes]:
    """Requests a client can get wrong; each must be answered 4xx, never 5xx or a hang."""
    turn = [{"role": "user", "content": "hi"}]
    bad = [
        {"model": model},  # no messages
        {"model": model, "messages": []},
        {"model": model, "messages": turn, "max_tokens": -1},
        {"model": model, "messages": turn, "temperature": 9},
        {"model": "no-such-specialist", "messages": turn},
        {"model": model, "messages": turn, "stop": ["x"] * 1000},
        {"model": model, "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": model, "messages": turn, "response_format": {"type": "json_schema"}},
    ]
    return [json.dumps(body).encode() for body in bad] + [b'{"model": "', b"not json at all"]


class SoakClient:
    """One keep-alive connection sending a random mix of requests until the deadline."""

    def __init__(self, url: str, models: list[str], texts: list[str], seed: int, args: argparse.Namespace) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.models, self.texts, self.args = models, texts, args
        self.rng = random.Random(seed)
        self.statuses: Counter[str] = Counter()
        self.malformed_not_4xx: list[str] = []
        self.error_events = self.hung = self.transport_errors = 0
        self.latencies: list[float] = []
        self.connection: HTTPConnection | None = None

    def run(self, until: float) -> None:
        kinds, weights = zip(*MIX)
        while time.monotonic() < until:
            kind = self.rng.choices(kinds, weights)[0]
            started = time.monotonic()
            try:
                status, body = self.send(kind)
            except TimeoutError:
                self.hung += 1
                self.reconnect()
                continue
            except (OSError, HTTPException):
                self.transport_errors += 1
                self.reconnect()
                continue
            self.latencies.append(time.monotonic() - started)
            self.statuses[str(status)] += 1
            if kind == "malformed" and not 400 <= status < 500:
                self.malformed_not_4xx.append(f"{status}: {body[:200]}")
            if kind == "stream" and any(line.startswith('data: {"error"') for line in body.splitlines()):
                self.error_events += 1

    def send(self, kind: str) -> tuple[int, str]:
        model = self.rng.choice(self.models)
        if kind == "models":
            return self.request("GET", "/v1/models", None)
        if kind == "malformed":
            return self.request("POST", "/v1/chat/completions", self.rng.choice(malformed_bodies(model)))
        body = {
            "model": model,
            "messages": [{"role": "user", "content": self.rng.choice(self.texts)}],
            "max_tokens": self.rng.randint(1, self.args.max_tokens),
            "temperature": self.rng.choice([0, 0.7]),
            "stream": kind == "stream",
        }
        return self.request("POST", "/v1/chat/completions", json.dumps(body).encode())

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, str]:
        if self.connection is None:
            self.connection = HTTPConnection(self.host, self.port, timeout=self.args.request_timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.connection.request(method, path, body, headers)
        response = self.connection.getresponse()
        return response.status, response.read().decode(errors="replace")

    def reconnect(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None


def soak(engine: str, specialists: Path, models: list[str], texts: list[str], args: argparse.Namespace) -> dict:
    server = start_server(specialists, max_loaded=len(models), engine=engine)
    try:
        process, url = server
        warm = SoakClient(url, models, texts, args.seed, args)
        for model in models:  # load every adapter before the first memory reading
            warm.request(
                "POST",
                "/v1/chat/completions",
                json.dumps(
                    {"model": model, "messages": [{"role": "user", "content": texts[0]}], "max_tokens": 2}
                ).encode(),
            )
        memory = PeakMemory({engine: process}, interval_s=1.0)
        idle_mib = memory.current_mib(engine)
        clients = [SoakClient(url, models, texts, args.seed + index, args) for index in range(args.clients)]
        until = time.monotonic() + (args.warmup_minutes + args.minutes) * 60
        with memory:
            threads = [threading.Thread(target=client.run, args=(until,)) for client in clients]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        end_mib = memory.current_mib(engine)
        for client in clients:
            client.reconnect()
    finally:
        stop_servers([server])
    series = memory.series[engine]
    warm_mib = next((mib for seconds, mib in series if seconds >= args.warmup_minutes * 60), end_mib)
    statuses = sum((client.statuses for client in clients), Counter())
    latencies = [latency for client in clients for latency in client.latencies]
    return {
        "requests": sum(statuses.values()),
        "status_counts": dict(sorted(statuses.items())),
        "server_errors_5xx": sum(count for status, count in statuses.items() if status.startswith("5")),
        "stream_error_events": sum(client.error_events for client in clients),
        "hung_requests": sum(client.hung for client in clients),
        "transport_errors": sum(client.transport_errors for client in clients),
        "malformed_not_4xx": [answer for client in clients for answer in client.malformed_not_4xx][:20],
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "rss_idle_mib": round(idle_mib, 1),
        "rss_warm_mib": round(warm_mib, 1),
        "rss_end_mib": round(end_mib, 1),
        "rss_peak_mib": round(memory.peak_mib[engine], 1),
        "rss_growth_from_idle": round(end_mib / idle_mib - 1, 4),
        "rss_growth": round(end_mib / warm_mib - 1, 4),
        "rss_series_mib": [[round(seconds), round(mib, 1)] for seconds, mib in series[::15]],
    }


def failures(engine: str, run: dict) -> list[str]:
    checks = {
        "5xx answers": run["server_errors_5xx"],
        "streams ending in an error event": run["stream_error_events"],
        "requests with no answer within the timeout": run["hung_requests"],
        "transport errors": run["transport_errors"],
        "malformed requests not answered 4xx": len(run["malformed_not_4xx"]),
    }
    failed = [f"{engine}: {count} {what}" for what, count in checks.items() if count]
    if run["rss_growth"] >= MAX_MEMORY_GROWTH:
        failed.append(f"{engine}: resident memory grew {run['rss_growth']:.0%} (limit {MAX_MEMORY_GROWTH:.0%})")
    if not run["requests"]:
        failed.append(f"{engine}: no request was answered")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10, help="measured traffic time per engine")
    parser.add_argument(
        "--warmup-minutes", type=float, default=1, help="traffic before the memory reading that growth is measured from"
    )
    parser.add_argument("--engine", action="append", choices=["torch", "llamacpp"], help="repeatable; default both")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--specialists", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds before a request counts as hung")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the result (e.g. for a smoke run)")
    args = parser.parse_args()

    specialists = train_specialists(args.specialists, args.train_steps)
    models = [f"cloudsec-{index}" for index in range(args.specialists)] + ["base"]
    texts = [json.loads(line)["text"] for line in (EXAMPLE / "test.jsonl").read_text().splitlines()]
    runs = {}
    for engine in args.engine or ["torch", "llamacpp"]:
        runs[engine] = soak(engine, specialists, models, texts, args)
        print(engine, json.dumps(runs[engine]))
    failed = [failure for engine, run in runs.items() for failure in failures(engine, run)]
    setup = {
        key: getattr(args, key)
        for key in ("minutes", "warmup_minutes", "clients", "specialists", "max_tokens", "request_timeout")
    }
    write_result(args.out, {"setup": setup | {"mix": dict(MIX)}, **runs, "passed": not failed, "failures": failed})
    print(f"written to {args.out}")
    if failed:
        sys.exit("soak failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
