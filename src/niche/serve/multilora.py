"""Many LoRA adapters in one forward pass, each row of the batch with its own.

PEFT's mixed-adapter batches (`adapter_names=`) register hooks on every LoRA layer for each call and, in each
layer, loop over the adapters present: cheap on a GPU, but on CPU the Python work dominates a decode step
(measured: a batch of 8 rows over 2 adapters took 78 ms against 62 ms for one adapter). Here every LoRA
layer keeps its adapters stacked, A as [slots, in, r] and B (scaled) as [slots, r, out], slot 0 all zeros
for the bare base, and computes each row's update with two batched matmuls over the rows' slots, as
S-LoRA/Punica do on GPUs. A decode step (one token a row) runs the update in fp32 even on a bf16 base: at
rank 16 these matmuls are tiny, and oneDNN's bf16 path for such shapes was measured 3-5x slower than fp32
here. A prefill pass has activations of many tokens instead, and converting them to fp32 and back cost more
than the matmuls (29 ms of a 105 ms pass of 3 rows x 30 tokens): it runs in the base's dtype and adds the
update into the base layer's output in place (19 ms).

PEFT still loads, names and deletes the adapters; this only replaces the forward of its LoRA linear layers
while the engine serves.
"""

from __future__ import annotations

import types
from typing import Any

import torch


class MultiLoraState:
    """Which slot each row of the running forward pass uses (None: every row on the bare base)."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None
        self.single_slot: int | None = None  # set when every row uses the same slot: no gather needed
        self.slots: dict[str, int] = {}

    def select(self, slots: list[int], device: str) -> None:
        if not any(slots):
            self.index, self.single_slot = None, None
        elif len(set(slots)) == 1:
            self.index, self.single_slot = None, slots[0]
        else:
            self.index, self.single_slot = torch.tensor(slots, device=device), None

    def clear(self) -> None:
        self.index, self.single_slot = None, None


def supports(model: Any) -> bool:
    """Plain LoRA on linear layers only (no DoRA, no LoRA on embeddings, no bias): what the stacks implement."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            if not isinstance(module, LoraLinear) or any(module.use_dora.values()):
                return False
            if getattr(module, "lora_bias", {}) and any(module.lora_bias.values()):
                return False
    return all(config.peft_type == "LORA" for config in model.peft_config.values())


def restore(model: Any) -> None:
    """Give every LoRA layer PEFT's own forward back."""
    for module in model.modules():
        if "forward" in vars(module) and hasattr(module, "_niche_state"):
            del module.forward


def rebuild(model: Any, state: MultiLoraState) -> None:
    """Restack every LoRA layer's adapters after one was loaded or deleted, and route its forward here."""
    from peft.tuners.lora import Linear as LoraLinear

    adapters = list(model.peft_config)
    state.slots = {adapter: slot for slot, adapter in enumerate(adapters, start=1)}
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        base = module.get_base_layer()
        rank = max((module.r[adapter] for adapter in adapters if adapter in module.lora_A), default=1)
        device = base.weight.device
        stacked_a = torch.zeros(len(adapters) + 1, rank, base.in_features, dtype=torch.float32, device=device)
        stacked_b = torch.zeros(len(adapters) + 1, base.out_features, rank, dtype=torch.float32, device=device)
        for adapter, slot in state.slots.items():
            if adapter not in module.lora_A:
                continue  # this adapter does not touch this layer: its slot stays zero
            r = module.r[adapter]
            stacked_a[slot, :r] = module.lora_A[adapter].weight.detach().float()
            stacked_b[slot, :, :r] = module.lora_B[adapter].weight.detach().float() * module.scaling[adapter]
        module._niche_lora_a = stacked_a.transpose(1, 2).contiguous()  # [slots, in, r]
        module._niche_lora_b = stacked_b.transpose(1, 2).contiguous()  # [slots, r, out]
        module._niche_prefill_a = module._niche_lora_a.to(base.weight.dtype)
        module._niche_prefill_b = module._niche_lora_b.to(base.weight.dtype)
        module._niche_state = state
        module.forward = types.MethodType(_forward, module)


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    result = self.base_layer(x, *args, **kwargs)
    state = self._niche_state
    if state.single_slot is None and state.index is None:
        return result
    if x.dim() != 3:
        raise ValueError(f"multi-LoRA expects [batch, tokens, features] inputs, got {tuple(x.shape)}")
    if x.shape[1] > 1:
        return _prefill_update(self, x, result, state)
    if state.single_slot is not None:
        update = (x.float() @ self._niche_lora_a[state.single_slot]) @ self._niche_lora_b[state.single_slot]
    else:
        down = torch.bmm(x.float(), self._niche_lora_a.index_select(0, state.index))
        update = torch.bmm(down, self._niche_lora_b.index_select(0, state.index))
    return result + update.to(result.dtype)


def _prefill_update(self: Any, x: torch.Tensor, result: torch.Tensor, state: MultiLoraState) -> torch.Tensor:
    lora_a, lora_b = self._niche_prefill_a, self._niche_prefill_b
    x = x.to(lora_a.dtype)
    if state.single_slot is not None:
        down = x @ lora_a[state.single_slot]
        return result.view(-1, result.shape[-1]).addmm_(down.flatten(0, 1), lora_b[state.single_slot]).view_as(result)
    down = torch.bmm(x, lora_a.index_select(0, state.index))
    return result.baddbmm_(down, lora_b.index_select(0, state.index))
