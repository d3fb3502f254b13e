"""Label heads: a label specialist that classifies instead of generating its answer.

The specialist is a LoRA adapter on the first `layer` decoder layers of the base plus a small head (a layer norm
and a linear map onto the labels) over the mean of that layer's output across the input's tokens. Answering is
one forward pass through those layers, with no decoding; the answer is the label. The input is the text alone,
followed by the end-of-sequence token (HEAD_TEMPLATE): a system prompt or chat markup would be the same tokens on
every row, paid on every row, and tell a classifier nothing.

Training, eval, the ladder and the torch serving engine all go through `mean_pool` and `LabelHead`, so they
compute the same thing; the adapter is a plain PEFT LoRA over the causal LM's own module names, so the serving
engine stacks it with every other specialist's adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from niche.data.examples import Example
from niche.data.template import TemplateEncoder

HEAD_FILE = "classifier.safetensors"
# The text of every turn but the system's, one per line, then the end-of-sequence token.
HEAD_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['content'] }}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}{% endif %}{% endfor %}{{ eos_token }}"
)


class LabelHead(nn.Module):
    """Layer norm and a linear map from the pooled hidden state onto the labels."""

    def __init__(self, hidden_size: int, labels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, labels)
        # Zero logits at first: the fine-tuning's first gradients do not come through a random projection.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(pooled.float()))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's hidden states over its real (unmasked) tokens, in fp32."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)


def cut_at_layer(causal_lm: Any, layer: int) -> Any:
    """Keep the first `layer` decoder layers and drop the final norm: the model's output is then that layer's
    output, what the head reads. Nothing past it is computed."""
    decoder = causal_lm.get_decoder()
    decoder.layers = decoder.layers[:layer]
    decoder.norm = nn.Identity()
    causal_lm.config.num_hidden_layers = layer
    return causal_lm


def pooled_features(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled output of a cut model (`cut_at_layer`), PEFT-wrapped or not."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return mean_pool(hidden, attention_mask)


def save_head(head: nn.Module, directory: Path, file: str = HEAD_FILE) -> None:
    """A head's weights (a label head's, or a tagger's heads) as one safetensors file."""
    from safetensors.torch import save_file

    save_file(
        {name: tensor.detach().contiguous() for name, tensor in head.state_dict().items()}, Path(directory) / file
    )


def load_head(directory: Path, hidden_size: int, labels: int, file: str = HEAD_FILE) -> LabelHead:
    from safetensors.torch import load_file

    head = LabelHead(hidden_size, labels)
    head.load_state_dict(load_file(Path(directory) / file))
    return head.eval()


def batches_by_length(
    prompts: Sequence[Sequence[int]], batch_size: int, pad_id: int
) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(positions, input_ids, attention_mask) per batch, right-padded, rows of similar length together."""
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    batches = []
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        width = max(len(prompts[position]) for position in positions)
        input_ids = torch.full((len(positions), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(positions), width), dtype=torch.long)
        for row, position in enumerate(positions):
            input_ids[row, : len(prompts[position])] = torch.tensor(prompts[position])
            attention_mask[row, : len(prompts[position])] = 1
        batches.append((positions, input_ids, attention_mask))
    return batches


@torch.inference_mode()
def classify(
    model: Any,
    head: LabelHead,
    encoder: TemplateEncoder,
    labels: Sequence[str],
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The label the head gives each example, in order."""
    device = next(model.parameters()).device
    prompts = [encoder.prompt_ids(example) for example in examples]
    answers = [""] * len(prompts)
    for positions, input_ids, attention_mask in batches_by_length(prompts, batch_size, encoder.tokenizer.pad_token_id):
        logits = head(pooled_features(model, input_ids.to(device), attention_mask.to(device)))
        for position, index in zip(positions, logits.argmax(-1).tolist()):
            answers[position] = labels[index]
        if on_batch:
            on_batch(len(positions))
    return answers
