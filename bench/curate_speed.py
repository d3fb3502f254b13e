"""Near-duplicate detection speed: niche's batched MinHash LSH against datasketch's, the same rule on the same rows.

Data: the CLINC150 training utterances (../shared/datasets/clinc150) replicated to N rows (200,000 by default)
with noise: each copy gets a random edit (a word dropped, duplicated or swapped, a typo, case changes), so the
set holds exact and near duplicates the way scraped or synthetic data does. Without ../shared/datasets the
project's example inputs (examples/cloudsec/train.jsonl) are replicated instead, and the result says so.

Both sides compute 128-permutation MinHash signatures over the same word 3-shingles with the same shingle hash
(zlib.crc32; datasketch's default is SHA-1, slower, `--datasketch-hash sha1` measures it), band them the same way
(9 bands of 13 rows, the split both libraries choose for threshold 0.8) and follow one rule to the same output,
for every row the earliest row of its near-duplicate cluster:
- candidates: in every band, each row of a bucket is paired with the bucket's earliest row (the rule niche
  ships: linear in the rows, where pairing every bucket mate grows with the square of a bucket);
- verification: a candidate pair is kept when its signatures agree on at least 80% of the permutations, one
  numpy comparison over all pairs on both sides;
- clusters: connected components of the kept pairs (scipy), each row mapped to its component's earliest row.
niche runs `NearDuplicateIndex.clusters`. datasketch runs `MinHash.bulk` for the signatures and
`MinHashLSH.insertion_session` to bucket them, then the buckets are read through its storage API (`keys`, `get`)
for the candidates, and its signatures are stacked into one uint32 matrix for the verification (both charged to
datasketch). Single process on both sides.

Each side's duplicate rows are scored against exact Jaccard similarity on the shingle sets over all pairs of rows
(computed once, untimed, by a prefix-filtered similarity join that cannot miss a pair at or above the threshold).
The two sides use different random permutations, so their estimates differ on pairs near the threshold: they
are doing the same work when their cluster assignments agree on the rows either side calls duplicate as closely
as niche agrees with itself under another permutation seed (plus 2 points), and their recalls against exact
Jaccard are within 2 points. What the candidate rule costs is measured on niche's signatures, untimed: the recall
of pairing every bucket mate instead, and of verifying every exact pair (no LSH misses). Memory: the peak of
Python and numpy allocations (tracemalloc) in one more, untimed run of each side.

Writes bench/results/curate_speed.json (under build/bench-quick/ with --quick: 20,000 rows, one round).

    python bench/curate_speed.py [--rows 200000] [--datasketch-hash crc32|sha1] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
from harness import (  # noqa: E402
    Report,
    WorkCheck,
    add_arguments,
    format_range,
    interleave,
    ratio,
    same_answers,
    summarize,
)
from public_data import CLINC, EXAMPLES  # noqa: E402

THRESHOLD = 0.8
NUM_PERM = 128
SHINGLE = 3
ROWS = 200_000
QUICK_ROWS = 20_000
WARMUP_ROUNDS = 1
# Slack, in points of agreement or recall, on top of what another permutation seed alone changes.
SAME_WORK_SLACK = 0.02
NICHE_HASH = "zlib.crc32 of each UTF-8 shingle, then 128 universal hashes (a*x + b) mod (2^32 - 5), seed 1"
SHINGLE_HASHES = {"crc32": "zlib.crc32", "sha1": "datasketch.hashfunc.sha1_hash32 (its default)"}
SIDES = ("niche", "datasketch")
RULES = {
    "bucket_earliest_row": "each row against its buckets' earliest rows (the rule timed)",
    "every_bucket_mate": "every pair of bucket mates (rows with one signature joined once)",
    "every_exact_pair": "every pair at exact Jaccard >= 0.8 (no LSH misses)",
}


def base_texts() -> tuple[list[str], str]:
    """CLINC150's training utterances, or the project's example inputs when ../shared/datasets is absent."""
    clinc = CLINC / "data_full.json"
    if clinc.is_file():
        train = json.loads(clinc.read_text())["train"]
        return [text for text, _ in train], f"CLINC150 train ({len(train)} utterances)"
    print(
        f"{clinc} not found: falling back to the project's example inputs (examples/cloudsec/train.jsonl). For the "
        "published numbers put CLINC150 (Larson et al. 2019) in ../shared/datasets/clinc150/ beside the checkout.",
        file=sys.stderr,
    )
    lines = (EXAMPLES / "cloudsec" / "train.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    return texts, f"FALLBACK, not CLINC150: examples/cloudsec/train.jsonl ({len(texts)} inputs)"


def noisy_copies(texts: list[str], rows: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    result = list(texts)
    while len(result) < rows:
        result.append(noisy_copy(rng.choice(texts), rng))
    return result[:rows]


def noisy_copy(text: str, rng: random.Random) -> str:
    """The text with one edit: a word dropped, doubled, swapped or misspelt, some words upper-cased, or none."""
    words = text.split()
    edit = rng.randrange(6)
    position = rng.randrange(len(words))
    if edit == 0 and len(words) > 3:
        del words[position]
    elif edit == 1:
        words.insert(position, words[position])
    elif edit == 2 and len(words) > 1:
        other = rng.randrange(len(words))
        words[position], words[other] = words[other], words[position]
    elif edit == 3:
        word = words[position]
        cut = rng.randrange(len(word) + 1)
        words[position] = word[:cut] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[cut:]
    elif edit == 4:
        words = [word.upper() if rng.random() < 0.3 else word for word in words]
    return " ".join(words)


def earliest_of_clusters(pairs: np.ndarray, count: int) -> np.ndarray:
    """For each row, the earliest row connected to it by `pairs` (the same rule niche's clusters follow)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = pairs.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    earliest = np.full(component.max() + 1, count, dtype=np.int64)
    np.minimum.at(earliest, component, np.arange(count))
    return earliest[component]


def verified_clusters(signatures: np.ndarray, pairs: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """The verification and clustering of `NearDuplicateIndex.clusters_of`, for any side's signatures and pairs."""
    pairs = pairs.reshape(-1, 2)
    if len(pairs):
        similarity = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1)
        pairs = pairs[similarity >= threshold]
    return earliest_of_clusters(pairs, len(signatures))


def representative_pairs(hashtables: Sequence[Any]) -> np.ndarray:
    """(earliest row of the bucket, row) for every other row of every bucket of every band of a MinHashLSH: the
    candidates niche's `candidate_pairs` produces, read from datasketch's own buckets through its storage API."""
    earliest: list[int] = []
    members: list[int] = []
    for table in hashtables:
        for bucket in map(table.get, table.keys()):
            if len(bucket) > 1:
                members.extend(bucket)
                earliest.extend([min(bucket)] * len(bucket))
    pairs = np.stack([np.asarray(earliest, dtype=np.int64), np.asarray(members, dtype=np.int64)], axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def niche_round(texts: list[str]) -> dict[str, Any]:
    from niche.data.minhash import NearDuplicateIndex

    index = NearDuplicateIndex(THRESHOLD, NUM_PERM, SHINGLE)
    started = time.perf_counter()
    signatures = index.hasher.signatures(texts)
    signed = time.perf_counter()
    clusters = index.clusters_of(signatures)
    ended = time.perf_counter()
    phases = {"signatures": signed - started, "clusters": ended - signed}
    return {"seconds": ended - started, "phases": phases, "clusters": clusters, "bands_rows": [index.bands, index.rows]}


def datasketch_round(texts: list[str], shingle_hash: str) -> dict[str, Any]:
    """datasketch's fastest in-memory path to the buckets (bulk signatures, an insertion session), then the same
    candidate rule and the same vectorised verification as niche."""
    from datasketch import MinHash, MinHashLSH
    from datasketch.hashfunc import sha1_hash32

    from niche.data.minhash import shingles

    hashfunc = zlib.crc32 if shingle_hash == "crc32" else sha1_hash32
    started = time.perf_counter()
    shingled = [[gram.encode() for gram in shingles(text, SHINGLE)] for text in texts]
    signatures = MinHash.bulk(shingled, num_perm=NUM_PERM, hashfunc=hashfunc)
    signed = time.perf_counter()
    index = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    with index.insertion_session() as session:
        for row, signature in enumerate(signatures):
            if shingled[row]:  # a text without words has nothing to compare, as in niche
                session.insert(row, signature, check_duplication=False)
    indexed = time.perf_counter()
    pairs = representative_pairs(index.hashtables)
    paired = time.perf_counter()
    matrix = np.stack([signature.hashvalues for signature in signatures])
    clusters = verified_clusters(matrix, pairs)
    ended = time.perf_counter()
    phases = {
        "signatures": signed - started,
        "index": indexed - signed,
        "candidates": paired - indexed,
        "verify_and_cluster": ended - paired,
    }
    return {"seconds": ended - started, "phases": phases, "clusters": clusters, "bands_rows": [index.b, index.r]}


def pairs_within_groups(groups: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Every pair of members that share a group, for `groups` sorted (members of one group adjacent)."""
    count = len(groups)
    if count < 2:
        return np.empty((0, 2), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], count]
    group_end = np.repeat(ends, ends - starts)
    later = group_end - np.arange(count) - 1
    left = np.repeat(np.arange(count), later)
    offsets = np.arange(len(left)) - np.repeat(np.cumsum(later) - later, later)
    return np.stack([members[left], members[left + 1 + offsets]], axis=1)


def shingle_sets(texts: list[str]) -> list[tuple[int, ...]]:
    """Each row's set of word 3-shingles (the strings themselves, numbered), sorted."""
    from niche.data.minhash import shingles

    numbers: dict[str, int] = {}
    return [
        tuple(sorted({numbers.setdefault(gram, len(numbers)) for gram in shingles(text, SHINGLE)})) for text in texts
    ]


def exact_jaccard_pairs(sets: list[tuple[int, ...]], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of distinct non-empty sets with Jaccard similarity >= threshold, and its value.

    A prefix-filtered similarity join (Bayardo et al. 2007, "All pairs similarity search"): with the shingles of
    every set ordered rarest first, two sets at Jaccard >= t share a shingle among the first |x| - ceil(t|x|) + 1 of
    each, so pairing the sets that share a prefix shingle finds every such pair; each is then verified exactly.
    """
    from scipy.sparse import csr_matrix

    sizes = np.fromiter((len(members) for members in sets), dtype=np.int64, count=len(sets))
    tokens = np.fromiter((token for members in sets for token in members), dtype=np.int64, count=int(sizes.sum()))
    owners = np.repeat(np.arange(len(sets)), sizes)
    frequency = np.bincount(tokens)
    rank = np.empty_like(frequency)
    rank[np.lexsort((np.arange(len(frequency)), frequency))] = np.arange(len(frequency))
    order = np.lexsort((rank[tokens], owners))
    position = np.arange(len(tokens)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    # The smallest overlap a pair at >= threshold needs; the small epsilon only ever lengthens a prefix.
    needed = np.ceil(threshold * sizes - 1e-9).astype(np.int64)
    in_prefix = position < (sizes - needed + 1)[owners[order]]
    prefix_owners, prefix_ranks = owners[order][in_prefix], rank[tokens[order]][in_prefix]
    by_rank = np.argsort(prefix_ranks, kind="stable")
    candidates = pairs_within_groups(prefix_ranks[by_rank], prefix_owners[by_rank])
    candidates = np.unique(np.sort(candidates, axis=1), axis=0)
    smaller = np.minimum(sizes[candidates[:, 0]], sizes[candidates[:, 1]])
    larger = np.maximum(sizes[candidates[:, 0]], sizes[candidates[:, 1]])
    candidates = candidates[smaller >= threshold * larger - 1e-9]
    incidence = csr_matrix((np.ones(len(tokens), dtype=np.int32), (owners, tokens)), shape=(len(sets), len(frequency)))
    overlap = np.asarray(incidence[candidates[:, 0]].multiply(incidence[candidates[:, 1]]).sum(axis=1)).ravel()
    similarity = overlap / (sizes[candidates[:, 0]] + sizes[candidates[:, 1]] - overlap)
    kept = similarity >= threshold - 1e-12
    return candidates[kept], similarity[kept]


def exact_clusters(texts: list[str], threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """For each row, the earliest row of its cluster under exact Jaccard similarity of the shingle sets; and the
    pairs that make the clusters (each row to the first row with the same set, and the pairs of distinct sets)."""
    started = time.perf_counter()
    sets = shingle_sets(texts)
    first_with_set: dict[tuple[int, ...], int] = {}
    same_set = [(first_with_set.setdefault(members, row), row) for row, members in enumerate(sets) if members]
    distinct_rows = np.asarray(sorted(first_with_set.values()), dtype=np.int64)
    pairs, _ = exact_jaccard_pairs([sets[row] for row in distinct_rows], threshold)
    edges = np.concatenate([np.asarray(same_set, dtype=np.int64).reshape(-1, 2), distinct_rows[pairs]])
    clusters = earliest_of_clusters(edges, len(texts))
    stats = {
        "distinct_shingle_sets": len(distinct_rows),
        "pairs_of_distinct_sets_at_threshold": len(pairs),
        "seconds": time.perf_counter() - started,
    }
    return clusters, edges, stats


def every_bucket_mate_pairs(signatures: np.ndarray) -> np.ndarray:
    """Every pair of rows that share a band bucket, the rule niche does not ship; rows with identical signatures
    are joined to the first of them instead of to each other, so a bucket of copies adds one pair per copy."""
    from niche.data.minhash import NearDuplicateIndex

    index = NearDuplicateIndex(THRESHOLD, NUM_PERM, SHINGLE)
    rows = np.flatnonzero(~(signatures == np.iinfo(np.uint32).max).all(axis=1))
    _, first, inverse = np.unique(signatures[rows], axis=0, return_index=True, return_inverse=True)
    copies = np.stack([rows[first][inverse.ravel()], rows], axis=1)
    distinct = rows[first]
    keys = index.band_keys(signatures[distinct])
    mates = []
    for band in range(index.bands):
        order = np.argsort(keys[:, band], kind="stable")
        mates.append(pairs_within_groups(keys[order, band], distinct[order]))
    return np.concatenate([copies[copies[:, 0] != copies[:, 1]], *mates])


def rule_costs(texts: list[str], exact: np.ndarray, exact_edges: np.ndarray) -> dict[str, Any]:
    """Recall and precision against exact Jaccard, on niche's signatures, of the shipped candidate rule, of pairing
    every bucket mate, and of verifying every exact pair (no LSH misses: what the 128-value estimate alone loses)."""
    from niche.data.minhash import NearDuplicateIndex

    index = NearDuplicateIndex(THRESHOLD, NUM_PERM, SHINGLE)
    signatures = index.hasher.signatures(texts)
    every_mate = every_bucket_mate_pairs(signatures)
    rules = {
        "bucket_earliest_row": (index.clusters_of(signatures), len(index.candidate_pairs(signatures))),
        "every_bucket_mate": (verified_clusters(signatures, every_mate), len(every_mate)),
        "every_exact_pair": (verified_clusters(signatures, exact_edges), len(exact_edges)),
    }
    return {
        rule: {"candidate_pairs": pairs}
        | {key: round(value, 4) for key, value in quality_against_exact(clusters, exact).items()}
        for rule, (clusters, pairs) in rules.items()
    }


def duplicate_rows(clusters: np.ndarray) -> np.ndarray:
    return clusters != np.arange(len(clusters))


def agreement_over_duplicates(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, int]:
    """The share of the rows either side calls duplicate to which both assign the same earliest row."""
    union = duplicate_rows(reference) | duplicate_rows(candidate)
    if not union.any():
        return 1.0, 0
    return float((reference[union] == candidate[union]).mean()), int(union.sum())


def quality_against_exact(clusters: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Recall and precision of the duplicate rows against exact Jaccard, and the share of the rows either calls
    duplicate that land in the exact cluster."""
    found, truth = duplicate_rows(clusters), duplicate_rows(exact)
    both = int((found & truth).sum())
    same_cluster, _ = agreement_over_duplicates(exact, clusters)
    return {
        "duplicate_share": float(found.mean()),
        "recall": both / max(int(truth.sum()), 1),
        "precision": both / max(int(found.sum()), 1),
        "same_cluster_as_exact": same_cluster,
    }


def peak_traced_mb(run: Callable[[], Any]) -> float:
    """The peak of Python and numpy allocations while `run` runs (its inputs, allocated before, not counted)."""
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def same_work_checks(
    niche: np.ndarray, datasketch: np.ndarray, niche_other_seed: np.ndarray, quality: dict[str, dict[str, float]]
) -> tuple[list, dict[str, Any]]:
    """The two sides did the same work when they disagree no more than niche does with itself under another
    permutation seed (plus the slack), and find the exact duplicates equally often (within the slack)."""
    seed_agreement, _ = agreement_over_duplicates(niche, niche_other_seed)
    union = duplicate_rows(niche) | duplicate_rows(datasketch)
    tolerance = (1 - seed_agreement) + SAME_WORK_SLACK
    clusters_check = same_answers(
        niche[union].tolist(),
        datasketch[union].tolist(),
        tolerance=tolerance,
        what="cluster assignments of duplicate rows",
    )
    recall_gap = abs(quality["niche"]["recall"] - quality["datasketch"]["recall"])
    recall_check = WorkCheck(
        recall_gap <= SAME_WORK_SLACK + 1e-12,
        "recall of the exact-Jaccard duplicates",
        f"niche {quality['niche']['recall']:.4f}, datasketch {quality['datasketch']['recall']:.4f} "
        f"(tolerance: {SAME_WORK_SLACK:.0%} apart)",
        round(1 - recall_gap, 4),
    )
    baseline = {
        "niche_seed_1_vs_seed_2_agreement_over_duplicates": round(seed_agreement, 4),
        "tolerance": round(tolerance, 4),
        "rule": f"disagreement <= niche's own between permutation seeds 1 and 2 + {SAME_WORK_SLACK:.0%}",
    }
    return [clusters_check, recall_check], baseline


def repeatable_check(side: str, runs: list[dict[str, Any]]) -> WorkCheck:
    """Every measured round of a side produced the same clusters (the rounds timed the same work)."""
    same = sum(np.array_equal(run["clusters"], runs[0]["clusters"]) for run in runs)
    return WorkCheck(same == len(runs), f"{side} clusters every round", f"{same}/{len(runs)} rounds equal the first")


def rounded(stats: dict[str, Any], digits: int = 3) -> dict[str, Any]:
    return {
        key: [round(v, digits) for v in value] if key == "runs" else round(value, digits)
        for key, value in stats.items()
    }


def side_summary(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    phases = {phase: rounded(summarize([run["phases"][phase] for run in runs])) for phase in runs[0]["phases"]}
    return {
        "seconds": rounded(summarize([run["seconds"] for run in runs])),
        "records_per_minute": rounded(summarize([rows / run["seconds"] * 60 for run in runs]), 0),
        "phase_seconds": phases,
        "bands_rows": runs[0]["bands_rows"],
    }


def print_summary(payload: dict[str, Any]) -> None:
    for side in SIDES:
        result = payload[side]
        quality = result["against_exact"]
        phases = ", ".join(f"{name} {stats['median']:.2f}" for name, stats in result["phase_seconds"].items())
        print(
            f"{side:>10}: {format_range(result['seconds'], 2, ' s')} ({phases}); "
            f"{per_minute(result['records_per_minute'])} records/minute; duplicates {quality['duplicate_share']:.2%}, "
            f"recall {quality['recall']:.2%}, precision {quality['precision']:.2%} against exact Jaccard; "
            f"peak traced {result['peak_traced_mb']:.0f} MB"
        )
    comparison = payload["ratio_vs_datasketch"]
    verdict = "valid" if comparison["valid"] else "INVALID: " + "; ".join(comparison["invalid_because"])
    print(f"niche / datasketch records per minute: {format_range(comparison, 2, 'x')} [{verdict}]")
    for check in comparison["checks"]:
        print(f"  check {check['what']}: {check['detail']}")
    agreement = payload["agreement"]
    print(
        f"agreement: {agreement['over_duplicate_rows']:.2%} of the {agreement['duplicate_rows_either_side']:,} rows either "
        f"side calls duplicate ({agreement['over_all_rows']:.2%} of all rows); niche against itself with seed 2: "
        f"{payload['same_work_baseline']['niche_seed_1_vs_seed_2_agreement_over_duplicates']:.2%}"
    )
    for rule, quality in payload["rule_costs"].items():
        print(
            f"niche signatures, {RULES[rule]}: {quality['candidate_pairs']:,} candidate pairs, recall "
            f"{quality['recall']:.2%}, precision {quality['precision']:.2%} against exact Jaccard"
        )


def setup_record(args: argparse.Namespace, rows: int, source: str) -> dict[str, Any]:
    return {
        "data": f"{source} replicated with one random edit per copy, shuffled (seed {args.seed})",
        "rows": rows,
        "threshold": THRESHOLD,
        "num_perm": NUM_PERM,
        "signature_dtype": "uint32 on both sides",
        "shingle_words": SHINGLE,
        "rule": "each row of a band bucket against the bucket's earliest row; kept at >= 80% equal signature "
        "values (one numpy comparison over all candidates); connected components, earliest row per cluster",
        "niche_hash": NICHE_HASH,
        "datasketch_hash": f"{SHINGLE_HASHES[args.datasketch_hash]}, then datasketch's affine32 permutations",
        "datasketch_api": "MinHash.bulk, MinHashLSH.insertion_session, the buckets read through its storage API "
        "(hashtables[band].keys() and .get()), the signatures stacked into one uint32 matrix",
        "exact": "Jaccard of the shingle sets over all pairs: a prefix-filtered similarity join, untimed",
        "memory": "peak of Python and numpy allocations (tracemalloc) in one more, untimed run per side",
    }


def judged(texts: list[str], measured: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each side's quality against exact Jaccard, their agreement, and the ratio with the checks behind it."""
    from niche.data.minhash import NearDuplicateIndex

    rows = len(texts)
    clusters = {side: measured[side][0]["clusters"] for side in SIDES}
    exact, exact_edges, exact_stats = exact_clusters(texts)
    niche_other_seed = NearDuplicateIndex(THRESHOLD, NUM_PERM, SHINGLE, seed=2).clusters(texts)
    quality = {side: quality_against_exact(clusters[side], exact) for side in SIDES}
    checks, baseline = same_work_checks(clusters["niche"], clusters["datasketch"], niche_other_seed, quality)
    bands = {side: measured[side][0]["bands_rows"] for side in SIDES}
    checks += [repeatable_check(side, measured[side]) for side in SIDES]
    checks.append(
        WorkCheck(
            bands["niche"] == bands["datasketch"],
            "LSH bands x rows",
            f"niche {bands['niche']}, datasketch {bands['datasketch']}",
        )
    )
    over_duplicates, union_rows = agreement_over_duplicates(clusters["niche"], clusters["datasketch"])
    same_decision = duplicate_rows(clusters["niche"]) == duplicate_rows(clusters["datasketch"])
    return {
        "exact": {key: round(value, 2) if isinstance(value, float) else value for key, value in exact_stats.items()}
        | {"duplicate_share": round(float(duplicate_rows(exact).mean()), 4)},
        **{
            side: side_summary(measured[side], rows)
            | {"against_exact": {key: round(value, 4) for key, value in quality[side].items()}}
            for side in SIDES
        },
        "agreement": {
            "over_duplicate_rows": round(over_duplicates, 4),
            "duplicate_rows_either_side": union_rows,
            "over_all_rows": round(float(same_decision.mean()), 4),
        },
        "same_work_baseline": baseline,
        "rule_costs": rule_costs(texts, exact, exact_edges),
        "ratio_vs_datasketch": ratio(
            [rows / run["seconds"] for run in measured["niche"]],
            [rows / run["seconds"] for run in measured["datasketch"]],
            checks,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows", type=int, default=None, help=f"rows both sides deduplicate ({ROWS:,}; --quick {QUICK_ROWS:,})"
    )
    parser.add_argument("--datasketch-hash", choices=sorted(SHINGLE_HASHES), default="crc32")
    parser.add_argument("--seed", type=int, default=0)
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("curate_speed", args)

    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    base, source = base_texts()
    texts = noisy_copies(base, rows, args.seed)
    random.Random(args.seed).shuffle(texts)
    sides = {"niche": lambda: niche_round(texts), "datasketch": lambda: datasketch_round(texts, args.datasketch_hash)}

    def progress(side: str, round_: int, result: dict[str, Any]) -> None:
        print(f"round {round_}: {side} {result['seconds']:.2f} s", flush=True)

    measured, schedule = interleave(
        {side: lambda _, run=run: run() for side, run in sides.items()},
        repeats=report.repeats,
        warmup=WARMUP_ROUNDS,
        on_result=progress,
    )
    peaks = {side: round(peak_traced_mb(run), 1) for side, run in sides.items()}
    payload = {"setup": setup_record(args, rows, source), "schedule": schedule.as_dict()} | judged(texts, measured)
    for side in SIDES:
        payload[side]["peak_traced_mb"] = peaks[side]
    payload["records_per_minute"] = payload["niche"]["records_per_minute"]["median"]  # the headline
    print_summary(payload)
    report.write(payload)


def per_minute(stats: dict[str, Any]) -> str:
    """'2,265,131 (2,201,455-2,301,876)': records per minute with thousands separators."""
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}-{stats['max']:,.0f})"


def runs_table(results: dict) -> str:
    lines = [
        f"| {results['setup']['rows']:,} rows, uint32 signatures | seconds (phases) | records/minute "
        "| duplicate share | recall vs exact | precision vs exact | peak traced memory |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"niche": "niche", "datasketch": "datasketch, batch API, the same rule"}
    for side in SIDES:
        result, quality = results[side], results[side]["against_exact"]
        phases = ", ".join(
            f"{name.replace('_', ' ')} {stats['median']:.1f}" for name, stats in result["phase_seconds"].items()
        )
        lines.append(
            f"| {names[side]} | {format_range(result['seconds'], 1)} ({phases}) | {per_minute(result['records_per_minute'])} "
            f"| {quality['duplicate_share']:.3f} | {quality['recall']:.1%} | {quality['precision']:.1%} "
            f"| {result['peak_traced_mb']:.0f} MB |"
        )
    lines.append(f"| exact Jaccard, all pairs (untimed) | | | {results['exact']['duplicate_share']:.3f} | | | |")
    return "\n".join(lines) + "\n"


def comparison_table(results: dict) -> str:
    comparison, agreement = results["ratio_vs_datasketch"], results["agreement"]
    baseline = results["same_work_baseline"]
    verdict = (
        f"valid (cluster disagreement allowed: {baseline['tolerance']:.1%}; recalls within {SAME_WORK_SLACK:.0%})"
        if comparison["valid"]
        else "invalid: " + "; ".join(comparison["invalid_because"])
    )
    return (
        "| niche / datasketch, records per minute | same work | cluster agreement, rows either side calls duplicate "
        "| the same, niche seed 1 vs seed 2 | duplicate-or-not agreement, all rows |\n"
        "|---|---|---|---|---|\n"
        f"| {format_range(comparison, 2, 'x')} | {verdict} | {agreement['over_duplicate_rows']:.1%} "
        f"of {agreement['duplicate_rows_either_side']:,} | "
        f"{baseline['niche_seed_1_vs_seed_2_agreement_over_duplicates']:.1%} | {agreement['over_all_rows']:.1%} |\n"
    )


def rules_table(results: dict) -> str:
    lines = [
        "| candidates verified (niche's signatures, untimed) | candidate pairs | recall vs exact | precision vs exact |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {RULES[rule]} | {quality['candidate_pairs']:,} | {quality['recall']:.1%} | {quality['precision']:.1%} |"
        for rule, quality in results["rule_costs"].items()
    ]
    return "\n".join(lines) + "\n"


def tables(results: dict) -> dict[str, str]:
    """`runs`: each side's time, throughput and quality against exact Jaccard; `comparison`: the ratio and the
    same-work checks behind it; `rules`: what the candidate rule costs in recall."""
    return {"runs": runs_table(results), "comparison": comparison_table(results), "rules": rules_table(results)}


if __name__ == "__main__":
    main()
