"""Does a JSON extraction specialist beat the classic tagger? niche's defaults against a CRF, on SLURP.

What a new user does: SLURP's requests written as prompt/completion rows (`{"intent", "slots"}` as SLURP writes
them), a niche.yaml naming only the training and test files, `--budget 30m`, nothing else set. Data: SLURP
(`../shared/datasets/slurp/`, CC BY 4.0): all of its train file (2,032 rows, 71 intents) and its test file (2,973
rows), read here once, to report; the design was chosen on a validation split carved from train
(bench/extraction_design.py). Every number is taken on this machine, in this run, with the dtype it states.

- niche: `niche train` with the defaults, the budget and a seed (for this data the recipe picks a tagging head;
  niche holds its validation rows out of the training file, seeded by the seed), then `niche eval --baselines`
  on the test file.
- crf: the classic baseline that eval fits on exactly the rows that seed's niche trained on (a CRF over BIO word
  tags for the slots, TF-IDF + logistic regression for the intent), its penalties and C chosen on niche's
  validation rows by log-spaced searches grown past an end while the best sits there (niche.eval.crf).
- label head: niche's defaults, with the same seed, on the same rows as a label task (text -> intent): the intent
  accuracy a label specialist reaches, which the extraction specialist's intent must match.
- base: SmolLM2-135M-Instruct zero-shot, asked for JSON under the stored schema (an outline of it in the system
  prompt, decoding constrained to it), on a stratified sample of the test rows (`--base-rows`), once.
- Data efficiency: the same with 10 and 30 training rows per intent.

Runs: every size once per round with seed 42 + round (its extraction specialist, CRF and label head), the sizes'
order rotating (harness.interleave), `--repeats` rounds (at least 3). The headline is the median over seeds with
the min-max; every run is kept.

Slot F1 counts the fields under `slots` (micro over every slot value; `_macro` is the mean over test intents of
each intent's micro slot F1); a value is right when it is exactly the reference. Every niche-vs-other difference
is the median over seeds of niche minus the other side of that seed, with a paired bootstrap 95% interval over
test rows (bench/stats.py). Checked for each: the CRF was fitted on as many training rows and chose its settings
on as many validation rows as niche held, its searches ended interior, and every seed scored the same test rows;
the label head trained on as many rows as the extraction specialist.

Writes bench/results/extraction.json (`--quick`: build/bench-quick/extraction.json, 8 intents, 10 rows each, a
short budget, one seed, no base).

    python bench/extraction.py [--budget 30m] [--per-intent 10,30] [--base-rows 300] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import (
    REPO,
    Report,
    WorkCheck,
    add_arguments,
    format_range,
    interleave,
    same_count,
    summarize,
)
from public_data import per_intent, slurp, write_extraction_rows
from stats import RowScorer, comparison, format_difference, paired_bootstrap, searched_to_the_interior

METRICS = ("slot_f1", "slot_f1_macro", "intent_accuracy", "exact_match")
FIRST_SEED = 42
TARGET_MARGIN = 0.05
TARGET_MINUTES = 30
QUICK_INTENTS = 8
QUICK_ROWS_PER_INTENT = 10
QUICK_TEST_ROWS = 30
QUICK_BASE_ROWS = 0  # the base's schema-constrained decoding takes minutes even for 2 rows
QUICK_BUDGET = "40s"


def slot_counts(prediction: str, reference: str) -> tuple[int, int, int]:
    """tp, fp, fn over the slot values of one row (fields under `slots`, lists as multisets)."""
    from niche.data.examples import parse_json_object
    from niche.metrics import field_counts

    tp = fp = fn = 0
    for name, counts in field_counts(parse_json_object(prediction), parse_json_object(reference) or {}).items():
        if name.startswith("slots."):
            tp, fp, fn = tp + counts["tp"], fp + counts["fp"], fn + counts["fn"]
    return tp, fp, fn


def extraction_scorer(predictions: Sequence[str], references: Sequence[str], intents: Sequence[str]) -> RowScorer:
    """Slot F1 (micro, and macro over the test intents present), intent accuracy and exact match over any
    resampling of the rows; each row is parsed once."""
    import numpy as np

    from niche.data.examples import parse_json_object

    counts = np.asarray([slot_counts(prediction, reference) for prediction, reference in zip(predictions, references)])
    answers = [parse_json_object(prediction) or {} for prediction in predictions]
    intent_right = np.asarray([answer.get("intent") == intent for answer, intent in zip(answers, intents)])
    exact = np.asarray([answer == parse_json_object(reference) for answer, reference in zip(answers, references)])
    names = sorted(set(intents))
    intent_index = np.asarray([names.index(intent) for intent in intents])

    def f1(tp: Any, fp: Any, fn: Any) -> Any:
        denominator = 2 * tp + fp + fn
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)

    def score(rows: Any) -> dict[str, float]:
        tp, fp, fn = counts[rows].sum(axis=0)
        per_intent = [np.bincount(intent_index[rows], counts[rows, column], len(names)) for column in range(3)]
        present = np.bincount(intent_index[rows], minlength=len(names)) > 0
        return {
            "slot_f1": float(f1(tp, fp, fn)),
            "slot_f1_macro": float(f1(*per_intent)[present].mean()),
            "intent_accuracy": float(intent_right[rows].mean()),
            "exact_match": float(exact[rows].mean()),
        }

    return score


def scores(predictions: Sequence[str], references: Sequence[str], intents: Sequence[str]) -> dict[str, float]:
    """Slot F1 (micro and macro over intents), intent accuracy and exact match over every row."""
    import numpy as np

    return extraction_scorer(predictions, references, intents)(np.arange(len(references)))


def write_config(directory: Path, name: str, train: Path, test: Path) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"name: {name}\noutput_dir: specialists\ndata:\n  train: {train.name}\n  test: {test.name}\n")
    return path


def train_with_defaults(config_path: Path, budget: str, seed: int) -> tuple[Any, float]:
    """`niche train` on a config naming only the files, with the budget and seed: the result and its minutes."""
    from niche.config import load_config
    from niche.train import train as train_specialist

    config = load_config(
        config_path, [f"training.time_budget={budget}", f"training.seed={seed}", "tracking.enabled=false"]
    )
    started = time.perf_counter()
    result = train_specialist(config, show_progress=True)
    return result, (time.perf_counter() - started) / 60


def run_niche(name: str, train: Path, test: Path, budget: str, seed: int) -> dict[str, Any]:
    """The extraction specialist, then eval with the CRF fitted on its training rows."""
    from niche.eval import evaluate, write_report
    from niche.eval.baselines import searches_at_edge

    result, minutes = train_with_defaults(write_config(train.parent, name, train, test), budget, seed)
    report = evaluate(result.specialist_dir, test, baselines=True, show_progress=True)
    write_report(report, train.parent / "reports" / name)
    metrics = result.manifest.metrics
    by_name = {item.name.split(" ")[0]: item for item in report.results}
    crf = by_name["crf+logreg"]
    return {
        "seed": seed,
        "train_rows": metrics["train_examples"],
        "validation_rows": metrics["validation_examples"],
        "train_minutes": round(minutes, 2),
        "objective": result.manifest.hyperparameters["recipe"]["objective"],
        "recipe": result.manifest.hyperparameters["recipe"]["values"],
        "steps": metrics["steps"],
        "epochs": round(metrics["epochs"], 2),
        "stopped_by": metrics["plan"]["stopped_by"],
        "schema_valid": by_name["specialist"].metrics.get("schema_valid"),
        "examples_per_s": round(by_name["specialist"].examples_per_s, 1),
        "crf": {
            "fit_minutes": round(crf.details["fit_seconds"] / 60, 2),
            "settings": crf.details["settings"],
            "searches_at_edge": searches_at_edge(crf.details["settings"]),
            "examples_per_s": round(crf.examples_per_s, 1),
        },
        "specialist_dir": str(result.specialist_dir),
        "answers": {"niche": by_name["specialist"].predictions, "crf": crf.predictions},
    }


def run_label_head(name: str, rows: list[dict], test_rows: list[dict], workdir: Path, budget: str, seed: int) -> dict:
    """niche's defaults on the same rows as a label task (text -> intent); its answer for every test row (None for
    an intent it never saw in training, which it cannot answer: counted wrong)."""
    from niche.eval import evaluate

    directory = workdir / "label"
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / f"{name}-train.jsonl"
    test = directory / "test.jsonl"
    train.write_text("".join(json.dumps({"text": row["text"], "label": row["intent"]}) + "\n" for row in rows))
    known = {row["intent"] for row in rows}
    answerable = [position for position, row in enumerate(test_rows) if row["intent"] in known]
    test.write_text(
        "".join(json.dumps({"text": test_rows[i]["text"], "label": test_rows[i]["intent"]}) + "\n" for i in answerable)
    )
    result, minutes = train_with_defaults(write_config(directory, name, train, test), budget, seed)
    report = evaluate(result.specialist_dir, test, show_progress=True)
    answers: list[str | None] = [None] * len(test_rows)
    for position, answer in zip(answerable, report.results[0].predictions, strict=True):
        answers[position] = answer
    right = sum(answer == row["intent"] for answer, row in zip(answers, test_rows))
    return {
        "seed": seed,
        "train_rows": result.manifest.metrics["train_examples"],
        "intent_accuracy": round(right / len(test_rows), 4),
        "train_minutes": round(minutes, 2),
        "answers": answers,
    }


def run_base(specialist: Path, sample: Path) -> dict[str, Any]:
    from niche.eval import evaluate

    report = evaluate(specialist, sample, base="base", show_progress=True)
    base = report.results[0]
    references = [json.loads(line)["completion"] for line in sample.read_text().splitlines()]
    measured = scores(base.predictions, references, [json.loads(reference)["intent"] for reference in references])
    return {key: round(value, 4) for key, value in measured.items()} | {
        "rows": report.rows,
        "schema_valid": base.metrics.get("schema_valid"),
        "valid_json": base.metrics["valid_json"],
        "answers": base.predictions,
    }


def intent_scorer(answers: Sequence[str | None], intents: Sequence[str]) -> RowScorer:
    import numpy as np

    right = np.asarray([answer == intent for answer, intent in zip(answers, intents, strict=True)])
    return lambda rows: {"intent_accuracy": float(right[rows].mean())}


def chosen_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The CRF's penalties and the intent regression's C one seed chose, with whether each is interior."""
    crf, intent = settings.get("crf") or {}, settings.get("choices", {}).get("intent", {})
    return {
        **{key: crf.get(key) for key in ("c1", "c2", "c1_interior", "c2_interior")},
        "intent_C": intent.get("C"),
        "intent_C_interior": intent.get("C_interior"),
    }


