"""The search behind niche's default recipe (`niche.train.recipe`): configurations tried on public data.

Every configuration is a niche.yaml naming only a data set's train and test files, plus the overrides it tries,
trained by niche's own code under one time budget and scored by `niche eval` on the data set's test rows
(label tasks: accuracy and macro-F1, label heads answering directly, generative specialists decoding within the
label set; JSON tasks: field F1 under the stored schema). The default configuration of each label data set is
also scored against the classic baselines fitted on the same rows.

Data sets: `clinc150` (150 intents, 15,000 training rows, 4,500 test rows), `clinc150-banking` (its banking
domain: 15 intents, 1,500 and 450), `cloudsec` (the project's example: 8 categories, 720 and 160) and
`cloudsec-extract` (the same findings as JSON extraction). CLINC150 is read from ../shared/datasets.

Results are appended to bench/results/recipe_search.json as each configuration finishes; a configuration
already there is skipped unless `--force`, so the search can be run in pieces (`--only 'banking/*'`).

    python bench/recipe_search.py [--only 'GLOB,...'] [--budget 30m] [--force]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from pathlib import Path

from provenance import code_provenance
from public_data import dataset_files

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "recipe_search.json"
WORKDIR = REPO / "build" / "bench-recipe"

# (name, data set, overrides, what it asks)
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


def run(name: str, dataset: str, overrides: list[str], budget: str) -> dict:
    from niche.config import load_config
    from niche.eval import evaluate
    from niche.hardware import detect_hardware
    from niche.train import train

    train_file, test_file = dataset_files(dataset, WORKDIR)
    config = load_config(
        None,
        [
            f"name={name.replace('/', '--')}",
            f"output_dir={WORKDIR / 'specialists'}",
            f"data.train={train_file}",
            f"data.test={test_file}",
            f"training.time_budget={budget}",
            "tracking.enabled=false",
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = train(config, show_progress=True)
    minutes = (time.perf_counter() - started) / 60
    with_baselines = not overrides and result.manifest.task.kind == "label"
    evaluated = time.perf_counter()
    report = evaluate(result.specialist_dir, test_file, baselines=with_baselines, show_progress=True)
    eval_seconds = time.perf_counter() - evaluated
    specialist = report.results[0]
    metrics = result.manifest.metrics
    record = {
        "name": name,
        "dataset": dataset,
        "overrides": overrides,
        "objective": result.manifest.hyperparameters["recipe"]["objective"],
        "recipe": result.manifest.hyperparameters["recipe"]["values"],
        "headline": report.headline_metric,
        "score": round(float(specialist.metrics[report.headline_metric]), 4),
        "macro_f1": round(float(specialist.metrics["macro_f1"]), 4) if "macro_f1" in specialist.metrics else None,
        "train_minutes": round(minutes, 2),
        "steps": metrics["steps"],
        "epochs": round(metrics["epochs"], 2),
        "stopped_by": metrics["plan"]["stopped_by"],
        "validation_share": metrics["plan"]["validation_share"],
        "train_rows": metrics["train_examples"],
        "test_rows": report.rows,
        "eval_seconds": round(eval_seconds, 1),
        "dtype": detect_hardware().description,
        "code": code_provenance(),
    }
    if report.task_kind == "json":
        record["json"] = {
            key: round(float(specialist.metrics[key]), 4)
            for key in ("valid_json", "schema_valid", "exact_match")
            if key in specialist.metrics
        }
    if with_baselines:
        record["baselines"] = {
            item.name: {
                "accuracy": round(item.metrics["accuracy"], 4),
                "fit_minutes": round(item.details["fit_seconds"] / 60, 2),
            }
            for item in report.results[1:]
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", default="*", help="comma-separated names or globs of the configurations to run (banking/*)"
    )
    parser.add_argument("--budget", default="30m", help="time budget of every run")
    parser.add_argument("--force", action="store_true", help="rerun configurations already in the results")
    args = parser.parse_args()
    from niche.io import write_json_atomic

    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"budget": args.budget, "runs": []}
    done = {row["name"] for row in results["runs"]}
    for name, dataset, overrides, question in CONFIGURATIONS:
        wanted = any(fnmatch.fnmatchcase(name, pattern.strip()) for pattern in args.only.split(","))
        if not wanted or (name in done and not args.force):
            continue
        print(f"== {name}: {question}")
        record = run(name, dataset, overrides, args.budget) | {"question": question}
        results["runs"] = [row for row in results["runs"] if row["name"] != name] + [record]
        results["budget"] = args.budget
        write_json_atomic(RESULTS, results)
        print(json.dumps(record))
    print("name | objective | score | minutes | epochs")
    for row in results["runs"]:
        print(f"{row['name']} | {row['objective']} | {row['score']} | {row['train_minutes']} | {row['epochs']}")


if __name__ == "__main__":
    main()
