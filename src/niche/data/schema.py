"""The output schema of a JSON task: given as a JSON Schema file, or inferred from the training answers.

Inference reads every training answer and writes the schema they all satisfy: objects with their keys (required
when every answer has them, no others allowed), types (integer only when every number is whole; a null beside
another type makes the field nullable), array items merged over all arrays, and an enum for a string field whose
values form a small closed set; other strings and arrays get a length bound (MAX_LENGTH_FACTOR times the longest
seen, at least MIN_STRING_LENGTH characters or MIN_ARRAY_ITEMS items), so that a constrained answer always ends
within a known budget. A closed set is one where values recur: 2 to MAX_ENUM_VALUES distinct values, seen on
average at least ENUM_MIN_AVERAGE times, and values seen once in at most ENUM_MAX_SINGLETON_SHARE of the answers
(an intent set with a few intents of one example each is still closed). An open field (names, dates, free text)
almost always has many values seen once, and an enum there would forbid every value training did not see.

A string field whose values are spans of the input (at least COPY_MIN_SHARE of them, found by the rule of
`niche.data.spans`) is marked copied (`"x-niche-copy": true`, on the array's items for a list) instead of getting
an enum, unless every answer has it and its values form a closed set (an intent, a category: a label of the row):
its answers are decoded as substrings of the input, and a tagger can mark them. `conditional_schema` adds
which optional fields go with each value of a closed field (`anyOf` of one branch per value).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from niche.data.examples import Example, parse_json_object
from niche.data.spans import (
    CONDITIONAL_KEYWORD,
    COPY_KEYWORD,
    COPY_MIN_SHARE,
    answer_values,
    extraction_plan,
    occurrences,
)
from niche.errors import ConfigError, DataError

MAX_ENUM_VALUES = 256
ENUM_MIN_AVERAGE = 4
ENUM_MAX_SINGLETON_SHARE = 0.05
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


def infer_schema(examples: Sequence[Example], conditional: bool = False) -> dict[str, Any]:
    """The JSON Schema every training answer satisfies, with copied fields marked, enums for closed sets of
    strings, and with `conditional` the optional fields each value of a closed field allows."""
    if not examples:
        raise ConfigError("a JSON task needs training answers to infer its schema from")
    values: list[Any] = answers_as_objects(examples)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **_schema_of(values)}
    _mark_copied(schema, values, [example.input_text for example in examples])
    return conditional_schema(schema, values) if conditional else schema


def _mark_copied(schema: dict[str, Any], values: list[Any], inputs: list[str], required: bool = True) -> None:
    """Mark (in place) every string field, or list of strings, whose values are mostly spans of their inputs;
    a closed set every answer carries (an intent, a category) stays a closed set: it labels the row."""
    kinds = _kinds_of(schema)
    if kinds == {"object"}:
        needed = set(schema.get("required", []))
        for key, child in schema.get("properties", {}).items():
            present = [
                (value[key], text) for value, text in zip(values, inputs) if isinstance(value, dict) and key in value
            ]
            _mark_copied(child, [value for value, _ in present], [text for _, text in present], key in needed)
        return
    pairs = [
        (str(element), text)
        for value, text in zip(values, inputs)
        for element in (value if isinstance(value, list) else [value])
        if isinstance(element, str)
    ]
    if not pairs or not _strings_only(schema) or (required and "enum" in schema):
        return
    found = sum(1 for value, text in pairs if next(occurrences(text, value), None) is not None)
    if found < COPY_MIN_SHARE * len(pairs):
        return
    # A copied value is a run of its input's words (and a tagger tags each word once), so the input bounds it:
    # a length or count learned from training would only reject a longer span the input holds (SLURP: a date of
    # 36 characters against a bound of 32 made a right answer schema-invalid).
    schema.pop("maxItems", None)
    for target in (schema, schema.get("items")):
        if target is not None and "string" in _kinds_of(target):
            target.pop("enum", None)
            target.pop("maxLength", None)
            target[COPY_KEYWORD] = True


def _kinds_of(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


def _strings_only(schema: dict[str, Any]) -> bool:
    """A string field, a list of strings, or a field written as either."""
    kinds = _kinds_of(schema)
    items = _kinds_of(schema.get("items", {})) if "array" in kinds else set()
    return bool(kinds) and kinds <= {"string", "array"} and items <= {"string"}


def check_copied_fields(examples: Sequence[Example], schema: dict[str, Any]) -> None:
    """Every training value of a field a given schema marks copied must be a span of its input (the rule of
    `niche.data.spans`): one that is not is an error naming the row and the field."""
    plan = extraction_plan(schema)
    if not plan.spans:
        return
    for example, answer in zip(examples, answers_as_objects(examples)):
        spans, _ = answer_values(answer, plan)
        for name, value in spans:
            if next(occurrences(example.input_text, value), None) is None:
                raise _row_error(
                    example,
                    f"field {name!r} is marked {COPY_KEYWORD} in data.schema, but its value {value!r} is not in the "
                    "input; copy it from the input, or remove the mark from the field",
                )


# ---- conditional structure -------------------------------------------------------------------------------------


def conditional_schema(schema: dict[str, Any], answers: list[Any]) -> dict[str, Any]:
    """The schema with one `anyOf` branch per value of its chooser (the required top-level closed field with the
    most values), each allowing only the optional fields seen beside that value in training. Unchanged when there
    is no such field or no optional field."""
    chooser = _chooser(schema)
    if chooser is None or not _has_optional(schema):
        return schema
    seen: dict[str, set[tuple[str, ...]]] = {value: set() for value in schema["properties"][chooser]["enum"]}
    for answer in answers:
        seen.setdefault(answer[chooser], set()).update(_leaf_paths(answer))
    branches = []
    for value, leaves in seen.items():
        branch = _branch(schema, leaves)
        branch["properties"][chooser] = {"const": value}
        branches.append(branch)
    return {**schema, CONDITIONAL_KEYWORD: chooser, "anyOf": branches}


def allowed_by_value(schema: dict[str, Any], paths: list[tuple[str, ...]]) -> dict[str, dict[str, list[str]]]:
    """{chooser: {value: the dotted names among `paths` its branch allows}} of a conditional schema, else {}."""
    chooser = schema.get(CONDITIONAL_KEYWORD)
    if chooser is None:
        return {}
    allowed = {}
    for branch in schema["anyOf"]:
        value = branch["properties"][chooser]["const"]
        allowed[value] = [".".join(path) for path in paths if _branch_allows(branch, path)]
    return {chooser: allowed}


def _chooser(schema: dict[str, Any]) -> str | None:
    if _kinds_of(schema) != {"object"}:
        return None
    closed = [
        (len(child["enum"]), key)
        for key, child in schema.get("properties", {}).items()
        if key in schema.get("required", []) and _kinds_of(child) == {"string"} and "enum" in child
    ]
    return max(closed)[1] if closed else None


def _has_optional(schema: dict[str, Any]) -> bool:
    if _kinds_of(schema) != {"object"}:
        return False
    required = set(schema.get("required", []))
    return any(key not in required or _has_optional(child) for key, child in schema.get("properties", {}).items())


def _leaf_paths(value: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(value, dict):
        return {leaf for key, child in value.items() for leaf in _leaf_paths(child, (*path, key))}
    return {path} if value is not None else set()


def _branch(schema: dict[str, Any], leaves: set[tuple[str, ...]], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of an object schema a branch keeps: the required ones and those with a leaf seen under them."""
    required = set(schema.get("required", []))
    properties = {}
    for key, child in schema.get("properties", {}).items():
        here = (*path, key)
        if key in required or any(leaf[: len(here)] == here for leaf in leaves):
            nested = _kinds_of(child) == {"object"} and _has_optional(child)
            properties[key] = _branch(child, leaves, here) if nested else {}
    return {"properties": properties, "additionalProperties": False}


