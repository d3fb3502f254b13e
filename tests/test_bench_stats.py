"""bench/stats.py, the paired bootstrap behind every published difference, and the quality and extraction tables
rendered from what their scripts summarise (no model runs here: the runs are written by hand)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import extraction  # noqa: E402
import quality  # noqa: E402
import stats  # noqa: E402
from harness import WorkCheck  # noqa: E402


def answers_with_accuracy(references: list[str], right: int, wrong_answer: str = "wrong") -> list[str]:
    return references[:right] + [wrong_answer] * (len(references) - right)


def test_the_interval_brackets_the_difference_and_is_of_the_median_over_seeds() -> None:
    references = [f"label{i % 5}" for i in range(200)]
    niche = [stats.accuracy_scorer(answers_with_accuracy(references, right), references) for right in (180, 170, 190)]
    other = [stats.accuracy_scorer(answers_with_accuracy(references, right), references) for right in (150, 150, 150)]
    interval = stats.paired_bootstrap(niche, other, len(references), draws=300)["accuracy"]
    assert interval["difference"] == pytest.approx(0.15)  # the median of +0.15, +0.10, +0.20
    assert interval["low"] < 0.15 < interval["high"] and interval["low"] > 0.05 and interval["pairs"] == 3


def test_a_paired_interval_is_narrower_than_the_two_sides_alone_would_suggest() -> None:
    # Both sides wrong on the same hard rows, niche right on 10 more: every draw keeps the pairing, so the
    # difference barely moves even though each accuracy does.
    references = [str(i) for i in range(400)]
    baseline = answers_with_accuracy(references, 300)
    niche = answers_with_accuracy(references, 310)
    interval = stats.paired_bootstrap(
        [stats.accuracy_scorer(niche, references)], [stats.accuracy_scorer(baseline, references)], 400, draws=300
    )["accuracy"]
    assert interval["low"] > 0 and interval["high"] - interval["low"] < 0.04


def test_a_failed_work_check_makes_a_comparison_invalid_and_unpublished() -> None:
    interval = {"difference": 0.1, "low": 0.05, "high": 0.15}
    failed = WorkCheck(False, "training rows", "90 against 100 training rows")
    record = stats.comparison(interval, [failed])
    assert record["value"] is None and not record["valid"]
    assert stats.format_difference(record) == "invalid (training rows: 90 against 100 training rows)"
    assert stats.format_difference(stats.comparison(interval)) == "+0.100 (+0.050 to +0.150)"


def test_the_extraction_scores_on_resampled_rows_count_each_draw_of_a_row() -> None:
    references = [
        json.dumps({"intent": "order", "slots": {"food": "pizza"}}),
        json.dumps({"intent": "weather", "slots": {"city": "oslo"}}),
    ]
    predictions = [references[0], json.dumps({"intent": "weather", "slots": {"city": "rome"}})]
    score = extraction.extraction_scorer(predictions, references, ["order", "weather"])
    assert score(np.arange(2)) == {"slot_f1": 0.5, "slot_f1_macro": 0.5, "intent_accuracy": 1.0, "exact_match": 0.5}
    twice_the_first = score(np.asarray([0, 0, 1]))
    assert twice_the_first["slot_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert twice_the_first["exact_match"] == pytest.approx(2 / 3) and twice_the_first["slot_f1_macro"] == 0.5


def quality_run(seed: int, references: list[str], right: dict[str, int], interior: bool = True) -> dict:
    baseline = {
        "accuracy": right["baseline"] / len(references),
        "macro_f1": 0.0,
        "fit_minutes": 0.5,
        "C": 100.0,
        "C_interior": interior,
        "searches_at_edge": [] if interior else ["C"],
        "train_rows": 90,
        "validation_rows": 10,
    }
    return {
        "seed": seed,
        "train_rows": 90,
        "validation_rows": 10,
        "niche": {
            "accuracy": right["niche"] / len(references),
            "macro_f1": 0.0,
            "train_minutes": 3.0,
            "steps": 50,
            "epochs": 4.0,
        },
        "tfidf+logreg": baseline,
        "embeddings+logreg": baseline | {"C": 1000.0},
        "answers": {
            "references": references,
            "niche": answers_with_accuracy(references, right["niche"]),
            "tfidf+logreg": answers_with_accuracy(references, right["baseline"]),
            "embeddings+logreg": answers_with_accuracy(references, right["baseline"]),
        },
    }


def test_the_quality_tables_show_medians_ranges_chosen_c_and_invalid_comparisons() -> None:
    references = [f"intent{i % 10}" for i in range(100)]
    runs = [quality_run(42 + n, references, {"niche": 90 + n, "baseline": 80}) for n in range(3)]
    size = quality.summarize_size("all", runs)
    assert size["niche"]["accuracy"]["median"] == 0.91 and size["niche"]["accuracy"]["min"] == 0.90
    assert size["comparisons"]["niche - tfidf+logreg"]["valid"]
    edge = quality.summarize_size("10", [quality_run(42, references, {"niche": 90, "baseline": 80}, interior=False)])
    assert not edge["comparisons"]["niche - tfidf+logreg"]["valid"]
    base = {"accuracy": 0.1, "rows": 20, "niche - base": stats.comparison({"difference": 0.8, "low": 0.6, "high": 0.9})}
    results = {"repeats": 3, "dtype": "cpu, bfloat16", "data": {"test_rows": 100}, "sizes": [edge, size], "base": base}
    rendered = quality.tables(json.loads(json.dumps(results)))
    assert set(rendered) == {"accuracy", "summary", "base"}
    assert "| all (90 rows) | 0.9100 (0.9000-0.9200) |" in rendered["accuracy"]
    assert "C 100, 100, 100" in rendered["accuracy"] and "C 1000 (at the edge)" in rendered["accuracy"]
    assert "invalid (baseline's best configuration: seed 42: tfidf+logreg" in rendered["accuracy"]
    assert "+0.110 (" in rendered["summary"] and "bfloat16" in rendered["summary"]


def extraction_run(seed: int, references: list[str], niche_answers: list[str], crf_answers: list[str]) -> dict:
    crf_settings = {
        "train_rows": 90,
        "validation_rows": 10,
        "crf": {"c1": 0.1, "c2": 0.01, "c1_interior": True, "c2_interior": True},
        "choices": {"intent": {"C": 10.0, "C_interior": True}},
    }
    return {
        "seed": seed,
        "train_rows": 90,
        "validation_rows": 10,
        "train_minutes": 4.0,
        "objective": "tag",
        "steps": 500,
        "epochs": 8.0,
        "schema_valid": 1.0,
        "crf": {"fit_minutes": 1.0, "settings": crf_settings, "searches_at_edge": []},
        "answers": {"niche": niche_answers, "crf": crf_answers},
    }


def test_the_extraction_tables_pair_niche_with_the_crf_and_the_label_head_of_its_seed() -> None:
    references = [json.dumps({"intent": f"i{n % 3}", "slots": {"city": f"c{n}"}}) for n in range(30)]
    intents = [json.loads(reference)["intent"] for reference in references]
    wrong_slot = [json.dumps({"intent": intent, "slots": {"city": "nowhere"}}) for intent in intents]
    niche = references[:24] + wrong_slot[24:]
    crf = references[:15] + wrong_slot[15:]
    heads = [{"seed": 42 + n, "train_rows": 90, "intent_accuracy": 0.5, "train_minutes": 2.0} for n in range(3)]
    pairs = [
        (extraction_run(42 + n, references, niche, crf), head | {"answers": intents[:15] + [None] * 15})
        for n, head in enumerate(heads)
    ]
    size = extraction.summarize_size("all", pairs, references, intents)
    assert size["comparisons"]["niche - crf+logreg"]["slot_f1"]["difference"] == pytest.approx(0.3)
    assert size["comparisons"]["niche - label head"]["intent_accuracy"]["difference"] == pytest.approx(0.5)
    results = {"repeats": 3, "dtype": "cpu, bfloat16", "data": {"test_rows": 30}, "sizes": [size], "base": None}
    rendered = extraction.tables(json.loads(json.dumps(results)))
    assert set(rendered) == {"slots", "crf_settings"}
    assert "| all (90 rows) | 0.800 (0.800-0.800); macro 0.800, 4.0 min |" in rendered["slots"]
    assert (
        "+0.300 (" in rendered["slots"]
        and "| all (90 rows) | 0.1, 0.1, 0.1 | 0.01, 0.01, 0.01 |" in rendered["crf_settings"]
    )
