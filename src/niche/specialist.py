"""The specialist artifact: a PEFT adapter directory that also carries niche.json.

Everything needed to use a specialist (base model and its hash, the exact template,
task kind and labels) lives in the manifest, so eval, serve and export can never
drift from what training did.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from niche.data.template import PromptTemplate
from niche.errors import ConfigError, ModelError

MANIFEST_NAME = "niche.json"
# 2: a label specialist may classify with a head (task.head), a JSON specialist carries its output schema.
MANIFEST_VERSION = 2


class BaseModelRecord(BaseModel):
    spec: str
    kind: str
    weights_sha256: str
    model_type: str


class TemplateRecord(BaseModel):
    system_prompt: str | None
    chat_template: str
    stop_token_ids: list[int]

    def to_template(self) -> PromptTemplate:
        return PromptTemplate(chat_template=self.chat_template, system_prompt=self.system_prompt)


class HeadRecord(BaseModel):
    """A label specialist that classifies with a linear head instead of generating its answer."""

    layer: int  # decoder layers run: the head reads the mean of this layer's output over the prompt's tokens
    pooling: str = "mean"
    file: str = "classifier.safetensors"


class TaskRecord(BaseModel):
    kind: str
    labels: list[str] | None = None
    data_format: str
    head: HeadRecord | None = None
    output_schema: dict[str, Any] | None = None  # JSON tasks: answers are decoded under this schema
    schema_source: str | None = None  # "inferred from the training answers", or the data.schema file
    longest_answer_tokens: int | None = None  # the longest training answer: sizes the generation budget


class DataFingerprint(BaseModel):
    path: str
    sha256: str
    rows: int


class SpecialistManifest(BaseModel):
    manifest_version: int = MANIFEST_VERSION
    name: str
    created_at: str
    base: BaseModelRecord
    template: TemplateRecord
    task: TaskRecord
    data: dict[str, DataFingerprint]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)
    rejected_rows: int = 0
    hardware: str
    versions: dict[str, str]
    config: dict[str, Any]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("niche", "torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(specialist_dir: Path) -> SpecialistManifest:
    path = Path(specialist_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ModelError(f"{specialist_dir}: not a niche specialist (no {MANIFEST_NAME}); train one with `niche train`")
    try:
        manifest = SpecialistManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as error:
        raise ModelError(f"{path}: unreadable manifest ({error})") from error
    if manifest.manifest_version > MANIFEST_VERSION:
        raise ModelError(
            f"{path}: manifest version {manifest.manifest_version} was written by a newer niche (this one reads up to "
            f"{MANIFEST_VERSION}); upgrade niche to use this specialist"
        )
    return manifest


def resolve_specialist_base(manifest: SpecialistManifest) -> Any:
    """The base checkpoint the specialist was trained on, refusing one whose weights changed since."""
    from niche.models import resolve_base

    base = resolve_base(manifest.base.spec)
    if base.weights_sha256 != manifest.base.weights_sha256:
        raise ModelError(
            f"base model {manifest.base.spec!r} now has weights sha256 {base.weights_sha256[:12]}..., but the specialist "
            f"{manifest.name!r} was trained on {manifest.base.weights_sha256[:12]}...; retrain it or restore that base"
        )
    return base


def load_specialist(specialist_dir: Path, device: str, dtype: Any) -> tuple[Any, Any, SpecialistManifest]:
    """PEFT model (base + adapter), tokenizer and manifest, ready for inference (under no_grad only: see
    `prepare_for_inference`)."""
    from peft import PeftModel

    from niche.models import load_model, load_tokenizer, prepare_for_inference

    manifest = read_manifest(specialist_dir)
    base = resolve_specialist_base(manifest)
    tokenizer = load_tokenizer(base)
    base_model = load_model(base, dtype, device)
    if manifest.task.head is not None:
        from niche.head import cut_at_layer

        # A label head reads one layer's output: the layers past it are never needed.
        base_model = cut_at_layer(base_model, manifest.task.head.layer)
    model = PeftModel.from_pretrained(base_model, str(specialist_dir))
    model.eval()
    return prepare_for_inference(model), tokenizer, manifest


def require_generative(manifest: SpecialistManifest, where: str, lacks: str, instead: str) -> None:
    """Refuse a label-head specialist where only a generative one will do, saying what it lacks and what to use."""
    if manifest.task.head is not None:
        raise ConfigError(f"{where} {manifest.name!r} answers with a label head and {lacks}; {instead}")


def load_label_head(specialist_dir: Path, manifest: SpecialistManifest, model: Any) -> Any:
    """The label head of a head specialist (None for any other), for the model `load_specialist` returned."""
    record = manifest.task.head
    if record is None:
        return None
    from niche.head import load_head

    if record.pooling != "mean":
        raise ModelError(
            f"{specialist_dir}: task.head.pooling {record.pooling!r}; this niche reads mean-pooled heads only"
        )
    hidden_size = model.get_base_model().config.hidden_size
    return load_head(Path(specialist_dir), hidden_size, len(manifest.task.labels or []), record.file).to(model.device)
