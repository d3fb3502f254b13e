"""Near-duplicate search: MinHash signatures over word shingles, LSH banding, all in numpy batches.

datasketch (the usual choice) hashes and inserts one record at a time from Python; here a whole batch of
records is hashed with one vectorised universal hash ((a*x + b) mod p over every shingle and permutation) and
`minimum.reduceat`, and each LSH band becomes a 64-bit key, so bucketing is a sort instead of a dict insert per
band per record. `bench/curate_speed.py` measures the difference on the same data.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PRIME = np.uint64(4294967291)  # largest prime below 2**32: (a*x + b) stays below 2**64 for 32-bit a, x, b
WORD = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, size: int) -> list[str]:
    """Word n-grams of the lower-cased text (the whole text when it has fewer than `size` words)."""
    words = WORD.findall(text.lower())
    if len(words) <= size:
        return [" ".join(words)] if words else []
    return [" ".join(words[index : index + size]) for index in range(len(words) - size + 1)]


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the expected false positives below `threshold` plus false negatives
    above it, the probability of a shared band being 1 - (1 - s^rows)^bands (the rule datasketch uses)."""
    below = np.linspace(0, threshold, 64)
    above = np.linspace(threshold, 1, 64)

    def error(bands: int, rows: int) -> float:
        false_positive = np.trapezoid(1 - (1 - below**rows) ** bands, below)
        false_negative = np.trapezoid((1 - above**rows) ** bands, above)
        return float(false_positive + false_negative)

    candidates = [(bands, rows) for bands in range(1, num_perm + 1) for rows in range(1, num_perm // bands + 1)]
    return min(candidates, key=lambda pair: error(*pair))


@dataclass(frozen=True)
class MinHasher:
    num_perm: int = 128
    shingle_size: int = 3
    seed: int = 1

    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        generator = np.random.default_rng(self.seed)
        a = generator.integers(1, int(PRIME), size=self.num_perm, dtype=np.uint64)
        b = generator.integers(0, int(PRIME), size=self.num_perm, dtype=np.uint64)
        return a, b

    def signatures(self, texts: Sequence[str], batch_size: int = 8192) -> np.ndarray:
        """[len(texts), num_perm] uint32 signatures; a text without words gets an all-max signature."""
        a, b = self._permutations()
        result = np.full((len(texts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(texts), batch_size):
            hashes: list[int] = []
            offsets: list[int] = []
            rows: list[int] = []
            for row, text in enumerate(texts[start : start + batch_size]):
                grams = shingles(text, self.shingle_size)
                if grams:
                    offsets.append(len(hashes))
                    rows.append(start + row)
                    hashes.extend(zlib.crc32(gram.encode()) for gram in grams)
            if not hashes:
                continue
            values = np.asarray(hashes, dtype=np.uint64)[:, None]
            permuted = (values * a + b) % PRIME
            result[rows] = np.minimum.reduceat(permuted, np.asarray(offsets), axis=0).astype(np.uint32)
        return result


class NearDuplicateIndex:
    """Clusters of records whose estimated Jaccard similarity reaches `threshold` (first record = cluster id)."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 3, seed: int = 1) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, shingle_size, seed)
        self.bands, self.rows = lsh_bands(threshold, num_perm)

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """[n, bands] 64-bit keys, one per band (a polynomial hash of the band's values, wrapping)."""
        width = self.bands * self.rows
        banded = signatures[:, :width].astype(np.uint64).reshape(len(signatures), self.bands, self.rows)
        powers = np.uint64(1099511628211) ** np.arange(self.rows, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return (banded * powers).sum(axis=2, dtype=np.uint64)

    def candidate_pairs(self, signatures: np.ndarray) -> np.ndarray:
        """[k, 2] pairs (i, j) with i < j that share a band: j against the first record of each bucket."""
        keys = self.band_keys(signatures)
        pairs = [np.stack(first_of_bucket_pairs(keys[:, band]), axis=1) for band in range(self.bands)]
        pairs = [found for found in pairs if len(found)]
        if not pairs:
            return np.empty((0, 2), dtype=np.int64)
        return np.unique(np.concatenate(pairs), axis=0)

    def similar(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Row by row, whether two [k, num_perm] signature arrays estimate a Jaccard of at least the threshold."""
        return (left == right).mean(axis=1) >= self.threshold

    def verified_pairs(self, signatures: np.ndarray) -> np.ndarray:
        """Candidate pairs whose signatures are similar, records without words left out."""
        pairs = self.candidate_pairs(signatures)
        wordless = is_wordless(signatures)
        pairs = pairs[~wordless[pairs[:, 0]] & ~wordless[pairs[:, 1]]]
        return pairs[self.similar(signatures[pairs[:, 0]], signatures[pairs[:, 1]])] if len(pairs) else pairs

    def clusters(self, texts: Sequence[str]) -> np.ndarray:
        """For each record, the index of the earliest record of its near-duplicate cluster."""
        signatures = self.hasher.signatures(texts)
        return self.clusters_of(signatures)

    def clusters_of(self, signatures: np.ndarray, extra_pairs: np.ndarray | None = None) -> np.ndarray:
        """Clusters from the verified pairs and `extra_pairs` (records known to belong together)."""
        pairs = self.verified_pairs(signatures)
        if extra_pairs is not None and len(extra_pairs):
            pairs = np.concatenate([pairs, extra_pairs.astype(pairs.dtype)])
        return earliest_of_components(len(signatures), pairs)

    def matches(self, queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """For each query signature, whether some reference signature is a near duplicate of it."""
        if not len(queries) or not len(reference):
            return np.zeros(len(queries), dtype=bool)
        combined = np.concatenate([reference, queries])
        pairs = self.candidate_pairs(combined)
        found = np.zeros(len(queries), dtype=bool)
        if len(pairs):
            pairs = pairs[(pairs[:, 0] < len(reference)) & (pairs[:, 1] >= len(reference))]
            found[pairs[self.similar(combined[pairs[:, 0]], combined[pairs[:, 1]])][:, 1] - len(reference)] = True
        return found


def is_wordless(signatures: np.ndarray) -> np.ndarray:
    """Records with no shingle (an all-max signature): nothing to compare."""
    return (signatures == np.iinfo(np.uint32).max).all(axis=1)


def first_of_bucket_pairs(*bucket_columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Records (in their order) bucketed by equal values in every column: index pairs (the bucket's first record,
    each other record of the bucket)."""
    count = len(bucket_columns[0])
    order = np.lexsort((np.arange(count), *reversed(bucket_columns)))
    changes = np.zeros(count, dtype=bool)
    changes[:1] = True
    for column in bucket_columns:
        ordered = column[order]
        changes[1:] |= ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(changes)
    first = np.repeat(order[starts], np.diff(np.r_[starts, count]))
    others = first != order
    return first[others], order[others]


def earliest_of_components(count: int, pairs: np.ndarray) -> np.ndarray:
    """For each of `count` records, the lowest index in its connected component of `pairs`."""
    # scipy is the train extra's; curate checks for it before any work, and signatures alone never need it.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    earliest = np.full(component.max() + 1 if count else 0, count, dtype=np.int64)
    np.minimum.at(earliest, component, np.arange(count))
    return earliest[component]