def _branch_allows(branch: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether a branch keeps the field at `path` (an object it keeps whole keeps everything under it)."""
    node = branch
    for key in path:
        if "properties" not in node:
            return True
        if key not in node["properties"]:
            return False
        node = node["properties"][key]
    return True


def _schema_of(values: list[Any]) -> dict[str, Any]:
    kinds = {_kind(value) for value in values}
    nullable = "null" in kinds and len(kinds) > 1
    if nullable:
        kinds.discard("null")
    present = [value for value in values if value is not None] if nullable else values
    if kinds == {"integer", "number"}:
        kinds = {"number"}
    if kinds == {"array", "string"}:
        # A field written as one value, or a list when there are several: bounded both ways.
        strings = [value for value in present if isinstance(value, str)]
        arrays = [value for value in present if isinstance(value, list)]
        schema: dict[str, Any] = {"type": ["array", "string"]} | _array_bounds(arrays) | _string_bound(strings)
    elif len(kinds) > 1:
        schema = {"type": sorted(kinds)}
    else:
        kind = next(iter(kinds))
        schema = {"type": kind}
        if kind == "object":
            schema |= _object_schema(present)
        elif kind == "array":
            schema |= _array_bounds(present)
        elif kind == "string" and _closed_set(present):
            schema["enum"] = sorted(set(present))
        elif kind == "string":
            schema |= _string_bound(present)
    if nullable:
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        schema["type"] = [*([schema["type"]] if isinstance(schema["type"], str) else schema["type"]), "null"]
    return schema


def _array_bounds(arrays: list[list[Any]]) -> dict[str, Any]:
    items = [item for array in arrays for item in array]
    bounds: dict[str, Any] = {"items": _schema_of(items)} if items else {}
    return bounds | {
        "maxItems": max(MIN_ARRAY_ITEMS, MAX_LENGTH_FACTOR * max((len(array) for array in arrays), default=0))
    }


def _string_bound(strings: list[str]) -> dict[str, Any]:
    return {"maxLength": max(MIN_STRING_LENGTH, MAX_LENGTH_FACTOR * max((len(text) for text in strings), default=0))}


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
    singletons = sum(1 for count in counts.values() if count == 1)
    return (
        2 <= len(counts) <= MAX_ENUM_VALUES
        and singletons <= ENUM_MAX_SINGLETON_SHARE * len(strings)
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
