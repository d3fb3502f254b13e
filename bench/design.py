"""Choosing a recipe on a validation split, never on a test file: what the design scripts share.

A design script names training sets (rows per label or intent), a design validation file and, per training set,
variants of niche's defaults (config overrides). Each variant is `niche train` with the defaults, the overrides,
the budget and a seed, then `niche eval` on the design validation rows; the defaults also get `--baselines` (the
classic baselines fitted on the rows that seed's niche trained on). Every (training set, variant) runs once per
round with seed 42 + round, in an order that rotates (harness.interleave), for `--repeats` rounds.

Each variant is compared with the defaults, and the defaults with each baseline, on the same validation rows: the
median over seeds of the difference (seed i against seed i), with a paired bootstrap 95% interval (bench/stats.py);
a comparison is invalid when the two sides answered different numbers of rows or trained on different numbers of
rows, or when a baseline's search ended at the edge of its grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Journal, WorkCheck, format_range, interleave, same_count, summarize
from stats import RowScorer, comparison, format_difference, paired_bootstrap, searched_to_the_interior

FIRST_SEED = 42
DEFAULTS = "defaults"


@dataclass
class DesignSplit:
    """The design validation rows and how to score answers on them."""

    validation: Path
    rows: int
    scorer: Callable[[Sequence[str]], RowScorer]  # answers on the validation rows -> their scorer
    metrics: tuple[str, ...]  # the first is the one a design is chosen by


def write_config(directory: Path, name: str, train: Path, test: Path) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"name: {name}\noutput_dir: specialists\ndata:\n  train: {train.name}\n  test: {test.name}\n")
    return path


def run_variant(
    name: str, train: Path, split: DesignSplit, overrides: Sequence[str], budget: str | None, seed: int, baselines: bool
) -> dict[str, Any]:
    """One variant with one seed: its record, and under `answers` what it and the baselines answered."""
    from niche.config import load_config
    from niche.eval import evaluate
    from niche.eval.baselines import searches_at_edge
    from niche.train import train as train_specialist

    settings = [*overrides, f"training.seed={seed}", "tracking.enabled=false"]
    if budget:
        settings.append(f"training.time_budget={budget}")
    config = load_config(write_config(train.parent, name, train, split.validation), settings)
    started = time.perf_counter()
    result = train_specialist(config, show_progress=True)
    minutes = (time.perf_counter() - started) / 60
    report = evaluate(result.specialist_dir, split.validation, baselines=baselines, show_progress=True)
    specialist, fitted = report.results[0], report.results[1:]
    return {
        "seed": seed,
        "overrides": list(overrides),
        "objective": result.manifest.hyperparameters["recipe"]["objective"],
        "recipe": result.manifest.hyperparameters["recipe"]["values"],
        "steps": result.manifest.metrics["steps"],
        "epochs": round(result.manifest.metrics["epochs"], 2),
        "train_rows": result.manifest.metrics["train_examples"],
        "validation_rows": result.manifest.metrics["validation_examples"],
        "train_minutes": round(minutes, 2),
        "baselines": {
            baseline.name: {
                "fit_minutes": round(baseline.details["fit_seconds"] / 60, 2),
                "settings": baseline.details["settings"],
                "searches_at_edge": searches_at_edge(baseline.details["settings"]),
            }
            for baseline in fitted
        },
        "answers": {"niche": specialist.predictions} | {baseline.name: baseline.predictions for baseline in fitted},
    }


def run_design(
    split: DesignSplit,
    trains: Mapping[str, Path],
    variants: Mapping[str, Mapping[str, Sequence[str]]],
    repeats: int,
    budget: str | None,
    journal: Journal | None = None,
) -> tuple[dict[str, Any], Any]:
    """Every (training set, variant) once per round, interleaved; the summaries per training set, and the schedule.
    With a journal, a run cut off resumes from the trainings it finished."""

    def configuration(size: str, variant: str, overrides: Sequence[str]) -> Callable[[int], dict[str, Any]]:
        def run(round_: int) -> dict[str, Any]:
            seed = FIRST_SEED + round_
            name = f"design-{size}-{variant.replace(' ', '-')}-{seed}"
            return run_variant(name, trains[size], split, overrides, budget, seed, baselines=variant == DEFAULTS)

        return run

    configurations = {
        f"{size}/{variant}": configuration(size, variant, overrides)
        for size, by_variant in variants.items()
        for variant, overrides in by_variant.items()
    }

    def print_run(key: str, round_: int, run: dict[str, Any]) -> None:
        scores = split.scorer(run["answers"]["niche"])(list(range(split.rows)))
        shown = ", ".join(f"{metric} {scores[metric]:.4f}" for metric in split.metrics)
        print(f"== {key}, seed {run['seed']}: {shown}; {run['train_minutes']} min")

    measured, schedule = interleave(configurations, repeats=repeats, on_result=print_run, journal=journal)
    summaries = {
        size: summarize_size(size, {variant: measured[f"{size}/{variant}"] for variant in by_variant}, split)
        for size, by_variant in variants.items()
    }
    return summaries, schedule


def row_checks(
    left: Sequence[dict[str, Any]], right: Sequence[dict[str, Any]], rows: int, what: str
) -> list[WorkCheck]:
    """Seed by seed: both sides trained on as many rows and answered every validation row."""
    checks = []
    for mine, theirs in zip(left, right, strict=True):
        seed = mine["seed"]
        checks += [
            same_count(mine["train_rows"], theirs["train_rows"], what=f"training rows of {what} (seed {seed})"),
            same_count(rows, len(theirs["answers"]["niche"]), what=f"validation rows answered by {what} (seed {seed})"),
        ]
    return checks


def baseline_checks(runs: Sequence[dict[str, Any]], baseline: str, rows: int) -> list[WorkCheck]:
    checks = []
    for run in runs:
        fitted, seed = run["baselines"][baseline], run["seed"]
        checks += [
            same_count(run["train_rows"], fitted["settings"]["train_rows"], what=f"training rows (seed {seed})"),
            same_count(
                run["validation_rows"], fitted["settings"]["validation_rows"], what=f"validation rows (seed {seed})"
            ),
            same_count(rows, len(run["answers"][baseline]), what=f"design rows answered (seed {seed})"),
            searched_to_the_interior(f"seed {seed}: {baseline}", fitted["searches_at_edge"]),
        ]
    return checks


def summarize_size(size: str, by_variant: Mapping[str, list[dict[str, Any]]], split: DesignSplit) -> dict[str, Any]:
    """Each variant's scores over seeds, each variant against the defaults, the defaults against each baseline."""
    every_row = list(range(split.rows))
    scorers = {variant: [split.scorer(run["answers"]["niche"]) for run in runs] for variant, runs in by_variant.items()}
    defaults = by_variant[DEFAULTS]
    summary: dict[str, Any] = {"training_rows": size, "variants": {}, "baselines": {}, "comparisons": {}}
    for variant, runs in by_variant.items():
        scores = [scorer(every_row) for scorer in scorers[variant]]
        summary["variants"][variant] = {
            "overrides": runs[0]["overrides"],
            "scores": {metric: summarize([score[metric] for score in scores]) for metric in split.metrics},
            **{
                key: summarize([run[key] for run in runs]) for key in ("train_minutes", "steps", "epochs", "train_rows")
            },
            "runs": [{key: value for key, value in run.items() if key != "answers"} for run in runs],
        }
        if variant != DEFAULTS:
            intervals = paired_bootstrap(scorers[variant], scorers[DEFAULTS], split.rows)
            checks = row_checks(defaults, runs, split.rows, variant)
            summary["comparisons"][f"{variant} - {DEFAULTS}"] = {
                metric: comparison(intervals[metric], checks) for metric in split.metrics
            }
    for baseline in defaults[0]["baselines"]:
        baseline_scorers = [split.scorer(run["answers"][baseline]) for run in defaults]
        scores = [scorer(every_row) for scorer in baseline_scorers]
        summary["baselines"][baseline] = {
            "scores": {
                metric: summarize([score[metric] for score in scores])
                for metric in split.metrics
                if metric in scores[0]
            },
            "fit_minutes": summarize([run["baselines"][baseline]["fit_minutes"] for run in defaults]),
            "searches_at_edge": [run["baselines"][baseline]["searches_at_edge"] for run in defaults],
        }
        intervals = paired_bootstrap(scorers[DEFAULTS], baseline_scorers, split.rows)
        checks = baseline_checks(defaults, baseline, split.rows)
        summary["comparisons"][f"{DEFAULTS} - {baseline}"] = {
            metric: comparison(interval, checks) for metric, interval in intervals.items()
        }
    return summary


