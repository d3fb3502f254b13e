"""The search behind niche's default recipe (`niche.train.recipe`): configurations tried on public data, compared
on validation rows only; the test rows are read once, for the configuration each data set's search chose.

Every configuration is a niche.yaml naming only a data set's training file (niche carves the validation rows it
keeps checkpoints by from it, as for any user) plus the overrides it tries, trained by niche's own code under one
time budget, `--repeats` times (seeds 0, 1, 2, ...), the configurations of a data set interleaved with the order
rotating each round. Each run is scored by `niche eval` on the data set's validation rows, which training never
sees (label tasks: accuracy and macro-F1, label heads answering directly, generative specialists decoding within
the label set; JSON tasks: field F1 under the stored schema). Per data set, every configuration's difference to
the default (its first configuration, no overrides) is the mean over seeds with a paired bootstrap 95% interval
(the validation rows resampled, the same rows for both). The search keeps the default unless a configuration
beats it with the whole interval above zero (then the best such one by median), so the choice does not chase
noise.

Only then the test rows: each seed's specialist of the chosen configuration is scored once on the data set's
test rows, and the classic baselines (label tasks) are fitted on the first seed's training rows and scored on the
same test rows. Nothing chosen reads a test score.

Data sets (validation rows: the example's validation.jsonl, CLINC150's own "val" split): `clinc150` (150 intents,
15,000 training rows, 3,000 validation, 4,500 test), `clinc150-banking` (its banking domain: 15 intents, 1,500,
300 and 450), `cloudsec` (the project's example: 8 categories, 720, 120 and 160) and `cloudsec-extract` (the same
findings as JSON extraction). CLINC150 is read from ../shared/datasets.

The results file is rewritten as each run finishes; a run of this commit with the same budget already there is
kept unless `--force`, so the search can be run in pieces (`--only 'banking/*'`). A data set's test rows are
scored when all its configurations have all their seeds.

    python bench/recipe_search.py [--repeats 3] [--quick] [--only 'GLOB,...'] [--budget 30m] [--force]

--quick: the two cloudsec configurations, a 20-second budget, one seed (written under build/bench-quick/).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import harness
from public_data import clinc150, clinc150_domain, dataset_files, write_rows

REPO = Path(__file__).resolve().parents[1]
WORKDIR = REPO / "build" / "bench-recipe"
QUICK_WORKDIR = REPO / "build" / "bench-quick" / "recipe"
EXAMPLES = REPO / "examples"
QUICK = {"only": "cloudsec/*", "budget": "20s"}
RESAMPLES = 10_000

# (name, data set, overrides, what it asks); a data set's first configuration is its default.
CONFIGURATIONS: list[tuple[str, str, list[str], str]] = [
    ("banking/classify", "clinc150-banking", [], "the default: a label head on half the layers"),
    ("banking/generate", "clinc150-banking", ["training.objective=generate"], "constrained generation instead"),
    ("banking/classify-all-layers", "clinc150-banking", ["training.head_layer=30"], "the head on the last layer"),
    ("banking/classify-lr-5e-4", "clinc150-banking", ["training.learning_rate=0.0005"], "a lower learning rate"),
    ("banking/classify-lr-2e-3", "clinc150-banking", ["training.learning_rate=0.002"], "a higher learning rate"),
    ("banking/classify-3-epochs", "clinc150-banking", ["training.epochs=3"], "fewer passes"),
    ("cloudsec/classify", "cloudsec", [], "the default on the example domain"),
    ("cloudsec/generate", "cloudsec", ["training.objective=generate"], "constrained generation instead"),
    ("cloudsec-extract/generate", "cloudsec-extract", [], "JSON: the default passes for 720 rows"),
    ("cloudsec-extract/generate-1-epoch", "cloudsec-extract", ["training.epochs=1"], "JSON: one short pass"),
    ("clinc150/classify", "clinc150", [], "the default, 150 intents"),
    ("clinc150/generate", "clinc150", ["training.objective=generate"], "constrained generation instead"),
    ("clinc150/classify-all-layers", "clinc150", ["training.head_layer=30"], "the head on the last layer"),
]


def default_of(dataset: str) -> str:
    return next(name for name, data, _, _ in CONFIGURATIONS if data == dataset)


def validation_file(dataset: str, directory: Path) -> Path:
    """The data set's validation rows, apart from its training and test rows."""
    if dataset.startswith("cloudsec"):
        return EXAMPLES / dataset / "validation.jsonl"
    rows = clinc150()["val"]
    if dataset != "clinc150":
        labels = set(clinc150_domain(dataset.removeprefix("clinc150-")))
        rows = [row for row in rows if row[1] in labels]
    return write_rows(directory / dataset / "validation.jsonl", rows)


