"""Read JSONL and CSV files in the four row shapes users have, into canonical Examples.

Shapes: label (`text`, `label`), prompt/completion, Alpaca (`instruction`, `input`,
`output`) and chat (`messages`). Column names can be remapped with `fields`.
Every problem is reported with file:line; nothing is silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niche.data.examples import Example
from niche.errors import DataError

ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str
    raw: str | None = None  # the row as read, so a rejects file loses nothing

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


@dataclass
class ReadResult:
    path: Path
    format: str
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


RowParser = Callable[[dict[str, Any]], Example]


def _text_field(row: dict[str, Any], name: str, *, required: bool = True, answer: bool = False) -> str:
    """A field's text. Only an answer may be a JSON object or array (a JSON task's answer, stored as its JSON);
    anywhere else one is a mistake in the file, never text to train on."""
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValueError(f"missing or empty field {name!r}")
        return ""
    if isinstance(value, (dict, list)):
        if not answer:
            kind = "object" if isinstance(value, dict) else "array"
            raise ValueError(f"field {name!r} is a JSON {kind}; expected text (a string)")
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _optional_context(row: dict[str, Any]) -> str | None:
    return _text_field(row, "context", required=False) or None


def parse_label_row(row: dict[str, Any]) -> Example:
    label = _text_field(row, "label").strip()
    return Example(
        messages=({"role": "user", "content": _text_field(row, "text")},),
        response=label,
        label=label,
        context=_optional_context(row),
    )


def parse_prompt_completion_row(row: dict[str, Any]) -> Example:
    return Example(
        messages=({"role": "user", "content": _text_field(row, "prompt")},),
        response=_text_field(row, "completion", answer=True),
        context=_optional_context(row),
    )


def parse_alpaca_row(row: dict[str, Any]) -> Example:
    instruction = _text_field(row, "instruction")
    extra_input = _text_field(row, "input", required=False)
    prompt = f"{instruction}\n\n{extra_input}" if extra_input else instruction
    return Example(
        messages=({"role": "user", "content": prompt},),
        response=_text_field(row, "output", answer=True),
        context=_optional_context(row),
    )


def parse_chat_row(row: dict[str, Any]) -> Example:
    messages = row.get("messages")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as error:
            raise ValueError(f"field 'messages' is not valid JSON: {error.msg}") from error
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
    turns = []
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(f"messages[{index}] must be an object with role in {sorted(ROLES)} and a string content")
        turns.append({"role": message["role"], "content": message["content"]})
    if turns[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer (role 'assistant')")
    if not any(turn["role"] == "user" for turn in turns[:-1]):
        raise ValueError("messages need at least one 'user' turn before the answer")
    return Example(messages=tuple(turns[:-1]), response=turns[-1]["content"], context=_optional_context(row))


PARSERS: dict[str, RowParser] = {
    "label": parse_label_row,
    "prompt_completion": parse_prompt_completion_row,
    "alpaca": parse_alpaca_row,
    "chat": parse_chat_row,
}

# Detection order matters: a chat row may also carry a 'text' column, for instance.
SHAPE_KEYS: list[tuple[str, tuple[str, ...]]] = [
    ("chat", ("messages",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("label", ("text", "label")),
]


def detect_format(keys: set[str]) -> str | None:
    for name, required in SHAPE_KEYS:
        if set(required) <= keys:
            return name
    return None


def _rename(row: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """Expose the user's column names under niche's canonical names."""
    if not fields:
        return row
    renamed = dict(row)
    for canonical, column in fields.items():
        if column in row:
            renamed[canonical] = row[column]
    return renamed


def _decode_lines(path: Path) -> Iterator[tuple[int, str | Problem]]:
    """Each line as text, or a Problem (with the line as best decoded) where it is not valid UTF-8."""
    data = path.read_bytes()
    for number, raw in enumerate(data.splitlines(), start=1):
        encoding = "utf-8-sig" if number == 1 else "utf-8"
        try:
            yield number, raw.decode(encoding)
        except UnicodeDecodeError as error:
            message = f"not valid UTF-8 (byte {error.start}); save the file as UTF-8"
            yield number, Problem(path, number, message, raw.decode(encoding, errors="replace"))


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    for number, text in _decode_lines(path):
        if isinstance(text, Problem):
            yield number, text
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            message = f"malformed JSON ({error.msg} at column {error.colno}); expected one JSON object per line"
            yield number, Problem(path, number, message, text)
            continue
        if not isinstance(row, dict):
            yield number, Problem(path, number, f"expected a JSON object, found {type(row).__name__}", text)
            continue
        yield number, row


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    lines = []
    for number, line in _decode_lines(path):
        if isinstance(line, Problem):  # a CSV's line numbers must stay aligned: one bad line fails the file
            raise DataError(path, line.message, line=number)
        lines.append(line)
    text = "\n".join(lines)
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield reader.line_num, Problem(path, reader.line_num, f"malformed CSV: {error}")
            continue
        if None in row:
            yield (
                reader.line_num,
                Problem(
                    path,
                    reader.line_num,
                    f"row has more cells than the header's {len(reader.fieldnames)} columns",
                    _raw(row),
                ),
            )
            continue
        yield reader.line_num, row


def read_examples(path: Path | str, format: str = "auto", fields: dict[str, str] | None = None) -> ReadResult:
    """Read every row of a JSONL or CSV file; bad rows become Problems instead of exceptions."""
    path = Path(path)
    check_data_file(path)
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    result = ReadResult(path=path, format=format)
    parser: RowParser | None = PARSERS.get(format)
    for number, row in rows:
        if isinstance(row, Problem):
            result.problems.append(row)
            continue
        row = _rename(row, fields or {})
        if parser is None:
            detected = detect_format(set(row))
            if detected is None:
                message = (
                    f"cannot tell the row shape from fields {sorted(row)}; expected one of "
                    + ", ".join("+".join(keys) for _, keys in SHAPE_KEYS)
                    + " (or map your columns with data.fields)"
                )
                result.problems.append(Problem(path, number, message, _raw(row)))
                continue
            result.format, parser = detected, PARSERS[detected]
        try:
            example = parser(row)
        except ValueError as error:
            result.problems.append(Problem(path, number, f"{error} (format {result.format})", _raw(row)))
            continue
        result.examples.append(_with_source(example, f"{path}:{number}"))
    if not result.examples and not result.problems:
        raise DataError(path, "file has no examples (only blank lines or a header)")
    return result


def check_data_file(path: Path) -> None:
    """A clear error before any row is read: the path is a non-empty .jsonl or .csv file."""
    if path.is_dir():
        raise DataError(path, "is a directory; expected a data file (.jsonl or .csv), e.g. train.jsonl inside it")
    if not path.is_file():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix not in {".jsonl", ".json", ".csv"}:
        raise DataError(path, f"unsupported file type {suffix or '(none)'!r}; expected .jsonl or .csv")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty; expected one example per line (JSONL) or a header and rows (CSV)")


def _raw(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


def _with_source(example: Example, source: str) -> Example:
    return Example(example.messages, example.response, example.label, example.context, source, example.extra)


def load_examples(path: Path | str, format: str = "auto", fields: dict[str, str] | None = None) -> ReadResult:
    """Like read_examples, but any bad row is an error that lists the rows at fault."""
    result = read_examples(path, format, fields)
    if result.problems:
        shown = "\n  ".join(str(problem) for problem in result.problems[:5])
        more = f"\n  ... and {len(result.problems) - 5} more" if len(result.problems) > 5 else ""
        first = result.problems[0]
        raise DataError(
            first.path,
            f"{len(result.problems)} bad row(s); fix them or run `niche data check`:\n  {shown}{more}",
            line=first.line,
        )
    return result
