"""Near-duplicate detection speed: niche's batched MinHash LSH vs a plain datasketch MinHashLSH loop.

Data: the CLINC150 training utterances (../shared/datasets/clinc150) replicated to N rows (1,000,000 by
default) with noise: each copy gets a random edit (a word dropped, duplicated or swapped, a typo, case
changes), so the set holds exact and near duplicates the way scraped or synthetic data does.

Both sides compute 128-permutation MinHash signatures over the same word 3-shingles and find, for every row,
the earlier rows it is a near duplicate of (threshold 0.8):
- niche: `NearDuplicateIndex.clusters` over all N rows (signatures in numpy batches, LSH bands as sorted
  64-bit keys, clusters by connected components);
- datasketch: `MinHash` + `MinHashLSH.query` then `insert`, row by row, on the first `--datasketch-rows`
  rows (it is too slow for the full set within a benchmark run); its rate is per row, like niche's.
Both are single-process. Agreement on the shared rows is reported (the share of rows both call duplicates or
both call new).

Writes bench/results/curate_speed.json (records_per_minute, ratio_vs_datasketch, ...).

    python bench/curate_speed.py [--rows 1000000] [--datasketch-rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLINC = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
RESULTS = REPO / "bench" / "results" / "curate_speed.json"
THRESHOLD = 0.8
NUM_PERM = 128
SHINGLE = 3


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


def datasketch_loop(texts: list[str]) -> tuple[float, np.ndarray]:
    from datasketch import MinHash, MinHashLSH

    from niche.data.minhash import shingles

    started = time.perf_counter()
    index = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    duplicate = np.zeros(len(texts), dtype=bool)
    for row, text in enumerate(texts):
        signature = MinHash(num_perm=NUM_PERM)
        signature.update_batch([gram.encode() for gram in shingles(text, SHINGLE)])
        if index.query(signature):
            duplicate[row] = True
        index.insert(str(row), signature)
    return time.perf_counter() - started, duplicate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--datasketch-rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not CLINC.is_file():
        raise SystemExit(f"{CLINC}: CLINC150 not found (the benchmark reads ../shared/datasets)")
    from niche.data.minhash import NearDuplicateIndex

    base = [text for text, _ in json.loads(CLINC.read_text())["train"]]
    texts = noisy_copies(base, args.rows, args.seed)
    random.Random(args.seed).shuffle(texts)

    index = NearDuplicateIndex(THRESHOLD, NUM_PERM, SHINGLE)
    started = time.perf_counter()
    signatures = index.hasher.signatures(texts)
    signed = time.perf_counter()
    clusters = index.clusters_of(signatures)
    niche_seconds = time.perf_counter() - started
    niche_duplicates = clusters != np.arange(len(texts))

    sample = texts[: args.datasketch_rows]
    datasketch_seconds, datasketch_duplicates = datasketch_loop(sample)
    sample_clusters = index.clusters_of(signatures[: len(sample)])
    agreement = float(((sample_clusters != np.arange(len(sample))) == datasketch_duplicates).mean())

    niche_rate = len(texts) / niche_seconds * 60
    datasketch_rate = len(sample) / datasketch_seconds * 60
    result = {
        "setup": {
            "data": f"CLINC150 train ({len(base)} utterances) replicated with one random edit per copy",
            "rows": len(texts),
            "datasketch_rows": len(sample),
            "threshold": THRESHOLD,
            "num_perm": NUM_PERM,
            "shingle_words": SHINGLE,
            "lsh_bands_rows": [index.bands, index.rows],
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "niche_seconds": round(niche_seconds, 1),
        "niche_signature_seconds": round(signed - started, 1),
        "niche_duplicate_share": round(float(niche_duplicates.mean()), 4),
        "records_per_minute": round(niche_rate),
        "datasketch_seconds": round(datasketch_seconds, 1),
        "datasketch_records_per_minute": round(datasketch_rate),
        "ratio_vs_datasketch": round(niche_rate / datasketch_rate, 2),
        "agreement_with_datasketch": round(agreement, 4),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
