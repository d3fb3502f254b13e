"""The data card: what every curate stage kept, as counts both engines can add up from partial results."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from niche.curate.rules import SPLITS
from niche.data.examples import Example
from niche.data.minhash import WORD

LENGTH_FIELDS = ("input_words", "answer_words")


@dataclass
class CurateReport:
    inputs: list[str]
    settings: dict[str, Any]
    stages: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    lengths: dict[str, dict[str, float]] = field(default_factory=dict)
    pii_redacted: dict[str, int] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejects: int = 0


# The data card shows the first clusters of near duplicates, not all of them.
NEAR_DUPLICATES_SHOWN = 50


def length_histograms(examples: Iterable[Example]) -> dict[str, np.ndarray]:
    """Per field, how many examples have each word count (index = words): adds up across shards."""
    counts: dict[str, Counter[int]] = {name: Counter() for name in LENGTH_FIELDS}
    for example in examples:
        counts["input_words"][len(WORD.findall(example.input_text))] += 1
        counts["answer_words"][len(WORD.findall(example.response))] += 1
    return {name: _dense(counter) for name, counter in counts.items()}


def _dense(counter: Counter[int]) -> np.ndarray:
    histogram = np.zeros(max(counter, default=-1) + 1, dtype=np.int64)
    for words, count in counter.items():
        histogram[words] = count
    return histogram


def add_histograms(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    size = max(len(left), len(right))
    return np.pad(left, (0, size - len(left))) + np.pad(right, (0, size - len(right)))


def length_stats(histogram: np.ndarray) -> dict[str, float]:
    """min, mean, median, 95th percentile and max of the word counts a histogram holds."""
    total = int(histogram.sum())
    if not total:
        return {"min": 0, "mean": 0, "p50": 0, "p95": 0, "max": 0}
    cumulative = np.cumsum(histogram)

    def at_rank(rank: int) -> int:
        return int(np.searchsorted(cumulative, rank, side="right"))

    present = np.flatnonzero(histogram)
    return {
        "min": int(present[0]),
        "mean": round(float((np.arange(len(histogram)) * histogram).sum() / total), 1),
        "p50": at_rank(total // 2),
        "p95": at_rank(min(total - 1, int(0.95 * total))),
        "max": int(present[-1]),
    }


def label_counts(labels: Iterable[str | None]) -> dict[str, int]:
    return dict(Counter(label for label in labels if label is not None).most_common())


def data_card_markdown(report: CurateReport) -> str:
    lines = [
        "# Data card",
        "",
        f"Inputs: {', '.join(report.inputs)}",
        "",
        "## Rows per stage",
        "",
        "| stage | rows |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {count} |" for stage, count in report.stages.items()]
    lines += ["", "## Splits", "", "| split | rows |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in report.splits.items()]
    labels = sorted({label for counts in report.labels.values() for label in counts})
    if labels:
        lines += ["", "## Labels", "", "| label | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
        lines += [
            f"| {label} | " + " | ".join(str(report.labels[name].get(label, 0)) for name in SPLITS) + " |"
            for label in labels
        ]
    lines += ["", "## Lengths (words)", "", "| field | min | mean | p50 | p95 | max |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {name} | " + " | ".join(str(value) for value in stats.values()) + " |"
        for name, stats in report.lengths.items()
    ]
    if report.pii_redacted:
        lines += ["", "## PII redacted", "", "| kind | count |", "|---|---|"]
        lines += [f"| {kind} | {count} |" for kind, count in sorted(report.pii_redacted.items())]
    lines += ["", f"## Conflicts ({len(report.conflicts)})", ""]
    for conflict in report.conflicts[:20]:
        lines.append(
            "- "
            + "; ".join(
                f"{row['source']}: {json.dumps({k: v for k, v in row.items() if k != 'source'}, ensure_ascii=False)}"
                for row in conflict["rows"]
            )
        )
    lines += ["", f"Rejected rows: {report.rejects} (rejects.jsonl gives each one's stage and reason).", ""]
    return "\n".join(lines)
