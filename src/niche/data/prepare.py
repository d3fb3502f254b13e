"""Training and validation rows for a config: loaded, the task detected, the validation rows chosen.

Validation is cheap by construction: at most `data.validation_max_rows` rows are scored, stratified by label, so
that a pass costs little whatever the size of the data (training then validates often enough to keep the best
checkpoint, and at most about a tenth of its time: `niche.train.budget`). Without a validation file the rows are
held out of train; a validation file larger than the cap is sampled down. The choice is seeded, so eval's
baselines can be fitted on exactly the rows the specialist trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from niche.config import NicheConfig
from niche.data.examples import Example
from niche.data.formats import load_examples
from niche.data.sampling import hold_out, stratified_sample
from niche.data.schema import check_answers_match, check_copied_fields, infer_schema, read_schema
from niche.data.tasks import check_labels_known, detect_task_kind, label_of, label_set, single_label_problem
from niche.errors import ConfigError, DataError
from niche.io import sha256_of_file


class DataFingerprint(BaseModel):
    """A data file a specialist was trained or validated on: its path, content hash and rows read."""

    path: str
    sha256: str
    rows: int


@dataclass
class PreparedData:
    train: list[Example]
    validation: list[Example]
    data_format: str
    task_kind: str
    labels: list[str] | None
    fingerprints: dict[str, DataFingerprint]
    validation_source: str = "file"  # "file", "file (sampled)" or "held out of train"
    output_schema: dict[str, Any] | None = None  # JSON tasks: the schema every answer matches
    schema_source: str | None = None


def prepare_data(config: NicheConfig) -> PreparedData:
    """Load train and validation examples, detect the task, check labels agree, and cap the validation rows."""
    if config.data.train is None:
        raise ConfigError("data.train: no training file; set it, or run `niche pipeline run` to curate pipeline.inputs")
    train_read = load_examples(config.data.train, config.data.format, config.data.fields)
    fingerprints = {"train": fingerprint_of(config.data.train, len(train_read.examples))}
    task_kind = detect_task_kind(train_read.examples, train_read.format, config.data.task)
    cap, seed = config.data.validation_max_rows, config.training.seed
    train_examples = train_read.examples
    labels = label_set(train_read.examples) if task_kind == "label" else None
    if task_kind == "label" and (problem := single_label_problem(train_read.examples)):
        raise DataError(config.data.train, problem)
    if config.data.validation is not None:
        validation = load_examples(config.data.validation, train_read.format, config.data.fields).examples
        fingerprints["validation"] = fingerprint_of(config.data.validation, len(validation))
        if labels:
            check_labels_known(validation, labels)  # every row, before the sample leaves most of them out
        source = "file"
        if len(validation) > cap:
            chosen = stratified_sample(strata(validation, task_kind), cap, seed)
            validation, source = [validation[position] for position in chosen], "file (sampled)"
    else:
        train_examples, validation = split_validation(
            train_examples, task_kind, config.data.validation_fraction, cap, seed
        )
        source = "held out of train"
    if len(train_examples) < 2 or not validation:
        raise DataError(config.data.train, f"too few examples to train ({len(train_read.examples)}); need at least 3")
    prepared = PreparedData(train_examples, validation, train_read.format, task_kind, labels, fingerprints, source)
    if config.data.schema_ is not None and task_kind != "json":
        raise ConfigError(
            f"data.schema: given, but the task is {task_kind!r}, not json; a schema applies to JSON answers "
            "(set data.task: json, or remove data.schema)"
        )
    if task_kind == "json":
        prepared.output_schema, prepared.schema_source = output_schema_for(config, train_read.examples)
    return prepared


def output_schema_for(config: NicheConfig, examples: list[Example]) -> tuple[dict[str, Any], str]:
    """data.schema, checked against every training answer; otherwise the schema inferred from the answers."""
    if config.data.schema_ is not None:
        schema = read_schema(config.data.schema_)
        check_answers_match(examples, schema)
        check_copied_fields(examples, schema)
        return schema, str(config.data.schema_)
    return infer_schema(examples, config.data.conditional_schema), "inferred from the training answers"


def strata(examples: list[Example], task_kind: str) -> list[str | None]:
    """What a validation sample is stratified by: the label for label tasks, nothing otherwise."""
    return [label_of(example) for example in examples] if task_kind == "label" else [None] * len(examples)


def split_validation(
    examples: list[Example], task_kind: str, fraction: float, cap: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, validation): `fraction` of the rows, at most `cap`, held out stratified by label; every label keeps
    at least one training row."""
    count = min(cap, max(1, round(len(examples) * fraction)))
    kept, held = hold_out(strata(examples, task_kind), count, seed)
    if not held:  # every label has a single row: hold out rows regardless of label
        kept, held = hold_out([None] * len(examples), count, seed)
    return [examples[position] for position in kept], [examples[position] for position in held]


def fingerprint_of(path: Path, rows: int) -> DataFingerprint:
    return DataFingerprint(path=str(path), sha256=sha256_of_file(path), rows=rows)
