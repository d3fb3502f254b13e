"""Answers copied from the input: where each value of a JSON answer lies in its input, and the JSON put back
together from spans of the input and closed-set choices.

The CRF baseline (`niche.eval.extraction_baseline`), the tagging head (`niche.tagger`) and the copy constraint of
generative decoding (`niche.decoding`) all read the fields through `extraction_fields` and place values with
`place_values`, so they agree on what a copied field is and where its values lie.

The rule that places a field's values in the input (`place_values`), documented because data has overlaps and
repeats:
1. A value is found where it occurs as whole words (never inside a longer word): first as written, then ignoring
   case, then ignoring case and whitespace (`restaurant 's` is found in `restaurant's`). The span is the input's
   own text there, which is what a copied answer gives back.
2. Values are placed longest first; each takes its first occurrence (left to right) that overlaps no span placed
   before it. A value that occurs twice and is listed once marks its first occurrence; listed twice, both.
3. A value with no free occurrence (it overlaps a longer value, or is not in the input) is left unplaced: it is
   reported, and the rest of the row still counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# A JSON Schema annotation (ignored by validators and by the grammar engine) marking a string field, or the string
# items of an array field, whose values are spans of the input.
COPY_KEYWORD = "x-niche-copy"
# A field is inferred to be copied when at least this share of its training values is found in the input; the rest
# (typing variants the rule cannot place) are reported. Chosen on SLURP: 3.5% of its slot values differ from the
# text in spacing or case only, and every one of them is found by the rule; with 0.9 a field of names whose values
# are spelled differently from the text one time in ten is still decoded from the text.
COPY_MIN_SHARE = 0.9
# Marks a schema written as one `anyOf` branch per value of a closed field (`niche.data.schema.conditional_schema`),
# naming that field.
CONDITIONAL_KEYWORD = "x-niche-conditional"
WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Span:
    field: str  # dotted field name, as `niche.metrics.flatten_fields` writes it
    start: int
    end: int


@dataclass(frozen=True)
class Unplaced:
    field: str
    value: str
    reason: str  # "not in the input" or "overlaps a longer value"


def _is_word_char(character: str) -> bool:
    return character.isalnum() or character == "_"


def _at_boundary(text: str, position: int) -> bool:
    """True unless `position` falls between two word characters."""
    return (
        position <= 0
        or position >= len(text)
        or not (_is_word_char(text[position - 1]) and _is_word_char(text[position]))
    )


def _squeezed(text: str) -> tuple[str, list[int]]:
    """The text lower-cased without whitespace, and each kept character's position in the original."""
    kept = [(character.lower(), position) for position, character in enumerate(text) if not character.isspace()]
    return "".join(character for character, _ in kept), [position for _, position in kept]


def occurrences(text: str, value: str) -> Iterator[tuple[int, int]]:
    """Every whole-word occurrence of `value` in `text`, left to right, by the first way of matching that finds
    any: as written, ignoring case, ignoring case and whitespace."""
    value = value.strip()
    if not value:
        return
    for haystack, needle in ((text, value), (text.lower(), value.lower())):
        found = [
            (match.start(), match.start() + len(needle))
            for match in re.finditer(re.escape(needle), haystack)
            if _at_boundary(text, match.start()) and _at_boundary(text, match.start() + len(needle))
        ]
        if found:
            yield from found
            return
    squeezed_text, positions = _squeezed(text)
    squeezed_value, _ = _squeezed(value)
    if not squeezed_value:
        return
    for match in re.finditer(re.escape(squeezed_value), squeezed_text):
        start, end = positions[match.start()], positions[match.end() - 1] + 1
        if _at_boundary(text, start) and _at_boundary(text, end):
            yield start, end


