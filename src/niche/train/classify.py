"""The classify objective for label tasks: LoRA on the first decoder layers and a label head (`niche.head`).

Training runs only the layers the head reads (`cut_at_layer`), so a step costs layer/num_layers of a full one.
LoRA and the head train together from a zero head. Fitting the head first on the frozen features (linear probing
then fine-tuning, Kumar et al. 2022) was measured and dropped: on CLINC150 with 30 rows per intent it ended 4.2
points lower (0.884 against 0.926, same three epochs), its confident head pushing the features hard from the
first step (bench/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from niche.data.examples import Example
from niche.data.tasks import label_of
from niche.data.template import EncodedExample, TemplateEncoder
from niche.head import HEAD_FILE, LabelHead, cut_at_layer, pooled_features, save_head
from niche.train.engine import PlannedTrainer


def encode_for_head(
    encoder: TemplateEncoder, examples: Sequence[Example], labels: Sequence[str], max_length: int
) -> tuple[list[EncodedExample], list[dict[str, Any]]]:
    """The input's tokens, and its label's index as the only label; rows longer than max_length are rejected."""
    index = {label: position for position, label in enumerate(labels)}
    encoded, rejects = [], []
    for example in examples:
        ids = encoder.prompt_ids(example)
        if len(ids) > max_length:
            rejects.append(
                {
                    "source": example.source,
                    "reason": f"{len(ids)} tokens > max_seq_length {max_length}",
                    "input": example.input_text,
                    "response": example.response,
                }
            )
            continue
        encoded.append(EncodedExample(input_ids=ids, labels=[index[label_of(example)]]))
    return encoded, rejects


class HeadModel(nn.Module):
    """What the Trainer trains: the cut, LoRA-adapted base and the label head."""

    def __init__(self, backbone: Any, head: LabelHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_features(self.backbone, input_ids, attention_mask))


def build_head_model(backbone_base: Any, lora: Any, layer: int, labels: int) -> HeadModel:
    """The base cut at `layer` with fresh LoRA adapters, and a zero-initialised head."""
    from peft import get_peft_model

    backbone = get_peft_model(cut_at_layer(backbone_base, layer), lora)
    return HeadModel(backbone, LabelHead(backbone_base.config.hidden_size, labels))


class HeadCollator:
    """Right-padded inputs with their attention mask; labels are class indices."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            input_ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
            attention_mask[row, : len(feature["input_ids"])] = 1
        labels = torch.tensor([feature["labels"][0] for feature in features])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def accuracy_metric(prediction: Any) -> dict[str, float]:
    """Validation accuracy, and the score the best checkpoint is kept by: accuracy, ties broken by the lower loss
    (the loss moves it by less than one row in a thousand)."""
    logits, labels = torch.as_tensor(prediction.predictions).float(), torch.as_tensor(prediction.label_ids)
    accuracy = float((logits.argmax(-1) == labels).float().mean())
    loss = float(F.cross_entropy(logits, labels))
    return {"accuracy": accuracy, "selection_score": accuracy - 1e-4 * min(loss, 9.0)}


class HeadTrainer(PlannedTrainer):
    """A Trainer for a cut base with a head (`model.backbone`, `model.head`): checkpoints hold the LoRA adapter
    (PEFT's own files) and the head's weights (`head_file`), and the best one is restored from them."""

    head_file = HEAD_FILE

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        directory = Path(output_dir or self.args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        model.backbone.save_pretrained(directory)
        save_head(model.head, directory, self.head_file)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(directory)

    def _restore(self, checkpoint: str | os.PathLike) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(self.model)
        set_peft_model_state_dict(model.backbone, load_file(Path(checkpoint) / "adapter_model.safetensors"))
        model.head.load_state_dict(load_file(Path(checkpoint) / self.head_file))

    def _load_best_model(self) -> None:
        self._restore(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self._restore(resume_from_checkpoint)


class ClassifierTrainer(HeadTrainer):
    """Cross-entropy over the labels."""

    def compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        logits = model(inputs["input_ids"], inputs["attention_mask"])
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss
