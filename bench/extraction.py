"""Does a JSON extraction specialist beat the classic tagger? niche's defaults against a CRF, on SLURP.

What a new user does: SLURP's requests written as prompt/completion rows (`{"intent", "slots"}` as SLURP writes
them), a niche.yaml naming only the training and test files, `--budget 30m`, nothing else set. Data: SLURP
(`../shared/datasets/slurp/`, CC BY 4.0): all of its train file (2,032 rows, 71 intents; niche holds its validation
rows out of them) and its test file (2,973 rows), read once here, to report; the design was chosen on a validation
split carved from train (bench/README.md). Every number is taken on this machine, in this run, with the dtype it
states.

- niche: `niche train` with the defaults and the budget (for this data the recipe picks a tagging head), then
  `niche eval --baselines` on the test file.
- crf: the classic baseline `niche eval --baselines` fits on exactly the rows niche trained on (a CRF over BIO
  word tags for the slots, TF-IDF + logistic regression for the intent), its settings chosen on niche's
  validation rows.
- label head: niche's defaults on the same rows as a label task (text -> intent): the intent accuracy a label
  specialist reaches, which the extraction specialist's intent must match.
- base: SmolLM2-135M-Instruct zero-shot, asked for JSON under the stored schema (an outline of it in the system
  prompt, decoding constrained to it), on a stratified sample of the test rows (`--base-rows`).
- Data efficiency: the same with 10 and 30 training rows per intent.
- Repeats: each niche and label-head run `--repeats` times with different seeds; the headline is the median
  run, and every run is kept. The CRF is deterministic and fitted once per training set.

Slot F1 counts the fields under `slots` (micro over every slot value; `_macro` is the mean over test intents of
each intent's micro slot F1); a value is right when it is exactly the reference. The paired bootstrap resamples
test rows (1,000 draws, seeded) and recomputes both systems' scores on each draw.

Writes bench/results/extraction.json (keys niche_slot_f1, crf_slot_f1, ..., per size and run).

    python bench/extraction.py [--budget 30m] [--per-intent 10,30] [--repeats 2] [--base-rows 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

from provenance import code_provenance, machine
from public_data import per_intent, slurp, write_extraction_rows

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "extraction.json"
WORKDIR = REPO / "build" / "bench-extraction"
BOOTSTRAP_DRAWS = 1000


def slot_counts(prediction: str, reference: str) -> Counter:
    """tp, fp, fn over the slot values of one row (fields under `slots`, lists as multisets)."""
    from niche.data.examples import parse_json_object
    from niche.metrics import field_counts

    tally: Counter = Counter()
    for name, counts in field_counts(parse_json_object(prediction), parse_json_object(reference) or {}).items():
        if name.startswith("slots."):
            tally.update(counts)
    return tally


def f1_of(tally: Counter) -> float:
    found, expected = tally["tp"] + tally["fp"], tally["tp"] + tally["fn"]
    return 2 * tally["tp"] / (found + expected) if found + expected else 1.0


def scores(predictions: list[str], references: list[str], intents: list[str], rows: list[int] | None = None) -> dict:
    """Slot F1 (micro and macro over intents), intent accuracy and exact match over `rows` (all by default)."""
    from niche.data.examples import parse_json_object

    rows = list(range(len(references))) if rows is None else rows
    total: Counter = Counter()
    by_intent: dict[str, Counter] = defaultdict(Counter)
    right_intent = exact = 0
    for row in rows:
        tally = slot_counts(predictions[row], references[row])
        total.update(tally)
        by_intent[intents[row]].update(tally)
        predicted = parse_json_object(predictions[row]) or {}
        right_intent += predicted.get("intent") == intents[row]
        exact += predicted == parse_json_object(references[row])
    return {
        "slot_f1": f1_of(total),
        "slot_f1_macro": statistics.mean(f1_of(tally) for tally in by_intent.values()),
        "intent_accuracy": right_intent / len(rows),
        "exact_match": exact / len(rows),
    }


def paired_bootstrap(niche: list[str], crf: list[str], references: list[str], intents: list[str]) -> dict:
    """95% intervals of niche - crf for each score, test rows resampled with replacement (seeded)."""
    draws = defaultdict(list)
    rng = random.Random(0)
    for _ in range(BOOTSTRAP_DRAWS):
        rows = [rng.randrange(len(references)) for _ in references]
        mine, theirs = scores(niche, references, intents, rows), scores(crf, references, intents, rows)
        for key in mine:
            draws[key].append(mine[key] - theirs[key])
    return {
        key: [round(sorted(values)[int(0.025 * len(values))], 4), round(sorted(values)[int(0.975 * len(values))], 4)]
        for key, values in draws.items()
    }


def write_config(directory: Path, name: str, train: Path, test: Path) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"name: {name}\noutput_dir: specialists\ndata:\n  train: {train.name}\n  test: {test.name}\n")
    return path


def run_niche(name: str, train: Path, test: Path, budget: str, seed: int, baselines: bool) -> dict:
    """`niche train` on a config naming only the files, with the budget; then eval (with the CRF when asked)."""
    from niche.config import load_config
    from niche.eval import evaluate, write_report
    from niche.train import train as train_specialist

    config = load_config(
        write_config(train.parent, name, train, test),
        [f"training.time_budget={budget}", f"training.seed={seed}", "tracking.enabled=false"],
    )
    started = time.perf_counter()
    result = train_specialist(config, show_progress=True)
    train_minutes = (time.perf_counter() - started) / 60
    report = evaluate(result.specialist_dir, test, baselines=baselines, show_progress=True)
    write_report(report, train.parent / "reports" / name)
    metrics = result.manifest.metrics
    by_name = {item.name.split(" ")[0]: item for item in report.results}
    return {
        "seed": seed,
        "train_rows": metrics["train_examples"],
        "validation_rows": metrics["validation_examples"],
        "train_minutes": round(train_minutes, 2),
        "objective": result.manifest.hyperparameters["recipe"]["objective"],
        "recipe": result.manifest.hyperparameters["recipe"]["values"],
        "steps": metrics["steps"],
        "epochs": round(metrics["epochs"], 2),
        "plan": metrics["plan"],
        "specialist": by_name["specialist"],
        "crf": by_name.get("crf+logreg"),
        "specialist_dir": str(result.specialist_dir),
    }


def run_label_head(name: str, rows: list[dict], test_rows: list[dict], budget: str, seed: int) -> dict:
    """niche's defaults on the same rows as a label task (text -> intent): its test accuracy."""
    from niche.config import load_config
    from niche.eval import evaluate
    from niche.train import train as train_specialist

    directory = WORKDIR / "label"
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / f"{name}-train.jsonl"
    test = directory / "test.jsonl"
    train.write_text("".join(json.dumps({"text": row["text"], "label": row["intent"]}) + "\n" for row in rows))
    known = {row["intent"] for row in rows}
    # Test intents never seen in training cannot be answered by a label head; they count as wrong.
    test.write_text(
        "".join(
            json.dumps({"text": row["text"], "label": row["intent"]}) + "\n"
            for row in test_rows
            if row["intent"] in known
        )
    )
    config = load_config(
        write_config(directory, name, train, test),
        [f"training.time_budget={budget}", f"training.seed={seed}", "tracking.enabled=false"],
    )
    started = time.perf_counter()
    result = train_specialist(config, show_progress=True)
    minutes = (time.perf_counter() - started) / 60
    report = evaluate(result.specialist_dir, test, show_progress=True)
    right = report.results[0].metrics["accuracy"] * report.rows
    return {"seed": seed, "intent_accuracy": round(right / len(test_rows), 4), "train_minutes": round(minutes, 2)}


