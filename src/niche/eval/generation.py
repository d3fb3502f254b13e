"""Batched greedy inference with the stored template, optionally constrained to a set of answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from niche.data.examples import Example
from niche.data.template import TemplateEncoder


class AnswerTrie:
    """Token-level prefix tree of the allowed answers (each ending in its end-of-turn token)."""

    def __init__(self, sequences: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> None:
        self.root: dict[int, dict] = {}
        self.stop_ids = list(stop_ids)
        self.longest = max((len(sequence) for sequence in sequences), default=0)
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.setdefault(token, {})

    def allowed_after(self, prefix: Sequence[int]) -> list[int]:
        node = self.root
        for token in prefix:
            if token not in node:
                # The answer is complete (or off the trie): only a stop token may follow.
                return self.stop_ids
            node = node[token]
        return list(node) or self.stop_ids


def answer_trie(encoder: TemplateEncoder, answers: Sequence[str]) -> AnswerTrie:
    """Answers tokenized exactly as training tokenized them after the prompt."""
    probe = Example(messages=({"role": "user", "content": "x"},), response="")
    return AnswerTrie([encoder.completion_ids(probe, answer) for answer in answers], encoder.stop_ids)


def _constraint(trie: AnswerTrie, prompt_width: int) -> Callable[[int, torch.Tensor], list[int]]:
    def allowed_tokens(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return trie.allowed_after(input_ids[prompt_width:].tolist())

    return allowed_tokens


@torch.inference_mode()
def generate_answers(
    model: Any,
    encoder: TemplateEncoder,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    allowed_answers: Sequence[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers for each example, in order; prompts are left-padded and batched by length."""
    tokenizer = encoder.tokenizer
    device = next(model.parameters()).device
    prompts = [encoder.prompt_ids(example) for example in examples]
    trie = answer_trie(encoder, allowed_answers) if allowed_answers else None
    if trie is not None:
        max_new_tokens = trie.longest + 1
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    answers: list[str] = [""] * len(prompts)
    pad_id = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(prompts[index]) for index in indices)
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, index in enumerate(indices):
            input_ids[row, width - len(prompts[index]) :] = torch.tensor(prompts[index])
            attention_mask[row, width - len(prompts[index]) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=encoder.stop_ids,
            pad_token_id=pad_id,
            prefix_allowed_tokens_fn=_constraint(trie, width) if trie else None,
        )
        for row, index in enumerate(indices):
            answers[index] = decode_answer(tokenizer, output[row, width:].tolist(), encoder.stop_ids)
        if on_batch:
            on_batch(len(indices))
    return answers


def decode_answer(tokenizer: Any, token_ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Text up to the first stop token."""
    stops = set(stop_ids)
    kept = []
    for token in token_ids:
        if token in stops:
            break
        kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=True).strip()
