"""Batched greedy inference with the stored template, optionally constrained to a set of answers or to JSON that
validates against a schema (the grammar engine and constraint objects the server uses: `niche.decoding`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from niche.data.examples import Example
from niche.data.template import TemplateEncoder
from niche.decoding import (
    AnswerTrie,
    JsonGrammar,
    TokenConstraint,
    answer_trie,
    has_copied_fields,
    schema_for_input,
)
from niche.head import classify
from niche.tagger import Tagger, tag_examples


class ConstrainedRows:
    """A logits processor for generate(): each row follows its own TokenConstraint, which is told every token
    generate() picked for that row; a finished output allows only its stop tokens."""

    def __init__(self, constraints: list[TokenConstraint], prompt_width: int, stop_ids: Sequence[int]) -> None:
        self.constraints = constraints
        self.prompt_width = prompt_width
        self.stop_ids = torch.tensor(sorted(stop_ids))
        self.done = [False] * len(constraints)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_width
        for row, constraint in enumerate(self.constraints):
            if generated > 0 and not self.done[row]:
                token = int(input_ids[row, -1])
                if token in self.stop_ids:
                    self.done[row] = True
                else:
                    constraint.accept(token)
            if self.done[row] or constraint.complete():
                only_stop = torch.full_like(scores[row], float("-inf"))
                only_stop[self.stop_ids] = scores[row, self.stop_ids]
                scores[row] = only_stop
            else:
                scores[row] = constraint.mask(scores[row])
        return scores


def json_grammar_for(model: Any, encoder: TemplateEncoder) -> JsonGrammar:
    return JsonGrammar(encoder.tokenizer, model.config.vocab_size, encoder.stop_ids)


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
    json_schema: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers for each example, in order; prompts are left-padded and batched by length. With
    `allowed_answers` every answer is one of them; with `json_schema` every answer is JSON valid against it
    (unless it runs past max_new_tokens)."""
    from transformers import LogitsProcessorList

    tokenizer = encoder.tokenizer
    device = next(model.parameters()).device
    prompts = [encoder.prompt_ids(example) for example in examples]
    trie = answer_trie(encoder, allowed_answers) if allowed_answers else None
    if trie is not None:
        max_new_tokens = trie.longest + 1
    grammar = json_grammar_for(model, encoder) if json_schema is not None and trie is None else None
    grammar_text = grammar.compile(json_schema) if grammar is not None and json_schema is not None else None
    copying = has_copied_fields(json_schema)
    answers: list[str] = [""] * len(prompts)
    pad_id = tokenizer.pad_token_id
    for indices in batches_by_prompt_length([len(prompt) for prompt in prompts], batch_size):
        width = max(len(prompts[index]) for index in indices)
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, index in enumerate(indices):
            input_ids[row, width - len(prompts[index]) :] = torch.tensor(prompts[index])
            attention_mask[row, width - len(prompts[index]) :] = 1
        processors = LogitsProcessorList()
        if grammar is not None and grammar_text is not None:
            # Copied fields are decoded from each row's own input: one grammar per row.
            texts = [
                grammar.compile(schema_for_input(json_schema, examples[index].input_text)) if copying else grammar_text
                for index in indices
            ]
            constraints: list[TokenConstraint] = [grammar.constraint(text) for text in texts]
            processors.append(ConstrainedRows(constraints, width, encoder.stop_ids))
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=encoder.stop_ids,
            pad_token_id=pad_id,
            prefix_allowed_tokens_fn=_constraint(trie, width) if trie else None,
            logits_processor=processors,
        )
        for row, index in enumerate(indices):
            answers[index] = decode_answer(tokenizer, output[row, width:].tolist(), encoder.stop_ids)
        if on_batch:
            on_batch(len(indices))
    return answers


def batches_by_prompt_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """The rows decoded together: shortest prompts first, `batch_size` at a time (less padding per batch). Every
    path that must give the same answers (in process, on Ray) batches with this."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def answer_examples(
    model: Any,
    encoder: TemplateEncoder,
    examples: Sequence[Example],
    options: dict[str, Any],
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Each example's answer: from the head when `options` carries one (a label head or a tagger: one forward pass,
    no decoding), otherwise greedily generated with the options (batch size, budget, label or schema constraint)."""
    head = options.get("head")
    if isinstance(head, Tagger):
        return tag_examples(model, head, encoder, examples, batch_size=options["batch_size"], on_batch=on_batch)
    if head is not None:
        return classify(
            model, head, encoder, options["labels"], examples, batch_size=options["batch_size"], on_batch=on_batch
        )
    generation = {key: value for key, value in options.items() if key not in ("head", "labels")}
    return generate_answers(model, encoder, examples, on_batch=on_batch, **generation)


def decode_answer(tokenizer: Any, token_ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Text up to the first stop token."""
    stops = set(stop_ids)
    kept = []
    for token in token_ids:
        if token in stops:
            break
        kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=True).strip()
