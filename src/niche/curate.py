"""`niche curate`: clean, deduplicate, resolve conflicts, redact PII and split, losing nothing.

Stages, in order, over the canonical examples of every input file:
1. normalise (Unicode NFC, whitespace) and drop empty or over-long rows;
2. optionally redact PII (counted per kind);
3. exact duplicates (same normalised input and output);
4. near-same inputs (MinHash LSH over word shingles, `niche.data.minhash`): with the same output they are near
   duplicates (the first is kept); with different outputs they are conflicts, resolved by `majority`, `drop`
   or `keep`;
5. `--decontaminate FILE`: training rows sharing a word n-gram (13 by default, as in GPT-3) with a benchmark;
6. stratified, seeded train/validation/test splits, then a leakage check: no validation or test row may be an
   exact or near duplicate of a training row.
Every dropped row goes to rejects.jsonl with its stage and reason; a data card (markdown and JSON) counts
each stage.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from niche.data.examples import Example
from niche.data.formats import read_examples
from niche.data.minhash import WORD, NearDuplicateIndex
from niche.data.pii import redact
from niche.errors import ConfigError, DataError
from niche.io import atomic_directory, write_json_atomic, write_text_atomic

ConflictPolicy = Literal["majority", "drop", "keep"]
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CurateSettings:
    near_duplicate_threshold: float = 0.8
    shingle_size: int = 3
    num_perm: int = 128
    conflicts: ConflictPolicy = "majority"
    redact_pii: bool = False
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    max_chars: int = 20_000
    decontaminate: tuple[Path, ...] = ()
    ngram: int = 13
    format: str = "auto"

    def __post_init__(self) -> None:
        if len(self.split) != 3 or any(part < 0 for part in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"split: expected three non-negative fractions summing to 1, got {self.split}")
        if self.conflicts not in ("majority", "drop", "keep"):
            raise ConfigError(f"conflicts: expected majority, drop or keep, got {self.conflicts!r}")
        if not 0 < self.near_duplicate_threshold <= 1:
            raise ConfigError(
                f"near_duplicate_threshold: expected a value in (0, 1], got {self.near_duplicate_threshold}"
            )
        if self.ngram < 1:
            raise ConfigError(f"ngram: expected at least 1, got {self.ngram}")


@dataclass
class Reject:
    source: str
    stage: str
    reason: str
    row: dict[str, Any] | None = None
    raw: str | None = None  # an unparseable line as it was read


@dataclass
class CurateReport:
    inputs: list[str]
    settings: dict[str, Any]
    stages: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    lengths: dict[str, dict[str, float]] = field(default_factory=dict)
    pii_redacted: dict[str, int] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejects: int = 0


def normalize_text(text: str) -> str:
    """NFC, no trailing spaces, runs of spaces/tabs collapsed, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [re.sub(r"[^\S\n]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _map_text(example: Example, transform: Any) -> Example:
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


def _conversation_text(example: Example) -> str:
    """What an example asks: every turn before the answer (and its context), for duplicate and conflict search."""
    parts = [example.context or ""] + [turn["content"] for turn in example.messages]
    return "\n".join(part for part in parts if part)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _ngrams(text: str, size: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    if len(words) < size:
        return {tuple(words)} if words else set()
    return {tuple(words[index : index + size]) for index in range(len(words) - size + 1)}


def _benchmark_ngrams(paths: tuple[Path, ...], size: int) -> set[tuple[str, ...]]:
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
                grams |= _ngrams(text, size)
    return grams


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _stratified_split(
    labels: list[str | None], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[int]]:
    """Positions per split: per label (all together for non-label data), shuffled with `seed`, cut by the
    fractions, at least one training row per label."""
    groups: dict[str | None, list[int]] = defaultdict(list)
    for position, label in enumerate(labels):
        groups[label].append(position)
    rng = random.Random(seed)
    result: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in sorted(groups, key=str):
        members = groups[label]
        rng.shuffle(members)
        validation = round(len(members) * fractions[1])
        test = round(len(members) * fractions[2])
        while validation + test >= len(members) and validation + test > 0:
            if validation >= test:
                validation -= 1
            else:
                test -= 1
        result["validation"] += members[:validation]
        result["test"] += members[validation : validation + test]
        result["train"] += members[validation + test :]
    return {name: sorted(positions) for name, positions in result.items()}


def _length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0, "p50": 0, "p95": 0, "max": 0}
    ordered = np.sort(np.asarray(values))
    return {
        "min": int(ordered[0]),
        "mean": round(float(ordered.mean()), 1),
        "p50": int(ordered[len(ordered) // 2]),
        "p95": int(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "max": int(ordered[-1]),
    }


def curate(inputs: list[Path], out_dir: Path, settings: CurateSettings | None = None) -> CurateReport:
    """Run every stage and write train/validation/test.jsonl, rejects.jsonl, data_card.{json,md} atomically."""
    settings = settings or CurateSettings()
    if not inputs:
        raise ConfigError("curate: give at least one input file")
    report = CurateReport([str(path) for path in inputs], {key: str(value) for key, value in asdict(settings).items()})
    rejects: list[Reject] = []

    examples: list[Example] = []
    for path in inputs:
        result = read_examples(path, settings.format)
        for problem in result.problems:
            rejects.append(Reject(f"{problem.path}:{problem.line}", "parse", problem.message, raw=problem.raw))
        examples += result.examples
    report.stages["read"] = len(examples) + sum(1 for reject in rejects if reject.stage == "parse")
    report.stages["parse_errors"] = len(rejects)

    # 1. normalise, drop empty and over-long rows
    kept: list[Example] = []
    for example in examples:
        example = _map_text(example, normalize_text)
        size = len(_conversation_text(example)) + len(example.response)
        if not example.input_text or not example.response:
            rejects.append(Reject(example.source, "normalize", "empty input or answer", example_row(example)))
        elif size > settings.max_chars:
            rejects.append(
                Reject(
                    example.source,
                    "normalize",
                    f"{size} characters > max_chars {settings.max_chars}",
                    example_row(example),
                )
            )
        else:
            kept.append(example)
    report.stages["after_normalize"] = len(kept)

    # 2. PII
    if settings.redact_pii:
        counts: Counter[str] = Counter()
        kept = [_map_text(example, lambda text: redact(text, counts)) for example in kept]
        report.pii_redacted = dict(counts)

    # 3. exact duplicates
    first_of: dict[str, Example] = {}
    unique: list[Example] = []
    votes: Counter[str] = Counter()  # an exact duplicate still counts as a vote for its answer in a conflict
    for example in kept:
        key = _digest(_conversation_text(example), example.response)
        votes[example.source if key not in first_of else first_of[key].source] += 1
        if key in first_of:
            rejects.append(
                Reject(
                    example.source,
                    "exact_duplicate",
                    f"same input and answer as {first_of[key].source}",
                    example_row(example),
                )
            )
        else:
            first_of[key] = example
            unique.append(example)
    report.stages["after_exact_dedup"] = len(unique)

    # 4. near duplicates and conflicts over the inputs
    index = NearDuplicateIndex(
        settings.near_duplicate_threshold, settings.num_perm, settings.shingle_size, settings.seed + 1
    )
    inputs_text = [_conversation_text(example) for example in unique]
    signatures = index.hasher.signatures(inputs_text)
    clusters = index.clusters_of(signatures)
    # Identical inputs are one cluster even when they have no words to shingle.
    by_input: dict[str, int] = {}
    for position, text in enumerate(inputs_text):
        clusters[position] = min(clusters[position], by_input.setdefault(text, int(clusters[position])))
    members: dict[int, list[int]] = defaultdict(list)
    for position, cluster in enumerate(clusters.tolist()):
        members[cluster].append(position)
    survivors: list[int] = []
    for positions in (members[cluster] for cluster in sorted(members)):
        answers: Counter[str] = Counter()
        for position in positions:
            answers[unique[position].response] += votes[unique[position].source]
        if len(answers) == 1:
            survivors.append(positions[0])
            for position in positions[1:]:
                rejects.append(
                    Reject(
                        unique[position].source,
                        "near_duplicate",
                        f"near duplicate of {unique[positions[0]].source}",
                        example_row(unique[position]),
                    )
                )
            if len(positions) > 1 and len(report.near_duplicates) < 50:
                report.near_duplicates.append(
                    {
                        "kept": example_row(unique[positions[0]]) | {"source": unique[positions[0]].source},
                        "dropped": len(positions) - 1,
                    }
                )
            continue
        report.conflicts.append(
            {
                "rows": [
                    example_row(unique[position]) | {"source": unique[position].source} for position in positions[:10]
                ],
                "answers": dict(answers),
            }
        )
        ranked = answers.most_common()
        if settings.conflicts == "keep":
            chosen = {answer for answer, _ in ranked}
        elif settings.conflicts == "majority" and ranked[0][1] > ranked[1][1]:
            chosen = {ranked[0][0]}
        else:
            chosen = set()
        seen_answers: set[str] = set()
        for position in positions:
            answer = unique[position].response
            if answer in chosen and answer not in seen_answers:
                seen_answers.add(answer)
                survivors.append(position)
            elif answer in chosen:
                rejects.append(
                    Reject(
                        unique[position].source,
                        "near_duplicate",
                        "near duplicate within a conflict group",
                        example_row(unique[position]),
                    )
                )
            else:
                why = (
                    "conflict: the same or near-same input has other answers, policy drop"
                    if settings.conflicts == "drop"
                    else f"conflict: minority answer (majority: {ranked[0][0]!r})"
                    if chosen
                    else "conflict: no majority answer among " + ", ".join(repr(answer) for answer, _ in ranked)
                )
                rejects.append(Reject(unique[position].source, "conflict", why, example_row(unique[position])))
    survivors.sort()
    curated = [unique[position] for position in survivors]
    curated_signatures = signatures[survivors]
    report.stages["after_near_dedup_and_conflicts"] = len(curated)

    # 5/6. split, decontaminate the training split, check leakage
    split_positions = _stratified_split([example.label for example in curated], settings.split, settings.seed)
    splits = {name: [curated[position] for position in split_positions[name]] for name in SPLITS}
    if settings.decontaminate:
        benchmark = _benchmark_ngrams(settings.decontaminate, settings.ngram)
        clean, clean_positions = [], []
        for example, position in zip(splits["train"], split_positions["train"]):
            text = _conversation_text(example) + "\n" + example.response
            if _ngrams(text, settings.ngram) & benchmark:
                rejects.append(
                    Reject(
                        example.source,
                        "decontaminate",
                        f"shares a {settings.ngram}-gram with the benchmark",
                        example_row(example),
                    )
                )
            else:
                clean.append(example)
                clean_positions.append(position)
        splits["train"], split_positions["train"] = clean, clean_positions
        report.stages["after_decontamination"] = sum(len(rows) for rows in splits.values())
    train_keys = {_digest(_conversation_text(example)) for example in splits["train"]}
    train_signatures = curated_signatures[split_positions["train"]]
    for name in ("validation", "test"):
        held_out = splits[name]
        near = index.matches(curated_signatures[split_positions[name]], train_signatures)
        keep_rows = []
        for example, is_near in zip(held_out, near.tolist()):
            if is_near or _digest(_conversation_text(example)) in train_keys:
                rejects.append(
                    Reject(example.source, "leakage", f"{name} row duplicates a training row", example_row(example))
                )
            else:
                keep_rows.append(example)
        splits[name] = keep_rows

    report.splits = {name: len(rows) for name, rows in splits.items()}
    report.labels = {
        name: dict(Counter(example.label for example in rows if example.label is not None).most_common())
        for name, rows in splits.items()
    }
    everything = [example for rows in splits.values() for example in rows]
    report.lengths = {
        "input_words": _length_stats([len(WORD.findall(example.input_text)) for example in everything]),
        "answer_words": _length_stats([len(WORD.findall(example.response)) for example in everything]),
    }
    report.stages["rejected"] = report.rejects = len(rejects)
    report.stages["kept"] = len(everything)
    _write(out_dir, splits, rejects, report)
    return report


def _write(out_dir: Path, splits: dict[str, list[Example]], rejects: list[Reject], report: CurateReport) -> None:
    with atomic_directory(Path(out_dir)) as staging:
        for name, rows in splits.items():
            lines = [json.dumps(example_row(example), ensure_ascii=False) for example in rows]
            write_text_atomic(staging / f"{name}.jsonl", "".join(line + "\n" for line in lines))
        write_text_atomic(
            staging / "rejects.jsonl",
            "".join(json.dumps(asdict(reject), ensure_ascii=False) + "\n" for reject in rejects),
        )
        write_json_atomic(staging / "data_card.json", asdict(report))
        write_text_atomic(staging / "data_card.md", data_card_markdown(report))


def data_card_markdown(report: CurateReport) -> str:
    lines = [
        "# Data card",
        "",
        f"Inputs: {', '.join(report.inputs)}",
        "",
        "## Rows per stage",
        "",
        "| stage | rows |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {count} |" for stage, count in report.stages.items()]
    lines += ["", "## Splits", "", "| split | rows |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in report.splits.items()]
    labels = sorted({label for counts in report.labels.values() for label in counts})
    if labels:
        lines += ["", "## Labels", "", "| label | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
        lines += [
            f"| {label} | " + " | ".join(str(report.labels[name].get(label, 0)) for name in SPLITS) + " |"
            for label in labels
        ]
    lines += ["", "## Lengths (words)", "", "| field | min | mean | p50 | p95 | max |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {name} | " + " | ".join(str(value) for value in stats.values()) + " |"
        for name, stats in report.lengths.items()
    ]
    if report.pii_redacted:
        lines += ["", "## PII redacted", "", "| kind | count |", "|---|---|"]
        lines += [f"| {kind} | {count} |" for kind, count in sorted(report.pii_redacted.items())]
    lines += ["", f"## Conflicts ({len(report.conflicts)})", ""]
    for conflict in report.conflicts[:20]:
        lines.append(
            "- "
            + "; ".join(
                f"{row['source']}: {json.dumps({k: v for k, v in row.items() if k != 'source'}, ensure_ascii=False)}"
                for row in conflict["rows"]
            )
        )
    lines += ["", f"Rejected rows: {report.rejects} (rejects.jsonl gives each one's stage and reason).", ""]
    return "\n".join(lines)
