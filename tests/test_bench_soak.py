"""bench/soak.py's judgement, without a server: how answers are checked, how the RSS slope is fitted, and that the
criterion fixed before the run fails a leak the old one (growth from a warm reading) let through."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import soak  # noqa: E402

MODELS = ["cloudsec-0", "base"]


def chat_answer(content: str = "iam", finish: str = "stop", tokens: int = 2) -> str:
    return json.dumps(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens},
        }
    )


def stream_answer(finish: str = "length", tokens: int = 4, done: bool = True) -> str:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "net"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}},
    ]
    events = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks] + (["data: [DONE]\n\n"] if done else [])
    return "".join(events)


def test_right_answers_pass_the_answer_check() -> None:
    models = json.dumps({"data": [{"id": name} for name in MODELS]})
    assert soak.completion_problem("chat", 200, chat_answer(), 8, MODELS) is None
    assert soak.completion_problem("stream", 200, stream_answer(), 4, MODELS) is None
    assert soak.completion_problem("models", 200, models, 0, MODELS) is None


@pytest.mark.parametrize(
    ("kind", "status", "body", "max_tokens", "why"),
    [
        ("chat", 429, '{"error": {}}', 8, "answered 429"),
        ("chat", 200, chat_answer(tokens=9), 8, "9 completion tokens"),
        ("chat", 200, chat_answer(finish="length", tokens=3), 8, "finish 'length'"),
        ("chat", 200, "{not json", 8, "unreadable"),
        ("stream", 200, stream_answer(done=False), 4, "did not end with [DONE]"),
        ("stream", 200, stream_answer(tokens=5), 4, "5 completion tokens"),
        ("models", 200, json.dumps({"data": [{"id": "base"}]}), 0, "lacks ['cloudsec-0']"),
    ],
)
def test_wrong_answers_are_named(kind: str, status: int, body: str, max_tokens: int, why: str) -> None:
    assert why in soak.completion_problem(kind, status, body, max_tokens, MODELS)


def test_the_slope_is_a_least_squares_fit_in_mib_per_minute() -> None:
    series = [[seconds, 1000 + 0.05 * seconds] for seconds in range(0, 601, 10)]  # 3 MiB a minute
    slope = soak.rss_slope(series, 300, 600)
    assert slope["mib_per_min"] == pytest.approx(3.0)
    assert slope["standard_error"] == pytest.approx(0.0, abs=1e-6)
    assert slope["readings"] == 31
    assert soak.rss_slope(series[:2], 0, 600)["mib_per_min"] is None


def run_with_memory(readings: list[tuple[float, float]], idle_mib: float) -> dict:
    """A clean run (every answer right) whose server's memory read as given, through the script's own record."""
    meter = SimpleNamespace(readings=[(seconds, mib, seconds * 1.8) for seconds, mib in readings], started=0.0)
    args = SimpleNamespace(warm_reading_minutes=1, cores=2)
    run = {
        "requests": 9000,
        "requests_per_min": 300.0,
        "requests_per_min_windows": {"median": 300.0, "min": 290.0, "max": 310.0},
        "status_counts": {"200": 8550, "400": 450},
        "server_errors_5xx": 0,
        "stream_error_events": 0,
        "hung_requests": 0,
        "transport_errors": 0,
        "malformed_not_4xx": 0,
        "wrong_answers": 0,
        "latency_p50_ms": 3000.0,
        "latency_p99_ms": 9000.0,
        "machine_busy_share": 0.97,
    } | soak.memory_record(meter, idle_mib, args)
    return run | {"leak_visible_per_request_kib": soak.leak_visible_per_request_kib(run)}


def test_a_steady_leak_after_the_warm_reading_fails_the_new_criterion_only() -> None:
    # Warm at 1,302 MiB after a minute, then 2 MiB a minute (7 KiB a request at 300 a minute): +4.3% from warm.
    readings = [(0, 1000.0), (30, 1200.0)] + [(60 * minute, 1300 + 2.0 * minute) for minute in range(1, 31)]
    verdict = soak.judge(run_with_memory(readings, idle_mib=1000.0))
    assert verdict["old_criterion"] == {"passed": True, "failures": []}
    assert not verdict["criterion"]["passed"]
    failures = " ".join(verdict["criterion"]["failures"])
    assert "MiB/min over the second half" in failures and "from idle" in failures


def test_memory_that_fills_then_holds_passes_both() -> None:
    readings = [(0, 1000.0)] + [(60 * minute, min(1150.0, 1000 + 50 * minute)) for minute in range(1, 31)]
    run = run_with_memory(readings, idle_mib=1000.0)
    verdict = soak.judge(run)
    assert verdict["criterion"]["passed"] and verdict["old_criterion"]["passed"]
    assert run["saturated"] and run["server_cpu_share"] == pytest.approx(0.9)
    assert run["leak_visible_per_request_kib"] == pytest.approx(3.41)


def test_any_failed_request_fails_both_criteria() -> None:
    run = run_with_memory([(60 * minute, 1000.0) for minute in range(31)], idle_mib=1000.0) | {"hung_requests": 1}
    verdict = soak.judge(run)
    assert not verdict["criterion"]["passed"] and not verdict["old_criterion"]["passed"]


def test_tables_render_from_the_results_alone() -> None:
    runs = {
        "torch": run_with_memory([(60 * minute, 1000 + minute) for minute in range(31)], idle_mib=990.0),
        "llamacpp": run_with_memory([(60 * minute, 790.0) for minute in range(31)], idle_mib=786.0),
    }
    results = {
        "quick": False,
        "criterion": soak.CRITERION,
        "setup": {
            "clients": 20,
            "minutes": 30,
            "cores": 2,
            "warm_reading_minutes": 1,
            "dtype": {"torch": "bfloat16", "llamacpp": soak.LLAMACPP_WEIGHTS},
        },
        "runs": runs,
        "verdicts": {engine: soak.judge(run) for engine, run in runs.items()},
    }
    rendered = soak.tables(json.loads(json.dumps(results)))
    assert set(rendered) == {"traffic", "criteria"}
    assert (
        "| torch (bfloat16) | 9,000 (8550 x 200, 450 x 400) | 300.0 (290.0-310.0) | 90% of 2 cores (machine 97% busy)"
        in (rendered["traffic"])
    )
    criteria = rendered["criteria"].splitlines()
    torch_row = next(line for line in criteria if line.startswith("| torch"))
    assert "1.00 +- 0.00" in torch_row and "**failed**: RSS grew 1.00 MiB/min" in torch_row
    assert "**passed** (+0.0%)" in next(line for line in criteria if line.startswith("| llamacpp"))


def test_a_published_soak_runs_at_least_thirty_minutes() -> None:
    with pytest.raises(SystemExit):
        soak.parse_arguments(["--minutes", "10"])
    quick = soak.parse_arguments(["--quick"])
    assert (quick.minutes, quick.engine, quick.specialists) == (0.5, ["torch"], 2)
    full = soak.parse_arguments([])
    assert (full.minutes, full.engine, full.clients) == (30, ["torch", "llamacpp"], 20)
    assert quick.clients == 4 and full.request_timeout > 120
