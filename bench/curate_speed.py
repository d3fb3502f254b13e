"""Near-duplicate detection speed: niche's batched MinHash LSH vs datasketch's batch API, on the same rows.

Data: the CLINC150 training utterances (../shared/datasets/clinc150) replicated to N rows (200,000 by default)
with noise: each copy gets a random edit (a word dropped, duplicated or swapped, a typo, case changes), so the
set holds exact and near duplicates the way scraped or synthetic data does. Without ../shared/datasets the
project's example inputs (examples/cloudsec/train.jsonl) are replicated instead, and the result says so.

Both sides compute 128-permutation MinHash signatures over the same word 3-shingles with the same shingle hash
(zlib.crc32; datasketch's default is SHA-1, slower, `--datasketch-hash sha1` measures it), run on all N rows,
and produce the same thing: for every row, the earliest row of its near-duplicate cluster (candidate pairs from
LSH bands, kept when the estimated Jaccard similarity reaches 0.8, clusters by connected components):
- niche: `NearDuplicateIndex.clusters` (signatures in numpy batches, LSH bands as sorted 64-bit keys);
- datasketch: `MinHash.bulk` for the signatures, `MinHashLSH.insertion_session` to index them, then
  `MinHashLSH.query` per row for candidates (datasketch has no batch query for in-memory storage).
Both are single-process. Agreement is the share of rows both call duplicates or both call new.

Writes bench/results/curate_speed.json (records_per_minute, ratio_vs_datasketch, ...).

    python bench/curate_speed.py [--rows 200000] [--datasketch-hash crc32|sha1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from public_data import CLINC, EXAMPLES  # noqa: E402

RESULTS = REPO / "bench" / "results" / "curate_speed.json"
THRESHOLD = 0.8
NUM_PERM = 128
SHINGLE = 3
NICHE_HASH = "zlib.crc32 of each UTF-8 shingle, then 128 universal hashes (a*x + b) mod (2^32 - 5), seed 1"
SHINGLE_HASHES = {"crc32": "zlib.crc32", "sha1": "datasketch.hashfunc.sha1_hash32 (its default)"}


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
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    result = list(texts)
    while len(result) < rows:
        words = rng.choice(texts).split()
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
            words[position] = word[:cut] + rng.choice(alphabet) + word[cut:]
        elif edit == 4:
            words = [word.upper() if rng.random() < 0.3 else word for word in words]
        result.append(" ".join(words))
    return result[:rows]


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


def datasketch_clusters(texts: list[str], shingle_hash: str) -> tuple[dict[str, float], np.ndarray]:
    """datasketch at its fastest in-memory path: bulk signatures, an insertion session, one query per row."""
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
    pairs = []
    for row, signature in enumerate(signatures):
        if shingled[row]:
            pairs += [
                (other, row)
                for other in index.query(signature)
                if other < row and signature.jaccard(signatures[other]) >= THRESHOLD
            ]
    clusters = earliest_of_clusters(np.asarray(pairs, dtype=np.int64), len(texts))
    ended = time.perf_counter()
    seconds = {"signatures": signed - started, "index": indexed - signed, "query": ended - indexed}
    return seconds | {"total": ended - started, "bands_rows": [index.b, index.r]}, clusters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows both sides deduplicate")
    parser.add_argument("--datasketch-hash", choices=sorted(SHINGLE_HASHES), default="crc32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from datasketch import __version__ as datasketch_version

    from niche.data.minhash import NearDuplicateIndex
    from niche.io import write_json_atomic

    base, source = base_texts()
    texts = noisy_copies(base, args.rows, args.seed)
    random.Random(args.seed).shuffle(texts)

    index = NearDuplicateIndex(THRESHOLD, NUM_PERM, SHINGLE)
    started = time.perf_counter()
    signatures = index.hasher.signatures(texts)
    signed = time.perf_counter()
    clusters = index.clusters_of(signatures)
    niche_seconds = time.perf_counter() - started
    niche_duplicates = clusters != np.arange(len(texts))
    # The process's peak so far: the rows, niche's signatures and its clustering (datasketch has not run yet).
    niche_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    datasketch_seconds, datasketch_clustered = datasketch_clusters(texts, args.datasketch_hash)
    datasketch_duplicates = datasketch_clustered != np.arange(len(texts))
    agreement = float((niche_duplicates == datasketch_duplicates).mean())

    niche_rate = len(texts) / niche_seconds * 60
    datasketch_rate = len(texts) / datasketch_seconds["total"] * 60
    result = {
        "setup": {
            "data": f"{source} replicated with one random edit per copy",
            "rows": len(texts),
            "datasketch_rows": len(texts),
            "threshold": THRESHOLD,
            "num_perm": NUM_PERM,
            "shingle_words": SHINGLE,
            "lsh_bands_rows": [index.bands, index.rows],
            "datasketch_lsh_bands_rows": datasketch_seconds["bands_rows"],
            "niche_hash": NICHE_HASH,
            "datasketch_hash": f"{SHINGLE_HASHES[args.datasketch_hash]}, then datasketch's affine32 permutations",
            "datasketch_version": datasketch_version,
            "datasketch_api": "MinHash.bulk, MinHashLSH.insertion_session, MinHashLSH.query per row",
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "niche_seconds": round(niche_seconds, 1),
        "niche_signature_seconds": round(signed - started, 1),
        "niche_duplicate_share": round(float(niche_duplicates.mean()), 4),
        "niche_peak_rss_mb": round(niche_peak_mb),
        "niche_signatures_mb": round(signatures.nbytes / 2**20),
        "records_per_minute": round(niche_rate),
        "datasketch_seconds": round(datasketch_seconds["total"], 1),
        "datasketch_phase_seconds": {
            phase: round(datasketch_seconds[phase], 1) for phase in ("signatures", "index", "query")
        },
        "datasketch_duplicate_share": round(float(datasketch_duplicates.mean()), 4),
        "datasketch_records_per_minute": round(datasketch_rate),
        "ratio_vs_datasketch": round(niche_rate / datasketch_rate, 2),
        "agreement_with_datasketch": round(agreement, 4),
    }
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
