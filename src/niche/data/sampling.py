"""Seeded, label-stratified samples: the validation rows held out of training, or kept from a large file."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence


def stratified_sample(keys: Sequence[str | None], count: int, seed: int, keep_per_key: int = 0) -> list[int]:
    """Sorted positions of `count` rows, each key (label) represented in proportion to its rows.

    Each key's rows are shuffled, and the row at rank i of a key with n rows is placed at (i + u) / n on a common
    scale (u drawn once per key); taking the `count` lowest places gives every key its proportional share, and a
    key too small for a whole row a fair chance of one. The last `keep_per_key` rows of every key are never taken
    (holding out validation rows must leave each label a training row)."""
    rng = random.Random(seed)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        groups[key].append(position)
    placed: list[tuple[float, int]] = []
    for key in sorted(groups, key=str):
        members = groups[key]
        rng.shuffle(members)
        offset = rng.random()
        takeable = members[: max(0, len(members) - keep_per_key)]
        placed += [((rank + offset) / len(members), position) for rank, position in enumerate(takeable)]
    placed.sort()
    return sorted(position for _, position in placed[: max(0, count)])


def hold_out(keys: Sequence[str | None], count: int, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) positions: a stratified sample of `count` rows held out, never a key's last row."""
    held = stratified_sample(keys, count, seed, keep_per_key=1)
    taken = set(held)
    return [position for position in range(len(keys)) if position not in taken], held
