"""The intervals behind every published difference: niche against a baseline, one design against another.

A difference is measured on the same rows for both sides (the test file, or a design's validation rows) and its
95% interval comes from a paired bootstrap: the rows are resampled with replacement (1,000 draws, seeded), both
sides are scored on each draw, and the interval is the 2.5th to 97.5th percentile of the difference. With several
seeds, seed i of niche is paired with side i of the other (the baseline fitted on that seed's training rows) and
the difference on a draw is the median over the pairs, so the interval is of the very number the table shows.

A comparison also carries the harness's work checks (`harness.WorkCheck`): when one fails, it is recorded invalid,
with why, and no difference is published from it.

numpy is imported inside the functions: bench/tables.py imports the scripts that import this module.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness import WorkCheck

BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0

# Scores of one system over a subset of the rows (an array of row positions, repeats allowed): {metric: value}.
RowScorer = Callable[[Any], Mapping[str, float]]


def accuracy_scorer(predictions: Sequence[str], references: Sequence[str]) -> RowScorer:
    """Accuracy over any resampling of the rows."""
    import numpy as np

    right = np.asarray([prediction == reference for prediction, reference in zip(predictions, references, strict=True)])
    return lambda rows: {"accuracy": float(right[rows].mean())}


def median_difference(niche: Sequence[RowScorer], other: Sequence[RowScorer], rows: Any) -> dict[str, float]:
    """The median over the paired seeds of niche's score minus the other side's, for each metric both score."""
    differences: dict[str, list[float]] = {}
    for mine, theirs in zip(niche, other, strict=True):
        their_scores = theirs(rows)
        for metric, value in mine(rows).items():
            if metric in their_scores:
                differences.setdefault(metric, []).append(value - their_scores[metric])
    return {metric: statistics.median(values) for metric, values in differences.items()}


def paired_bootstrap(
    niche: Sequence[RowScorer],
    other: Sequence[RowScorer],
    row_count: int,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, dict[str, float]]:
    """For each metric: the median-over-seeds difference niche - other on all rows, and its 95% interval."""
    import numpy as np

    if not niche or len(niche) != len(other):
        raise ValueError(f"paired_bootstrap needs one other side per niche seed, got {len(niche)} and {len(other)}")
    everything = median_difference(niche, other, np.arange(row_count))
    generator = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {metric: [] for metric in everything}
    for _ in range(draws):
        rows = generator.integers(0, row_count, row_count)
        for metric, value in median_difference(niche, other, rows).items():
            samples[metric].append(value)
    return {
        metric: {
            "difference": round(everything[metric], 4),
            "low": round(float(np.percentile(samples[metric], 2.5)), 4),
            "high": round(float(np.percentile(samples[metric], 97.5)), 4),
            "draws": draws,
            "pairs": len(niche),
        }
        for metric in everything
    }


def comparison(interval: Mapping[str, float], checks: Sequence[WorkCheck] = ()) -> dict[str, Any]:
    """A difference with its interval, valid only when every work check passed (as harness.ratio records it)."""
    failed = [check for check in checks if not check.valid]
    return {
        **interval,
        "value": None if failed else interval["difference"],
        "valid": not failed,
        "invalid_because": [f"{check.what}: {check.detail}" for check in failed],
        "checks": [check.as_dict() for check in checks],
    }


def searched_to_the_interior(name: str, edges: Sequence[str]) -> WorkCheck:
    """Whether a baseline's regularisation search ended with every choice interior (its best configuration)."""
    if edges:
        return WorkCheck(
            False, "baseline's best configuration", f"{name}'s search ended at the edge for {', '.join(edges)}"
        )
    return WorkCheck(True, "baseline's best configuration", f"{name}: every regularisation chosen interior")


def format_difference(record: Mapping[str, Any], digits: int = 3) -> str:
    """'+0.046 (+0.030 to +0.062)', or 'invalid (why)' for a comparison that failed a check."""
    if record.get("valid") is False:
        return "invalid (" + "; ".join(record["invalid_because"]) + ")"
    return f"{record['difference']:+.{digits}f} ({record['low']:+.{digits}f} to {record['high']:+.{digits}f})"


def paired_bootstrap_of_correct_rows(
    left: Sequence[Sequence[int]], right: Sequence[Sequence[int]], resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy of `left` minus `right` (per seed, rows right or wrong), averaged over the seeds, with a 95%
    percentile interval from resampling the held-out rows: the same resampled rows for both sides and every seed,
    so the pairing by row is kept."""
    import numpy as np

    left_rows, right_rows = np.asarray(left, dtype=float), np.asarray(right, dtype=float)
    if left_rows.shape != right_rows.shape or left_rows.ndim != 2 or left_rows.shape[1] == 0:
        raise ValueError(f"paired rows must have one shape (seeds, rows): {left_rows.shape} and {right_rows.shape}")
    per_row = (left_rows - right_rows).mean(axis=0)
    rows = per_row.shape[0]
    resampled = per_row[np.random.default_rng(seed).integers(0, rows, size=(resamples, rows))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "difference": float(per_row.mean()),
        "low": float(low),
        "high": float(high),
        "interval": "95% paired bootstrap over held-out rows",
        "resamples": resamples,
        "rows": rows,
        "seeds": left_rows.shape[0],
    }


def compare_correct_rows(
    left: Sequence[Sequence[int]], right: Sequence[Sequence[int]], checks: Sequence[WorkCheck]
) -> dict[str, Any]:
    """An accuracy difference with its interval, invalid (no difference claimed) when a work check failed."""
    failed = [check for check in checks if not check.valid]
    return paired_bootstrap_of_correct_rows(left, right) | {
        "valid": not failed,
        "invalid_because": [f"{check.what}: {check.detail}" for check in failed],
        "checks": [check.as_dict() for check in checks],
    }
