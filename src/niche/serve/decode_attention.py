"""Attention for a decode step (one query token per row) on CPU, without copying the KV cache.

transformers' eager and SDPA paths expand grouped keys and values to one copy per query head (`repeat_kv`)
whenever there is an attention mask, which a continuous batch always has: SmolLM2's 3 KV heads become 9, a copy
of every layer's whole cache on every step, and it measured as the largest cost of a 16-row step on CPU. With a
single query token, the query heads that share a KV head can instead be laid out as that head's rows, so two
batched matmuls read the cache where it lies (in place, even as a strided view of `BatchKVCache`'s buffers).
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "niche_gqa_decode"


def gqa_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [rows, heads, 1, dim], key and value [rows, kv_heads, length, dim], attention_mask additive
    [rows, 1, 1, length]; returns [rows, 1, heads, dim] as transformers' attention functions do. `softcap`
    (Gemma 2) bounds the scores as the model's own attention does."""
    rows, heads, query_length, dim = query.shape
    if query_length != 1:
        raise ValueError(f"{NAME} serves decode steps of one token; got {query_length} query tokens")
    kv_heads = key.shape[1]
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # heads of one KV head are consecutive
    scores = torch.matmul(grouped, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, value)  # [rows, kv_heads, group, dim]
    return output.reshape(rows, 1, heads, dim), None


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [rows, length] 0/1 mask as the [rows, 1, 1, length] additive mask the attention takes."""
    blocked = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    blocked.masked_fill_(mask == 0, torch.finfo(dtype).min)
    return blocked[:, None, None, :]


def register() -> str:
    """Make the function available to transformers models under NAME."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, gqa_decode_attention)
    return NAME
