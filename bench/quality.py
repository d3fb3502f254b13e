"""Is the specialist worth it? niche's defaults against the classic baselines and the base model, on CLINC150.

What a new user does: a niche.yaml naming only the training and test files, `--budget 30m`, nothing else set.
Data: CLINC150 (`../shared/datasets/clinc150/data_full.json`), its 150 in-scope intents, the full training set
(15,000 rows; niche holds its validation rows out of them, and the baselines are fitted on exactly the rows
niche trained on, their regularisation chosen on niche's validation rows) and the full test set (4,500 rows).
The out-of-scope rows are not used.

- niche: `niche train` with the defaults and the budget, then `niche eval` on the test set.
- tfidf+logreg, embeddings+logreg: `niche eval --baselines` (niche.eval.baselines).
- base: SmolLM2-135M-Instruct zero-shot, its chat template with the label list as system prompt, decoding
  constrained to the labels; on a stratified sample of the test rows (`--base-rows`, 300 by default: every
  prompt carries all 150 labels, about 1,000 tokens).
- Data efficiency: the same comparison with 10 and 30 training rows per label (and all 100), each niche run
  with the same defaults and budget.

Writes bench/results/quality.json (keys niche_accuracy, tfidf_accuracy, embedding_accuracy, base_accuracy,
niche_train_minutes, ...). Every number is taken on this machine, in this run, with the dtype it states.

    python bench/quality.py [--budget 30m] [--per-label 10,30] [--base-rows 300]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from provenance import code_provenance, machine
from public_data import clinc150, per_label, stratified_rows, write_rows

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "quality.json"
WORKDIR = REPO / "build" / "bench-quality"


def run_niche(name: str, train: Path, test: Path, budget: str) -> dict:
    """`niche train` on a config naming only the files, with the budget; then eval with the baselines."""
    from niche.config import load_config
    from niche.eval import evaluate, write_report
    from niche.train import train as train_specialist

    config_path = train.parent / f"{name}.yaml"
    config_path.write_text(
        f"name: {name}\noutput_dir: specialists\ndata:\n  train: {train.name}\n  test: {test.name}\n"
    )
    config = load_config(config_path, [f"training.time_budget={budget}", "tracking.enabled=false"])
    started = time.perf_counter()
    result = train_specialist(config, show_progress=True)
    train_minutes = (time.perf_counter() - started) / 60
    report = evaluate(result.specialist_dir, test, baselines=True, show_progress=True)
    write_report(report, train.parent / "reports" / name)
    scores = {item.name.split(" ")[0]: item for item in report.results}
    metrics = result.manifest.metrics
    return {
        "train_rows": metrics["train_examples"],
        "validation_rows": metrics["validation_examples"],
        "niche": {
            "accuracy": round(scores["specialist"].metrics["accuracy"], 4),
            "macro_f1": round(scores["specialist"].metrics["macro_f1"], 4),
            "train_minutes": round(train_minutes, 2),
            "objective": result.manifest.hyperparameters["recipe"]["objective"],
            "recipe": result.manifest.hyperparameters["recipe"]["values"],
            "steps": metrics["steps"],
            "epochs": round(metrics["epochs"], 2),
            "plan": metrics["plan"],
            "examples_per_s": round(scores["specialist"].examples_per_s, 1),
        },
        **{
            name: {
                "accuracy": round(scores[name].metrics["accuracy"], 4),
                "macro_f1": round(scores[name].metrics["macro_f1"], 4),
                "fit_minutes": round(scores[name].details["fit_seconds"] / 60, 2),
                "C": scores[name].details["settings"]["C"],
                "examples_per_s": round(scores[name].examples_per_s, 1),
            }
            for name in ("tfidf+logreg", "embeddings+logreg")
        },
        "specialist_dir": str(result.specialist_dir),
    }


def run_base(specialist: Path, sample: Path) -> dict:
    from niche.eval import evaluate

    report = evaluate(specialist, sample, base="base", show_progress=True)
    base = report.results[0]
    return {
        "accuracy": round(base.metrics["accuracy"], 4),
        "macro_f1": round(base.metrics["macro_f1"], 4),
        "rows": report.rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="30m", help="niche's time budget per run")
    parser.add_argument(
        "--per-label", default="10,30", help="data-efficiency sizes (rows per label); all is always run"
    )
    parser.add_argument("--base-rows", type=int, default=300, help="test rows the zero-shot base is scored on")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data = clinc150()
    from niche.io import write_json_atomic

    test = write_rows(WORKDIR / "test.jsonl", data["test"])
    main_run = run_niche("clinc150", write_rows(WORKDIR / "train.jsonl", data["train"]), test, args.budget)
    sample = write_rows(WORKDIR / "test-base-sample.jsonl", stratified_rows(data["test"], args.base_rows))
    base = run_base(Path(main_run["specialist_dir"]), sample)
    efficiency = []
    for count in [int(part) for part in args.per_label.split(",") if part]:
        rows = per_label(data["train"], count)
        run = run_niche(f"clinc150-{count}", write_rows(WORKDIR / f"train-{count}.jsonl", rows), test, args.budget)
        efficiency.append(
            {
                "rows_per_label": count,
                **{key: run[key] for key in ("train_rows", "niche", "tfidf+logreg", "embeddings+logreg")},
            }
        )
    efficiency.append(
        {
            "rows_per_label": 100,
            **{key: main_run[key] for key in ("train_rows", "niche", "tfidf+logreg", "embeddings+logreg")},
        }
    )
    best_classic = max(main_run["tfidf+logreg"]["accuracy"], main_run["embeddings+logreg"]["accuracy"])
    payload = {
        "code": code_provenance(),
        "benchmark": "CLINC150 in-scope intents (150), full train set, full test set; niche defaults, one budget",
        "data": {"train_rows": len(data["train"]), "test_rows": len(data["test"]), "base_rows_sampled": base["rows"]},
        "budget": args.budget,
        "niche_accuracy": main_run["niche"]["accuracy"],
        "niche_macro_f1": main_run["niche"]["macro_f1"],
        "niche_train_minutes": main_run["niche"]["train_minutes"],
        "tfidf_accuracy": main_run["tfidf+logreg"]["accuracy"],
        "embedding_accuracy": main_run["embeddings+logreg"]["accuracy"],
        "base_accuracy": base["accuracy"],
        "niche_minus_best_classic": round(main_run["niche"]["accuracy"] - best_classic, 4),
        "target": "niche >= best classic baseline + 0.02, in <= 30 CPU-minutes",
        "target_met": main_run["niche"]["accuracy"] >= best_classic + 0.02 and main_run["niche"]["train_minutes"] <= 30,
        "runs": {"full": main_run, "base": base},
        "data_efficiency": efficiency,
        "machine": machine(),
    }
    write_json_atomic(RESULTS, payload)
    print(json.dumps({key: value for key, value in payload.items() if not isinstance(value, (dict, list))}, indent=2))
    print("rows/label | niche | tfidf+logreg | embeddings+logreg")
    for row in efficiency:
        print(
            f"{row['rows_per_label']} | {row['niche']['accuracy']} | {row['tfidf+logreg']['accuracy']} | {row['embeddings+logreg']['accuracy']}"
        )


if __name__ == "__main__":
    main()