def design_tables(results: Mapping[str, Any], metric_names: Mapping[str, str]) -> dict[str, str]:
    """`variants`: every variant's scores (median, min-max over seeds) and its difference from the defaults on the
    deciding metric; `baselines`: the defaults against each classic baseline on the same rows."""
    deciding = next(iter(metric_names))
    seeds = results["repeats"]
    header = " | ".join(metric_names.values())
    variants = [
        f"| training rows | variant | {header} | {metric_names[deciding]} − defaults, 95% interval | minutes | steps |",
        "|---|---|" + "---|" * len(metric_names) + "---|---|---|",
    ]
    baselines = [
        f"| training rows | baseline | {header} | defaults − baseline {metric_names[deciding]}, 95% interval |",
        "|---|---|" + "---|" * len(metric_names) + "---|",
    ]
    for size in results["sizes"]:
        for variant, record in size["variants"].items():
            scores = " | ".join(format_range(record["scores"][metric], 3) for metric in metric_names)
            against = size["comparisons"].get(f"{variant} - {DEFAULTS}")
            difference = format_difference(against[deciding]) if against else ""
            variants.append(
                f"| {size['training_rows']} | {variant} | {scores} | {difference} | "
                f"{format_range(record['train_minutes'], 1)} | {record['steps']['median']:,.0f} |"
            )
        for baseline, record in size["baselines"].items():
            scores = " | ".join(
                format_range(record["scores"][metric], 3) if metric in record["scores"] else ""
                for metric in metric_names
            )
            against = size["comparisons"][f"{DEFAULTS} - {baseline}"]
            baselines.append(
                f"| {size['training_rows']} | {baseline} | {scores} | "
                f"{format_difference(against[deciding]) if deciding in against else ''} |"
            )
    caption = (
        f"\nDesign validation rows ({results['data']['validation_rows']:,}), never the test file; median over "
        f"{seeds} seed{'s' if seeds != 1 else ''} (min-max); {results['dtype']}; differences: median over seeds, "
        "paired bootstrap 95% interval over the validation rows.\n"
    )
    return {"variants": "\n".join(variants) + caption, "baselines": "\n".join(baselines) + caption}
