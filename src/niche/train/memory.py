"""How many rows one forward/backward pass takes: the optimizer's batch split so that its activations fit.

A LoRA step on a small model holds little besides the activations saved for the backward pass, and those grow
with the rows in the pass. Splitting a batch of 16 into two passes of 8 (gradient accumulation, the same
optimizer step: niche's loss is divided by the supervised tokens of the whole batch) halves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from niche.errors import ConfigError

# Saved activations per token and decoder layer, in values of the compute dtype: measured on SmolLM2-135M
# (LoRA r=16 on every linear layer, bf16 autocast, 16 rows of 130 tokens, torch.autograd saved-tensor hooks):
# 2,331 MiB in all, about 14 hidden-sized vectors (q/k/v, rotary halves, norms kept in fp32, residuals) and 5
# intermediate-sized ones (gate, up, their product) per token and layer, plus eager attention's score and
# probability matrices (fp32 softmax and its cast, ~7 bytes per head and key position).
HIDDEN_VECTORS_PER_TOKEN = 14
INTERMEDIATE_VECTORS_PER_TOKEN = 5
EAGER_ATTENTION_BYTES_PER_KEY = 7
# Gradients in flight during the backward pass on top of what the forward saved: peak minus resident weights
# was 1.35x the saved activations in the same measurement.
BACKWARD_OVERHEAD = 1.35
# On CPU the batch is split until a pass needs at most this much. On SmolLM2-135M (2 cores, bf16, rows of ~110
# tokens) passes of 8 rows ran a step as fast as passes of 16 (within the 10% noise of repeated runs) at half
# the activations, passes of 4 about 20% slower; 2 GiB keeps passes of 8 rows of up to ~150 tokens.
# bench/train_speed.py runs niche with and without micro-batches. A GPU keeps whole batches unless told.
CPU_ACTIVATION_BUDGET_BYTES = 2 * 2**30


@dataclass(frozen=True)
class MicroBatch:
    rows: int
    accumulation: int
    estimated_pass_bytes: float
    source: str

    def summary(self) -> dict[str, Any]:
        return {
            "micro_batch_size": self.rows,
            "accumulation_per_batch": self.accumulation,
            "estimated_activation_mib": round(self.estimated_pass_bytes / 2**20),
            "micro_batch_source": self.source,
        }


def activation_bytes_per_row(model_config: Any, row_tokens: int, dtype_bytes: int, layers: int, eager: bool) -> float:
    """Peak bytes one row of `row_tokens` adds to a training pass through `layers` decoder layers."""
    hidden = model_config.hidden_size
    intermediate = getattr(model_config, "intermediate_size", 4 * hidden)
    per_token = dtype_bytes * (HIDDEN_VECTORS_PER_TOKEN * hidden + INTERMEDIATE_VECTORS_PER_TOKEN * intermediate)
    if eager:
        per_token += model_config.num_attention_heads * row_tokens * EAGER_ATTENTION_BYTES_PER_KEY
    return per_token * row_tokens * layers * BACKWARD_OVERHEAD


def choose_micro_batch(
    batch_size: int, requested: int | None, row_bytes: float, device: str, budget: float = CPU_ACTIVATION_BUDGET_BYTES
) -> MicroBatch:
    """The given micro-batch, or on CPU the largest divisor of the batch whose pass fits the budget."""
    if requested is not None:
        if batch_size % requested:
            raise ConfigError(
                f"training.micro_batch_size={requested} must divide training.batch_size={batch_size} "
                "(each optimizer step is batch_size rows, taken micro_batch_size at a time)"
            )
        return MicroBatch(requested, batch_size // requested, requested * row_bytes, "training.micro_batch_size")
    if device != "cpu":
        return MicroBatch(batch_size, 1, batch_size * row_bytes, "whole batch (GPU)")
    divisors = [rows for rows in range(batch_size, 0, -1) if batch_size % rows == 0]
    rows = next((rows for rows in divisors if rows * row_bytes <= budget), 1)
    source = f"largest divisor of the batch within {budget / 2**30:.1f} GiB of activations (CPU)"
    return MicroBatch(rows, batch_size // rows, rows * row_bytes, source)
