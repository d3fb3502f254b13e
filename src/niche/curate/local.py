"""`niche curate` in one process: every stage over the whole input in memory, numpy-vectorised.

The decisions are `niche.curate.rules`'; `niche.curate.ray_engine` makes the same ones over a Ray cluster.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from niche.config import CurateSettings
from niche.curate.card import (
    NEAR_DUPLICATES_SHOWN,
    CurateReport,
    data_card_markdown,
    label_counts,
    length_histograms,
    length_stats,
)
from niche.curate.rules import (
    SPLITS,
    Member,
    Reject,
    benchmark_ngrams,
    contamination,
    conversation_text,
    exact_duplicate_of,
    example_row,
    input_key,
    leaked,
    normalized,
    pair_key,
    read_file,
    redacted,
    resolve_cluster,
    split_group,
    split_of_group,
)
from niche.data.examples import Example
from niche.data.minhash import NearDuplicateIndex, first_of_bucket_pairs
from niche.io import atomic_directory, write_json_atomic, write_jsonl_atomic, write_text_atomic

Rows = list[tuple[int, Example]]  # (order, example), in order


def curate_locally(inputs: list[Path], out_dir: Path, settings: CurateSettings, report: CurateReport) -> CurateReport:
    rejects: list[Reject] = []
    rows = _read_inputs(inputs, settings, rejects, report)
    rows = _normalize(rows, settings, rejects, report)
    if settings.redact_pii:
        counts: Counter[str] = Counter()
        rows = [(order, redacted(example, counts)) for order, example in rows]
        report.pii_redacted = dict(counts)
    unique, votes = _drop_exact_duplicates(rows, rejects, report)
    index = NearDuplicateIndex(
        settings.near_duplicate_threshold, settings.num_perm, settings.shingle_size, settings.seed + 1
    )
    signatures = index.hasher.signatures([conversation_text(example) for _, example in unique])
    survivors = _resolve_near_duplicates(unique, votes, index, signatures, settings, rejects, report)
    report.stages["after_near_dedup_and_conflicts"] = len(survivors)
    splits = _split([unique[position] for position in survivors], settings)
    positions = {order: position for position, (order, _) in enumerate(unique)}
    if settings.decontaminate:
        _decontaminate(splits, settings, rejects, report)
    _drop_leakage(splits, positions, index, signatures, rejects)
    _summarise(splits, rejects, report)
    _write(out_dir, splits, rejects, report)
    return report


def _read_inputs(inputs: list[Path], settings: CurateSettings, rejects: list[Reject], report: CurateReport) -> Rows:
    """Every input's rows in any of niche's shapes; unparseable lines are rejected with file:line."""
    rows: Rows = []
    for file_number, path in enumerate(inputs):
        examples, problems = read_file(path, file_number, settings)
        rows += examples
        rejects += problems
    report.stages["read"] = len(rows) + len(rejects)
    report.stages["parse_errors"] = len(rejects)
    return rows


def _normalize(rows: Rows, settings: CurateSettings, rejects: list[Reject], report: CurateReport) -> Rows:
    kept: Rows = []
    for order, example in rows:
        outcome = normalized(example, settings)
        if isinstance(outcome, Reject):
            rejects.append(outcome)
        else:
            kept.append((order, outcome))
    report.stages["after_normalize"] = len(kept)
    return kept


def _drop_exact_duplicates(rows: Rows, rejects: list[Reject], report: CurateReport) -> tuple[Rows, Counter[int]]:
    """The first of each identical (input, answer) pair, and per kept row its votes: an exact duplicate still
    counts as a vote for its answer in a conflict."""
    first_of: dict[str, tuple[int, Example]] = {}
    unique: Rows = []
    votes: Counter[int] = Counter()
    for order, example in rows:
        key = pair_key(example)
        if key in first_of:
            first_order, first = first_of[key]
            votes[first_order] += 1
            rejects.append(exact_duplicate_of(first, example))
        else:
            first_of[key] = (order, example)
            votes[order] += 1
            unique.append((order, example))
    report.stages["after_exact_dedup"] = len(unique)
    return unique, votes


def _resolve_near_duplicates(
    unique: Rows,
    votes: Counter[int],
    index: NearDuplicateIndex,
    signatures: np.ndarray,
    settings: CurateSettings,
    rejects: list[Reject],
    report: CurateReport,
) -> list[int]:
    """Positions (in `unique`) of the rows that survive their cluster."""
    same_input = np.stack(first_of_bucket_pairs(np.array([input_key(example) for _, example in unique])), axis=1)
    clusters = index.clusters_of(signatures, extra_pairs=same_input)
    members: dict[int, list[int]] = defaultdict(list)
    for position, cluster in enumerate(clusters.tolist()):
        members[cluster].append(position)
    position_of = {order: position for position, (order, _) in enumerate(unique)}
    survivors: list[int] = []
    for cluster in sorted(members):
        outcome = resolve_cluster(
            [Member(unique[p][0], unique[p][1], votes[unique[p][0]]) for p in members[cluster]], settings.conflicts
        )
        survivors += [position_of[order] for order in outcome.survivors]
        rejects += outcome.rejects
        if outcome.conflict is not None:
            report.conflicts.append(outcome.conflict)
        if outcome.near_duplicate is not None and len(report.near_duplicates) < NEAR_DUPLICATES_SHOWN:
            report.near_duplicates.append(outcome.near_duplicate)
    return sorted(survivors)


def _split(curated: Rows, settings: CurateSettings) -> dict[str, Rows]:
    groups: dict[str, list[int]] = defaultdict(list)
    for order, example in curated:
        groups[split_group(example.label, order)].append(order)
    split_of: dict[int, str] = {}
    for group, orders in groups.items():
        split_of |= split_of_group(orders, group, settings.split, settings.seed)
    return {name: [(order, example) for order, example in curated if split_of[order] == name] for name in SPLITS}


def _decontaminate(
    splits: dict[str, Rows], settings: CurateSettings, rejects: list[Reject], report: CurateReport
) -> None:
    """Training rows that share an n-gram with a benchmark leave the training split."""
    benchmark = benchmark_ngrams(settings.decontaminate, settings.ngram)
    clean: Rows = []
    for order, example in splits["train"]:
        reject = contamination(example, benchmark, settings.ngram)
        if reject is None:
            clean.append((order, example))
        else:
            rejects.append(reject)
    splits["train"] = clean
    report.stages["after_decontamination"] = sum(len(rows) for rows in splits.values())


def _drop_leakage(
    splits: dict[str, Rows],
    positions: dict[int, int],
    index: NearDuplicateIndex,
    signatures: np.ndarray,
    rejects: list[Reject],
) -> None:
    """Validation and test rows that duplicate (exactly or nearly) a training row leave their split."""
    train_keys = {input_key(example) for _, example in splits["train"]}
    train_signatures = signatures[[positions[order] for order, _ in splits["train"]]]
    for name in ("validation", "test"):
        held_out = signatures[[positions[order] for order, _ in splits[name]]]
        near = index.matches(held_out, train_signatures)
        keep_rows: Rows = []
        for (order, example), is_near in zip(splits[name], near.tolist()):
            if is_near or input_key(example) in train_keys:
                rejects.append(leaked(example, name))
            else:
                keep_rows.append((order, example))
        splits[name] = keep_rows


def _summarise(splits: dict[str, Rows], rejects: list[Reject], report: CurateReport) -> None:
    report.splits = {name: len(rows) for name, rows in splits.items()}
    report.labels = {name: label_counts(example.label for _, example in rows) for name, rows in splits.items()}
    histograms = length_histograms(example for rows in splits.values() for _, example in rows)
    report.lengths = {name: length_stats(histogram) for name, histogram in histograms.items()}
    report.stages["rejected"] = report.rejects = len(rejects)
    report.stages["kept"] = sum(report.splits.values())


def _write(out_dir: Path, splits: dict[str, Rows], rejects: list[Reject], report: CurateReport) -> None:
    with atomic_directory(Path(out_dir)) as staging:
        for name, rows in splits.items():
            write_jsonl_atomic(staging / f"{name}.jsonl", (example_row(example) for _, example in rows))
        write_jsonl_atomic(staging / "rejects.jsonl", (asdict(reject) for reject in rejects))
        write_json_atomic(staging / "data_card.json", asdict(report))
        write_text_atomic(staging / "data_card.md", data_card_markdown(report))
