"""The tag objective for JSON extraction: LoRA on the first decoder layers and tagging heads (`niche.tagger`).

Each row is read as the tagger reads it (its text twice, the tags on the second copy); the copied values of its
answer are placed in the text by the rule of `niche.data.spans` and become BIO tags of the copy's tokens, and each
closed-set field's value becomes a class. The loss is the tags' cross-entropy plus each closed field's. The best
checkpoint is kept by field F1 on the validation rows, read from the tags and classes as eval scores answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from niche.data.examples import Example, parse_json_object
from niche.data.spans import answer_values, bio_tags, place_values, spans_from_tags
from niche.data.template import IGNORE_INDEX, EncodedExample, TemplateEncoder
from niche.head import cut_at_layer
from niche.tagger import ABSENT, TAGGER_FILE, Tagger, TaggerHeads, copy_mask, layer_output
from niche.train.classify import HeadTrainer
from niche.train.engine import PaddingCollator


@dataclass(frozen=True)
class TaggedExample(EncodedExample):
    """Input ids (the echo included), a tag label per token of the tagged copy (IGNORE_INDEX elsewhere), the class
    of each closed-set field, and where the tagged copy starts."""

    choice_labels: list[int] = field(default_factory=list)
    start: int = 0


def encode_for_tagger(
    tagger: Tagger, encoder: TemplateEncoder, examples: Sequence[Example], max_length: int
) -> tuple[list[TaggedExample], list[dict[str, Any]], int]:
    """Every row encoded, rows longer than max_length rejected, and the number of copied values the placing rule
    could not place (they train as untagged text)."""
    tokenizer = encoder.tokenizer
    encoded, rejects, unplaced = [], [], 0
    for example in examples:
        row = tagger.inputs(tokenizer, encoder.template.render_prompt(tokenizer, example))
        if len(row.input_ids) > max_length:
            rejects.append(
                {
                    "source": example.source,
                    "reason": f"{len(row.input_ids)} tokens > max_seq_length {max_length}",
                    "input": example.input_text,
                    "response": example.response,
                }
            )
            continue
        values, choices = answer_values(parse_json_object(example.response) or {}, tagger.plan)
        spans, missed = place_values(row.text, values)
        unplaced += len(missed)
        labels = [IGNORE_INDEX] * len(row.input_ids)
        tags = bio_tags(row.offsets, spans)
        labels[row.start : row.start + len(tags)] = [tagger.tag_index[tag] for tag in tags]
        values_chosen = [choices[item.name] or ABSENT for item in tagger.plan.choices]
        choice_labels = [
            classes.index(value) if value in classes else IGNORE_INDEX
            for value, classes in zip(values_chosen, tagger.choice_classes)
        ]
        encoded.append(TaggedExample(row.input_ids, labels, choice_labels, row.start))
    return encoded, rejects, unplaced


def tagged_features(encoded: Sequence[TaggedExample]) -> list[dict[str, list[int]]]:
    return [
        {"input_ids": item.input_ids, "labels": item.labels, "choice_labels": item.choice_labels, "start": item.start}
        for item in encoded
    ]


class TaggerModel(nn.Module):
    """What the Trainer trains: the cut, LoRA-adapted base and the tagging heads."""

    def __init__(self, backbone: Any, tagger: Tagger) -> None:
        super().__init__()
        self.backbone = backbone
        self.tagger = tagger
        self.head = tagger.heads  # the trainable module the head trainer saves and restores

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, copy_mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.head(layer_output(self.backbone, input_ids, attention_mask), copy_mask)


def build_tagger_model(backbone_base: Any, lora: Any, layer: int, tagger: Tagger) -> TaggerModel:
    """The base cut at `layer` with fresh LoRA adapters, and zero-initialised tagging heads."""
    from peft import get_peft_model

    backbone = get_peft_model(cut_at_layer(backbone_base, layer), lora)
    tagger.heads = TaggerHeads(
        backbone_base.config.hidden_size, len(tagger.tags), [len(classes) for classes in tagger.choice_classes]
    )
    return TaggerModel(backbone, tagger)


class TaggerCollator(PaddingCollator):
    """Right-padded inputs, tag labels padded with IGNORE_INDEX (`PaddingCollator`), the closed fields' classes,
    and the mask of each row's tagged copy (what the closed fields' heads pool)."""

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        width = batch["input_ids"].shape[1]
        starts = [feature["start"] for feature in features]
        lengths = [len(feature["input_ids"]) for feature in features]
        choices = torch.tensor([feature["choice_labels"] for feature in features], dtype=torch.long)
        return batch | {
            "copy_mask": copy_mask(starts, lengths, width),
            "choice_labels": choices.reshape(len(features), -1),
        }


def tagging_loss(
    tag_logits: torch.Tensor, choice_logits: list[torch.Tensor], labels: torch.Tensor, choice_labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the tagged tokens, plus the mean cross-entropy of each closed field."""
    loss = F.cross_entropy(tag_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
    for index, logits in enumerate(choice_logits):
        loss = loss + F.cross_entropy(logits.float(), choice_labels[:, index], ignore_index=IGNORE_INDEX)
    return loss


def field_f1_metric(tagger: Tagger) -> Any:
    """Validation field F1 from the Trainer's gathered logits: spans read from the argmax tags (as whole values:
    right field, right boundaries) and each closed field's class, counted as eval counts fields; the best
    checkpoint is kept by it, ties broken by the lower loss."""

    def metric(prediction: Any) -> dict[str, float]:
        tag_logits, *choice_logits = (torch.as_tensor(part) for part in prediction.predictions)
        labels, choice_labels = (torch.as_tensor(part) for part in prediction.label_ids)
        found = expected = hits = 0
        for row in range(labels.shape[0]):
            tagged = labels[row] != IGNORE_INDEX
            predicted = [tagger.tags[int(index)] for index in tag_logits[row][tagged].argmax(-1)]
            gold = [tagger.tags[int(index)] for index in labels[row][tagged]]
            offsets = [(position, position + 1) for position in range(len(gold))]
            mine = {(span.field, span.start, span.end) for span in spans_from_tags(predicted, offsets)}
            theirs = {(span.field, span.start, span.end) for span in spans_from_tags(gold, offsets)}
            found, expected, hits = found + len(mine), expected + len(theirs), hits + len(mine & theirs)
        for index, (logits, classes) in enumerate(zip(choice_logits, tagger.choice_classes)):
            truth = choice_labels[:, index]
            known = truth != IGNORE_INDEX
            guess = logits.argmax(-1)
            present_guess = torch.tensor([classes[int(value)] != ABSENT for value in guess])
            present_truth = torch.tensor([int(value) >= 0 and classes[int(value)] != ABSENT for value in truth])
            found += int(present_guess.sum())
            expected += int(present_truth.sum())
            hits += int((known & present_truth & (guess == truth)).sum())
        field_f1 = 2 * hits / (found + expected) if found + expected else 1.0
        return {"field_f1": field_f1, "selection_score": field_f1}

    return metric


class TaggerTrainer(HeadTrainer):
    """The tagging loss; checkpoints hold the LoRA adapter (PEFT's own files) and the tagging heads."""

    head_file = TAGGER_FILE

    def compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        tag_logits, choice_logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["copy_mask"])
        loss = tagging_loss(tag_logits, choice_logits, inputs["labels"], inputs["choice_labels"])
        outputs = {"logits": (tag_logits.float(), *(logits.float() for logits in choice_logits))}
        return (loss, outputs) if return_outputs else loss