def accuracy_of(sums: Any) -> Any:
    """Accuracy from per-row counts [right, 1] summed over rows (numpy, any leading axes)."""
    return sums[..., 0] / sums[..., 1]


def field_f1_of(sums: Any) -> Any:
    """Micro field F1 from per-row counts [tp, fp, fn] summed over rows, as niche.metrics computes it."""
    import numpy as np

    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.ones_like(tp), where=tp + fn > 0)
    return np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)


METRIC_OF_COUNTS: dict[str, Callable[[Any], Any]] = {"accuracy": accuracy_of, "field_f1": field_f1_of}


def row_counts(headline: str, predictions: Sequence[str], references: Sequence[str]) -> list[list[int]]:
    """Per row, what the headline metric sums: [right, 1] for accuracy, [tp, fp, fn] over the fields for field F1."""
    from niche.data.examples import parse_json_object
    from niche.metrics import field_counts, label_metrics

    if headline == "accuracy":
        return [[int(label_metrics([p], [r])["accuracy"]), 1] for p, r in zip(predictions, references, strict=True)]
    counts = []
    for prediction, reference in zip(predictions, references, strict=True):
        tallies = field_counts(parse_json_object(prediction), parse_json_object(reference) or {}).values()
        counts.append([sum(tally[kind] for tally in tallies) for kind in ("tp", "fp", "fn")])
    return counts


def paired_bootstrap(
    left: Sequence[Sequence[Sequence[int]]],
    right: Sequence[Sequence[Sequence[int]]],
    metric: Callable[[Any], Any],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """`metric` of `left` minus `right`, each given per seed and per row as counts (see row_counts) and averaged
    over the seeds, with a 95% percentile interval from resampling the rows: the same resampled rows for both
    sides and every seed, so the pairing by row is kept. (harness.py has no interval: kept here until it moves.)"""
    import numpy as np

    left_counts, right_counts = np.asarray(left, dtype=float), np.asarray(right, dtype=float)
    if left_counts.shape != right_counts.shape or left_counts.ndim != 3 or left_counts.shape[1] == 0:
        raise ValueError(
            f"paired counts must have one shape (seeds, rows, k): {left_counts.shape}, {right_counts.shape}"
        )
    rows = left_counts.shape[1]

    def difference(weights: Any) -> Any:  # weights: (resamples, rows), how often each row was drawn
        left_scores = metric(np.einsum("br,srk->sbk", weights, left_counts)).mean(axis=0)
        return left_scores - metric(np.einsum("br,srk->sbk", weights, right_counts)).mean(axis=0)

    generator = np.random.default_rng(seed)
    chunk = 1000  # resamples drawn at once: bounds memory on thousands of rows
    draws = np.concatenate(
        [
            difference(generator.multinomial(rows, np.full(rows, 1 / rows), size=min(chunk, resamples - done)))
            for done in range(0, resamples, chunk)
        ]
    )
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "difference": float(difference(np.ones((1, rows)))[0]),
        "low": float(low),
        "high": float(high),
        "interval": "95% paired bootstrap over validation rows",
        "resamples": resamples,
        "rows": rows,
        "seeds": left_counts.shape[0],
    }


