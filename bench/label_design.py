"""How the label head's recipe is chosen: niche's label head and its variants on CLINC150's validation split.

The design is chosen here, never on CLINC150's test file (bench/quality.py reads that once, to report). CLINC150
ships a validation split (`val`: 3,000 rows, 20 per intent) beside its training and test sets; the variants train on
the training set (all of it, or its first 10 or 30 rows per intent: the training sets bench/quality.py reports on)
and are scored on `val`. Each variant is `niche train` with the defaults plus its overrides under the budget, then
`niche eval` on the validation rows, with `--repeats` seeds (bench/design.py: interleaved, each variant against the
defaults by paired bootstrap; the defaults also against the classic baselines fitted on the rows they trained on).

Variants, the questions the recipe answers: which layer the head reads (8, the default 15, or all 30 of
SmolLM2-135M's layers) and the learning rate (the default 1e-3 halved and doubled), with 30 rows per intent; fewer
passes (2 instead of the recipe's) on all rows. A design is chosen by accuracy.

Writes bench/results/label_design.json (`--quick`: build/bench-quick/label_design.json, 10 intents, the defaults and
one variant, a short budget, one seed).

    python bench/label_design.py [--sizes 10,30,all] [--budget 30m] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from design import DEFAULTS, DesignSplit, design_tables, run_design
from harness import REPO, Report, add_arguments
from public_data import clinc150, per_label, write_rows
from stats import accuracy_scorer

VARIANTS = {
    "10": {DEFAULTS: []},
    "30": {
        DEFAULTS: [],
        "head at layer 8": ["training.head_layer=8"],
        "head at layer 30": ["training.head_layer=30"],
        "learning rate 5e-4": ["training.learning_rate=0.0005"],
        "learning rate 2e-3": ["training.learning_rate=0.002"],
    },
    "all": {DEFAULTS: [], "2 passes": ["training.epochs=2"]},
}
METRIC_NAMES = {"accuracy": "accuracy"}
QUICK_INTENTS = 10
QUICK_VALIDATION_ROWS = 40
QUICK_BUDGET = "40s"
QUICK_VARIANTS = {"8": {DEFAULTS: [], "learning rate 2e-3": ["training.learning_rate=0.002"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,30,all", help="training sets: rows per intent, or all")
    parser.add_argument("--budget", default="30m", help="niche's time budget per run, as bench/quality.py gives it")
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("label_design", args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from niche.data.sampling import stratified_sample
    from niche.hardware import detect_hardware

    data = clinc150()
    train_rows, validation_rows = data["train"], data["val"]
    variants: dict[str, Any] = {size: VARIANTS[size] for size in args.sizes.split(",")}
    workdir = REPO / "build" / "bench-label-design"
    if args.quick:
        intents = set(sorted({label for _, label in train_rows})[:QUICK_INTENTS])
        train_rows = [row for row in train_rows if row[1] in intents]
        validation_rows = [row for row in validation_rows if row[1] in intents]
        chosen = stratified_sample([label for _, label in validation_rows], QUICK_VALIDATION_ROWS, seed=0)
        validation_rows = [validation_rows[row] for row in chosen]
        variants, args.budget = QUICK_VARIANTS, QUICK_BUDGET
        workdir = REPO / "build" / "bench-quick" / "label_design"
    validation = write_rows(workdir / "validation.jsonl", validation_rows)
    references = [label for _, label in validation_rows]
    split = DesignSplit(
        validation, len(validation_rows), lambda answers: accuracy_scorer(answers, references), tuple(METRIC_NAMES)
    )
    trains = {
        size: write_rows(
            workdir / f"train-{size}.jsonl", train_rows if size == "all" else per_label(train_rows, int(size))
        )
        for size in variants
    }
    summaries, schedule = run_design(split, trains, variants, report.repeats, args.budget, report.journal())
    payload = {
        "what": "CLINC150's in-scope intents: variants of niche's label head trained on its training set (all, or 10 "
        "and 30 rows per intent) and scored on its validation split; the classic baselines beside the defaults",
        "data": {"train_rows": len(train_rows), "validation_rows": len(validation_rows)},
        "dtype": detect_hardware().description,
        "budget": args.budget,
        "schedule": schedule,
        "sizes": list(summaries.values()),
    }
    written = json.loads(report.write(payload).read_text())
    for name, table in tables(written).items():
        print(f"\n{name}:\n{table}")


def tables(results: dict[str, Any]) -> dict[str, str]:
    """`variants`: each variant's validation accuracy and its difference from the defaults; `baselines`: the
    defaults against TF-IDF and embedding logistic regressions on the same rows."""
    return design_tables(results, METRIC_NAMES)


if __name__ == "__main__":
    main()
