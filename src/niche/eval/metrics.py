"""Task metrics: one scorer per task kind, registered by name."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from niche.data.examples import parse_json_object


def _normalise(text: str) -> str:
    return " ".join(text.strip().split())


def label_metrics(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 over the reference label set, and the most frequent confusions."""
    predictions = [_normalise(p) for p in predictions]
    references = [_normalise(r) for r in references]
    label_space = sorted(set(labels or references))
    correct = sum(p == r for p, r in zip(predictions, references))
    f1_scores = []
    for label in label_space:
        true_positive = sum(p == label and r == label for p, r in zip(predictions, references))
        predicted = sum(p == label for p in predictions)
        actual = sum(r == label for r in references)
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1_scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    confusions = Counter((r, p) for p, r in zip(predictions, references) if p != r)
    return {
        "accuracy": correct / len(references) if references else 0.0,
        "macro_f1": sum(f1_scores) / len(f1_scores) if f1_scores else 0.0,
        "out_of_label_set": sum(p not in set(label_space) for p in predictions),
        "confusions": [
            {"gold": gold, "predicted": predicted, "count": count}
            for (gold, predicted), count in confusions.most_common(10)
        ],
    }


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = _tokens(prediction), _tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from the longest common subsequence of tokens."""
    predicted, expected = _tokens(prediction), _tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    previous = [0] * (len(expected) + 1)
    for token in predicted:
        current = [0]
        for column, other in enumerate(expected, start=1):
            current.append(previous[column - 1] + 1 if token == other else max(previous[column], current[column - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(predicted), lcs / len(expected)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    count = len(references) or 1
    return {
        "exact_match": sum(_normalise(p) == _normalise(r) for p, r in zip(predictions, references)) / count,
        "token_f1": sum(token_f1(p, r) for p, r in zip(predictions, references)) / count,
        "rouge_l": sum(rouge_l(p, r) for p, r in zip(predictions, references)) / count,
    }


def json_metrics(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Valid-JSON rate, whole-object match, and accuracy per field of the reference objects."""
    parsed = [parse_json_object(p) for p in predictions]
    expected = [parse_json_object(r) or {} for r in references]
    field_hits: Counter[str] = Counter()
    field_totals: Counter[str] = Counter()
    for prediction, reference in zip(parsed, expected):
        for key, value in reference.items():
            field_totals[key] += 1
            field_hits[key] += prediction is not None and json.dumps(prediction.get(key), sort_keys=True) == json.dumps(
                value, sort_keys=True
            )
    count = len(references) or 1
    return {
        "valid_json": sum(p is not None for p in parsed) / count,
        "exact_match": sum(p == r for p, r in zip(parsed, expected)) / count,
        "field_accuracy": {key: field_hits[key] / field_totals[key] for key in sorted(field_totals)},
    }


Scorer = Callable[[Sequence[str], Sequence[str], Sequence[str] | None], dict[str, Any]]
SCORERS: dict[str, Scorer] = {"label": label_metrics, "generation": generation_metrics, "json": json_metrics}
HEADLINE_METRIC = {"label": "accuracy", "generation": "rouge_l", "json": "exact_match"}
