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
from typing import Any

import numpy as np

from niche.config import CurateSettings
from niche.data.examples import Example
from niche.data.formats import read_examples
from niche.data.minhash import WORD, NearDuplicateIndex
from niche.data.pii import redact
from niche.errors import ConfigError, DataError, require_extra
from niche.io import atomic_directory, write_json_atomic, write_jsonl_atomic, write_text_atomic

SPLITS = ("train", "validation", "test")


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
    require_extra("train", ("scipy",), "curate (near-duplicate clustering)")
    if not inputs:
        raise ConfigError("curate: give at least one input file")
    report = CurateReport(
        [str(path) for path in inputs], {key: str(value) for key, value in settings.model_dump().items()}
    )
    rejects: list[Reject] = []
    examples = _read_inputs(inputs, settings, rejects, report)
    kept = _normalize(examples, settings, rejects, report)
    if settings.redact_pii:
        counts: Counter[str] = Counter()
        kept = [_map_text(example, lambda text: redact(text, counts)) for example in kept]
        report.pii_redacted = dict(counts)
    unique, votes = _drop_exact_duplicates(kept, rejects, report)
    index = NearDuplicateIndex(
        settings.near_duplicate_threshold, settings.num_perm, settings.shingle_size, settings.seed + 1
    )
    texts = [_conversation_text(example) for example in unique]
    signatures = index.hasher.signatures(texts)
    survivors = _resolve_near_duplicates(unique, texts, votes, index, signatures, settings, rejects, report)
    curated, curated_signatures = [unique[position] for position in survivors], signatures[survivors]
    report.stages["after_near_dedup_and_conflicts"] = len(curated)
    split_positions = _stratified_split([example.label for example in curated], settings.split, settings.seed)
    splits = {name: [curated[position] for position in split_positions[name]] for name in SPLITS}
    if settings.decontaminate:
        _decontaminate(splits, split_positions, settings, rejects, report)
    _drop_leakage(splits, split_positions, index, curated_signatures, rejects)
    _summarise(splits, rejects, report)
    _write(out_dir, splits, rejects, report)
    return report


def _read_inputs(
    inputs: list[Path], settings: CurateSettings, rejects: list[Reject], report: CurateReport
) -> list[Example]:
    """Every input's rows in any of niche's shapes; unparseable lines are rejected with file:line."""
    examples: list[Example] = []
    for path in inputs:
        result = read_examples(path, settings.format)
        for problem in result.problems:
            rejects.append(Reject(f"{problem.path}:{problem.line}", "parse", problem.message, raw=problem.raw))
        examples += result.examples
    report.stages["read"] = len(examples) + sum(1 for reject in rejects if reject.stage == "parse")
    report.stages["parse_errors"] = len(rejects)
    return examples


def _normalize(
    examples: list[Example], settings: CurateSettings, rejects: list[Reject], report: CurateReport
) -> list[Example]:
    """Normalised text; empty and over-long rows rejected."""
    kept: list[Example] = []
    for example in examples:
        example = _map_text(example, normalize_text)
        size = len(_conversation_text(example)) + len(example.response)
        if not example.input_text or not example.response:
            rejects.append(Reject(example.source, "normalize", "empty input or answer", example_row(example)))
        elif size > settings.max_chars:
            why = f"{size} characters > max_chars {settings.max_chars}"
            rejects.append(Reject(example.source, "normalize", why, example_row(example)))
        else:
            kept.append(example)
    report.stages["after_normalize"] = len(kept)
    return kept


def _drop_exact_duplicates(
    kept: list[Example], rejects: list[Reject], report: CurateReport
) -> tuple[list[Example], Counter[str]]:
    """The first of each identical (input, answer) pair, and per kept row its votes: an exact duplicate still
    counts as a vote for its answer in a conflict."""
    first_of: dict[str, Example] = {}
    unique: list[Example] = []
    votes: Counter[str] = Counter()
    for example in kept:
        key = _digest(_conversation_text(example), example.response)
        votes[example.source if key not in first_of else first_of[key].source] += 1
        if key in first_of:
            why = f"same input and answer as {first_of[key].source}"
            rejects.append(Reject(example.source, "exact_duplicate", why, example_row(example)))
        else:
            first_of[key] = example
            unique.append(example)
    report.stages["after_exact_dedup"] = len(unique)
    return unique, votes


