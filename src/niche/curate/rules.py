"""What `niche curate` decides, row by row and group by group.

Both engines (`local`, one process; `ray_engine`, Ray Data over a cluster) call these functions on the same
rows in the same order, so they make the same decisions; only how rows are grouped and moved differs. A row's
place in the input is `row_order(file_number, row_number)`: "the first" of anything is the lowest order, on any
number of machines.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from niche.config import CurateSettings
from niche.data.examples import Example
from niche.data.formats import read_examples
from niche.data.minhash import WORD
from niche.data.pii import redact
from niche.errors import DataError

SPLITS = ("train", "validation", "test")
ROW_BITS = 32
# Rows without a label are split in runs of this many input rows (each run stratified like a label), so that no
# single group holds a whole unlabelled corpus on one worker.
UNLABELLED_RUN = 100_000


@dataclass
class Reject:
    source: str
    stage: str
    reason: str
    row: dict[str, Any] | None = None
    raw: str | None = None  # an unparseable line as it was read


def row_order(file_number: int, row_number: int) -> int:
    """A row's place in the whole input: inputs in the order given, rows in file order."""
    return file_number << ROW_BITS | row_number


# ---- text -----------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFC, no trailing spaces, runs of spaces/tabs collapsed, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [re.sub(r"[^\S\n]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def map_text(example: Example, transform: Callable[[str], str]) -> Example:
    messages = tuple({"role": turn["role"], "content": transform(turn["content"])} for turn in example.messages)
    label = transform(example.label) if example.label is not None else None
    context = transform(example.context) if example.context is not None else None
    return Example(messages, transform(example.response), label, context, example.source, example.extra)


def example_row(example: Example) -> dict[str, Any]:
    """The example in one of niche's input shapes: label rows stay {text, label}, the rest become chat rows."""
    row: dict[str, Any]
    if example.label is not None and len(example.messages) == 1:
        row = {"text": example.input_text, "label": example.label}
    else:
        row = {"messages": [*map(dict, example.messages), {"role": "assistant", "content": example.response}]}
    if example.context:
        row["context"] = example.context
    return row


def conversation_text(example: Example) -> str:
    """What an example asks: every turn before the answer (and its context), for duplicate and conflict search."""
    parts = [example.context or ""] + [turn["content"] for turn in example.messages]
    return "\n".join(part for part in parts if part)


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def pair_key(example: Example) -> str:
    """Exact duplicates share it: the same input and the same answer."""
    return digest(conversation_text(example), example.response)


def input_key(example: Example) -> str:
    """Same-input rows share it, whatever their answers."""
    return digest(conversation_text(example))


# ---- rows -----------------------------------------------------------------------------------------------------


def read_file(
    path: Path, file_number: int, settings: CurateSettings, shown_as: str | None = None
) -> tuple[list[tuple[int, Example]], list[Reject]]:
    """A file's examples with their orders, and its unparseable rows as rejects naming file:line; `shown_as`:
    the name sources give the file (as the user gave it, where a worker reads it by its absolute path)."""
    result = read_examples(path, settings.format)
    name = shown_as if shown_as is not None else str(path)
    rejects = [
        Reject(f"{name}:{problem.line}", "parse", problem.message, raw=problem.raw) for problem in result.problems
    ]
    examples = [
        (row_order(file_number, number), replace(example, source=name + example.source[len(str(path)) :]))
        for number, example in enumerate(result.examples)
    ]
    return examples, rejects


def normalized(example: Example, settings: CurateSettings) -> Example | Reject:
    """The example with normalised text, or why it is rejected (empty, over-long)."""
    example = map_text(example, normalize_text)
    size = len(conversation_text(example)) + len(example.response)
    if not example.input_text or not example.response:
        return Reject(example.source, "normalize", "empty input or answer", example_row(example))
    if size > settings.max_chars:
        why = f"{size} characters > max_chars {settings.max_chars}"
        return Reject(example.source, "normalize", why, example_row(example))
    return example


def redacted(example: Example, counts: Counter[str]) -> Example:
    return map_text(example, lambda text: redact(text, counts))


def exact_duplicate_of(first: Example, duplicate: Example) -> Reject:
    why = f"same input and answer as {first.source}"
    return Reject(duplicate.source, "exact_duplicate", why, example_row(duplicate))


# ---- near-duplicate clusters and conflicts ----------------------------------------------------------------------


@dataclass
class Member:
    """A row of a near-duplicate cluster; `votes`: it and its exact duplicates."""

    order: int
    example: Example
    votes: int


@dataclass
class ClusterOutcome:
    survivors: list[int]  # orders
    rejects: list[Reject]
    near_duplicate: dict[str, Any] | None = None  # for the data card: what a cluster of one answer kept
    conflict: dict[str, Any] | None = None  # for the data card: a cluster with several answers


