"""bench/recipe_search.py's own logic: configurations are compared on validation rows with paired intervals, the
default is kept unless beaten beyond noise, and the per-row counts reproduce niche's own metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from niche.metrics import json_metrics

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import recipe_search  # noqa: E402


def test_per_row_counts_reproduce_niches_field_f1_and_accuracy() -> None:
    references = ['{"category": "iam", "details": {"team": "a"}}', '{"category": "network", "tags": ["x", "y"]}']
    predictions = ['{"category": "iam", "details": {"team": "b"}}', '{"category": "network", "tags": ["x"]}']
    counts = recipe_search.row_counts("field_f1", predictions, references)
    summed = recipe_search.sum_counts(counts)
    assert float(recipe_search.field_f1_of(summed)) == pytest.approx(json_metrics(predictions, references)["field_f1"])
    labels = recipe_search.row_counts("accuracy", ["iam", " network", "iam"], ["iam", "network", "secrets"])
    assert labels == [[1, 1], [1, 1], [0, 1]]
    assert float(recipe_search.accuracy_of(recipe_search.sum_counts(labels))) == pytest.approx(2 / 3)


def validation_run(name: str, seed: int, right: int, rows: int = 60) -> dict:
    counts = [[1, 1]] * right + [[0, 1]] * (rows - right)
    return {
        "name": name,
        "dataset": "cloudsec",
        "seed": seed,
        "objective": "classify" if name.endswith("classify") else "generate",
        "headline": "accuracy",
        "score": right / rows,
        "train_minutes": 6.0 + seed,
        "steps": 400,
        "epochs": 10.0,
        "validation_rows": rows,
        "dtype": "cpu, bf16",
        "specialist": f"specialists/{name}-{seed}",
        "row_counts": counts,
    }


def test_a_search_waits_for_every_seed_and_keeps_the_default_within_noise() -> None:
    runs = [validation_run("cloudsec/classify", seed, 50) for seed in range(3)]
    runs += [validation_run("cloudsec/generate", seed, 51) for seed in range(2)]
    assert recipe_search.search_of("cloudsec", runs, repeats=3) is None
    runs.append(validation_run("cloudsec/generate", 2, 51))
    search = recipe_search.search_of("cloudsec", runs, repeats=3)
    difference = search["configurations"]["cloudsec/generate"]["difference_to_default"]
    assert difference["low"] <= 0 < difference["high"]
    assert search["chosen"] == "cloudsec/classify" == search["default"]


def test_a_configuration_beating_the_default_beyond_noise_is_chosen_and_tables_render() -> None:
    runs = [validation_run("cloudsec/classify", seed, 30) for seed in range(3)]
    runs += [validation_run("cloudsec/generate", seed, 58) for seed in range(3)]
    search = recipe_search.search_of("cloudsec", runs, repeats=3)
    assert search["chosen"] == "cloudsec/generate"
    assert search["configurations"]["cloudsec/generate"]["difference_to_default"]["low"] > 0
    results = json.loads(
        json.dumps(
            {
                "budget": "30m",
                "seeds": [0, 1, 2],
                "questions": {name: question for name, _, _, question in recipe_search.CONFIGURATIONS},
                "search": {"cloudsec": search},
                "test": {
                    "cloudsec": {
                        "configuration": "cloudsec/generate",
                        "headline": "accuracy",
                        "score": {"median": 0.98, "min": 0.97, "max": 0.99},
                        "test_rows": 160,
                        "baselines": {"tfidf+logreg": {"accuracy": 0.98125, "fit_minutes": 0.1}},
                        "dtype": "cpu, bf16",
                    }
                },
                "runs": runs,
            }
        )
    )
    tables = recipe_search.tables(results)
    assert set(tables) == {"search", "test"}
    assert "| **chosen** |" in tables["search"] and "(the default)" in tables["search"]
    assert "0.9800 (0.9700-0.9900) accuracy | 160 | tfidf+logreg 0.9812" in tables["test"]