def place_values(text: str, values: Sequence[tuple[str, str]]) -> tuple[list[Span], list[Unplaced]]:
    """Spans for (field, value) pairs by the module's rule: longest first, each at its first free occurrence."""
    order = sorted(range(len(values)), key=lambda index: (-len(values[index][1]), index))
    spans: list[Span] = []
    unplaced: list[Unplaced] = []
    for index in order:
        name, value = values[index]
        found = list(occurrences(text, value))
        free = next(
            ((start, end) for start, end in found if all(end <= span.start or start >= span.end for span in spans)),
            None,
        )
        if free is None:
            unplaced.append(Unplaced(name, value, "overlaps a longer value" if found else "not in the input"))
        else:
            spans.append(Span(name, *free))
    return sorted(spans, key=lambda span: span.start), unplaced


# ---- fields ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractionField:
    """A leaf of the answer that is either copied from the input (`span`) or one of a closed set (`choice`); or
    an `object` every answer carries (written even when empty)."""

    path: tuple[str, ...]
    kind: str  # "span", "choice" or "object"
    shape: str = "string"  # how values are written: "string", "list" (always a list) or "either" (a list when several)
    required: bool = True
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass
class ExtractionPlan:
    """The fields of a JSON task that a tagger can answer, in the schema's order, or why it cannot
    (`unsupported`)."""

    entries: list[ExtractionField] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)  # field name -> why no tagger can produce it
    # conditional field name -> its value -> the copied fields allowed with it (`niche.data.schema`), if any
    allowed_with: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def fields(self) -> list[ExtractionField]:
        return [item for item in self.entries if item.kind != "object"]

    @property
    def spans(self) -> list[ExtractionField]:
        return [item for item in self.entries if item.kind == "span"]

    @property
    def choices(self) -> list[ExtractionField]:
        return [item for item in self.entries if item.kind == "choice"]

    @property
    def taggable(self) -> bool:
        return bool(self.fields) and not self.unsupported

    def to_record(self) -> dict[str, Any]:
        return {
            "fields": [
                {"path": list(item.path), "kind": item.kind, "shape": item.shape, "required": item.required}
                | ({"choices": list(item.choices)} if item.choices else {})
                for item in self.entries
            ],
            "allowed_with": self.allowed_with,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ExtractionPlan:
        entries = [
            ExtractionField(
                tuple(item["path"]), item["kind"], item["shape"], item["required"], tuple(item.get("choices", ()))
            )
            for item in record["fields"]
        ]
        return cls(entries, {}, record.get("allowed_with", {}))


def extraction_plan(schema: dict[str, Any]) -> ExtractionPlan:
    """The fields of an output schema (its union, for a conditional one): copied strings (marked with
    COPY_KEYWORD) and closed sets (string enums), possibly inside nested objects; anything else is recorded as out
    of a tagger's reach."""
    plan = ExtractionPlan()
    _walk(union_of(schema), (), True, plan)
    return plan


def union_of(schema: dict[str, Any]) -> dict[str, Any]:
    """A conditional schema without its branches: the fields every value may have."""
    if CONDITIONAL_KEYWORD not in schema:
        return schema
    return {key: value for key, value in schema.items() if key not in (CONDITIONAL_KEYWORD, "anyOf")}


def _walk(schema: dict[str, Any], path: tuple[str, ...], required: bool, plan: ExtractionPlan) -> None:
    kinds = _types(schema)
    name = ".".join(path) or "the answer"
    if kinds == {"object"}:
        if required:
            plan.entries.append(ExtractionField(path, "object"))
        needed = set(schema.get("required", []))
        for key, child in schema.get("properties", {}).items():
            _walk(child, (*path, key), required and key in needed, plan)
        return
    items = schema.get("items", {}) if "array" in kinds else {}
    copied = schema.get(COPY_KEYWORD) or items.get(COPY_KEYWORD)
    shapes = {frozenset({"string"}): "string", frozenset({"array"}): "list", frozenset({"array", "string"}): "either"}
    shape = shapes.get(frozenset(kinds))
    if copied and shape and _types(items) <= {"string"}:
        plan.entries.append(ExtractionField(path, "span", shape, required))
    elif kinds <= {"string", "null"} and "enum" in schema:
        choices = tuple(value for value in schema["enum"] if isinstance(value, str))
        plan.entries.append(ExtractionField(path, "choice", "string", required and "null" not in kinds, choices))
    else:
        plan.unsupported[name] = "neither copied from the input nor one of a closed set of strings"


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    if kind is None and ("enum" in schema or "const" in schema):
        return {"string"}
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


# ---- answers from spans and choices ----------------------------------------------------------------------------


def answer_values(answer: dict[str, Any], plan: ExtractionPlan) -> tuple[list[tuple[str, str]], dict[str, str | None]]:
    """A training answer as the (field, value) pairs of its copied fields and the value of each choice field."""
    spans: list[tuple[str, str]] = []
    for item in plan.spans:
        value = _get(answer, item.path)
        for element in value if isinstance(value, list) else [value] if value is not None else []:
            spans.append((item.name, str(element)))
    choices = {item.name: _as_choice(_get(answer, item.path)) for item in plan.choices}
    return spans, choices


def _as_choice(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _get(answer: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = answer
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _set(answer: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = answer
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def assemble(plan: ExtractionPlan, text: str, spans: Sequence[Span], choices: dict[str, str | None]) -> dict[str, Any]:
    """The JSON answer, keys in the schema's order: every object the schema requires, each chosen value, and each
    copied field's spans (the input's own text) in input order: a string field takes its first span, a list field
    all of them, a field written either way a string for one span and a list for several."""
    answer: dict[str, Any] = {}
    for item in plan.entries:
        if item.kind == "object":
            if item.path:
                _set(answer, item.path, _get(answer, item.path) or {})
        elif item.kind == "choice":
            value = choices.get(item.name)
            if value is not None:
                _set(answer, item.path, value)
        else:
            values = [text[span.start : span.end].strip() for span in spans if span.field == item.name]
            values = [value for value in values if value]
            if values:
                several = item.shape == "list" or (item.shape == "either" and len(values) > 1)
                _set(answer, item.path, values if several else values[0])
    return answer


# ---- tags over words or tokens ---------------------------------------------------------------------------------

OUTSIDE = "O"


def tag_names(plan: ExtractionPlan) -> list[str]:
    """O, then B- and I- for every copied field, in the plan's order."""
    return [OUTSIDE, *(f"{prefix}-{item.name}" for item in plan.spans for prefix in ("B", "I"))]


def bio_tags(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[str]:
    """One tag per piece (word or token, by its character offsets): B- on the first piece overlapping a span,
    I- on the pieces after it that overlap the same span, O elsewhere."""
    tags = [OUTSIDE] * len(offsets)
    for span in spans:
        inside = [
            index
            for index, (start, end) in enumerate(offsets)
            if end > start and start < span.end and end > span.start and tags[index] == OUTSIDE
        ]
        for rank, index in enumerate(inside):
            tags[index] = f"{'B' if rank == 0 else 'I'}-{span.field}"
    return tags


def spans_from_tags(tags: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[Span]:
    """Spans read back from BIO tags: a B- starts one, I- of the same field continues it; an I- with no B- before
    it starts one too (so a tagger's slip costs a boundary, not the value)."""
    spans: list[Span] = []
    current: tuple[str, int, int] | None = None
    for tag, (start, end) in zip(tags, offsets):
        prefix, _, name = tag.partition("-")
        if current is not None and prefix == "I" and name == current[0]:
            current = (current[0], current[1], end)
            continue
        if current is not None:
            spans.append(Span(*current))
            current = None
        if prefix in ("B", "I"):
            current = (name, start, end)
    if current is not None:
        spans.append(Span(*current))
    return spans


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """Words and punctuation marks with their character offsets: the units a classic tagger labels."""
    return [(match.group(), match.start(), match.end()) for match in WORD.finditer(text)]
