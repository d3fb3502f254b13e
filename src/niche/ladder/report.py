"""Reports for people: markdown, and one self-contained HTML page with the plots inlined as PNG."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from niche.errors import require_extra
from niche.ladder.results import LadderReport


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _rung_rows(report: LadderReport) -> list[list[str]]:
    return [
        [
            rung.name + (" (recommended)" if rung.name == report.recommendation else ""),
            _number(rung.headline),
            f"{rung.latency_p50_ms:.0f} / {rung.latency_p95_ms:.0f}",
            f"{rung.examples_per_s:.2f}",
            f"{rung.prompt_tokens_per_request:.0f}" if rung.prompt_tokens_per_request else "n/a",
            _number(rung.cost_per_million_tokens, 4),
            _number(rung.cost_per_thousand_requests, 4),
            _number(rung.build_seconds, 0) if rung.build_seconds is not None else "",
        ]
        for rung in report.rungs
    ]


RUNG_HEADER = [
    "rung",
    "headline",
    "latency p50 / p95 (ms)",
    "requests/s (batched)",
    "prompt tokens/request",
    "cost / 1M tokens",
    "cost / 1k requests",
    "train or fit (s)",
]
# Above this many labels the confusion matrix is no longer readable as a picture; eval.md lists the confusions.
CONFUSION_MATRIX_MAX_LABELS = 30


def _forgetting_rows(report: LadderReport) -> list[list[str]]:
    probe = report.forgetting
    if not probe:
        return []
    return [
        [
            "multiple-choice accuracy",
            _number(probe["base"]["accuracy"]),
            _number(probe["specialist"]["accuracy"]),
            _number(probe["accuracy_relative_change"]),
        ],
        [
            "general-text perplexity",
            _number(probe["base"]["perplexity"], 1),
            _number(probe["specialist"]["perplexity"], 1),
            _number(probe["perplexity_relative_change"]),
        ],
    ]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def ladder_markdown(report: LadderReport) -> str:
    lines = [
        f"# Decision ladder: {report.specialist}",
        "",
        f"{report.test_rows} held-out rows, headline metric **{report.headline_metric}**, target {report.target:g}, "
        f"hardware price {report.price_per_hour:g} per hour.",
        "",
        f"**Recommendation: {report.recommendation}** — {report.reason}.",
        "",
        *_markdown_table(RUNG_HEADER, _rung_rows(report)),
    ]
    if report.retrieval:
        lines += ["", "Retrieval: " + ", ".join(f"{key} {_number(value)}" for key, value in report.retrieval.items())]
    if report.forgetting:
        probe = report.forgetting
        verdict = "forgetting beyond the threshold" if probe["forgetting"] else "no forgetting beyond the threshold"
        lines += [
            "",
            f"## Forgetting ({verdict}, threshold {probe['threshold']:g} relative)",
            "",
            *_markdown_table(["probe", "base", "specialist", "relative change"], _forgetting_rows(report)),
        ]
    if report.engines:
        lines += [
            "",
            "## Serving options (measured by bench/edge_speed.py)",
            "",
            *_markdown_table(ENGINE_HEADER, _engine_rows(report)),
        ]
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


ENGINE_HEADER = [
    "engine and format",
    "time to first token p50 (ms)",
    "decode tokens/s",
    "file (MB)",
    "cost / 1M tokens",
]


def _engine_rows(report: LadderReport) -> list[list[str]]:
    return [
        [
            row["engine"],
            _number(row["ttft_p50_ms"]),
            _number(row["decode_tokens_per_s"]),
            _number(row["file_mb"]) if row["file_mb"] is not None else "",
            _number(row["cost_per_million_tokens"]),
        ]
        for row in report.engines
    ]


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _plots(report: LadderReport) -> list[tuple[str, str]]:
    require_extra("train", ("matplotlib",), "the ladder's plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: list[tuple[str, str]] = []
    names = [rung.name for rung in report.rungs]
    colours = ["#2b6cb0" if name == report.recommendation else "#a0aec0" for name in names]

    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar(names, [rung.headline for rung in report.rungs], color=colours)
    axis.axhline(report.target, color="#c53030", linestyle="--", label=f"target {report.target:g}")
    axis.set_ylabel(report.headline_metric)
    axis.set_ylim(0, 1.05 if all(rung.headline <= 1 for rung in report.rungs) else None)
    axis.legend()
    axis.set_title("Quality per rung")
    plots.append(("Quality per rung", _png(figure)))

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3), layout="constrained")
    left.bar(names, [rung.latency_p50_ms for rung in report.rungs], color=colours)
    left.set_ylabel("latency p50 (ms)")
    left.set_title("Latency, one request at a time")
    right.bar(names, [rung.cost_per_thousand_requests for rung in report.rungs], color=colours)
    right.set_ylabel("cost per 1k requests")
    right.set_title(f"Cost at {report.price_per_hour:g}/hour")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=20)
    plots.append(("Latency and cost", _png(figure)))

    losses = [(entry["step"], entry["loss"]) for entry in report.training_log if "loss" in entry]
    validation = [(entry["step"], entry["eval_loss"]) for entry in report.training_log if "eval_loss" in entry]
    if losses:
        figure, axis = plt.subplots(figsize=(6, 3))
        axis.plot(*zip(*losses), label="training loss")
        if validation:
            axis.plot(*zip(*validation), marker="o", label="validation loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend()
        axis.set_title("Training")
        plots.append(("Training and validation loss", _png(figure)))

    specialist = next((rung for rung in report.rungs if rung.name == "specialist"), None)
    if (
        report.task_kind == "label"
        and report.labels
        and specialist is not None
        and len(report.labels) <= CONFUSION_MATRIX_MAX_LABELS
    ):
        index = {label: position for position, label in enumerate(report.labels)}
        size = len(report.labels)
        matrix = [[0] * (size + 1) for _ in range(size)]
        for reference, prediction in zip(report.references, specialist.predictions):
            if reference in index:
                matrix[index[reference]][index.get(prediction, size)] += 1
        figure, axis = plt.subplots(figsize=(1 + 0.6 * size, 0.9 + 0.5 * size))
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(size + 1), [*report.labels, "(other)"], rotation=45, ha="right")
        axis.set_yticks(range(size), report.labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("reference")
        for row in range(size):
            for column in range(size + 1):
                if matrix[row][column]:
                    axis.text(column, row, matrix[row][column], ha="center", va="center", fontsize=8)
        axis.set_title("Specialist confusion matrix")
        plots.append(("Confusion matrix", _png(figure)))

    if report.forgetting:
        probe = report.forgetting
        panels = [("multiple-choice accuracy", "accuracy")]
        if probe["base"]["perplexity"] is not None:
            panels.append(("general-text perplexity", "perplexity"))
        figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
        for axis, (title, key) in zip(axes[0], panels):
            axis.bar(
                ["base", "specialist"], [probe["base"][key], probe["specialist"][key]], color=["#a0aec0", "#2b6cb0"]
            )
            axis.set_title(title)
        plots.append(("Forgetting: before and after fine-tuning", _png(figure)))
    return plots


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ladder_html(report: LadderReport) -> str:
    """One HTML file, no external resources: tables and the plots as inline PNG images."""
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"><figcaption>'
        f"{html.escape(title)}</figcaption></figure>"
        for title, data in _plots(report)
    )
    forgetting = (
        "<h2>Forgetting</h2>"
        + _html_table(["probe", "base", "specialist", "relative change"], _forgetting_rows(report))
        if report.forgetting
        else ""
    )
    retrieval = (
        "<p>Retrieval: "
        + html.escape(", ".join(f"{key} {_number(value)}" for key, value in report.retrieval.items()))
        + "</p>"
        if report.retrieval
        else ""
    )
    notes = "".join(f"<p class=note>{html.escape(note)}</p>" for note in report.notes)
    engines = "<h2>Serving options</h2>" + _html_table(ENGINE_HEADER, _engine_rows(report)) if report.engines else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>niche ladder: {html.escape(report.specialist)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #1a202c; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #cbd5e0; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.recommendation {{ background: #ebf8ff; border-left: 4px solid #2b6cb0; padding: 0.6em 1em; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
.note {{ color: #744210; }}
</style></head><body>
<h1>Decision ladder</h1>
<p>{html.escape(report.specialist)}: {report.test_rows} held-out rows, headline metric
<b>{html.escape(report.headline_metric)}</b>, target {report.target:g}, hardware price {report.price_per_hour:g}/hour.</p>
<p class="recommendation" id="recommendation"><b>Recommendation: {html.escape(report.recommendation)}</b> &mdash;
{html.escape(report.reason)}.</p>
{_html_table(RUNG_HEADER, _rung_rows(report))}
{retrieval}
{forgetting}
{engines}
{notes}
<h2>Plots</h2>
{figures}
</body></html>
"""
