"""`niche curate --engine ray`: the same stages as Ray Data operations, the same decisions as the local engine.

Rows travel as columns (their order, the example as JSON, keys, MinHash signatures); every decision is made on a
worker by `niche.curate.rules`, on rows grouped so that whatever must meet does: exact duplicates by their key,
LSH buckets by (band, key), clusters by their first row, splits by label (or run of unlabelled rows), leakage by
input and by bucket. Groups travel in coarse partitions (a hash of the key, a few per CPU) and each partition is
worked through with numpy, so no Python call is paid per bucket. What the driver holds does not grow with the
input: counts, the data card's entries, and references to two worker-side tables (the near-duplicate
components and the leaked rows), never a row, a signature or a key per row. The split files are written in
input order, streamed from the workers.
"""

from __future__ import annotations

import heapq
import json
import math
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from niche.config import CurateSettings
from niche.curate.card import (
    NEAR_DUPLICATES_SHOWN,
    CurateReport,
    add_histograms,
    data_card_markdown,
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
from niche.data.examples import example_from_json, example_to_json
from niche.data.formats import check_data_file
from niche.data.minhash import NearDuplicateIndex, earliest_of_components, first_of_bucket_pairs, is_wordless
from niche.io import atomic_directory, write_json_atomic, write_text_atomic
from niche.ray_runtime import cluster_cpus, ray_session

Batch = dict[str, np.ndarray]
# String columns hold "" for "none": a column of Python Nones in one block and strings in another does not unify
# in Arrow (it infers float or null for the first).
NONE = ""
# Rows per shuffle partition; there are never fewer partitions than CPUs in the cluster.
ROWS_PER_PARTITION = 200_000
STAGE_RANK = {
    stage: rank
    for rank, stage in enumerate(
        ["parse", "normalize", "exact_duplicate", "near_duplicate", "conflict", "decontaminate", "leakage"]
    )
}


def curate_on_ray(inputs: list[Path], out_dir: Path, settings: CurateSettings, report: CurateReport) -> CurateReport:
    with ray_session(settings.ray_address):
        return RayCuration(inputs, settings, report).run(out_dir)


class RayCuration:
    """One curation run: each method is a stage, a Ray Data plan over the previous stage's rows."""

    def __init__(self, inputs: list[Path], settings: CurateSettings, report: CurateReport) -> None:
        self.inputs = [Path(path) for path in inputs]
        for path in self.inputs:
            check_data_file(path)  # on the driver: a missing or empty file is named before any work starts
        self.settings = settings
        self.report = report
        self.index = NearDuplicateIndex(
            settings.near_duplicate_threshold, settings.num_perm, settings.shingle_size, settings.seed + 1
        )
        self.cpus = cluster_cpus()
        self.rejects: list[ray.data.Dataset] = []

    def partitions(self, rows: int) -> int:
        return max(self.cpus, math.ceil(rows / ROWS_PER_PARTITION))

    def run(self, out_dir: Path) -> CurateReport:
        rows = self.read_and_normalize()
        unique = self.drop_exact_duplicates(rows)
        survivors = self.resolve_near_duplicates(unique)
        split = self.split(survivors)
        if self.settings.decontaminate:
            split = self.decontaminate(split)
        split = self.drop_leakage(split)
        self.write(split, Path(out_dir))
        return self.report

    # ---- stages ---------------------------------------------------------------------------------------------

    def read_and_normalize(self) -> ray.data.Dataset:
        files = ray.data.from_items(
            [
                {"path": str(path.resolve()), "shown_as": str(path), "file_number": number}
                for number, path in enumerate(self.inputs)
            ]
        )
        settings = self.settings
        rows = files.flat_map(lambda item: _read_and_normalize(item, settings)).materialize()
        parsed = rows.filter(lambda row: row["stage"] == "parse")
        rejected = rows.filter(lambda row: row["stage"] == "normalize")
        kept = rows.filter(lambda row: row["stage"] == NONE).materialize()
        self.rejects += [parsed, rejected]
        parse_errors = parsed.count()
        self.report.stages["read"] = kept.count() + rejected.count() + parse_errors
        self.report.stages["parse_errors"] = parse_errors
        self.report.stages["after_normalize"] = kept.count()
        if settings.redact_pii:
            kept = kept.map(_redact).materialize()
            self.report.pii_redacted = dict(_sum_counters(kept, "pii"))
        return kept.map_batches(_keys, batch_format="numpy").materialize()

    def drop_exact_duplicates(self, rows: ray.data.Dataset) -> ray.data.Dataset:
        decided = _by_partition(rows, "pair_key", self.partitions(rows.count()), _first_of_each_pair).materialize()
        self.rejects.append(decided.filter(lambda row: row["stage"] == "exact_duplicate"))
        unique = decided.filter(lambda row: row["stage"] == NONE)
        unique = unique.map_batches(_signatures, fn_args=(self.index,), batch_format="numpy").materialize()
        self.report.stages["after_exact_dedup"] = unique.count()
        return unique

    def resolve_near_duplicates(self, unique: ray.data.Dataset) -> ray.data.Dataset:
        parts = self.partitions(unique.count() * self.index.bands)
        bucketed = unique.map_batches(_band_rows, fn_args=(self.index,), batch_format="numpy")
        near_pairs = _by_partition(bucketed, "bucket", parts, _verified_bucket_pairs, (self.index,))
        same_input = _by_partition(unique, "input_key", self.partitions(unique.count()), _same_input_pairs)
        # Each shuffle runs alone: a union of two unexecuted shuffles can starve itself of CPUs on a small cluster.
        components = _components.remote(near_pairs.materialize().union(same_input.materialize()))
        labelled = unique.map_batches(_attach_cluster, fn_args=(components,), batch_format="numpy")
        clustered = labelled.filter(lambda row: row["cluster"] >= 0)
        alone = labelled.filter(lambda row: row["cluster"] < 0)
        policy = self.settings.conflicts
        decided = _by_partition(
            clustered, "cluster", self.partitions(unique.count()), _resolve_clusters, (policy,)
        ).materialize()
        self.rejects.append(decided.filter(lambda row: row["stage"] != NONE))
        self._card_entries(decided)
        columns = ["order", "example", "stage", "reject", "input_key", "label", "signature"]
        survivors = alone.select_columns(columns).union(
            decided.filter(lambda row: row["stage"] == NONE).select_columns(columns)
        )
        survivors = survivors.materialize()
        self.report.stages["after_near_dedup_and_conflicts"] = survivors.count()
        return survivors

    def _card_entries(self, decided: ray.data.Dataset) -> None:
        """Every conflict and the first clusters of near duplicates, in cluster order, for the data card (the
        driver keeps only those: the rest of the near-duplicate entries stream past)."""
        entries = decided.filter(lambda row: row["entry_kind"] != NONE).select_columns(
            ["cluster", "entry_kind", "card_entry"]
        )
        conflicts: list[tuple[int, str]] = []
        near: list[tuple[int, str]] = []  # a max-heap by cluster (negated), of the first clusters only
        for row in entries.iter_rows():
            if row["entry_kind"] == "conflict":
                conflicts.append((row["cluster"], row["card_entry"]))
            elif len(near) < NEAR_DUPLICATES_SHOWN:
                heapq.heappush(near, (-row["cluster"], row["card_entry"]))
            else:
                heapq.heappushpop(near, (-row["cluster"], row["card_entry"]))
        self.report.conflicts = [json.loads(entry) for _, entry in sorted(conflicts)]
        self.report.near_duplicates = [json.loads(entry) for _, entry in sorted(near, reverse=True)]

    def split(self, survivors: ray.data.Dataset) -> ray.data.Dataset:
        grouped = survivors.map_batches(_split_groups, batch_format="numpy")
        settings = self.settings
        return (
            grouped.groupby("group", num_partitions=self.partitions(survivors.count()))
            .map_groups(lambda batch: _assign_splits(batch, settings.split, settings.seed), batch_format="numpy")
            .materialize()
        )

    def decontaminate(self, split: ray.data.Dataset) -> ray.data.Dataset:
        benchmark = ray.put(benchmark_ngrams(self.settings.decontaminate, self.settings.ngram))
        checked = split.map_batches(_contamination, fn_args=(benchmark, self.settings.ngram), batch_format="numpy")
        checked = checked.materialize()
        self.rejects.append(checked.filter(lambda row: row["stage"] == "decontaminate"))
        clean = checked.filter(lambda row: row["stage"] == NONE).materialize()
        self.report.stages["after_decontamination"] = clean.count()
        return clean

    def drop_leakage(self, split: ray.data.Dataset) -> ray.data.Dataset:
        rows = split.count()
        exact = _by_partition(split, "input_key", self.partitions(rows), _exact_leaks)
        bucketed = split.map_batches(_band_rows, fn_args=(self.index,), batch_format="numpy")
        near = _by_partition(bucketed, "bucket", self.partitions(rows * self.index.bands), _near_leaks, (self.index,))
        leaks = _sorted_orders.remote(exact.materialize().union(near.materialize()))
        marked = split.map_batches(_mark_leaks, fn_args=(leaks,), batch_format="numpy").materialize()
        self.rejects.append(marked.filter(lambda row: row["stage"] == "leakage"))
        return marked.filter(lambda row: row["stage"] == NONE).materialize()

    # ---- writing --------------------------------------------------------------------------------------------

    def write(self, split: ray.data.Dataset, out_dir: Path) -> None:
        """Every output file in one sorted stream: the splits in input order, then the rejects by stage."""
        report = self.report
        columns = ["order", "file", "line"]
        outputs = split.map_batches(_split_lines, batch_format="numpy").select_columns(columns)
        for rejects in self.rejects:
            outputs = outputs.union(rejects.map_batches(_reject_lines, batch_format="numpy").select_columns(columns))
        files = [*SPLITS, "rejects"]
        with atomic_directory(out_dir) as staging, ExitStack() as open_files:
            handles = [
                open_files.enter_context(open(staging / f"{name}.jsonl", "w", encoding="utf-8")) for name in files
            ]
            written = Counter[int]()
            for batch in outputs.sort(["file", "order"]).iter_batches(batch_format="numpy", batch_size=4096):
                for file, line in zip(batch["file"].tolist(), batch["line"].tolist()):
                    handles[file].write(line + "\n")
                    written[file] += 1
            open_files.close()
            report.splits = {name: written[number] for number, name in enumerate(SPLITS)}
            report.rejects = written[len(SPLITS)]
            report.labels, histograms = _summaries(split)
            report.lengths = {name: length_stats(histogram) for name, histogram in histograms.items()}
            report.stages["rejected"] = report.rejects
            report.stages["kept"] = sum(report.splits.values())
            write_json_atomic(staging / "data_card.json", asdict(report))
            write_text_atomic(staging / "data_card.md", data_card_markdown(report))


# ---- row functions (run on workers) -----------------------------------------------------------------------------


def _row(order: int, example: str = NONE, stage: str = NONE, reject: Reject | None = None) -> dict[str, Any]:
    return {
        "order": order,
        "example": example,
        "stage": stage,
        "reject": json.dumps(asdict(reject), ensure_ascii=False) if reject is not None else NONE,
    }


def _read_and_normalize(item: dict[str, Any], settings: CurateSettings) -> list[dict[str, Any]]:
    examples, problems = read_file(Path(item["path"]), int(item["file_number"]), settings, item["shown_as"])
    base = int(item["file_number"]) << 32
    rows = [_row(base + number, NONE, "parse", problem) for number, problem in enumerate(problems)]
    for order, example in examples:
        outcome = normalized(example, settings)
        if isinstance(outcome, Reject):
            rows.append(_row(order, NONE, "normalize", outcome))
        else:
            rows.append(_row(order, example_to_json(outcome)))
    return rows


def _redact(row: dict[str, Any]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    example = redacted(example_from_json(row["example"]), counts)
    return row | {"example": example_to_json(example), "pii": json.dumps(dict(counts))}


def _keys(batch: Batch) -> Batch:
    examples = [example_from_json(text) for text in batch["example"]]
    labels = [example.label if example.label is not None else NONE for example in examples]
    return batch | {
        "pair_key": np.array([pair_key(example) for example in examples], dtype=object),
        "input_key": np.array([input_key(example) for example in examples], dtype=object),
        "label": np.array(labels, dtype=object),
    }


def _signatures(batch: Batch, index: NearDuplicateIndex) -> Batch:
    texts = [conversation_text(example_from_json(text)) for text in batch["example"]]
    return batch | {"signature": index.hasher.signatures(texts)}


def _band_rows(batch: Batch, index: NearDuplicateIndex) -> Batch:
    """One row per (row, LSH band) for the rows that have words: its bucket is the band and the band's key."""
    signatures = np.asarray(batch["signature"], dtype=np.uint32).reshape(len(batch["order"]), -1)
    keep = ~is_wordless(signatures)
    keys = index.band_keys(signatures[keep])
    bands = np.broadcast_to(np.arange(index.bands, dtype=np.uint64), keys.shape)
    rows = np.repeat(np.flatnonzero(keep), index.bands)
    result = {
        "bucket": np.array([f"{band}:{key}" for band, key in zip(bands.ravel(), keys.ravel())], dtype=object),
        "order": np.asarray(batch["order"])[rows],
        "signature": signatures[rows],
    }
    if "split" in batch:
        result["split"] = np.asarray(batch["split"])[rows]
    return result


def _partition_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """A stable hash of each key (never Python's salted hash: partitions must agree across processes)."""
    return np.array([zlib.crc32(str(key).encode()) % parts for key in keys], dtype=np.int64)


def _by_partition(
    rows: ray.data.Dataset, key: str, parts: int, work: Callable[..., Batch], args: tuple[Any, ...] = ()
) -> ray.data.Dataset:
    """`work` on every partition: all rows sharing `key` meet in one call, sorted by order."""
    with_partition = rows.map_batches(
        lambda batch: batch | {"partition": _partition_of(batch[key], parts)}, batch_format="numpy"
    )

    def in_order(batch: Batch) -> Batch:
        order = np.argsort(np.asarray(batch["order"]), kind="stable")
        return work({name: np.asarray(values)[order] for name, values in batch.items() if name != "partition"}, *args)

    return with_partition.groupby("partition", num_partitions=parts).map_groups(in_order, batch_format="numpy")


def _first_of_each_pair(batch: Batch) -> Batch:
    """Exact duplicates: the first row of each (input, answer) key stays, with a vote per copy."""
    keys = batch["pair_key"]
    firsts, duplicates = first_of_bucket_pairs(keys)
    votes = np.ones(len(keys), dtype=np.int64)
    np.add.at(votes, firsts, 1)
    stage = np.full(len(keys), NONE, dtype=object)
    reject = np.full(len(keys), NONE, dtype=object)
    for first, duplicate in zip(firsts.tolist(), duplicates.tolist()):
        stage[duplicate] = "exact_duplicate"
        found = exact_duplicate_of(
            example_from_json(batch["example"][first]), example_from_json(batch["example"][duplicate])
        )
        reject[duplicate] = json.dumps(asdict(found), ensure_ascii=False)
    return {
        "order": batch["order"],
        "example": batch["example"],
        "stage": stage,
        "reject": reject,
        "input_key": batch["input_key"],
        "label": batch["label"],
        "votes": votes,
    }


def _pairs(first: np.ndarray, other: np.ndarray) -> Batch:
    return {"first": first.astype(np.int64), "other": other.astype(np.int64)}


def _verified_bucket_pairs(batch: Batch, index: NearDuplicateIndex) -> Batch:
    """Within each LSH bucket, its first row against each other row, kept when their signatures are similar."""
    firsts, others = first_of_bucket_pairs(batch["bucket"])
    signatures = np.asarray(batch["signature"], dtype=np.uint32).reshape(len(batch["order"]), -1)
    similar = index.similar(signatures[firsts], signatures[others]) if len(firsts) else np.zeros(0, dtype=bool)
    orders = np.asarray(batch["order"], dtype=np.int64)
    return _pairs(orders[firsts[similar]], orders[others[similar]])


def _same_input_pairs(batch: Batch) -> Batch:
    firsts, others = first_of_bucket_pairs(batch["input_key"])
    orders = np.asarray(batch["order"], dtype=np.int64)
    return _pairs(orders[firsts], orders[others])


@ray.remote(num_cpus=0)  # waits on dataset blocks; holding a CPU for that deadlocks a 1-CPU cluster
def _components(pairs: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(rows in some near-duplicate pair, sorted; each one's cluster: the lowest order of its component). Held
    on a worker: it grows with the rows that have a near duplicate, never with the input."""
    batches = list(pairs.iter_batches(batch_format="numpy", batch_size=None))
    first = np.concatenate([batch["first"] for batch in batches]) if batches else np.zeros(0, np.int64)
    other = np.concatenate([batch["other"] for batch in batches]) if batches else np.zeros(0, np.int64)
    nodes = np.unique(np.concatenate([first, other]))
    edges = np.stack([np.searchsorted(nodes, first), np.searchsorted(nodes, other)], axis=1)
    return nodes, nodes[earliest_of_components(len(nodes), edges)]


def _attach_cluster(batch: Batch, components: Any) -> Batch:
    """The cluster of each row in a near-duplicate pair, -1 for a row alone."""
    nodes, roots = _fetched(components)
    orders = np.asarray(batch["order"], dtype=np.int64)
    at = np.minimum(np.searchsorted(nodes, orders), max(len(nodes) - 1, 0))
    found = (nodes[at] == orders) if len(nodes) else np.zeros(len(orders), dtype=bool)
    return batch | {
        "cluster": np.where(found, roots[at] if len(nodes) else -1, -1).astype(np.int64),
        "card_entry": np.full(len(orders), NONE, dtype=object),
        "entry_kind": np.full(len(orders), NONE, dtype=object),
    }


def _resolve_clusters(batch: Batch, policy: str) -> Batch:
    """Every cluster of the partition resolved by the rules: rejects marked, and the cluster's card entry (a
    conflict, or what a cluster of near duplicates kept) on its first row."""
    count = len(batch["order"])
    stage, reject = np.full(count, NONE, dtype=object), np.full(count, NONE, dtype=object)
    card_entry, entry_kind = np.full(count, NONE, dtype=object), np.full(count, NONE, dtype=object)
    members: dict[int, list[int]] = {}
    for position, cluster in enumerate(batch["cluster"].tolist()):
        members.setdefault(cluster, []).append(position)
    for positions in members.values():
        outcome = resolve_cluster(
            [
                Member(int(batch["order"][p]), example_from_json(batch["example"][p]), int(batch["votes"][p]))
                for p in positions
            ],
            policy,
        )
        by_source = {found.source: found for found in outcome.rejects}
        for p in positions:
            found = by_source.get(json.loads(batch["example"][p])["source"])
            if found is not None:
                stage[p], reject[p] = found.stage, json.dumps(asdict(found), ensure_ascii=False)
        for kind, entry in (("conflict", outcome.conflict), ("near_duplicate", outcome.near_duplicate)):
            if entry is not None:
                card_entry[positions[0]], entry_kind[positions[0]] = json.dumps(entry, ensure_ascii=False), kind
    return batch | {"stage": stage, "reject": reject, "card_entry": card_entry, "entry_kind": entry_kind}


def _fetched(value: Any) -> Any:
    """A worker-side table passed by reference (Ray resolves references only as a task's own arguments, and a
    map function is not one): fetched into this worker from the object store, never through the driver."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _split_groups(batch: Batch) -> Batch:
    groups = [split_group(label or None, int(order)) for label, order in zip(batch["label"], batch["order"])]
    return batch | {"group": np.array(groups, dtype=object)}


def _assign_splits(batch: Batch, fractions: tuple[float, float, float], seed: int) -> Batch:
    """One stratification group: the split of each of its rows, by the rules' seeded shuffle."""
    orders = [int(order) for order in batch["order"]]
    split_of = split_of_group(orders, str(batch["group"][0]), fractions, seed)
    return batch | {"split": np.array([split_of[order] for order in orders], dtype=object)}


def _contamination(batch: Batch, benchmark: Any, size: int) -> Batch:
    stage, reject = np.array(batch["stage"], dtype=object), np.array(batch["reject"], dtype=object)
    benchmark = _fetched(benchmark)
    for position, (split, text) in enumerate(zip(batch["split"], batch["example"])):
        found = contamination(example_from_json(text), benchmark, size) if split == "train" else None
        if found is not None:
            stage[position], reject[position] = found.stage, json.dumps(asdict(found), ensure_ascii=False)
    return batch | {"stage": stage, "reject": reject}


def _exact_leaks(batch: Batch) -> Batch:
    """Held-out rows whose input is also a training row's."""
    split = np.asarray(batch["split"], dtype=object)
    keys = np.asarray(batch["input_key"], dtype=object)
    in_train = set(keys[split == "train"].tolist())
    held_out_leaks = (split != "train") & np.array([key in in_train for key in keys.tolist()], dtype=bool)
    return {"order": np.asarray(batch["order"], dtype=np.int64)[held_out_leaks]}


def _near_leaks(batch: Batch, index: NearDuplicateIndex) -> Batch:
    """Held-out rows near-duplicating the first training row of an LSH bucket they share (the local engine's
    `NearDuplicateIndex.matches`: training rows first, each side in order)."""
    split = np.asarray(batch["split"], dtype=object)
    held_out = split != "train"
    ranked = np.lexsort((np.asarray(batch["order"], dtype=np.int64), held_out))
    buckets = np.asarray(batch["bucket"], dtype=object)[ranked]
    firsts, others = first_of_bucket_pairs(buckets)
    firsts, others = ranked[firsts], ranked[others]
    across = ~held_out[firsts] & held_out[others]
    firsts, others = firsts[across], others[across]
    signatures = np.asarray(batch["signature"], dtype=np.uint32).reshape(len(split), -1)
    similar = index.similar(signatures[firsts], signatures[others]) if len(firsts) else np.zeros(0, dtype=bool)
    return {"order": np.asarray(batch["order"], dtype=np.int64)[others[similar]]}


@ray.remote(num_cpus=0)  # waits on dataset blocks; holding a CPU for that deadlocks a 1-CPU cluster
def _sorted_orders(rows: ray.data.Dataset) -> np.ndarray:
    """The leaked rows' orders, held on a worker (they grow with the leaks, never with the input)."""
    batches = [batch["order"] for batch in rows.iter_batches(batch_format="numpy", batch_size=None)]
    return np.unique(np.concatenate(batches)) if batches else np.zeros(0, dtype=np.int64)


def _mark_leaks(batch: Batch, leaks: Any) -> Batch:
    stage, reject = np.array(batch["stage"], dtype=object), np.array(batch["reject"], dtype=object)
    orders = np.asarray(batch["order"], dtype=np.int64)
    for position in np.flatnonzero(np.isin(orders, _fetched(leaks))).tolist():
        found = leaked(example_from_json(batch["example"][position]), str(batch["split"][position]))
        stage[position], reject[position] = found.stage, json.dumps(asdict(found), ensure_ascii=False)
    return batch | {"stage": stage, "reject": reject}


# ---- what the driver gathers: counts and streamed lines -----------------------------------------------------------


def _sum_counters(rows: ray.data.Dataset, column: str) -> Counter[str]:
    """A column of JSON counters added up, one counter per batch reaching the driver."""
    per_batch = rows.map_batches(
        lambda batch: {
            "counts": np.array(
                [json.dumps(sum((Counter(json.loads(text)) for text in batch[column]), Counter()))], dtype=object
            )
        },
        batch_format="numpy",
    )
    total: Counter[str] = Counter()
    for row in per_batch.iter_rows():
        total.update(json.loads(row["counts"]))
    return total


def _summaries(split: ray.data.Dataset) -> tuple[dict[str, dict[str, int]], dict[str, np.ndarray]]:
    """Labels per split and the length histograms, added up from one summary per batch."""

    def summarize(batch: Batch) -> Batch:
        labels = Counter(f"{split}\x1f{label}" for split, label in zip(batch["split"], batch["label"]) if label)
        histograms = length_histograms(example_from_json(text) for text in batch["example"])
        summary = {"labels": dict(labels)} | {name: values.tolist() for name, values in histograms.items()}
        return {"summary": np.array([json.dumps(summary)], dtype=object)}

    labels: dict[str, Counter[str]] = {name: Counter() for name in SPLITS}
    histograms: dict[str, np.ndarray] = {}
    for row in split.map_batches(summarize, batch_format="numpy").iter_rows():
        summary = json.loads(row["summary"])
        for key, count in summary.pop("labels").items():
            split_name, label = key.split("\x1f", 1)
            labels[split_name][label] += count
        for name, values in summary.items():
            histograms[name] = add_histograms(histograms.get(name, np.zeros(0, dtype=np.int64)), np.array(values))
    return {name: dict(counts.most_common()) for name, counts in labels.items()}, histograms


def _split_lines(batch: Batch) -> Batch:
    lines = [json.dumps(example_row(example_from_json(text)), ensure_ascii=False) for text in batch["example"]]
    files = [SPLITS.index(split) for split in batch["split"]]
    return {"order": batch["order"], "file": np.array(files, dtype=np.int64), "line": np.array(lines, dtype=object)}


def _reject_lines(batch: Batch) -> Batch:
    """Rejects go to the last file, by stage and then in input order (the sort key is the file, then the order)."""
    stage_rank = np.array([STAGE_RANK[stage] for stage in batch["stage"]], dtype=np.int64)
    return {
        "order": (stage_rank << 48) + np.asarray(batch["order"], dtype=np.int64),
        "file": np.full(len(stage_rank), len(SPLITS), dtype=np.int64),
        "line": np.asarray(batch["reject"], dtype=object),
    }