def _resolve_near_duplicates(
    unique: list[Example],
    texts: list[str],
    votes: Counter[str],
    index: NearDuplicateIndex,
    signatures: Any,
    settings: CurateSettings,
    rejects: list[Reject],
    report: CurateReport,
) -> list[int]:
    """Positions of the rows that survive: one per cluster of near-duplicate inputs with one answer, and the
    answers the conflict policy keeps where a cluster has several."""
    clusters = index.clusters_of(signatures)
    # Identical inputs are one cluster even when they have no words to shingle.
    by_input: dict[str, int] = {}
    for position, text in enumerate(texts):
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
            _keep_first_near_duplicate(unique, positions, rejects, report)
        else:
            survivors += _resolve_conflict(unique, positions, answers, settings, rejects, report)
    return sorted(survivors)


def _keep_first_near_duplicate(
    unique: list[Example], positions: list[int], rejects: list[Reject], report: CurateReport
) -> None:
    kept = unique[positions[0]]
    for position in positions[1:]:
        why = f"near duplicate of {kept.source}"
        rejects.append(Reject(unique[position].source, "near_duplicate", why, example_row(unique[position])))
    if len(positions) > 1 and len(report.near_duplicates) < 50:
        report.near_duplicates.append(
            {"kept": example_row(kept) | {"source": kept.source}, "dropped": len(positions) - 1}
        )


def _resolve_conflict(
    unique: list[Example],
    positions: list[int],
    answers: Counter[str],
    settings: CurateSettings,
    rejects: list[Reject],
    report: CurateReport,
) -> list[int]:
    """The rows of a cluster with several answers that the conflict policy keeps (one per kept answer)."""
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
    survivors: list[int] = []
    seen_answers: set[str] = set()
    for position in positions:
        example = unique[position]
        if example.response in chosen and example.response not in seen_answers:
            seen_answers.add(example.response)
            survivors.append(position)
        elif example.response in chosen:
            why = "near duplicate within a conflict group"
            rejects.append(Reject(example.source, "near_duplicate", why, example_row(example)))
        else:
            why = (
                "conflict: the same or near-same input has other answers, policy drop"
                if settings.conflicts == "drop"
                else f"conflict: minority answer (majority: {ranked[0][0]!r})"
                if chosen
                else "conflict: no majority answer among " + ", ".join(repr(answer) for answer, _ in ranked)
            )
            rejects.append(Reject(example.source, "conflict", why, example_row(example)))
    return survivors


def _decontaminate(
    splits: dict[str, list[Example]],
    split_positions: dict[str, list[int]],
    settings: CurateSettings,
    rejects: list[Reject],
    report: CurateReport,
) -> None:
    """Training rows that share an n-gram with a benchmark leave the training split."""
    benchmark = _benchmark_ngrams(settings.decontaminate, settings.ngram)
    clean, clean_positions = [], []
    for example, position in zip(splits["train"], split_positions["train"]):
        text = _conversation_text(example) + "\n" + example.response
        if _ngrams(text, settings.ngram) & benchmark:
            why = f"shares a {settings.ngram}-gram with the benchmark"
            rejects.append(Reject(example.source, "decontaminate", why, example_row(example)))
        else:
            clean.append(example)
            clean_positions.append(position)
    splits["train"], split_positions["train"] = clean, clean_positions
    report.stages["after_decontamination"] = sum(len(rows) for rows in splits.values())


def _drop_leakage(
    splits: dict[str, list[Example]],
    split_positions: dict[str, list[int]],
    index: NearDuplicateIndex,
    signatures: Any,
    rejects: list[Reject],
) -> None:
    """Validation and test rows that duplicate (exactly or nearly) a training row leave their split."""
    train_keys = {_digest(_conversation_text(example)) for example in splits["train"]}
    train_signatures = signatures[split_positions["train"]]
    for name in ("validation", "test"):
        near = index.matches(signatures[split_positions[name]], train_signatures)
        keep_rows = []
        for example, is_near in zip(splits[name], near.tolist()):
            if is_near or _digest(_conversation_text(example)) in train_keys:
                why = f"{name} row duplicates a training row"
                rejects.append(Reject(example.source, "leakage", why, example_row(example)))
            else:
                keep_rows.append(example)
        splits[name] = keep_rows


def _summarise(splits: dict[str, list[Example]], rejects: list[Reject], report: CurateReport) -> None:
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


def _write(out_dir: Path, splits: dict[str, list[Example]], rejects: list[Reject], report: CurateReport) -> None:
    with atomic_directory(Path(out_dir)) as staging:
        for name, rows in splits.items():
            write_jsonl_atomic(staging / f"{name}.jsonl", (example_row(example) for example in rows))
        write_jsonl_atomic(staging / "rejects.jsonl", (asdict(reject) for reject in rejects))
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
