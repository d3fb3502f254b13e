"""Is the specialist worth it? niche's defaults against the classic baselines and the base model, on CLINC150.

What a new user does: a niche.yaml naming only the training and test files, `--budget 30m`, nothing else set.
Data: CLINC150 (`../shared/datasets/clinc150/data_full.json`), its 150 in-scope intents, the full training set
(15,000 rows) and the full test set (4,500 rows), read here once, to report; no choice is made on it. The
out-of-scope rows are not used, nor is CLINC150's validation split (the label head's design is chosen on it:
bench/label_design.py).

- niche: `niche train` with the defaults, the budget and a seed; niche holds its validation rows out of the
  training file (stratified, seeded by the seed) and keeps the checkpoint best on them. Then `niche eval
  --baselines` on the test file.
- tfidf+logreg, embeddings+logreg: fitted by that eval (niche.eval.baselines) on exactly the rows that seed's
  niche trained on, C chosen on its validation rows by a log-spaced search from 1e-2 to 1e4 grown past an end while
  the best sits there; a comparison whose baseline search ended at the edge is invalid.
- base: SmolLM2-135M-Instruct zero-shot, its chat template with the label list as system prompt, decoding
  constrained to the labels; on a stratified sample of the test rows (`--base-rows`: every prompt carries all 150
  labels, about 1,000 tokens), once (greedy decoding: the same answers every time).
- Data efficiency: the same with 10 and 30 training rows per intent.

Runs: every size once per round with seed 42 + round, the sizes' order rotating (harness.interleave), `--repeats`
rounds (at least 3). The headline is the median over seeds with the min-max; every run is kept.

Checked for every niche-vs-baseline difference: the baseline was fitted on as many training rows and chose C on as
many validation rows as niche held (the same rows by construction: eval refuses a changed training file), every
seed scored the same test rows, and the baseline's search ended interior. The difference is the median over seeds
of niche minus the baseline fitted on that seed's rows, with a paired bootstrap 95% interval over test rows
(bench/stats.py).

Writes bench/results/quality.json (`--quick`: build/bench-quick/quality.json, 10 intents, 80 training rows, a
1-minute budget, one seed).

    python bench/quality.py [--budget 30m] [--per-label 10,30] [--base-rows 300] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from harness import (
    REPO,
    Report,
    WorkCheck,
    add_arguments,
    format_range,
    interleave,
    same_answers,
    same_count,
    summarize,
)
from public_data import clinc150, per_label, write_rows
from stats import (
    accuracy_scorer,
    comparison,
    format_difference,
    paired_bootstrap,
    searched_to_the_interior,
)

BASELINES = ("tfidf+logreg", "embeddings+logreg")
BASELINE_NAMES = {"tfidf+logreg": "TF-IDF + LR", "embeddings+logreg": "embeddings + LR"}
FIRST_SEED = 42
TARGET_MARGIN = 0.02
TARGET_MINUTES = 30
QUICK_INTENTS = 10
QUICK_ROWS_PER_INTENT = 8
QUICK_TEST_ROWS = 40
QUICK_BASE_ROWS = 4


def run_niche(name: str, train: Path, test: Path, budget: str, seed: int) -> dict[str, Any]:
    """`niche train` on a config naming only the files, with the budget and seed; then eval with the baselines.
    Returns the run's record and, under `answers`, what each system answered (kept out of the results file)."""
    from niche.config import load_config
    from niche.eval import evaluate, write_report
    from niche.eval.baselines import searches_at_edge
    from niche.train import train as train_specialist

    config_path = train.parent / f"{name}.yaml"
    config_path.write_text(
        f"name: {name}\noutput_dir: specialists\ndata:\n  train: {train.name}\n  test: {test.name}\n"
    )
    overrides = [f"training.time_budget={budget}", f"training.seed={seed}", "tracking.enabled=false"]
    config = load_config(config_path, overrides)
    started = time.perf_counter()
    result = train_specialist(config, show_progress=True)
    train_minutes = (time.perf_counter() - started) / 60
    report = evaluate(result.specialist_dir, test, baselines=True, show_progress=True)
    write_report(report, train.parent / "reports" / name)
    by_name = {item.name.split(" ")[0]: item for item in report.results}
    metrics = result.manifest.metrics
    specialist = by_name["specialist"]
    return {
        "seed": seed,
        "train_rows": metrics["train_examples"],
        "validation_rows": metrics["validation_examples"],
        "niche": {
            "accuracy": round(specialist.metrics["accuracy"], 4),
            "macro_f1": round(specialist.metrics["macro_f1"], 4),
            "train_minutes": round(train_minutes, 2),
            "objective": result.manifest.hyperparameters["recipe"]["objective"],
            "recipe": result.manifest.hyperparameters["recipe"]["values"],
            "steps": metrics["steps"],
            "epochs": round(metrics["epochs"], 2),
            "stopped_by": metrics["plan"]["stopped_by"],
            "examples_per_s": round(specialist.examples_per_s, 1),
        },
        **{
            baseline: {
                "accuracy": round(by_name[baseline].metrics["accuracy"], 4),
                "macro_f1": round(by_name[baseline].metrics["macro_f1"], 4),
                "fit_minutes": round(by_name[baseline].details["fit_seconds"] / 60, 2),
                "C": by_name[baseline].details["settings"]["C"],
                "C_interior": by_name[baseline].details["settings"]["C_interior"],
                "searches_at_edge": searches_at_edge(by_name[baseline].details["settings"]),
                "validation_accuracy": by_name[baseline].details["settings"]["validation_accuracy"],
                "train_rows": by_name[baseline].details["settings"]["train_rows"],
                "validation_rows": by_name[baseline].details["settings"]["validation_rows"],
                "examples_per_s": round(by_name[baseline].examples_per_s, 1),
            }
            for baseline in BASELINES
        },
        "specialist_dir": str(result.specialist_dir),
        "answers": {
            "references": report.references,
            "niche": specialist.predictions,
            **{baseline: by_name[baseline].predictions for baseline in BASELINES},
        },
    }


