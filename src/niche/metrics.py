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


def flatten_fields(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted field names (`slots.date`); lists and scalars stay as they are."""
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            fields |= flatten_fields(item, f"{name}.")
        elif item is not None and item != {}:
            fields[name] = item
    return fields


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def field_counts(predicted: dict[str, Any] | None, reference: dict[str, Any]) -> dict[str, Counter[str]]:
    """True positives, false positives and false negatives per field of one answer. A field's value is right or
    wrong as a whole; a list counts its elements as a multiset (each element found is one true positive)."""
    expected, found = flatten_fields(reference), flatten_fields(predicted or {})
    counts: dict[str, Counter[str]] = {}
    for name in [*expected, *(key for key in found if key not in expected)]:
        tally: Counter[str] = Counter()
        want, got = expected.get(name), found.get(name)
        if isinstance(want, list) or isinstance(got, list):
            want_items = Counter(
                _canonical(item) for item in (want if isinstance(want, list) else [want] if want is not None else [])
            )
            got_items = Counter(
                _canonical(item) for item in (got if isinstance(got, list) else [got] if got is not None else [])
            )
            tally["tp"] = sum((want_items & got_items).values())
            tally["fp"] = sum((got_items - want_items).values())
            tally["fn"] = sum((want_items - got_items).values())
        elif want is not None and got is not None and _canonical(want) == _canonical(got):
            tally["tp"] = 1
        else:
            tally["fp"] = int(got is not None)
            tally["fn"] = int(want is not None)
        counts[name] = tally
    return counts


def _precision_recall_f1(tally: Counter[str]) -> dict[str, float]:
    tp, fp, fn = tally["tp"], tally["fp"], tally["fn"]
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def json_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Valid-JSON and schema-valid rates, whole-object match, per-field precision/recall/F1 (micro-averaged over
    all fields as `field_f1`), accuracy per reference field, and the rows with the lowest field F1."""
    parsed = [parse_json_object(p) for p in predictions]
    expected = [parse_json_object(r) or {} for r in references]
    totals: dict[str, Counter[str]] = {}
    row_f1 = []
    for prediction, reference in zip(parsed, expected):
        row_tally: Counter[str] = Counter()
        for name, tally in field_counts(prediction, reference).items():
            totals.setdefault(name, Counter()).update(tally)
            row_tally.update(tally)
        row_f1.append(_precision_recall_f1(row_tally)["f1"])
    overall: Counter[str] = Counter()
    for tally in totals.values():
        overall.update(tally)
    count = len(references) or 1
    metrics: dict[str, Any] = {
        "valid_json": sum(p is not None for p in parsed) / count,
        "exact_match": sum(p == r for p, r in zip(parsed, expected)) / count,
        "field_precision": _precision_recall_f1(overall)["precision"],
        "field_recall": _precision_recall_f1(overall)["recall"],
        "field_f1": _precision_recall_f1(overall)["f1"],
    }
    if schema is not None:
        metrics["schema_valid"] = sum(_validates(p, schema) for p in parsed) / count
    metrics["fields"] = {
        name: _precision_recall_f1(tally) | {kind: tally[kind] for kind in ("tp", "fp", "fn")}
        for name, tally in sorted(totals.items())
    }
    metrics["worst_rows"] = [
        {"row": index, "field_f1": row_f1[index]}
        for index in sorted(range(len(row_f1)), key=row_f1.__getitem__)[:10]
        if row_f1[index] < 1.0
    ]
    return metrics


def _validates(value: dict[str, Any] | None, schema: dict[str, Any]) -> bool:
    import jsonschema

    return value is not None and jsonschema.Draft202012Validator(schema).is_valid(value)


Scorer = Callable[[Sequence[str], Sequence[str], Sequence[str] | None], dict[str, Any]]
SCORERS: dict[str, Scorer] = {"label": label_metrics, "generation": generation_metrics, "json": json_metrics}
HEADLINE_METRIC = {"label": "accuracy", "generation": "rouge_l", "json": "field_f1"}
