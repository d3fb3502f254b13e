"""How the extraction recipe was chosen: niche's tagging head and the CRF baseline on a validation split of SLURP.

The design is chosen here, never on SLURP's test file (bench/extraction.py reads that once, to report). The split:
500 rows of SLURP's train file held out, stratified by intent (seeded), as the design validation set; the other
1,532 rows, and their 10 and 30 rows per intent, are the training sets. Each configuration is `niche train` with
the defaults plus the overrides it names, then `niche eval --baselines` on the design validation set (the CRF is
fitted once per training set, on the rows niche trained on).

Configurations: the recipe's defaults; its learning rate halved and doubled (10 rows per intent); the conditional
schema (`data.conditional_schema: true`, which also masks the tagger's slots by intent) at 10 rows per intent and
on all rows.

Writes bench/results/extraction_design.json.

    python bench/extraction_design.py [--sizes 10,30,all]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from extraction import scores, write_config
from provenance import code_provenance
from public_data import per_intent, slurp, write_extraction_rows

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "extraction_design.json"
WORKDIR = REPO / "build" / "bench-extraction-design"
HELD_OUT = 500
VARIANTS = {
    "10": {
        "defaults": [],
        "learning rate 1e-3": ["training.learning_rate=0.001"],
        "learning rate 4e-3": ["training.learning_rate=0.004"],
        "conditional schema": ["data.conditional_schema=true"],
    },
    "30": {"defaults": []},
    "all": {"defaults": [], "conditional schema": ["data.conditional_schema=true"]},
}


def design_split() -> tuple[list[dict], list[dict]]:
    from niche.data.sampling import hold_out

    rows = slurp("train")
    kept, held = hold_out([row["intent"] for row in rows], HELD_OUT, 7)
    return [rows[index] for index in kept], [rows[index] for index in held]


def run(name: str, train: Path, validation: Path, overrides: list[str], baselines: bool) -> dict:
    from niche.config import load_config
    from niche.eval import evaluate
    from niche.train import train as train_specialist

    config = load_config(write_config(train.parent, name, train, validation), [*overrides, "tracking.enabled=false"])
    started = time.perf_counter()
    result = train_specialist(config, show_progress=True)
    minutes = (time.perf_counter() - started) / 60
    report = evaluate(result.specialist_dir, validation, baselines=baselines, show_progress=True)
    references = [json.loads(line)["completion"] for line in validation.read_text().splitlines()]
    intents = [json.loads(reference)["intent"] for reference in references]
    measured = {
        item.name.split(" ")[0]: {
            key: round(value, 4) for key, value in scores(item.predictions, references, intents).items()
        }
        for item in report.results
    }
    return {
        "overrides": overrides,
        "objective": result.manifest.hyperparameters["recipe"]["objective"],
        "recipe": result.manifest.hyperparameters["recipe"]["values"],
        "steps": result.manifest.metrics["steps"],
        "train_minutes": round(minutes, 2),
        "niche": measured["specialist"],
        **({"crf": measured["crf+logreg"]} if "crf+logreg" in measured else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,30,all", help="training sets: rows per intent, or all")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from niche.hardware import detect_hardware
    from niche.io import write_json_atomic

    train_rows, validation_rows = design_split()
    validation = write_extraction_rows(WORKDIR / "design-validation.jsonl", validation_rows)
    results = {}
    for size in args.sizes.split(","):
        rows = train_rows if size == "all" else per_intent(train_rows, int(size))
        train = write_extraction_rows(WORKDIR / f"design-train-{size}.jsonl", rows)
        results[size] = {
            variant: run(f"design-{size}-{index}", train, validation, overrides, baselines=index == 0)
            for index, (variant, overrides) in enumerate(VARIANTS[size].items())
        }
        print(json.dumps(results[size], indent=1))
    write_json_atomic(
        RESULTS,
        {
            "code": code_provenance(),
            "benchmark": "SLURP train file split into design training sets and 500 held-out design validation rows "
            "(stratified by intent, seed 7); niche's tagging head against the CRF baseline",
            "dtype": detect_hardware().description,
            "sizes": results,
        },
    )


if __name__ == "__main__":
    main()
