"""Cross-entropy on supervised positions only.

A LoRA step on a small model spends most of its time on the full-vocabulary output
projection (49k columns for SmolLM2). Prompt tokens and padding carry no loss, so the
projection is applied only to the hidden states whose next token is supervised.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from niche.data.template import IGNORE_INDEX

# Configs with these set transform logits after the projection; those models use the plain path.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def causal_lm_of(model: Any) -> Any:
    """The transformers *ForCausalLM inside a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_supervised_only_logits(model: Any) -> bool:
    config = causal_lm_of(model).config
    return not any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)


def supervised_loss_sum(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    supervised_only_logits: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over supervised positions, and how many there were.

    With `supervised_only_logits=False` the model's own forward runs (full logits): the path for models that
    transform logits, and for distributed wrappers whose forward must run for gradients to be synchronised.
    """
    shift_labels = labels[:, 1:]
    supervised = shift_labels != IGNORE_INDEX
    if supervised_only_logits and supports_supervised_only_logits(model):
        causal_lm = causal_lm_of(model)
        hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][supervised])
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][supervised]
    loss_sum = F.cross_entropy(logits.float(), shift_labels[supervised], reduction="sum")
    return loss_sum, supervised.sum()
