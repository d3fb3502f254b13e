"""Soak: 30 minutes of saturating mixed traffic against `niche serve`, judged by a criterion fixed before the run.

For each engine (torch, then llamacpp, by default), the specialists serve_load.py trains and the bare base are
served by `niche serve` in a subprocess on loopback. Once every adapter is loaded, the server's resident memory
(it and its children) is read at idle; then `--clients` keep-alive clients send requests back to back for
`--minutes`: chat completions (45%), streamed chat completions (35%), /v1/models (15%) and malformed requests
(5%: broken JSON, missing fields, out-of-range values, an unknown model, too many stop strings). Resident memory
and the server's CPU time are read every `--sample-seconds` throughout.

The criterion (CRITERION below, in the results file with the time it was declared, before any traffic) passes an
engine when:

- no answer is a 5xx, no stream ends in an error event, no request goes unanswered within `--request-timeout`,
  no connection fails;
- every malformed request is answered 4xx, and every well-formed one correctly: 200, a finish reason, no more
  completion tokens than asked for, a stream ending in [DONE], /v1/models naming every model served;
- resident memory grows by less than 1 MiB a minute over the second half of the traffic (the least-squares slope
  of the readings there; by then what is bounded by design, oneDNN's kernel caches and the batch's KV cache, has
  filled, so a steady slope is a leak; the results give the smallest leak per request it catches at the rate
  reached: at 300 requests a minute, 3.4 KiB);
- resident memory at the end is less than 20% above the idle reading.

The criterion this soak used until W4.3, growth under 20% from a reading taken after a minute of traffic, is
computed and recorded beside it: that reading came after most of the growth (the torch engine: +14% from it,
+40% from idle), so it could not see a leak that filled its first minute, and ten minutes could not separate a
slow leak from noise.

A soak is one long run per engine, not the median of repetitions: a leak is a trend within a run, which repeating
shorter runs would cut into pieces each too short to see it; the per-window request rates give its spread.
Clients send back to back, 20 of them so that, with 80% of requests generating, about 16 generate at any time
(the torch engine's batch); the server's CPU share of the cores is recorded to show the machine was saturated.

Writes bench/results/soak.json and exits 1 when the criterion fails. `--quick` is a smoke of the machinery: half
a minute of the torch engine with 4 clients, written to build/bench-quick/soak.json, the criterion printed but not
enforced (half a minute judges no leak).

    python bench/soak.py [--minutes 30] [--engine torch --engine llamacpp] [--clients 20] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

from harness import Report, format_range, interleave

MIX = (("chat", 45), ("stream", 35), ("models", 15), ("malformed", 5))
MIN_PUBLISHED_MINUTES = 30
SATURATED_CPU_SHARE = 0.8  # the server's CPU time over the traffic, as a share of the cores it may use
RATE_WINDOWS = 6  # request rate per sixth of the traffic: how steady it held
IDLE_SETTLE_S = 3
KEPT_SAMPLES = 20  # wrong answers kept whole in the results file, for a reader to see what went wrong
LLAMACPP_WEIGHTS = "F16 GGUF base + GGUF LoRAs"
ONE_RUN_PER_ENGINE = (
    "one long run per engine, not repetitions: a leak is a trend within a run, which repeating shorter runs would "
    "cut into pieces each too short to show it; the request rate's spread is given over windows of the run"
)


# What passes a soak, fixed in code before the run and written into its results (a plain mapping: tables.py
# imports this script without registering it as a module, which a dataclass's annotations need).
CRITERION: dict[str, Any] = {
    "max_rss_slope_mib_per_min": 1.0,
    "slope_window": "second half of the traffic (least-squares fit of the periodic readings)",
    "max_growth_from_idle": 0.20,
    "failures_allowed": (
        "none: no 5xx, no stream error event, no hung request, no transport error, every malformed request "
        "answered 4xx, every well-formed request answered correctly"
    ),
    "old_criterion": "the same failures, and growth from the warm reading (after a minute of traffic) < 20%",
    "old_max_growth_from_warm": 0.20,
}


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


def completion_problem(kind: str, status: int, body: str, max_tokens: int, models: list[str]) -> str | None:
    """Why an answer to a well-formed request is wrong, or None when it is right (5xx and error events are
    counted on their own)."""
    if status != 200:
        return f"{kind} answered {status}: {body[:200]}"
    try:
        if kind == "models":
            listed = {entry["id"] for entry in json.loads(body)["data"]}
            missing = sorted(set(models) - listed)
            return f"/v1/models lacks {missing}" if missing else None
        if kind == "chat":
            answer = json.loads(body)
            choice, usage = answer["choices"][0], answer["usage"]
            if not isinstance(choice["message"]["content"], str):
                return f"chat content is not text: {body[:200]}"
            return token_problem(choice["finish_reason"], usage["completion_tokens"], max_tokens)
        return stream_problem(body, max_tokens)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        return f"{kind} answer unreadable ({type(error).__name__}: {error}): {body[:200]}"


def stream_problem(body: str, max_tokens: int) -> str | None:
    events = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return f"stream did not end with [DONE]: {body[-200:]}"
    chunks = [json.loads(event) for event in events[:-1]]
    if any("error" in chunk for chunk in chunks):
        return None  # an error event: counted as such
    finishes = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    usages = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    if len(finishes) != 1 or len(usages) != 1:
        return f"stream with {len(finishes)} finish reasons and {len(usages)} usage chunks"
    return token_problem(finishes[0], usages[0]["completion_tokens"], max_tokens)


def token_problem(finish_reason: str, completion_tokens: int, max_tokens: int) -> str | None:
    if finish_reason not in ("stop", "length"):
        return f"finish reason {finish_reason!r}"
    if completion_tokens > max_tokens or (finish_reason == "length" and completion_tokens != max_tokens):
        return f"{completion_tokens} completion tokens, finish {finish_reason!r}, for max_tokens {max_tokens}"
    return None


class SoakClient:
    """One keep-alive connection sending a random mix of requests until the deadline, checking every answer."""

    def __init__(self, url: str, models: list[str], texts: list[str], seed: int, args: argparse.Namespace) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.models, self.texts, self.args = models, texts, args
        self.rng = random.Random(seed)
        self.statuses: Counter[str] = Counter()
        self.statuses_by_kind: dict[str, Counter[str]] = {kind: Counter() for kind, _ in MIX}
        self.malformed_not_4xx: list[str] = []
        self.wrong_answers: list[str] = []
        self.error_events = self.hung = self.transport_errors = 0
        self.latencies: list[float] = []
        self.finished_at: list[float] = []  # monotonic time each answer arrived
        self.connection: HTTPConnection | None = None

    def run(self, until: float) -> None:
        kinds, weights = zip(*MIX)
        while time.monotonic() < until:
            kind = self.rng.choices(kinds, weights)[0]
            started = time.monotonic()
            try:
                status, body, max_tokens = self.send(kind)
            except TimeoutError:
                self.hung += 1
                self.reconnect()
                continue
            except (OSError, HTTPException):
                self.transport_errors += 1
                self.reconnect()
                continue
            self.record(kind, status, body, max_tokens, started)

    def record(self, kind: str, status: int, body: str, max_tokens: int, started: float) -> None:
        now = time.monotonic()
        self.latencies.append(now - started)
        self.finished_at.append(now)
        self.statuses[str(status)] += 1
        self.statuses_by_kind[kind][str(status)] += 1
        if status >= 500:
            return
        if kind == "malformed":
            if not 400 <= status < 500:
                self.malformed_not_4xx.append(f"{status}: {body[:200]}")
            return
        if kind == "stream" and any(line.startswith('data: {"error"') for line in body.splitlines()):
            self.error_events += 1
        problem = completion_problem(kind, status, body, max_tokens, self.models)
        if problem:
            self.wrong_answers.append(problem)

    def send(self, kind: str) -> tuple[int, str, int]:
        model = self.rng.choice(self.models)
        if kind == "models":
            return *self.request("GET", "/v1/models", None), 0
        if kind == "malformed":
            return *self.request("POST", "/v1/chat/completions", self.rng.choice(malformed_bodies(model))), 0
        max_tokens = self.rng.randint(1, self.args.max_tokens)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": self.rng.choice(self.texts)}],
            "max_tokens": max_tokens,
            "temperature": self.rng.choice([0, 0.7]),
            "stream": kind == "stream",
        }
        if kind == "stream":
            body["stream_options"] = {"include_usage": True}
        return *self.request("POST", "/v1/chat/completions", json.dumps(body).encode()), max_tokens

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


class ServerMeter:
    """Resident memory and CPU time of a server's processes (it and its children), read every `interval_s`."""

    def __init__(self, pid: int, interval_s: float) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.readings: list[tuple[float, float, float]] = []  # (seconds since start, MiB, CPU seconds)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> tuple[float, float]:
        """Resident MiB and CPU seconds (user + system) of the server and its living children, now."""
        import psutil

        resident = cpu = 0.0
        for member in [self.process, *self.process.children(recursive=True)]:
            try:
                resident += member.memory_info().rss
                times = member.cpu_times()
                cpu += times.user + times.system
            except psutil.Error:  # a child that just exited
                continue
        return resident / 2**20, cpu

    def idle_mib(self) -> float:
        """The median of three readings a second apart, on a server that has nothing to do."""
        time.sleep(IDLE_SETTLE_S)
        readings = []
        for _ in range(3):
            readings.append(self.read()[0])
            time.sleep(1)
        return statistics.median(readings)

    def _take_reading(self) -> None:
        self.readings.append((time.monotonic() - self.started, *self.read()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take_reading()

    def __enter__(self) -> ServerMeter:
        self.started = time.monotonic()
        self._take_reading()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take_reading()


def machine_busy_seconds() -> tuple[float, float]:
    """All cores' busy and total CPU seconds since boot, to tell what share of the machine was busy meanwhile."""
    import psutil

    times = psutil.cpu_times()._asdict()
    # Linux counts guest time inside user time as well: left out, it is not counted twice.
    total = sum(seconds for state, seconds in times.items() if state not in ("guest", "guest_nice"))
    return total - times["idle"] - times.get("iowait", 0.0), total


def least_squares_slope(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Slope of y over x and its standard error, or None with fewer than 3 points."""
    if len(points) < 3:
        return None
    xs, ys = zip(*points)
    if len(set(xs)) < 2:
        return None
    slope, intercept = statistics.linear_regression(xs, ys)
    residual = sum((y - (slope * x + intercept)) ** 2 for x, y in points)
    spread = sum((x - statistics.fmean(xs)) ** 2 for x in xs)
    return slope, (residual / (len(points) - 2) / spread) ** 0.5


def rss_slope(series: list[list[float]], from_s: float, to_s: float) -> dict[str, Any]:
    """The least-squares RSS slope (MiB per minute) of the readings taken between from_s and to_s."""
    points = [(seconds / 60, mib) for seconds, mib in series if from_s <= seconds <= to_s]
    fit = least_squares_slope(points)
    return {
        "mib_per_min": None if fit is None else round(fit[0], 4),
        "standard_error": None if fit is None else round(fit[1], 4),
        "readings": len(points),
        "from_s": round(from_s, 1),
        "to_s": round(to_s, 1),
    }


def percentile(values: list[float], fraction: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else None


def rates_by_window(finished_at: list[float], started: float, seconds: float) -> list[float]:
    """Answers per minute in each of RATE_WINDOWS equal windows of the traffic."""
    width = seconds / RATE_WINDOWS
    counts = [0] * RATE_WINDOWS
    for moment in finished_at:
        counts[min(RATE_WINDOWS - 1, max(0, int((moment - started) / width)))] += 1
    return [round(count / (width / 60), 1) for count in counts]


def load_every_adapter(url: str, models: list[str], texts: list[str], args: argparse.Namespace) -> None:
    """One short request per model, so the idle reading holds every adapter."""
    loader = SoakClient(url, models, texts, args.seed, args)
    for model in models:
        body = {"model": model, "messages": [{"role": "user", "content": texts[0]}], "max_tokens": 2}
        status, answer = loader.request("POST", "/v1/chat/completions", json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"loading {model!r} before the soak answered {status}: {answer[:300]}")
    loader.reconnect()


def drive_traffic(url: str, models: list[str], texts: list[str], args: argparse.Namespace) -> list[SoakClient]:
    clients = [SoakClient(url, models, texts, args.seed + index, args) for index in range(args.clients)]
    until = time.monotonic() + args.minutes * 60
    threads = [threading.Thread(target=client.run, args=(until,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.reconnect()
    return clients


def soak(engine: str, specialists: Path, models: list[str], texts: list[str], args: argparse.Namespace) -> dict:
    from serve_load import start_server, stop_servers

    server = start_server(specialists, max_loaded=len(models), engine=engine)
    try:
        process, url = server
        load_every_adapter(url, models, texts, args)
        meter = ServerMeter(process.pid, args.sample_seconds)
        idle_mib = meter.idle_mib()
        traffic_started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        busy_before, total_before = machine_busy_seconds()
        own_cpu_before = time.process_time()
        with meter:
            clients = drive_traffic(url, models, texts, args)
        busy_after, total_after = machine_busy_seconds()
        own_cpu = time.process_time() - own_cpu_before
    finally:
        stop_servers([server])
    traffic = {
        "traffic_started": traffic_started,
        "seconds": round(meter.readings[-1][0], 1),
        "machine_busy_share": round((busy_after - busy_before) / (total_after - total_before), 3),
        "load_generator_cpu_share": round(own_cpu / meter.readings[-1][0] / args.cores, 3),
    }
    run = traffic | answers_record(clients, meter) | memory_record(meter, idle_mib, args)
    return run | {"leak_visible_per_request_kib": leak_visible_per_request_kib(run)}


def answers_record(clients: list[SoakClient], meter: ServerMeter) -> dict:
    seconds = meter.readings[-1][0]
    statuses = sum((client.statuses for client in clients), Counter())
    by_kind = {kind: sum((client.statuses_by_kind[kind] for client in clients), Counter()) for kind, _ in MIX}
    latencies = [latency for client in clients for latency in client.latencies]
    finished_at = [moment for client in clients for moment in client.finished_at]
    wrong = [answer for client in clients for answer in client.wrong_answers]
    malformed = [answer for client in clients for answer in client.malformed_not_4xx]
    windows = rates_by_window(finished_at, meter.started, seconds)
    return {
        "requests": sum(statuses.values()),
        "requests_per_min": round(sum(statuses.values()) / (seconds / 60), 1),
        "requests_per_min_by_window": windows,
        "requests_per_min_windows": {"median": statistics.median(windows), "min": min(windows), "max": max(windows)},
        "status_counts": dict(sorted(statuses.items())),
        "status_counts_by_kind": {kind: dict(sorted(counts.items())) for kind, counts in by_kind.items()},
        "server_errors_5xx": sum(count for status, count in statuses.items() if status.startswith("5")),
        "stream_error_events": sum(client.error_events for client in clients),
        "hung_requests": sum(client.hung for client in clients),
        "transport_errors": sum(client.transport_errors for client in clients),
        "malformed_not_4xx": len(malformed),
        "malformed_not_4xx_samples": malformed[:KEPT_SAMPLES],
        "wrong_answers": len(wrong),
        "wrong_answer_samples": wrong[:KEPT_SAMPLES],
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
    }


def memory_record(meter: ServerMeter, idle_mib: float, args: argparse.Namespace) -> dict:
    seconds, end_mib, _ = meter.readings[-1]
    cpu_seconds = meter.readings[-1][2] - meter.readings[0][2]
    warm_at = args.warm_reading_minutes * 60
    warm_mib = next((mib for moment, mib, _ in meter.readings if moment >= warm_at), end_mib)
    series = [[round(moment, 1), round(mib, 1)] for moment, mib, _ in meter.readings]
    server_share = cpu_seconds / seconds / args.cores
    return {
        "server_cpu_share": round(server_share, 3),
        "saturated": server_share >= SATURATED_CPU_SHARE,
        "rss_idle_mib": round(idle_mib, 1),
        "rss_warm_mib": round(warm_mib, 1),
        "rss_warm_reading_s": warm_at,
        "rss_end_mib": round(end_mib, 1),
        "rss_peak_mib": round(max(mib for _, mib, _ in meter.readings), 1),
        "rss_growth_from_idle": round(end_mib / idle_mib - 1, 4),
        "rss_growth_from_warm": round(end_mib / warm_mib - 1, 4),
        "rss_slope_second_half": rss_slope(series, seconds / 2, seconds),
        "rss_slope_first_half": rss_slope(series, 0, seconds / 2),
        "rss_series_s_mib": series,
    }


def judge(run: dict, criterion: dict[str, Any] = CRITERION) -> dict:
    """The run against the criterion fixed before it, and against the old one, each with its failures."""
    failed = [
        f"{count} {what}"
        for what, count in {
            "5xx answers": run["server_errors_5xx"],
            "streams ending in an error event": run["stream_error_events"],
            "requests with no answer within the timeout": run["hung_requests"],
            "transport errors": run["transport_errors"],
            "malformed requests not answered 4xx": run["malformed_not_4xx"],
        }.items()
        if count
    ]
    if not run["requests"]:
        failed.append("no request was answered")
    new = failed + [f"{run['wrong_answers']} wrong answers to well-formed requests"] * bool(run["wrong_answers"])
    slope = run["rss_slope_second_half"]
    if slope["mib_per_min"] is None:
        new.append(f"RSS slope over the second half: {slope['readings']} readings, too few to fit")
    elif slope["mib_per_min"] >= criterion["max_rss_slope_mib_per_min"]:
        new.append(
            f"RSS grew {slope['mib_per_min']:.2f} MiB/min over the second half "
            f"(limit {criterion['max_rss_slope_mib_per_min']:g})"
        )
    if run["rss_growth_from_idle"] >= criterion["max_growth_from_idle"]:
        new.append(
            f"RSS grew {run['rss_growth_from_idle']:.1%} from idle (limit {criterion['max_growth_from_idle']:.0%})"
        )
    old = list(failed)
    if run["rss_growth_from_warm"] >= criterion["old_max_growth_from_warm"]:
        old.append(
            f"RSS grew {run['rss_growth_from_warm']:.1%} from the warm reading "
            f"(limit {criterion['old_max_growth_from_warm']:.0%})"
        )
    return {"criterion": {"passed": not new, "failures": new}, "old_criterion": {"passed": not old, "failures": old}}


def leak_visible_per_request_kib(run: dict, criterion: dict[str, Any] = CRITERION) -> float | None:
    """The smallest per-request leak the slope limit catches at this run's request rate."""
    return (
        round(criterion["max_rss_slope_mib_per_min"] / run["requests_per_min"] * 1024, 2) if run["requests"] else None
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, help=f"traffic per engine (default and least {MIN_PUBLISHED_MINUTES})")
    parser.add_argument(
        "--warm-reading-minutes", type=float, help="when the old criterion's warm reading is taken (default 1)"
    )
    parser.add_argument("--engine", action="append", choices=["torch", "llamacpp"], help="repeatable; default both")
    parser.add_argument(
        "--clients", type=int, help="back-to-back clients, enough to saturate (default 20, 4 with --quick)"
    )
    parser.add_argument("--specialists", type=int, help="default 4 (2 with --quick)")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--sample-seconds", type=float, help="between memory readings (default 10, 2 with --quick)")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=150,
        help="seconds before a request counts as hung (past the server's own 120 s deadline, which answers it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke: half a minute of the torch engine, under build/bench-quick/"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.minutes = args.minutes or (0.5 if quick else MIN_PUBLISHED_MINUTES)
    args.warm_reading_minutes = args.warm_reading_minutes or (0.1 if quick else 1)
    args.engine = args.engine or (["torch"] if quick else ["torch", "llamacpp"])
    args.specialists = args.specialists or (2 if quick else 4)
    args.clients = args.clients or (4 if quick else 20)
    args.sample_seconds = args.sample_seconds or (2 if quick else 10)
    args.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not quick and args.minutes < MIN_PUBLISHED_MINUTES:
        parser.error(
            f"--minutes {args.minutes:g}: a published soak runs at least {MIN_PUBLISHED_MINUTES}; --quick for a smoke"
        )
    if args.warm_reading_minutes >= args.minutes:
        parser.error("--warm-reading-minutes must fall within the traffic (--minutes)")
    return args


def setup_record(args: argparse.Namespace, models: list[str]) -> dict:
    from niche.hardware import detect_hardware

    return {
        "engines": args.engine,
        "minutes": args.minutes,
        "clients": args.clients,
        "specialists": args.specialists,
        "models_in_mix": models,
        "train_steps": args.train_steps,
        "max_tokens": args.max_tokens,
        "sample_seconds": args.sample_seconds,
        "warm_reading_minutes": args.warm_reading_minutes,
        "request_timeout_s": args.request_timeout,
        "cores": args.cores,
        "mix": dict(MIX),
        "torch_engine": "batched, --max-batch-size 16, every adapter loaded",
        "dtype": {"torch": str(detect_hardware().dtype).removeprefix("torch."), "llamacpp": LLAMACPP_WEIGHTS},
    }


def main() -> None:
    args = parse_arguments()
    report = Report("soak", args)
    report.repeats = 1  # one long run per engine: ONE_RUN_PER_ENGINE says why
    criterion = CRITERION | {"declared_at": report.provenance["started"]}
    print("criterion, fixed before any traffic:", json.dumps(criterion, indent=2))

    from serve_load import EXAMPLE, train_specialists

    specialists = train_specialists(args.specialists, args.train_steps)
    models = [f"cloudsec-{index}" for index in range(args.specialists)] + ["base"]
    texts = [json.loads(line)["text"] for line in (EXAMPLE / "test.jsonl").read_text().splitlines()]
    setup = setup_record(args, models)
    measured, schedule = interleave(
        {
            engine: lambda _round, engine=engine: soak(engine, specialists, models, texts, args)
            for engine in args.engine
        },
        repeats=1,
        on_result=lambda engine, _round, run: print_run(engine, run, judge(run)),
    )
    runs = {engine: results[0] for engine, results in measured.items()}
    verdicts = {engine: judge(run) for engine, run in runs.items()}
    failed = [f"{engine}: {why}" for engine, verdict in verdicts.items() for why in verdict["criterion"]["failures"]]
    report.write(
        {
            "why_one_run": ONE_RUN_PER_ENGINE,
            "criterion": criterion,
            "setup": setup,
            "schedule": schedule,
            "runs": runs,
            "verdicts": verdicts,
            "passed": not failed,
            "passed_old_criterion": all(verdict["old_criterion"]["passed"] for verdict in verdicts.values()),
            "failures": failed,
        }
    )
    if failed and report.quick:
        print("quick: the criterion is reported, not enforced (half a minute on a shared machine judges no leak)")
    elif failed:
        sys.exit("soak failed:\n" + "\n".join(failed))


def print_run(engine: str, run: dict, verdict: dict) -> None:
    slope = run["rss_slope_second_half"]
    rates = run["requests_per_min_windows"]
    print(
        f"{engine}: {run['requests']} requests in {run['seconds'] / 60:.1f} min, "
        f"{format_range(rates, 1)} requests/min over {RATE_WINDOWS} windows (median, min-max), "
        f"server CPU {run['server_cpu_share']:.0%} of the cores (machine busy {run['machine_busy_share']:.0%}); statuses {run['status_counts']}; "
        f"5xx {run['server_errors_5xx']}, error events {run['stream_error_events']}, hung {run['hung_requests']}, "
        f"transport {run['transport_errors']}, malformed not 4xx {run['malformed_not_4xx']}, "
        f"wrong answers {run['wrong_answers']}; latency p50 {run['latency_p50_ms']} ms, p99 {run['latency_p99_ms']} ms"
    )
    print(
        f"{engine}: RSS idle {run['rss_idle_mib']:.0f} -> warm {run['rss_warm_mib']:.0f} -> end "
        f"{run['rss_end_mib']:.0f} MiB; slope over the second half {slope['mib_per_min']} MiB/min "
        f"(+-{slope['standard_error']}, {slope['readings']} readings); growth from idle "
        f"{run['rss_growth_from_idle']:+.1%}, from warm {run['rss_growth_from_warm']:+.1%}"
    )
    for name in ("criterion", "old_criterion"):
        outcome = "passed" if verdict[name]["passed"] else "FAILED: " + "; ".join(verdict[name]["failures"])
        print(f"{engine}: {name.replace('_', ' ')} {outcome}")


def tables(results: dict) -> dict[str, str]:
    """`traffic`: what each engine answered, how fast and how busy the machine was; `criteria`: memory, and each
    engine judged by the criterion fixed before the run and by the old one."""
    setup, runs, verdicts = results["setup"], results["runs"], results["verdicts"]
    dtypes = setup["dtype"]
    note = " (quick smoke, not a published run)" if results.get("quick") else ""
    traffic = [
        f"{setup['clients']} back-to-back clients, {setup['minutes']:g} minutes per engine, one run each{note}",
        "",
        "| engine (weights) | requests | requests/min, median (min-max) over windows | server CPU share (machine) | "
        "5xx / error events / hung / transport errors | malformed not 4xx / wrong answers | latency p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, run in runs.items():
        statuses = ", ".join(f"{count} x {status}" for status, count in run["status_counts"].items())
        saturation = "" if run["saturated"] else ", not saturated"
        traffic.append(
            f"| {engine} ({dtypes[engine]}) | {run['requests']:,} ({statuses}) "
            f"| {format_range(run['requests_per_min_windows'], 1)} "
            f"| {run['server_cpu_share']:.0%} of {setup['cores']} cores{saturation} "
            f"(machine {run['machine_busy_share']:.0%} busy) "
            f"| {run['server_errors_5xx']} / {run['stream_error_events']} / {run['hung_requests']} / "
            f"{run['transport_errors']} | {run['malformed_not_4xx']} / {run['wrong_answers']} "
            f"| {milliseconds(run['latency_p50_ms'])} / {milliseconds(run['latency_p99_ms'])} |"
        )
    criterion = results["criterion"]
    criteria = [
        f"Criterion fixed before the run: RSS slope over the second half < {criterion['max_rss_slope_mib_per_min']:g} "
        f"MiB/min and growth from idle < {criterion['max_growth_from_idle']:.0%}, no failures. Old: growth from the "
        f"reading after {setup['warm_reading_minutes']:g} min of traffic < {criterion['old_max_growth_from_warm']:.0%}.",
        "",
        "| engine (weights) | RSS idle -> warm -> end (MiB) | slope, second half (MiB/min) | smallest leak it sees "
        "(KiB/request) | growth from idle | criterion | old criterion (growth from warm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, run in runs.items():
        slope, verdict = run["rss_slope_second_half"], verdicts[engine]
        fitted = (
            "too few readings"
            if slope["mib_per_min"] is None
            else (f"{slope['mib_per_min']:.2f} +- {slope['standard_error']:.2f}")
        )
        criteria.append(
            f"| {engine} ({dtypes[engine]}) | {run['rss_idle_mib']:,.0f} -> {run['rss_warm_mib']:,.0f} -> "
            f"{run['rss_end_mib']:,.0f} | {fitted} | {run['leak_visible_per_request_kib']} "
            f"| {run['rss_growth_from_idle']:+.1%} | {verdict_cell(verdict['criterion'])} "
            f"| {verdict_cell(verdict['old_criterion'])} ({run['rss_growth_from_warm']:+.1%}) |"
        )
    return {"traffic": "\n".join(traffic) + "\n", "criteria": "\n".join(criteria) + "\n"}


def milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def verdict_cell(verdict: dict) -> str:
    return "**passed**" if verdict["passed"] else "**failed**: " + "; ".join(verdict["failures"])


if __name__ == "__main__":
    main()
