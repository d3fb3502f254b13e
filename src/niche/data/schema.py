"""The output schema of a JSON task: given as a JSON Schema file, or inferred from the training answers.

Inference reads every training answer and writes the schema they all satisfy: objects with their keys (required
when every answer has them, no others allowed), types (integer only when every number is whole; a null beside
another type makes the field nullable), array items merged over all arrays, and an enum for a string field whose
values form a small closed set; other strings and arrays get a length bound (MAX_LENGTH_FACTOR times the longest
seen, at least MIN_STRING_LENGTH characters or MIN_ARRAY_ITEMS items), so that a constrained answer always ends
within a known budget. A closed set is one where every value recurs: 2 to MAX_ENUM_VALUES distinct
values, each seen at least twice and on average at least ENUM_MIN_AVERAGE times. An open field (names, dates,
free text) almost always has values seen once, and an enum there would forbid every value training did not see.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from niche.data.examples import Example, parse_json_object
from niche.errors import ConfigError, DataError

MAX_ENUM_VALUES = 64
ENUM_MIN_AVERAGE = 4
MAX_LENGTH_FACTOR = 2
MIN_STRING_LENGTH = 32
MIN_ARRAY_ITEMS = 8


def read_schema(path: Path) -> dict[str, Any]:
    """A JSON Schema file, checked to be a valid schema."""
    import jsonschema

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"data.schema: {path}: not a readable JSON file ({error})") from error
    if not isinstance(schema, dict):
        raise ConfigError(f"data.schema: {path}: a JSON Schema must be an object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ConfigError(f"data.schema: {path}: not a valid JSON Schema ({error.message})") from error
    return schema


def check_answers_match(examples: Sequence[Example], schema: dict[str, Any]) -> None:
    """Every training answer must validate against a given schema: a mismatch names the row."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    for example, answer in zip(examples, answers_as_objects(examples)):
        error = next(iter(validator.iter_errors(answer)), None)
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "the answer"
            raise _row_error(example, f"answer does not match data.schema at {where}: {error.message}")


def answers_as_objects(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Every answer parsed; the first that is not a JSON object is an error naming its row."""
    answers = []
    for example in examples:
        answer = parse_json_object(example.response)
        if answer is None:
            raise _row_error(example, f"a JSON task's answer must be a JSON object, got {example.response[:60]!r}")
        answers.append(answer)
    return answers


def _row_error(example: Example, message: str) -> DataError:
    path, _, line = example.source.rpartition(":")
    return DataError(path or example.source, message, line=int(line) if line.isdigit() else None)


def infer_schema(examples: Sequence[Example]) -> dict[str, Any]:
    """The JSON Schema every training answer satisfies, with enums for closed sets of strings."""
    if not examples:
        raise ConfigError("a JSON task needs training answers to infer its schema from")
    values: list[Any] = answers_as_objects(examples)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **_schema_of(values)}


def _schema_of(values: list[Any]) -> dict[str, Any]:
    kinds = {_kind(value) for value in values}
    nullable = "null" in kinds and len(kinds) > 1
    if nullable:
        kinds.discard("null")
    present = [value for value in values if value is not None] if nullable else values
    if kinds == {"integer", "number"}:
        kinds = {"number"}
    if len(kinds) > 1:
        schema: dict[str, Any] = {"type": sorted(kinds)}
    else:
        kind = next(iter(kinds))
        schema = {"type": kind}
        if kind == "object":
            schema |= _object_schema(present)
        elif kind == "array":
            items = [item for array in present for item in array]
            if items:
                schema["items"] = _schema_of(items)
            schema["maxItems"] = max(MIN_ARRAY_ITEMS, MAX_LENGTH_FACTOR * max(len(array) for array in present))
        elif kind == "string" and _closed_set(present):
            schema["enum"] = sorted(set(present))
        elif kind == "string":
            schema["maxLength"] = max(MIN_STRING_LENGTH, MAX_LENGTH_FACTOR * max(len(text) for text in present))
    if nullable:
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        schema["type"] = [*([schema["type"]] if isinstance(schema["type"], str) else schema["type"]), "null"]
    return schema


def _object_schema(objects: list[dict[str, Any]]) -> dict[str, Any]:
    keys: list[str] = []
    for value in objects:
        keys += [key for key in value if key not in keys]
    return {
        "properties": {key: _schema_of([value[key] for value in objects if key in value]) for key in keys},
        "required": [key for key in keys if all(key in value for value in objects)],
        "additionalProperties": False,
    }


def _closed_set(strings: list[str]) -> bool:
    counts = Counter(strings)
    return (
        2 <= len(counts) <= MAX_ENUM_VALUES
        and min(counts.values()) >= 2
        and len(strings) >= ENUM_MIN_AVERAGE * len(counts)
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