def baseline_checks(runs: list[dict[str, Any]], baseline: str) -> list[WorkCheck]:
    """Per seed: the baseline fitted on niche's training rows, C chosen on its validation rows, searched to the
    interior, and the same test rows as the first seed."""
    first_references = runs[0]["answers"]["references"]
    checks = []
    for run in runs:
        fitted = run[baseline]
        seed = run["seed"]
        checks += [
            same_count(run["train_rows"], fitted["train_rows"], what=f"training rows (seed {seed})"),
            same_count(run["validation_rows"], fitted["validation_rows"], what=f"validation rows (seed {seed})"),
            same_answers(first_references, run["answers"]["references"], what=f"test references (seed {seed})"),
            searched_to_the_interior(f"seed {seed}: {baseline}", fitted["searches_at_edge"]),
        ]
    return checks


def summarize_size(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A size's medians and ranges over seeds, and niche against each baseline with its interval."""
    references = runs[0]["answers"]["references"]
    niche_scorers = [accuracy_scorer(run["answers"]["niche"], references) for run in runs]
    summary: dict[str, Any] = {
        "training_rows": label,
        "train_rows": summarize([run["train_rows"] for run in runs]),
        "seeds": [run["seed"] for run in runs],
        "niche": {
            key: summarize([run["niche"][key] for run in runs])
            for key in ("accuracy", "macro_f1", "train_minutes", "steps", "epochs")
        },
        "comparisons": {},
    }
    for baseline in BASELINES:
        summary[baseline] = {
            **{key: summarize([run[baseline][key] for run in runs]) for key in ("accuracy", "macro_f1", "fit_minutes")},
            "C": [run[baseline]["C"] for run in runs],
            "C_interior": [run[baseline]["C_interior"] for run in runs],
        }
        baseline_scorers = [accuracy_scorer(run["answers"][baseline], references) for run in runs]
        interval = paired_bootstrap(niche_scorers, baseline_scorers, len(references))["accuracy"]
        summary["comparisons"][f"niche - {baseline}"] = comparison(interval, baseline_checks(runs, baseline))
    summary["runs"] = [{key: value for key, value in run.items() if key != "answers"} for run in runs]
    return summary


def run_base(specialist: Path, sample: Path) -> dict[str, Any]:
    from niche.eval import evaluate

    report = evaluate(specialist, sample, base="base", show_progress=True)
    base = report.results[0]
    return {
        "accuracy": round(base.metrics["accuracy"], 4),
        "macro_f1": round(base.metrics["macro_f1"], 4),
        "rows": report.rows,
        "answers": base.predictions,
        "references": report.references,
    }


def base_comparison(base: dict[str, Any], runs: list[dict[str, Any]], sample_rows: list[int]) -> dict[str, Any]:
    """niche (every seed, on the sampled test rows) against the base zero-shot on the same rows."""
    references = base["references"]
    niche_scorers = [accuracy_scorer([run["answers"]["niche"][row] for row in sample_rows], references) for run in runs]
    base_scorer = accuracy_scorer(base["answers"], references)
    interval = paired_bootstrap(niche_scorers, [base_scorer] * len(runs), len(references))["accuracy"]
    sampled = [runs[0]["answers"]["references"][row] for row in sample_rows]
    return comparison(interval, [same_answers(sampled, references, what="sampled test references")])


def quick_data(data: dict[str, list]) -> tuple[list[list[str]], list[list[str]]]:
    """A few intents, a few rows each: the smoke run's data."""
    from niche.data.sampling import stratified_sample

    intents = set(sorted({label for _, label in data["train"]})[:QUICK_INTENTS])
    train = per_label([row for row in data["train"] if row[1] in intents], QUICK_ROWS_PER_INTENT)
    test = [row for row in data["test"] if row[1] in intents]
    return train, [test[row] for row in stratified_sample([label for _, label in test], QUICK_TEST_ROWS, seed=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="30m", help="niche's time budget per run")
    parser.add_argument(
        "--per-label", default="10,30", help="data-efficiency sizes (rows per intent); all is always run"
    )
    parser.add_argument("--base-rows", type=int, default=300, help="test rows the zero-shot base is scored on")
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("quality", args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from niche.data.sampling import stratified_sample

    data = clinc150()
    if args.quick:
        train_rows, test_rows = quick_data(data)
        args.budget, args.per_label, args.base_rows = "1m", "", QUICK_BASE_ROWS
        workdir = REPO / "build" / "bench-quick" / "quality"
    else:
        train_rows, test_rows = data["train"], data["test"]
        workdir = REPO / "build" / "bench-quality"
    test = write_rows(workdir / "test.jsonl", test_rows)
    sizes = {"all": train_rows} | {part: per_label(train_rows, int(part)) for part in args.per_label.split(",") if part}
    files = {label: write_rows(workdir / f"train-{label}.jsonl", rows) for label, rows in sizes.items()}

    def configuration(label: str):
        return lambda round_: run_niche(
            f"clinc150-{label}-{FIRST_SEED + round_}", files[label], test, args.budget, FIRST_SEED + round_
        )

    measured, schedule = interleave(
        {label: configuration(label) for label in sizes},
        repeats=report.repeats,
        on_result=print_run,
        journal=report.journal(),
    )
    summaries = {label: summarize_size(label, runs) for label, runs in measured.items()}
    sample_rows = stratified_sample([label for _, label in test_rows], args.base_rows, seed=0)
    sample = write_rows(workdir / "test-base-sample.jsonl", [test_rows[row] for row in sample_rows])
    base = run_base(Path(measured["all"][0]["specialist_dir"]), sample)
    full = summaries["all"]
    best = max(BASELINES, key=lambda name: full[name]["accuracy"]["median"])
    versus_best = full["comparisons"][f"niche - {best}"]
    payload = {
        "what": "CLINC150 in-scope intents (150): niche's defaults with one budget against the classic baselines "
        "fitted on the same rows, and the base zero-shot; medians over seeds",
        "data": {
            "train_rows": len(train_rows),
            "test_rows": len(test_rows),
            "base_rows_sampled": base["rows"],
            "source": "clinc150 (quick: a subset)" if args.quick else "clinc150 data_full.json: train, test",
        },
        "dtype": machine_dtype(),
        "budget": args.budget,
        "schedule": schedule,
        "sizes": [summaries[label] for label in sorted(summaries, key=size_order)],
        "base": {key: base[key] for key in ("accuracy", "macro_f1", "rows")}
        | {"niche - base": base_comparison(base, measured["all"], sample_rows)},
        "best_classic": best,
        "niche_minus_best_classic": versus_best,
        "target": f"niche >= best classic baseline + {TARGET_MARGIN}, in <= {TARGET_MINUTES} CPU-minutes",
        "target_met": bool(
            versus_best["valid"]
            and versus_best["difference"] >= TARGET_MARGIN
            and full["niche"]["train_minutes"]["max"] <= TARGET_MINUTES
        ),
        "target_met_at_the_interval_low_end": bool(versus_best["valid"] and versus_best["low"] >= TARGET_MARGIN),
    }
    written = json.loads(report.write(payload).read_text())
    for name, table in tables(written).items():
        print(f"\n{name}:\n{table}")


def print_run(label: str, round_: int, run: dict[str, Any]) -> None:
    scores = ", ".join(f"{name} {run[name]['accuracy']:.4f}" for name in ("niche", *BASELINES))
    print(f"== {label} rows per intent, seed {run['seed']}: {scores}; niche {run['niche']['train_minutes']} min")


def machine_dtype() -> str:
    from niche.hardware import detect_hardware

    return detect_hardware().description


def size_order(label: str) -> tuple[int, int]:
    return (1, 0) if label == "all" else (0, int(label))


def size_name(size: dict[str, Any]) -> str:
    rows = f"{size['train_rows']['median']:,.0f} rows"
    if size["training_rows"] == "all":
        return f"all ({rows})"
    return f"{size['training_rows']} ({rows})"


def chosen_c(baseline: dict[str, Any]) -> str:
    """The C each seed's search chose, marked where a search ended at the edge."""
    values = "C " + ", ".join(f"{value:g}" for value in baseline["C"])
    return values if all(baseline["C_interior"]) else f"{values} (at the edge)"


def tables(results: dict[str, Any]) -> dict[str, str]:
    """`accuracy`: every size, niche and both baselines with their chosen C and the differences' intervals;
    `summary`: the short version for the project README; `base`: the zero-shot base on its sample."""
    seeds = results["repeats"]
    caption = (
        f"\nTest accuracy on {results['data']['test_rows']:,} test rows, median over {seeds} seed"
        f"{'s' if seeds != 1 else ''} (min-max); {results['dtype']}; differences: median over seeds of niche minus "
        "the baseline fitted on that seed's rows, paired bootstrap 95% interval.\n"
    )
    accuracy = [
        "| rows per intent | niche | niche minutes (steps, passes) | TF-IDF + LR (C) | fit minutes | "
        "embeddings + LR (C) | fit minutes | niche − TF-IDF | niche − embeddings |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = [
        "| training rows per intent | niche (label head, defaults) | TF-IDF + logistic regression | "
        "MiniLM embeddings + logistic regression | niche − best baseline, 95% interval |",
        "|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        niche = size["niche"]
        tfidf, embeddings = size["tfidf+logreg"], size["embeddings+logreg"]
        minutes = (
            f"{format_range(niche['train_minutes'], 1)}; {niche['steps']['median']:,.0f} steps, "
            f"{niche['epochs']['median']:g} passes"
        )
        accuracy.append(
            f"| {size_name(size)} | {format_range(niche['accuracy'], 4)} | {minutes} | "
            f"{format_range(tfidf['accuracy'], 4)} ({chosen_c(tfidf)}) | {format_range(tfidf['fit_minutes'], 2)} | "
            f"{format_range(embeddings['accuracy'], 4)} ({chosen_c(embeddings)}) | "
            f"{format_range(embeddings['fit_minutes'], 2)} | "
            f"{format_difference(size['comparisons']['niche - tfidf+logreg'])} | "
            f"{format_difference(size['comparisons']['niche - embeddings+logreg'])} |"
        )
        best = max(BASELINES, key=lambda name: size[name]["accuracy"]["median"])
        summary.append(
            f"| {size_name(size)} | {format_range(niche['accuracy'], 3)}, {niche['train_minutes']['median']:.1f} min | "
            f"{format_range(tfidf['accuracy'], 3)}, {tfidf['fit_minutes']['median']:.1f} min | "
            f"{format_range(embeddings['accuracy'], 3)}, {embeddings['fit_minutes']['median']:.1f} min | "
            f"{format_difference(size['comparisons'][f'niche - {best}'])} ({BASELINE_NAMES[best]}) |"
        )
    base = results["base"]
    base_table = [
        "| base zero-shot, stratified test rows | base accuracy | niche − base, 95% interval |",
        "|---|---|---|",
        f"| {base['rows']} | {base['accuracy']:.4f} | {format_difference(base['niche - base'])} |",
    ]
    return {
        "accuracy": "\n".join(accuracy) + caption,
        "summary": "\n".join(summary) + caption,
        "base": "\n".join(base_table) + f"\n{results['dtype']}; niche: every seed's specialist trained on all rows.\n",
    }


if __name__ == "__main__":
    main()