def resolve_cluster(members: Sequence[Member], policy: str) -> ClusterOutcome:
    """One cluster of near-same inputs (members in order): one answer keeps its first row; several are a
    conflict, resolved by `policy` (majority, drop, keep)."""
    answers: Counter[str] = Counter()
    for member in members:
        answers[member.example.response] += member.votes
    if len(answers) == 1:
        return _near_duplicates(members)
    return _conflict(members, answers, policy)


def _near_duplicates(members: Sequence[Member]) -> ClusterOutcome:
    kept = members[0].example
    rejects = [
        Reject(member.example.source, "near_duplicate", f"near duplicate of {kept.source}", example_row(member.example))
        for member in members[1:]
    ]
    entry = {"kept": example_row(kept) | {"source": kept.source}, "dropped": len(members) - 1} if rejects else None
    return ClusterOutcome([members[0].order], rejects, near_duplicate=entry)


def _conflict(members: Sequence[Member], answers: Counter[str], policy: str) -> ClusterOutcome:
    conflict = {
        "rows": [example_row(member.example) | {"source": member.example.source} for member in members[:10]],
        "answers": dict(answers),
    }
    ranked = answers.most_common()
    if policy == "keep":
        chosen = {answer for answer, _ in ranked}
    elif policy == "majority" and ranked[0][1] > ranked[1][1]:
        chosen = {ranked[0][0]}
    else:
        chosen = set()
    outcome = ClusterOutcome([], [], conflict=conflict)
    seen_answers: set[str] = set()
    for member in members:
        example = member.example
        if example.response in chosen and example.response not in seen_answers:
            seen_answers.add(example.response)
            outcome.survivors.append(member.order)
        elif example.response in chosen:
            why = "near duplicate within a conflict group"
            outcome.rejects.append(Reject(example.source, "near_duplicate", why, example_row(example)))
        else:
            why = (
                "conflict: the same or near-same input has other answers, policy drop"
                if policy == "drop"
                else f"conflict: minority answer (majority: {ranked[0][0]!r})"
                if chosen
                else "conflict: no majority answer among " + ", ".join(repr(answer) for answer, _ in ranked)
            )
            outcome.rejects.append(Reject(example.source, "conflict", why, example_row(example)))
    return outcome


# ---- splits ---------------------------------------------------------------------------------------------------


def split_group(label: str | None, order: int) -> str:
    """The group a row is stratified in: its label, or for unlabelled rows its run of input rows."""
    if label is not None:
        return f"label:{label}"
    return f"rows:{order >> ROW_BITS}:{(order & ((1 << ROW_BITS) - 1)) // UNLABELLED_RUN}"


def split_of_group(
    orders: Sequence[int], group: str, fractions: tuple[float, float, float], seed: int
) -> dict[int, str]:
    """The split of each row of one group: shuffled with a seed of its own (so groups can be split anywhere, in
    any order), cut by the fractions, at least one training row."""
    members = sorted(orders)
    random.Random(f"{seed}:{group}").shuffle(members)
    validation = round(len(members) * fractions[1])
    test = round(len(members) * fractions[2])
    while validation + test >= len(members) and validation + test > 0:
        if validation >= test:
            validation -= 1
        else:
            test -= 1
    splits = {order: "validation" for order in members[:validation]}
    splits |= {order: "test" for order in members[validation : validation + test]}
    return splits | {order: "train" for order in members[validation + test :]}


# ---- decontamination and leakage -------------------------------------------------------------------------------


def ngrams(text: str, size: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    if len(words) < size:
        return {tuple(words)} if words else set()
    return {tuple(words[index : index + size]) for index in range(len(words) - size + 1)}


def benchmark_ngrams(paths: Sequence[Path], size: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for path in paths:
        if not Path(path).is_file():
            raise DataError(Path(path), "decontamination benchmark file not found")
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = line  # plain text, one passage per line
            strings = [value] if isinstance(value, str) else [str(item) for item in _leaves(value)]
            for text in strings:
                grams |= ngrams(text, size)
    return grams


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def contamination(example: Example, benchmark: set[tuple[str, ...]], size: int) -> Reject | None:
    """A training row sharing an n-gram with the benchmark leaves training."""
    if ngrams(conversation_text(example) + "\n" + example.response, size) & benchmark:
        why = f"shares a {size}-gram with the benchmark"
        return Reject(example.source, "decontaminate", why, example_row(example))
    return None


def leaked(example: Example, split: str) -> Reject:
    return Reject(example.source, "leakage", f"{split} row duplicates a training row", example_row(example))