def crf_checks(runs: list[dict[str, Any]], references: list[str]) -> list[WorkCheck]:
    checks = []
    for run in runs:
        settings, seed = run["crf"]["settings"], run["seed"]
        checks += [
            same_count(run["train_rows"], settings["train_rows"], what=f"training rows (seed {seed})"),
            same_count(run["validation_rows"], settings["validation_rows"], what=f"validation rows (seed {seed})"),
            same_count(len(references), len(run["answers"]["crf"]), what=f"test rows answered (seed {seed})"),
            searched_to_the_interior(f"seed {seed}: crf+logreg", run["crf"]["searches_at_edge"]),
        ]
    return checks


def summarize_size(
    label: str, measured: list[tuple[dict, dict]], references: list[str], intents: list[str]
) -> dict[str, Any]:
    """A size's medians and ranges over seeds, and niche against the CRF and the label head with intervals."""
    runs = [run for run, _ in measured]
    heads = [head for _, head in measured]
    niche_scorers = [extraction_scorer(run["answers"]["niche"], references, intents) for run in runs]
    crf_scorers = [extraction_scorer(run["answers"]["crf"], references, intents) for run in runs]
    import numpy as np

    everything = np.arange(len(references))
    niche_scores = [scorer(everything) for scorer in niche_scorers]
    crf_scores = [scorer(everything) for scorer in crf_scorers]
    for run, niche, crf in zip(runs, niche_scores, crf_scores, strict=True):
        run["scores"] = {
            "niche": {k: round(v, 4) for k, v in niche.items()},
            "crf": {k: round(v, 4) for k, v in crf.items()},
        }
    crf_intervals = paired_bootstrap(niche_scorers, crf_scorers, len(references))
    checks = crf_checks(runs, references)
    head_intervals = paired_bootstrap(
        niche_scorers, [intent_scorer(head["answers"], intents) for head in heads], len(references)
    )
    head_checks = [
        same_count(run["train_rows"], head["train_rows"], what=f"training rows of the label head (seed {run['seed']})")
        for run, head in zip(runs, heads)
    ]
    return {
        "training_rows": label,
        "train_rows": summarize([run["train_rows"] for run in runs]),
        "seeds": [run["seed"] for run in runs],
        "niche": {
            **{metric: summarize([scores[metric] for scores in niche_scores]) for metric in METRICS},
            **{key: summarize([run[key] for run in runs]) for key in ("train_minutes", "steps", "epochs")},
            "schema_valid": summarize([run["schema_valid"] for run in runs]),
            "objective": sorted({run["objective"] for run in runs}),
        },
        "crf+logreg": {
            **{metric: summarize([scores[metric] for scores in crf_scores]) for metric in METRICS},
            "fit_minutes": summarize([run["crf"]["fit_minutes"] for run in runs]),
            "chosen": [chosen_settings(run["crf"]["settings"]) for run in runs],
            "searches_at_edge": [run["crf"]["searches_at_edge"] for run in runs],
        },
        "label_head": {
            "intent_accuracy": summarize([head["intent_accuracy"] for head in heads]),
            "train_minutes": summarize([head["train_minutes"] for head in heads]),
        },
        "comparisons": {
            "niche - crf+logreg": {metric: comparison(crf_intervals[metric], checks) for metric in METRICS},
            "niche - label head": {"intent_accuracy": comparison(head_intervals["intent_accuracy"], head_checks)},
        },
        "runs": [{key: value for key, value in run.items() if key != "answers"} for run in runs],
        "label_heads": [{key: value for key, value in head.items() if key != "answers"} for head in heads],
    }


