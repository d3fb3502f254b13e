"""How the extraction recipe was chosen: niche's tagging head and the CRF baseline on a validation split of SLURP.

The design is chosen here, never on SLURP's test file (bench/extraction.py reads that once, to report). The split:
500 rows of SLURP's train file held out, stratified by intent (seed 7), as the design validation set; the other
1,532 rows, and their 10 and 30 rows per intent, are the training sets. Each variant is `niche train` with the
defaults plus its overrides, then `niche eval` on the design validation rows, with `--repeats` seeds (bench/design.py:
interleaved, each variant against the defaults by paired bootstrap; the defaults also against the CRF baseline
fitted on the rows they trained on).

Variants: the recipe's defaults; its learning rate halved and doubled (10 rows per intent); the conditional
schema (`data.conditional_schema: true`, which also masks the tagger's slots by intent) at 10 rows per intent and
on all rows. A design is chosen by slot F1.

Writes bench/results/extraction_design.json (`--quick`: build/bench-quick/extraction_design.json, 8 intents, the
defaults and one variant, a short budget, one seed).

    python bench/extraction_design.py [--sizes 10,30,all] [--budget 30m] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from design import DEFAULTS, DesignSplit, design_tables, run_design
from extraction import extraction_scorer
from harness import REPO, Report, add_arguments
from public_data import per_intent, slurp, write_extraction_rows

HELD_OUT = 500
SPLIT_SEED = 7
VARIANTS = {
    "10": {
        DEFAULTS: [],
        "learning rate 1e-3": ["training.learning_rate=0.001"],
        "learning rate 4e-3": ["training.learning_rate=0.004"],
        "conditional schema": ["data.conditional_schema=true"],
    },
    "30": {DEFAULTS: []},
    "all": {DEFAULTS: [], "conditional schema": ["data.conditional_schema=true"]},
}
METRIC_NAMES = {
    "slot_f1": "slot F1",
    "slot_f1_macro": "slot F1 macro",
    "intent_accuracy": "intent accuracy",
    "exact_match": "exact match",
}
QUICK_INTENTS = 8
QUICK_HELD_OUT = 24
QUICK_BUDGET = "40s"
QUICK_VARIANTS = {"10": {DEFAULTS: [], "learning rate 4e-3": ["training.learning_rate=0.004"]}}


def design_split(rows: list[dict], held_out: int) -> tuple[list[dict], list[dict]]:
    from niche.data.sampling import hold_out

    kept, held = hold_out([row["intent"] for row in rows], held_out, SPLIT_SEED)
    return [rows[index] for index in kept], [rows[index] for index in held]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,30,all", help="training sets: rows per intent, or all")
    parser.add_argument("--budget", default="30m", help="niche's time budget per run")
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("extraction_design", args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from niche.hardware import detect_hardware

    rows = slurp("train")
    variants: dict[str, Any] = {size: VARIANTS[size] for size in args.sizes.split(",")}
    held_out, workdir = HELD_OUT, REPO / "build" / "bench-extraction-design"
    if args.quick:
        intents = set(sorted({row["intent"] for row in rows})[:QUICK_INTENTS])
        rows = [row for row in rows if row["intent"] in intents]
        variants, held_out, args.budget = QUICK_VARIANTS, QUICK_HELD_OUT, QUICK_BUDGET
        workdir = REPO / "build" / "bench-quick" / "extraction_design"
    train_rows, validation_rows = design_split(rows, held_out)
    validation = write_extraction_rows(workdir / "design-validation.jsonl", validation_rows)
    references = [json.loads(line)["completion"] for line in validation.read_text().splitlines()]
    intents_of_rows = [row["intent"] for row in validation_rows]
    split = DesignSplit(
        validation,
        len(validation_rows),
        lambda answers: extraction_scorer(answers, references, intents_of_rows),
        tuple(METRIC_NAMES),
    )
    trains = {
        size: write_extraction_rows(
            workdir / f"design-train-{size}.jsonl", train_rows if size == "all" else per_intent(train_rows, int(size))
        )
        for size in variants
    }
    summaries, schedule = run_design(split, trains, variants, report.repeats, args.budget, report.journal())
    payload = {
        "what": f"SLURP's train file split into design training sets and {len(validation_rows)} held-out design "
        f"validation rows (stratified by intent, seed {SPLIT_SEED}); niche's tagging head, its variants and the CRF",
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
    """`variants`: each variant's slot F1, intent accuracy and exact match on the design validation rows, and its
    slot F1 against the defaults; `baselines`: the defaults against the CRF on the same rows."""
    return design_tables(results, METRIC_NAMES)


if __name__ == "__main__":
    main()
