"""bench/curate_speed.py: datasketch's side follows niche's candidate and verification rule, and the exact-Jaccard
ground truth finds every pair a brute-force comparison finds."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import datasketch
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import curate_speed  # noqa: E402


@pytest.fixture(scope="module")
def noisy_texts() -> list[str]:
    base = [
        "how do i reset my password for the billing portal today",
        "what is the weather going to be like in paris tomorrow morning",
        "please transfer one hundred dollars from checking to savings now",
        "can you tell me how many calories are in a large banana",
        "set an alarm for six thirty in the morning on weekdays",
        "play some jazz",
    ]
    return curate_speed.noisy_copies(base, 600, seed=3) + ["", "?!"]  # rows without words join no cluster


def test_datasketch_buckets_give_niche_candidate_pairs_on_the_same_signatures(noisy_texts) -> None:
    from niche.data.minhash import NearDuplicateIndex

    index = NearDuplicateIndex(curate_speed.THRESHOLD, curate_speed.NUM_PERM, curate_speed.SHINGLE)
    signatures = index.hasher.signatures(noisy_texts)
    wordless = (signatures == np.iinfo(np.uint32).max).all(axis=1)
    lsh = datasketch.MinHashLSH(threshold=curate_speed.THRESHOLD, num_perm=curate_speed.NUM_PERM)
    assert (lsh.b, lsh.r) == (index.bands, index.rows)
    with lsh.insertion_session() as session:
        for row in np.flatnonzero(~wordless):
            session.insert(int(row), datasketch.MinHash(hashvalues=signatures[row], scheme="affine32"))

    expected = index.candidate_pairs(signatures)
    expected = expected[~wordless[expected[:, 0]] & ~wordless[expected[:, 1]]]
    found = curate_speed.representative_pairs(lsh.hashtables)
    assert len(found) > 0
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(curate_speed.verified_clusters(signatures, found), index.clusters_of(signatures))


def test_exact_join_finds_every_pair_at_the_threshold(noisy_texts) -> None:
    sets = curate_speed.shingle_sets(noisy_texts)
    distinct = sorted({members for members in sets if members})
    pairs, similarity = curate_speed.exact_jaccard_pairs(distinct, curate_speed.THRESHOLD)

    expected = {}
    for (i, left), (j, right) in itertools.combinations(enumerate(distinct), 2):
        jaccard = len(set(left) & set(right)) / len(set(left) | set(right))
        if jaccard >= curate_speed.THRESHOLD:
            expected[(i, j)] = jaccard
    assert len(expected) > 0
    assert {tuple(pair) for pair in pairs.tolist()} == set(expected)
    for pair, value in zip(pairs.tolist(), similarity, strict=True):
        assert value == pytest.approx(expected[tuple(pair)])


def test_pairs_within_groups_pairs_every_member_of_a_group_once() -> None:
    groups = np.array([1, 1, 1, 2, 3, 3])
    members = np.array([10, 11, 12, 20, 30, 31])
    pairs = curate_speed.pairs_within_groups(groups, members)
    assert sorted(map(tuple, pairs.tolist())) == [(10, 11), (10, 12), (11, 12), (30, 31)]


def test_tables_render_an_invalid_comparison_as_invalid() -> None:
    stats = {"median": 1.0, "min": 0.9, "max": 1.1, "runs": [1.0]}
    side = {
        "seconds": stats,
        "records_per_minute": stats,
        "phase_seconds": {"signatures": stats},
        "peak_traced_mb": 10.0,
        "against_exact": {"duplicate_share": 0.4, "recall": 0.9, "precision": 0.99, "same_cluster_as_exact": 0.9},
    }
    results = {
        "setup": {"rows": 1000, "signature_dtype": "uint32 on both sides"},
        "niche": side,
        "datasketch": side,
        "exact": {"duplicate_share": 0.42},
        "agreement": {"over_duplicate_rows": 0.5, "duplicate_rows_either_side": 400, "over_all_rows": 0.8},
        "same_work_baseline": {"niche_seed_1_vs_seed_2_agreement_over_duplicates": 0.95, "tolerance": 0.07},
        "rule_costs": {rule: {"candidate_pairs": 10, "recall": 0.9, "precision": 0.99} for rule in curate_speed.RULES},
        "ratio_vs_datasketch": {
            "value": None,
            "median_ratio": 2.0,
            "min": 1.9,
            "max": 2.1,
            "valid": False,
            "invalid_because": ["cluster assignments: 200/400 agree"],
            "checks": [],
        },
    }
    rendered = curate_speed.tables(results)
    assert set(rendered) == {"runs", "comparison", "rules"}
    assert "invalid" in rendered["comparison"] and "2.00x" not in rendered["comparison"]