def base_comparison(
    base: dict[str, Any], runs: list[dict[str, Any]], sample_rows: list[int], references: list[str], intents: list[str]
) -> dict[str, Any]:
    """niche (every seed, on the sampled test rows) against the base zero-shot on the same rows, per metric."""
    sampled_references = [references[row] for row in sample_rows]
    sampled_intents = [intents[row] for row in sample_rows]
    niche = [
        extraction_scorer([run["answers"]["niche"][row] for row in sample_rows], sampled_references, sampled_intents)
        for run in runs
    ]
    other = extraction_scorer(base["answers"], sampled_references, sampled_intents)
    intervals = paired_bootstrap(niche, [other] * len(runs), len(sample_rows))
    check = same_count(len(sample_rows), len(base["answers"]), what="sampled test rows answered")
    return {metric: comparison(intervals[metric], [check]) for metric in METRICS}


def quick_rows(train_rows: list[dict], test_rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """A few intents, a few rows each: the smoke run's data."""
    from niche.data.sampling import stratified_sample

    intents = set(sorted({row["intent"] for row in train_rows})[:QUICK_INTENTS])
    train = per_intent([row for row in train_rows if row["intent"] in intents], QUICK_ROWS_PER_INTENT)
    test = [row for row in test_rows if row["intent"] in intents]
    return train, [test[i] for i in stratified_sample([row["intent"] for row in test], QUICK_TEST_ROWS, seed=0)]


def target_met(sizes: Mapping[str, dict[str, Any]]) -> bool:
    """niche >= CRF + 5 points of slot F1 on all rows and ahead at every size, every answer schema-valid, the intent
    at least the label head's, all rows trained within the budget; on valid comparisons, medians over seeds."""
    for label, size in sizes.items():
        versus_crf = size["comparisons"]["niche - crf+logreg"]["slot_f1"]
        versus_head = size["comparisons"]["niche - label head"]["intent_accuracy"]
        margin = TARGET_MARGIN if label == "all" else 0.0
        if not (versus_crf["valid"] and versus_head["valid"]) or versus_crf["difference"] < margin:
            return False
        if versus_head["difference"] < 0 or size["niche"]["schema_valid"]["min"] < 1.0:
            return False
    return sizes["all"]["niche"]["train_minutes"]["max"] <= TARGET_MINUTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="30m", help="niche's time budget per run")
    parser.add_argument(
        "--per-intent", default="10,30", help="data-efficiency sizes (rows per intent); all is always run"
    )
    parser.add_argument(
        "--base-rows", type=int, default=300, help="test rows the zero-shot base is scored on (0: no base)"
    )
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("extraction", args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from niche.data.sampling import stratified_sample
    from niche.hardware import detect_hardware

    train_rows, test_rows = slurp("train"), slurp("test")
    if args.quick:
        train_rows, test_rows = quick_rows(train_rows, test_rows)
        args.budget, args.per_intent, args.base_rows = QUICK_BUDGET, "", QUICK_BASE_ROWS
        workdir = REPO / "build" / "bench-quick" / "extraction"
    else:
        workdir = REPO / "build" / "bench-extraction"
    test_path = write_extraction_rows(workdir / "test.jsonl", test_rows)
    references = [json.loads(line)["completion"] for line in test_path.read_text().splitlines()]
    intents = [row["intent"] for row in test_rows]
    sizes = {"all": train_rows} | {
        part: per_intent(train_rows, int(part)) for part in args.per_intent.split(",") if part
    }
    files = {label: write_extraction_rows(workdir / f"train-{label}.jsonl", rows) for label, rows in sizes.items()}

    def configuration(label: str):
        def run(round_: int) -> tuple[dict, dict]:
            seed = FIRST_SEED + round_
            niche = run_niche(f"slurp-{label}-{seed}", files[label], test_path, args.budget, seed)
            head = run_label_head(f"slurp-{label}-{seed}", sizes[label], test_rows, workdir, args.budget, seed)
            return niche, head

        return run

    measured, schedule = interleave(
        {label: configuration(label) for label in sizes},
        repeats=report.repeats,
        on_result=print_run,
        journal=report.journal(),
    )
    summaries = {label: summarize_size(label, pairs, references, intents) for label, pairs in measured.items()}
    first_runs = [run for run, _ in measured["all"]]
    base = None
    if args.base_rows:
        sample_rows = stratified_sample(intents, args.base_rows, 0)
        base = run_base(
            Path(first_runs[0]["specialist_dir"]),
            write_extraction_rows(workdir / "test-base-sample.jsonl", [test_rows[row] for row in sample_rows]),
        )
        base = {key: value for key, value in base.items() if key != "answers"} | {
            "niche - base": base_comparison(base, first_runs, sample_rows, references, intents)
        }
    payload = {
        "what": "SLURP text to {intent, slots} JSON: all of train (and 10, 30 rows per intent), the whole test file; "
        "niche's defaults with one budget against the CRF baseline fitted on the same rows; medians over seeds",
        "data": {
            "train_rows": len(train_rows),
            "test_rows": len(test_rows),
            "base_rows_sampled": base["rows"] if base else 0,
            "source": "slurp (quick: a subset)" if args.quick else "slurp train.jsonl, test.jsonl",
        },
        "dtype": detect_hardware().description,
        "budget": args.budget,
        "schedule": schedule,
        "sizes": [summaries[label] for label in sorted(summaries, key=size_order)],
        "base": base,
        "target": "niche slot F1 >= CRF + 0.05 on all rows within the budget and ahead at every size, schema_valid "
        "1.0, intent accuracy >= the label head's (medians over seeds, valid comparisons)",
        "target_met": target_met(summaries),
    }
    written = json.loads(report.write(payload).read_text())
    for name, table in tables(written).items():
        print(f"\n{name}:\n{table}")


def print_run(label: str, round_: int, result: tuple[dict, dict]) -> None:
    run, head = result
    print(
        f"== {label}: seed {run['seed']}: niche {run['train_minutes']} min, CRF {run['crf']['fit_minutes']} min, "
        f"label head intent accuracy {head['intent_accuracy']}"
    )


def size_order(label: str) -> tuple[int, int]:
    return (0, 0) if label == "all" else (1, int(label))


def size_name(size: Mapping[str, Any]) -> str:
    rows = f"{size['train_rows']['median']:,.0f} rows"
    if size["training_rows"] == "all":
        return f"all ({rows})"
    return f"{size['training_rows']} per intent ({rows})"


def micro_macro(scores: Mapping[str, Any]) -> str:
    return f"{format_range(scores['slot_f1'], 3)}; macro {scores['slot_f1_macro']['median']:.3f}"


def tables(results: dict[str, Any]) -> dict[str, str]:
    """`slots`: every size, niche against the CRF (slot F1, intent, exact match) with intervals, the label head's
    intent and schema validity; `crf_settings`: what the CRF's searches chose; `base`: the zero-shot base (when
    it ran)."""
    seeds = results["repeats"]
    lines = [
        "| training rows | niche slot F1 (macro), training | CRF + TF-IDF LR slot F1 (macro), fit | "
        "niche − CRF slot F1, 95% interval | intent accuracy: niche / CRF / label head | niche − label head intent, "
        "95% interval | exact match: niche / CRF | schema-valid (lowest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        niche, crf, head = size["niche"], size["crf+logreg"], size["label_head"]
        versus_crf = size["comparisons"]["niche - crf+logreg"]
        versus_head = size["comparisons"]["niche - label head"]
        lines.append(
            f"| {size_name(size)} | {micro_macro(niche)}, {niche['train_minutes']['median']:.1f} min | "
            f"{micro_macro(crf)}, {crf['fit_minutes']['median']:.1f} min | {format_difference(versus_crf['slot_f1'])} | "
            f"{format_range(niche['intent_accuracy'], 3)} / {crf['intent_accuracy']['median']:.3f} / "
            f"{format_range(head['intent_accuracy'], 3)} | {format_difference(versus_head['intent_accuracy'])} | "
            f"{niche['exact_match']['median']:.3f} / {crf['exact_match']['median']:.3f} | "
            f"{niche['schema_valid']['min']:.3f} |"
        )
    caption = (
        f"\nSLURP's test file ({results['data']['test_rows']:,} rows), median over {seeds} seed"
        f"{'s' if seeds != 1 else ''} (min-max); {results['dtype']}; differences: median over seeds of niche minus "
        "the other side of that seed, paired bootstrap 95% interval over test rows.\n"
    )
    settings = [
        "| training rows | CRF L1 penalty (c1) | CRF L2 penalty (c2) | intent regression C | every search interior |",
        "|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        chosen = size["crf+logreg"]["chosen"]
        edges = sorted({edge for edges in size["crf+logreg"]["searches_at_edge"] for edge in edges})

        def per_seed(key: str, chosen: list[dict[str, Any]] = chosen) -> str:
            return ", ".join("none" if seed[key] is None else f"{seed[key]:g}" for seed in chosen)

        interior = "yes" if not edges else "no: " + ", ".join(edges)
        settings.append(
            f"| {size_name(size)} | {per_seed('c1')} | {per_seed('c2')} | {per_seed('intent_C')} | {interior} |"
        )
    rendered = {
        "slots": "\n".join(lines) + caption,
        "crf_settings": "\n".join(settings)
        + "\nChosen on niche's validation rows of each seed (one value per seed, in seed order).\n",
    }
    if results["base"]:
        rendered["base"] = base_table(results["base"], results["dtype"])
    return rendered


def base_table(base: Mapping[str, Any], dtype: str) -> str:
    return (
        "\n".join(
            [
                "| base zero-shot, stratified test rows | slot F1 | intent accuracy | exact match | schema-valid | "
                "niche − base slot F1, 95% interval |",
                "|---|---|---|---|---|---|",
                f"| {base['rows']} | {base['slot_f1']:.3f} | {base['intent_accuracy']:.3f} | {base['exact_match']:.3f} | "
                f"{base['schema_valid']} | {format_difference(base['niche - base']['slot_f1'])} |",
                f"{dtype}; niche: every seed's specialist trained on all rows.",
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