def run(name: str, dataset: str, overrides: list[str], budget: str, seed: int, workdir: Path) -> dict:
    """One configuration, one seed: trained under the budget, scored on the validation rows."""
    from niche.config import load_config
    from niche.eval import evaluate
    from niche.hardware import detect_hardware
    from niche.train import train

    train_file, _ = dataset_files(dataset, workdir)
    validation = validation_file(dataset, workdir)
    config = load_config(
        None,
        [
            f"name={name.replace('/', '--')}--seed{seed}",
            f"output_dir={workdir / 'specialists'}",
            f"data.train={train_file}",
            f"training.time_budget={budget}",
            f"training.seed={seed}",
            "tracking.enabled=false",
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = train(config, show_progress=False)
    minutes = (time.perf_counter() - started) / 60
    evaluated = time.perf_counter()
    report = evaluate(result.specialist_dir, validation, show_progress=False)
    eval_seconds = time.perf_counter() - evaluated
    specialist = report.results[0]
    headline = report.headline_metric
    counts = row_counts(headline, specialist.predictions, report.references)
    if abs(float(METRIC_OF_COUNTS[headline](sum_counts(counts))) - specialist.metrics[headline]) > 1e-9:
        raise RuntimeError(f"{name} seed {seed}: per-row counts disagree with the reported {headline}")
    metrics = result.manifest.metrics
    record = {
        "name": name,
        "dataset": dataset,
        "seed": seed,
        "overrides": overrides,
        "specialist": str(result.specialist_dir),
        "objective": result.manifest.hyperparameters["recipe"]["objective"],
        "recipe": result.manifest.hyperparameters["recipe"]["values"],
        "headline": headline,
        "score": float(specialist.metrics[headline]),
        "macro_f1": float(specialist.metrics["macro_f1"]) if "macro_f1" in specialist.metrics else None,
        "train_minutes": minutes,
        "steps": metrics["steps"],
        "epochs": metrics["epochs"],
        "stopped_by": metrics["plan"]["stopped_by"],
        "validation_share": metrics["plan"]["validation_share"],
        "train_rows": metrics["train_examples"],
        "validation_rows": report.rows,
        "eval_seconds": eval_seconds,
        "dtype": detect_hardware().description,
        "row_counts": counts,
    }
    if report.task_kind == "json":
        record["json"] = {
            key: float(specialist.metrics[key])
            for key in ("valid_json", "schema_valid", "exact_match")
            if key in specialist.metrics
        }
    return record


def sum_counts(counts: list[list[int]]) -> Any:
    import numpy as np

    return np.asarray(counts, dtype=float).sum(axis=0)


def search_of(dataset: str, runs: list[dict], repeats: int) -> dict[str, Any] | None:
    """Every configuration of the data set against its default on the validation rows, and the choice; None until
    every configuration has `repeats` seeds."""
    names = [name for name, data, _, _ in CONFIGURATIONS if data == dataset]
    seeded = {
        name: sorted(
            (run for run in runs if run["name"] == name and run["seed"] < repeats), key=lambda run: run["seed"]
        )
        for name in names
    }
    if any([run["seed"] for run in seeded[name]] != list(range(repeats)) for name in names):
        return None
    default = default_of(dataset)
    metric = METRIC_OF_COUNTS[seeded[default][0]["headline"]]
    configurations = {}
    for name in names:
        checks = [
            harness.same_count(base["validation_rows"], other["validation_rows"], what=f"validation rows (seed {seed})")
            for seed, (base, other) in enumerate(zip(seeded[default], seeded[name], strict=True))
        ]
        failed = [check for check in checks if not check.valid]
        against_default = paired_bootstrap(
            [run["row_counts"] for run in seeded[name]], [run["row_counts"] for run in seeded[default]], metric
        ) | {"valid": not failed, "invalid_because": [f"{check.what}: {check.detail}" for check in failed]}
        configurations[name] = {
            field: harness.summarize([run[field] for run in seeded[name]])
            for field in ("score", "train_minutes", "steps", "epochs")
        } | {"difference_to_default": None if name == default else against_default}
    better = [
        name
        for name, summary in configurations.items()
        if summary["difference_to_default"] is not None
        and summary["difference_to_default"]["valid"]
        and summary["difference_to_default"]["low"] > 0
    ]
    chosen = max(better, key=lambda name: configurations[name]["score"]["median"]) if better else default
    return {
        "default": default,
        "chosen": chosen,
        "rule": "the default, unless a configuration beats it with the whole 95% interval above zero",
        "configurations": configurations,
    }


def test_of(dataset: str, chosen: str, runs: list[dict], workdir: Path) -> dict[str, Any]:
    """The chosen configuration's specialists (one per seed) scored once on the test rows; label tasks also the
    classic baselines, fitted on the first seed's training rows."""
    from niche.eval import evaluate

    _, test_file = dataset_files(dataset, workdir)
    chosen_runs = sorted((run for run in runs if run["name"] == chosen), key=lambda run: run["seed"])
    scores, macro_f1, baselines, rows = [], [], None, None
    for run in chosen_runs:
        with_baselines = baselines is None and run["headline"] == "accuracy"
        report = evaluate(Path(run["specialist"]), test_file, baselines=with_baselines, show_progress=False)
        specialist = report.results[0]
        scores.append(float(specialist.metrics[report.headline_metric]))
        if "macro_f1" in specialist.metrics:
            macro_f1.append(float(specialist.metrics["macro_f1"]))
        rows = report.rows
        if with_baselines:
            baselines = {
                item.name: {"accuracy": item.metrics["accuracy"], "fit_minutes": item.details["fit_seconds"] / 60}
                for item in report.results[1:]
            }
    return {
        "configuration": chosen,
        "headline": chosen_runs[0]["headline"],
        "score": harness.summarize(scores),
        "macro_f1": harness.summarize(macro_f1) if macro_f1 else None,
        "test_rows": rows,
        "baselines": baselines,
        "dtype": chosen_runs[0]["dtype"],
    }


def earlier_results(report: harness.Report, budget: str) -> dict[str, Any]:
    """What a previous invocation of this commit, with this budget, already ran (nothing for --quick)."""
    if report.quick or not report.path.is_file():
        return {"runs": [], "test": {}}
    earlier = json.loads(report.path.read_text())
    if earlier.get("provenance", {}).get("commit") != report.provenance["commit"] or earlier.get("budget") != budget:
        return {"runs": [], "test": {}}
    return {"runs": earlier.get("runs", []), "test": earlier.get("test", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_arguments(parser)
    parser.add_argument("--only", help="comma-separated names or globs of the configurations to run (banking/*)")
    parser.add_argument("--budget", help="time budget of every run (30m; 20s with --quick)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun the selected configurations even when this commit's results have them",
    )
    args = parser.parse_args()
    report = harness.Report("recipe_search", args)
    only = args.only or (QUICK["only"] if report.quick else "*")
    budget = args.budget or (QUICK["budget"] if report.quick else "30m")
    workdir = QUICK_WORKDIR if report.quick else WORKDIR

    earlier = earlier_results(report, budget)
    runs, test = earlier["runs"], earlier["test"]
    done = {} if args.force else {(run["name"], run["seed"]): run for run in runs}
    wanted = [
        configuration
        for configuration in CONFIGURATIONS
        if any(fnmatch.fnmatchcase(configuration[0], pattern.strip()) for pattern in only.split(","))
    ]

    def payload() -> dict[str, Any]:
        datasets = sorted({data for _, data, _, _ in CONFIGURATIONS}, key=default_of)
        searches = {dataset: search_of(dataset, runs, report.repeats) for dataset in datasets}
        return {
            "budget": budget,
            "seeds": list(range(report.repeats)),
            "questions": {name: question for name, _, _, question in CONFIGURATIONS},
            "search": {dataset: search for dataset, search in searches.items() if search is not None},
            # A test score stands only for the configuration its data set's finished search chose.
            "test": {
                dataset: outcome
                for dataset, outcome in test.items()
                if searches.get(dataset) and searches[dataset]["chosen"] == outcome["configuration"]
            },
            "runs": runs,
        }

    def run_once(configuration: tuple[str, str, list[str], str], seed: int) -> dict:
        name, dataset, overrides, question = configuration
        if (name, seed) in done:
            return done[(name, seed)]
        print(f"== {name} seed {seed}: {question}", flush=True)
        record = run(name, dataset, overrides, budget, seed, workdir)
        runs[:] = [kept for kept in runs if (kept["name"], kept["seed"]) != (name, seed)] + [record]
        report.write(payload())
        print(f"{name} seed {seed}: validation {record['headline']} {record['score']:.4f}", flush=True)
        return record

    for dataset in dict.fromkeys(data for _, data, _, _ in wanted):
        harness.interleave(
            {
                configuration[0]: lambda seed, configuration=configuration: run_once(configuration, seed)
                for configuration in wanted
                if configuration[1] == dataset
            },
            repeats=report.repeats,
        )
        search = search_of(dataset, runs, report.repeats)
        if search is not None and (test.get(dataset, {}).get("configuration") != search["chosen"] or args.force):
            print(f"== {dataset}: the test rows, once, for the chosen {search['chosen']}", flush=True)
            test[dataset] = test_of(dataset, search["chosen"], runs, workdir)
    print_summary(json.loads(report.write(payload()).read_text()))


def print_summary(results: dict[str, Any]) -> None:
    for name, markdown in tables(results).items():
        print(f"{name}:\n{markdown}")


def signed(value: float) -> str:
    return f"{value:+.4f}"


def difference_text(difference: dict[str, Any] | None) -> str:
    if difference is None:
        return "(the default)"
    if not difference["valid"]:
        return "invalid: " + "; ".join(difference["invalid_because"])
    return f"{signed(difference['difference'])} ({signed(difference['low'])} to {signed(difference['high'])})"


def tables(results: dict) -> dict[str, str]:
    """`search`: every configuration on the validation rows against its data set's default, and the choice;
    `test`: the chosen configuration of each data set on the test rows (read once), beside the baselines."""
    seeds = len(results["seeds"])
    dtypes = ", ".join(sorted({run["dtype"] for run in results["runs"]}))
    search = [
        f"| configuration | objective | validation score ({dtypes}), median (min-max) of {seeds} seeds | difference "
        f"to the default (95% paired bootstrap) | train minutes (budget {results['budget']}) | steps (passes) | "
        "chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for outcome in results["search"].values():
        for name, summary in outcome["configurations"].items():
            run = next(run for run in results["runs"] if run["name"] == name)
            headline = "" if run["headline"] == "accuracy" else f" {run['headline'].replace('_', ' ')}"
            search.append(
                f"| {name}: {results['questions'][name]} | {run['objective']} | "
                f"{harness.format_range(summary['score'], 4)}{headline} | "
                f"{difference_text(summary['difference_to_default'])} | "
                f"{harness.format_range(summary['train_minutes'], 2)} | {summary['steps']['median']:.0f} "
                f"({summary['epochs']['median']:.1f}) | {'**chosen**' if name == outcome['chosen'] else ''} |"
            )
    test = [
        f"| data set | chosen configuration | test score, median (min-max) of {seeds} seeds | test rows | "
        "baselines on the same rows (accuracy) | dtype |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, outcome in results["test"].items():
        baselines = ", ".join(
            f"{name} {scores['accuracy']:.4f}" for name, scores in (outcome["baselines"] or {}).items()
        )
        headline = outcome["headline"].replace("_", " ")
        test.append(
            f"| {dataset} | {outcome['configuration']} | {harness.format_range(outcome['score'], 4)} {headline} | "
            f"{outcome['test_rows']} | {baselines or 'none (not a label task)'} | {outcome['dtype']} |"
        )
    return {"search": "\n".join(search) + "\n", "test": "\n".join(test) + "\n"}


if __name__ == "__main__":
    main()