def run_base(specialist: Path, sample: Path) -> dict:
    from niche.eval import evaluate

    report = evaluate(specialist, sample, base="base", show_progress=True)
    base = report.results[0]
    references = [json.loads(line)["completion"] for line in sample.read_text().splitlines()]
    measured = scores(base.predictions, references, [json.loads(reference)["intent"] for reference in references])
    return {key: round(value, 4) for key, value in measured.items()} | {
        "rows": report.rows,
        "schema_valid": base.metrics.get("schema_valid"),
        "valid_json": base.metrics["valid_json"],
    }


def summarise(run: dict, references: list[str], intents: list[str]) -> dict:
    """A niche run's scores (and its CRF's, when fitted) on the whole test file."""
    specialist = run["specialist"]
    summary = {
        **{
            f"niche_{key}": round(value, 4)
            for key, value in scores(specialist.predictions, references, intents).items()
        },
        "niche_train_minutes": run["train_minutes"],
        "schema_valid": specialist.metrics.get("schema_valid"),
        "niche_examples_per_s": round(specialist.examples_per_s, 1),
        **{
            key: run[key] for key in ("seed", "objective", "recipe", "steps", "epochs", "train_rows", "validation_rows")
        },
    }
    if run["crf"] is not None:
        crf = run["crf"]
        summary |= {
            f"crf_{key}": round(value, 4) for key, value in scores(crf.predictions, references, intents).items()
        }
        summary |= {
            "crf_fit_minutes": round(crf.details["fit_seconds"] / 60, 2),
            "crf_settings": crf.details["settings"]["crf"],
            "crf_examples_per_s": round(crf.examples_per_s, 1),
        }
    return summary


