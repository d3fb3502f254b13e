"""The running batch's KV cache, kept in place from one step to the next.

transformers' DynamicCache grows by `torch.cat`: every decode step copies every layer's whole cache to add one
column, and a continuous batch copies it all again whenever a request joins (left-padding everyone to one
length) or leaves (selecting the remaining rows). With 16 rows of short answers, rows come and go almost every
step, and on CPU those copies cost a third of the batch's time. Here each layer keeps keys and values in buffers
of shape [row_capacity, kv_heads, column_capacity, head_dim]. The forward pass sees rows [0, rows) and the
column window [start, end):

- a decode step writes one column in place at `end`;
- a newcomer takes a free row and its prompt is written right-aligned at `end` (the mask hides what lies left of
  it), so joining copies only the newcomer's own keys and values;
- a finished request only frees its row; `compact` moves rows from the tail into the holes, and `start`
  advances past columns no remaining row attends to.

Buffers grow by doubling, so re-laying them out is rare.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

COLUMN_MARGIN = 64  # spare columns a re-layout leaves on the right (decode steps) and half that on the left


class BatchLayer(DynamicLayer):
    """One layer's buffers; `BatchKVCache` decides where the window lies."""

    def __init__(self, owner: BatchKVCache, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.owner = owner
        self.key_buffer, self.value_buffer = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    @property
    def keys(self) -> torch.Tensor:  # what the batch attends to, for code that reads a layer's keys
        return self.key_buffer[: self.owner.rows, :, self.owner.start : self.owner.end]

    @keys.setter
    def keys(self, value: Any) -> None:  # DynamicLayer.__init__ and reset assign it; the buffers stay
        pass

    @property
    def values(self) -> torch.Tensor:
        return self.value_buffer[: self.owner.rows, :, self.owner.start : self.owner.end]

    @values.setter
    def values(self, value: Any) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        owner = self.owner
        rows, end = owner.rows, owner.end + key_states.shape[-2]
        self.key_buffer[:rows, :, owner.end : end] = key_states
        self.value_buffer[:rows, :, owner.end : end] = value_states
        return self.key_buffer[:rows, :, owner.start : end], self.value_buffer[:rows, :, owner.start : end]

    def get_seq_length(self) -> int:
        return self.owner.end - self.owner.start


def is_plain(cache: Any) -> bool:
    """A cache of full-attention layers only: the kind whose rows can be laid out in one batch."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class BatchKVCache(Cache):
    """Keys and values of every row of a continuous batch; see the module docstring."""

    def __init__(self, max_rows: int) -> None:
        super().__init__(layers=[])
        self.max_rows = max_rows
        self.rows = 0  # rows the forward pass computes, holes included
        self.free: set[int] = set()  # rows below `rows` whose request has left
        self.start = self.end = 0
        self.mask: torch.Tensor | None = None  # [row_capacity, column_capacity]: 1 where a row attends

    @property
    def row_capacity(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def column_capacity(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def attention_mask(self) -> torch.Tensor:
        assert self.mask is not None
        return self.mask[: self.rows, self.start : self.end]

    def admit(self, source: Cache, source_mask: torch.Tensor, keep: list[int]) -> list[int]:
        """Copy rows `keep` of a prefill's cache (and attention mask) into the batch, right-aligned with its
        rows; returns the batch rows they took, lowest free rows first."""
        width = source_mask.shape[1]
        reused = sorted(self.free)[: len(keep)]
        rows = self.rows + len(keep) - len(reused)
        left = max(0, width - (self.end - self.start))
        self._fit(source, rows, left=left, right=0)
        if left:  # the window widens to the left; what lies there belongs to no one yet
            self.start -= left
            self._clear(slice(0, self.rows), slice(self.start, self.start + left))
        positions = reused + list(range(self.rows, rows))
        self.free.difference_update(reused)
        self.rows = rows
        assert self.mask is not None
        index = torch.tensor(positions, device=self.mask.device)
        chosen = torch.tensor(keep, device=source_mask.device)
        columns = slice(self.end - width, self.end)
        self.mask[index, self.start : self.end] = 0
        self.mask[index, columns] = source_mask[chosen].to(self.mask.dtype)
        for layer, incoming in zip(self.layers, source.layers):
            layer.key_buffer[index, :, columns] = incoming.keys[chosen]
            layer.value_buffer[index, :, columns] = incoming.values[chosen]
        return positions

    def begin_step(self) -> torch.Tensor:
        """Room for one more column, which every row attends to; the mask the step runs with."""
        self._fit(None, self.rows, left=0, right=1)
        assert self.mask is not None
        self.mask[: self.rows, self.end] = 1
        return self.mask[: self.rows, self.start : self.end + 1]

    def end_step(self) -> None:
        self.end += 1

    def release(self, positions: list[int]) -> None:
        """The requests in these rows have left: their rows become holes; trailing holes are cut off."""
        self.free.update(positions)
        while self.rows and self.rows - 1 in self.free:
            self.rows -= 1
            self.free.discard(self.rows)

    def compact(self) -> list[tuple[int, int]]:
        """Move rows from the tail into the holes so the batch computes no empty rows; returns the moves
        (from, to). Then drop the columns that no row attends to any more."""
        moves = []
        while self.free:
            hole, last = min(self.free), self.rows - 1
            self.free.discard(hole)
            window = slice(self.start, self.end)
            assert self.mask is not None
            self.mask[hole, window] = self.mask[last, window]
            for layer in self.layers:
                layer.key_buffer[hole, :, window] = layer.key_buffer[last, :, window]
                layer.value_buffer[hole, :, window] = layer.value_buffer[last, :, window]
            moves.append((last, hole))
            self.release([last])
        self.trim()
        return moves

    def trim(self) -> None:
        """Advance `start` past columns that no row attends to."""
        if not self.rows or self.mask is None:
            return
        attended = self.mask[: self.rows, self.start : self.end].any(0).nonzero()
        if len(attended):
            self.start += int(attended[0])

    def _clear(self, rows: slice, columns: slice) -> None:
        assert self.mask is not None
        self.mask[rows, columns] = 0
        for layer in self.layers:
            layer.key_buffer[rows, :, columns] = 0
            layer.value_buffer[rows, :, columns] = 0

    def _fit(self, source: Cache | None, rows: int, left: int, right: int) -> None:
        """Make room for `rows` rows, `left` more columns before `start` and `right` after `end`, re-laying
        the buffers out (one copy of the window) only when they are too small."""
        fits = rows <= self.row_capacity and self.start >= left and self.end + right <= self.column_capacity
        if fits:
            return
        window = self.end - self.start
        row_capacity = min(self.max_rows, max(rows, 2 * self.row_capacity))
        margin = max(COLUMN_MARGIN, window + left)
        new_start = left + margin // 2
        column_capacity = new_start + window + right + margin
        reference = source.layers[0].keys if source is not None else self.layers[0].key_buffer
        heads, head_dim = reference.shape[1], reference.shape[3]
        device, dtype = reference.device, reference.dtype
        old = self.layers if self.layers else [None] * len(source.layers)  # type: ignore[union-attr]
        layers = []
        for previous in old:
            keys = torch.zeros(row_capacity, heads, column_capacity, head_dim, dtype=dtype, device=device)
            values = torch.zeros_like(keys)
            if previous is not None and self.rows and window:
                keys[: self.rows, :, new_start : new_start + window] = previous.keys
                values[: self.rows, :, new_start : new_start + window] = previous.values
            layers.append((keys, values))
        mask = torch.zeros(row_capacity, column_capacity, dtype=torch.long, device=device)
        if self.mask is not None and self.rows and window:
            mask[: self.rows, new_start : new_start + window] = self.mask[: self.rows, self.start : self.end]
        self.layers = [BatchLayer(self, keys, values) for keys, values in layers]
        self.mask = mask
        self.start, self.end = new_start, new_start + window
