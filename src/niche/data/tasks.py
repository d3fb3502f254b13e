"""Task kinds (label, generation, json) and label-set checks."""

from __future__ import annotations

from collections.abc import Sequence

from niche.data.examples import Example, parse_json_object
from niche.errors import DataError


def detect_task_kind(examples: Sequence[Example], data_format: str, requested: str = "auto") -> str:
    """label for label-shaped data, json when every answer is a JSON object, otherwise generation."""
    if requested != "auto":
        return requested
    if data_format == "label":
        return "label"
    if examples and all(parse_json_object(example.response) is not None for example in examples):
        return "json"
    return "generation"


def label_of(example: Example) -> str:
    return (example.label if example.label is not None else example.response).strip()


def label_set(examples: Sequence[Example]) -> list[str]:
    return sorted({label_of(example) for example in examples})


def single_label_problem(examples: Sequence[Example]) -> str | None:
    """Why a label file with one class cannot train a classifier, or None when it has at least two."""
    labels = label_set(examples)
    if len(labels) != 1:
        return None
    return (
        f"every one of the {len(examples)} rows has the label {labels[0]!r}: a label task needs at least two "
        "classes (add rows of the other labels, or use prompt/completion rows for a generation task)"
    )


def check_labels_known(examples: Sequence[Example], labels: Sequence[str]) -> None:
    """Fail on the first example whose label the specialist was never trained on."""
    known = set(labels)
    for example in examples:
        label = label_of(example)
        if label not in known:
            path, _, line = example.source.rpartition(":")
            raise DataError(
                path or example.source,
                f"unknown label {label!r}; the specialist knows {sorted(known)}",
                line=int(line) if line.isdigit() else None,
            )
