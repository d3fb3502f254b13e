"""What every training method (SFT, label head, KD, GRPO) shares: the LoRA configuration, the checkpoint
directory, the manifest of what was trained, and writing the specialist directory."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from niche.artifact import (
    BaseModelRecord,
    HeadRecord,
    SpecialistManifest,
    TaskRecord,
    TemplateRecord,
    library_versions,
    write_specialist,
)
from niche.config import NicheConfig
from niche.data.prepare import PreparedData
from niche.data.template import TemplateEncoder
from niche.hardware import Hardware
from niche.head import HEAD_FILE, save_head
from niche.models import ResolvedBase
from niche.tagger import TAGGER_FILE
from niche.train.classify import HeadModel
from niche.train.recipe import Recipe
from niche.train.tag import TaggerModel


@dataclass
class TrainResult:
    specialist_dir: Path
    manifest: SpecialistManifest
    log_history: list[dict[str, Any]] = field(default_factory=list)
    is_main_process: bool = True
    run_id: str | None = None  # the MLflow run, when tracked


def lora_config(config: NicheConfig, layers: int | None = None, model: Any = None) -> Any:
    """LoRA as configured; with `layers`, only on the first that many decoder layers of `model` (a label head's:
    the adapter then carries nothing for layers the head never runs, also when it is served on the whole base)."""
    from peft import LoraConfig

    targets = config.lora.target_modules
    if layers is not None and targets == "all-linear":
        # PEFT takes a layer range only with named modules: every linear module name in the decoder layers.
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.get_decoder().layers.named_modules()
                if isinstance(module, torch.nn.Linear)
            }
        )
    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=targets,
        layers_to_transform=list(range(layers)) if layers is not None else None,
        task_type="CAUSAL_LM",
    )


def checkpoint_dir_for(config: NicheConfig) -> Path:
    return config.output_dir / f".{config.name}.checkpoints"


def build_manifest(
    config: NicheConfig,
    base: ResolvedBase,
    hardware: Hardware,
    model: Any,
    encoder: TemplateEncoder,
    data: PreparedData,
    metrics: dict[str, Any],
    rejected_rows: int,
    recipe: Recipe | None = None,
) -> SpecialistManifest:
    return SpecialistManifest(
        name=config.name,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        base=BaseModelRecord(
            spec=base.spec,
            kind=base.kind,
            weights_sha256=base.weights_sha256,
            model_type=_causal_lm(model).config.model_type,
        ),
        template=TemplateRecord(
            system_prompt=encoder.template.system_prompt,
            chat_template=encoder.template.chat_template,
            stop_token_ids=encoder.stop_ids,
        ),
        task=TaskRecord(
            kind=data.task_kind,
            labels=data.labels,
            data_format=data.data_format,
            output_schema=data.output_schema,
            schema_source=data.schema_source,
            longest_answer_tokens=metrics.get("longest_answer_tokens"),
            head=head_record(model, recipe),
        ),
        data=data.fingerprints,
        hyperparameters={
            "lora": config.lora.model_dump(),
            "training": config.training.model_dump(),
            "quantization": config.quantization,
        }
        | ({"recipe": recipe.record()} if recipe is not None else {}),
        metrics=metrics,
        rejected_rows=rejected_rows,
        hardware=hardware.description,
        versions=library_versions(),
        config=json.loads(config.model_dump_json()),
    )


def head_record(model: Any, recipe: Recipe | None) -> HeadRecord | None:
    """What a head specialist answers with: its layer, and for a tagger its fields and input rule."""
    if recipe is None or recipe.head_layer is None:
        return None
    if isinstance(model, TaggerModel):
        tagger = model.tagger
        return HeadRecord(
            layer=recipe.head_layer,
            kind="tagger",
            file=TAGGER_FILE,
            echo=tagger.echo,
            extraction=tagger.plan.to_record(),
        )
    return HeadRecord(layer=recipe.head_layer)


def write_trained_specialist(
    target: Path,
    model: Any,
    tokenizer: Any,
    base: ResolvedBase,
    manifest: SpecialistManifest,
    rejects: list[dict[str, Any]],
    log_history: list[dict[str, Any]],
) -> None:
    """A trained PEFT model or label-head model written as a specialist directory (`niche.specialist`)."""

    def save_weights(directory: Path) -> None:
        if isinstance(model, (HeadModel, TaggerModel)):
            model.backbone.save_pretrained(directory)
            save_head(model.head, directory, TAGGER_FILE if isinstance(model, TaggerModel) else HEAD_FILE)
        else:
            model.save_pretrained(directory)

    write_specialist(target, save_weights, tokenizer, base.directory, manifest, rejects, log_history)


def _causal_lm(model: Any) -> Any:
    return (model.backbone if isinstance(model, (HeadModel, TaggerModel)) else model).get_base_model()
