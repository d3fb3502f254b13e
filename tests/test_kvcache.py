"""The continuous batch's in-place KV cache and its decode attention, against plain references."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import eager_attention_forward

from niche.serve.decode_attention import additive_mask, gqa_decode_attention
from niche.serve.kvcache import BatchKVCache

LAYERS, HEADS, DIM = 2, 3, 4


def prefill_cache(rows: list[list[torch.Tensor]]) -> tuple[DynamicCache, torch.Tensor]:
    """A prefill's cache and mask for rows of per-token key vectors, left-padded as the engine pads them."""
    width = max(len(row) for row in rows)
    cache, mask = DynamicCache(), torch.zeros(len(rows), width, dtype=torch.long)
    for layer in range(LAYERS):
        keys = torch.full((len(rows), HEADS, width, DIM), 99.0)  # the padding holds junk that must stay hidden
        for index, row in enumerate(rows):
            if row:
                keys[index, :, width - len(row) :] = torch.stack(row, dim=1) + layer
            mask[index, width - len(row) :] = 1
        cache.update(keys, -keys, layer)
    return cache, mask


def token(seed: int) -> torch.Tensor:
    return torch.randn(HEADS, DIM, generator=torch.Generator().manual_seed(seed))


def attended(cache: BatchKVCache, row: int, layer: int) -> torch.Tensor:
    keep = cache.attention_mask()[row].bool()
    return cache.layers[layer].keys[row][:, keep]


def check(cache: BatchKVCache, expected: dict[int, list[torch.Tensor]]) -> None:
    """Every live row attends to exactly its own tokens, in order, in keys and values alike."""
    assert cache.rows == len(expected) + len(cache.free)
    for row, tokens in expected.items():
        for layer in range(LAYERS):
            want = torch.stack(tokens, dim=1) + layer
            assert torch.equal(attended(cache, row, layer), want), (row, layer)
            values = cache.layers[layer].values[row][:, cache.attention_mask()[row].bool()]
            assert torch.equal(values, -want)


def test_rows_join_decode_leave_and_compact_like_separate_caches() -> None:
    rng = random.Random(0)
    cache = BatchKVCache(max_rows=6)
    expected: dict[int, list[torch.Tensor]] = {}  # batch row -> that request's tokens so far
    seed = 0
    relayouts = 0
    for _ in range(60):
        free_slots = 6 - len(expected)
        if free_slots and rng.random() < 0.5:
            # Newcomers, some longer than the whole window so it has to widen or re-lay out.
            prompts = []
            for _ in range(rng.randint(1, min(3, free_slots))):
                prompts.append([token(seed := seed + 1) for _ in range(rng.choice([1, 2, 5, 9, 30]))])
            source, mask = prefill_cache(prompts + [[token(seed := seed + 1)]])  # one that ended at once
            keep = list(range(len(prompts)))
            capacity = cache.column_capacity
            positions = cache.admit(source, mask, keep)
            relayouts += cache.column_capacity != capacity
            assert len(set(positions)) == len(positions) and not set(positions) & set(expected)
            expected.update(zip(positions, prompts))
        check(cache, expected)
        for source, target in cache.compact():
            expected[target] = expected.pop(source)
        assert not cache.free and sorted(expected) == list(range(cache.rows))
        check(cache, expected)
        if not expected:
            continue
        mask = cache.begin_step()
        assert mask.shape == (cache.rows, cache.end - cache.start + 1)
        new = {row: token(seed := seed + 1 + row) for row in range(cache.rows)}
        for layer in range(LAYERS):
            keys = torch.stack([new[row] for row in range(cache.rows)])[:, :, None] + layer
            returned, _ = cache.layers[layer].update(keys, -keys)
            assert returned.shape[2] == mask.shape[1]
        cache.end_step()
        for row in expected:
            expected[row].append(new[row])
        check(cache, expected)
        leaving = [row for row in expected if rng.random() < 0.3]
        cache.release(leaving)
        for row in leaving:
            del expected[row]
        check(cache, expected)
    assert relayouts >= 2, "the test should make the buffers grow"


def test_trim_drops_columns_no_row_attends_to() -> None:
    cache = BatchKVCache(max_rows=4)
    long, short = [token(index) for index in range(20)], [token(100)]
    source, mask = prefill_cache([long, short])
    cache.admit(source, mask, [0, 1])
    assert cache.end - cache.start == 20
    cache.release([0])
    assert cache.compact() == [(1, 0)]
    assert cache.end - cache.start == 1, "only the short row's one token remains in the window"
    check(cache, {0: short})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gqa_decode_attention_matches_eager_attention_on_a_strided_cache(dtype) -> None:
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 3, False
    rows, kv_heads, length, dim = 4, 2, 7, 8
    buffer = torch.randn(rows + 2, kv_heads, length + 5, dim, dtype=dtype)
    keys = buffer[:rows, :, 2 : 2 + length]  # a window of a larger buffer, as BatchKVCache hands it over
    values = buffer.flip(0)[:rows, :, 2 : 2 + length].contiguous()
    query = torch.randn(rows, kv_heads * 3, 1, dim, dtype=dtype)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, :3] = 0
    mask[2, :6] = 0
    additive = additive_mask(mask, dtype)
    ours, _ = gqa_decode_attention(module, query, keys, values, additive, scaling=dim**-0.5)
    reference, _ = eager_attention_forward(module, query, keys, values, additive, scaling=dim**-0.5)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert ours.shape == reference.shape == (rows, 1, kv_heads * 3, dim)
    assert torch.allclose(ours.float(), reference.float(), atol=tolerance)
    with pytest.raises(ValueError, match="one token"):
        gqa_decode_attention(module, query.expand(-1, -1, 2, -1), keys, values, None, scaling=1.0)