def run_size(label: str, rows: list[dict], test_path: Path, test_rows: list[dict], args: argparse.Namespace) -> dict:
    references = [json.loads(line)["completion"] for line in test_path.read_text().splitlines()]
    intents = [row["intent"] for row in test_rows]
    train = write_extraction_rows(WORKDIR / f"train-{label}.jsonl", rows)
    runs, crf_predictions = [], None
    for repeat in range(args.repeats):
        seed = 42 + repeat
        run = run_niche(f"slurp-{label}-{seed}", train, test_path, args.budget, seed, baselines=repeat == 0)
        if run["crf"] is not None:
            crf_predictions, crf_summary = run["crf"].predictions, summarise(run, references, intents)
            crf_summary = {key: value for key, value in crf_summary.items() if key.startswith("crf_")}
        summary = summarise(run, references, intents)
        summary = {key: value for key, value in summary.items() if not key.startswith("crf_")}
        summary["bootstrap_niche_minus_crf"] = paired_bootstrap(
            run["specialist"].predictions, crf_predictions, references, intents
        )
        summary["specialist_dir"] = run["specialist_dir"]
        runs.append(summary)
    label_heads = [
        run_label_head(f"slurp-{label}-{42 + repeat}", rows, test_rows, args.budget, 42 + repeat)
        for repeat in range(args.repeats)
    ]
    median = sorted(runs, key=lambda run: run["niche_slot_f1"])[(len(runs) - 1) // 2]
    return {
        "training_rows": label,
        **{key: value for key, value in median.items() if key.startswith("niche_") or key in ("schema_valid",)},
        **crf_summary,
        "label_head_intent_accuracy": statistics.median(head["intent_accuracy"] for head in label_heads),
        "bootstrap_niche_minus_crf": median["bootstrap_niche_minus_crf"],
        "niche_slot_f1_range": [min(run["niche_slot_f1"] for run in runs), max(run["niche_slot_f1"] for run in runs)],
        "runs": runs,
        "label_heads": label_heads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="30m", help="niche's time budget per run")
    parser.add_argument(
        "--per-intent", default="10,30", help="data-efficiency sizes (rows per intent); all is always run"
    )
    parser.add_argument("--repeats", type=int, default=2, help="niche and label-head runs per size, seeds 42, 43, ...")
    parser.add_argument("--base-rows", type=int, default=300, help="test rows the zero-shot base is scored on")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from niche.data.sampling import stratified_sample
    from niche.io import write_json_atomic

    train_rows, test_rows = slurp("train"), slurp("test")
    test_path = write_extraction_rows(WORKDIR / "test.jsonl", test_rows)
    sizes = [("all", train_rows)] + [
        (str(count), per_intent(train_rows, count))
        for count in [int(part) for part in args.per_intent.split(",") if part]
    ]
    results = [run_size(label, rows, test_path, test_rows, args) for label, rows in sizes]
    sample_rows = [
        test_rows[index] for index in stratified_sample([row["intent"] for row in test_rows], args.base_rows, 0)
    ]
    base = run_base(
        Path(results[0]["runs"][0]["specialist_dir"]),
        write_extraction_rows(WORKDIR / "test-base-sample.jsonl", sample_rows),
    )
    headline = results[0]
    payload = {
        "code": code_provenance(),
        "benchmark": "SLURP text to {intent, slots} JSON: all of train (and 10, 30 rows per intent), full test file; "
        "niche defaults with one budget against the CRF baseline fitted on the same rows",
        "data": {"train_rows": len(train_rows), "test_rows": len(test_rows), "base_rows_sampled": base["rows"]},
        "budget": args.budget,
        "repeats": args.repeats,
        **{key: value for key, value in headline.items() if key not in ("runs", "label_heads", "training_rows")},
        "base": base,
        "target": "niche_slot_f1 >= crf_slot_f1 + 0.05 within the budget, schema_valid 1.0, intent accuracy >= the "
        "label head's, still ahead at 10 rows per intent",
        "target_met": all(
            size["niche_slot_f1"] >= size["crf_slot_f1"] + (0.05 if size is headline else 0.0)
            and size["schema_valid"] == 1.0
            and size["niche_intent_accuracy"] >= size["label_head_intent_accuracy"]
            for size in results
        )
        and headline["niche_train_minutes"] <= 30,
        "sizes": results,
        "machine": machine(),
    }
    write_json_atomic(RESULTS, payload)
    print(json.dumps({key: value for key, value in payload.items() if not isinstance(value, (dict, list))}, indent=2))
    print("training rows | niche slot F1 | CRF slot F1 | niche intent | CRF intent | label head intent")
    for size in results:
        print(
            f"{size['training_rows']} | {size['niche_slot_f1']} | {size['crf_slot_f1']} | {size['niche_intent_accuracy']} "
            f"| {size['crf_intent_accuracy']} | {size['label_head_intent_accuracy']}"
        )


if __name__ == "__main__":
    main()
