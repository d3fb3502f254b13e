"""The specialist artifact: a PEFT adapter directory that also carries niche.json, and its records.

Everything needed to use a specialist (base model and its hash, the exact template, task kind and labels) lives in
the manifest, so eval, serve and export can never drift from what training did. This module reads, finds and
writes those records and imports no torch: the catalog, the router and the CLI read specialists without loading a
model. Loading one (base, adapter, head) is `niche.specialist`'s.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from niche.config import NicheConfig
from niche.data.examples import Example
from niche.data.formats import load_examples
from niche.data.prepare import DataFingerprint
from niche.data.tasks import check_labels_known, label_of
from niche.data.template import PromptTemplate
from niche.errors import ConfigError, ModelError
from niche.io import atomic_directory, write_json_atomic, write_jsonl_atomic

MANIFEST_NAME = "niche.json"
# 2: a label specialist may classify with a head (task.head), a JSON specialist carries its output schema.
# 3: a JSON specialist may tag with a head (task.head.kind "tagger"), and schemas mark copied fields.
MANIFEST_VERSION = 3


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
    """A specialist that answers with a head on one layer's output instead of generating its answer: a label
    head (`niche.head`) or, for JSON extraction, a tagger (`niche.tagger`)."""

    layer: int  # decoder layers run: the head reads this layer's output
    kind: Literal["label", "tagger"] = "label"
    pooling: str = "mean"
    file: str = "classifier.safetensors"
    echo: bool = False  # tagger: the input is read twice and tagged on its second copy
    extraction: dict[str, Any] | None = None  # tagger: its fields (`niche.data.spans.ExtractionPlan.to_record`)

    def describe(self) -> str:
        return "a label head" if self.kind == "label" else "a tagging head"


class TaskRecord(BaseModel):
    kind: str
    labels: list[str] | None = None
    data_format: str
    head: HeadRecord | None = None
    output_schema: dict[str, Any] | None = None  # JSON tasks: answers are decoded under this schema
    schema_source: str | None = None  # "inferred from the training answers", or the data.schema file
    longest_answer_tokens: int | None = None  # the longest training answer: sizes the generation budget


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
    config: dict[str, Any]  # the niche.yaml it was trained with, as stored; typed by `trained_config()`

    _trained_config: NicheConfig | None = PrivateAttr(default=None)

    def trained_config(self) -> NicheConfig:
        """The configuration the specialist was trained with, validated by the model that validated it then, so
        readers get its settings and their defaults from one place (`niche.config`), never literals of their own.
        Validated once per manifest: eval, the router and export each read it several times."""
        if self._trained_config is not None:
            return self._trained_config
        try:
            self._trained_config = NicheConfig.model_validate(self.config)
            return self._trained_config
        except ValidationError as error:
            raise ModelError(
                f"specialist {self.name!r}: its stored config (niche.json `config`) does not match this niche's "
                f"settings: {error}; retrain it, or use the niche version that wrote it ({self.versions.get('niche')})"
            ) from error


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


def require_generative(manifest: SpecialistManifest, where: str, lacks: str, instead: str) -> None:
    """Refuse a head specialist (label head or tagger) where only a generative one will do, saying what it lacks
    and what to use."""
    if manifest.task.head is not None:
        raise ConfigError(
            f"{where} {manifest.name!r} answers with {manifest.task.head.describe()} and {lacks}; {instead}"
        )


def load_test_examples(path: Path, manifest: SpecialistManifest) -> list[Example]:
    """Held-out rows read the way the specialist was trained to read them (its format, fields and labels)."""
    fields = manifest.trained_config().data.fields
    examples = load_examples(path, manifest.task.data_format, fields).examples
    if manifest.task.kind == "label" and manifest.task.labels:
        check_labels_known(examples, manifest.task.labels)
    return examples


def references_of(examples: list[Example], task_kind: str) -> list[str]:
    """What a correct answer to each row is: its label for label tasks, else its response."""
    return [label_of(example) if task_kind == "label" else example.response for example in examples]


def is_specialist(directory: Path) -> bool:
    """A directory niche wrote as a specialist: it holds a niche.json manifest."""
    return (Path(directory) / MANIFEST_NAME).is_file()


def write_specialist(
    target: Path,
    save_weights: Callable[[Path], None],
    tokenizer: Any,
    base_directory: Path,
    manifest: SpecialistManifest,
    rejects: list[dict[str, Any]],
    log_history: list[dict[str, Any]],
) -> None:
    """The one way a specialist directory is written: weights (by `save_weights`), the tokenizer carrying the exact
    chat template, the manifest, rejected rows and the loss log, staged and renamed into place whole."""
    with atomic_directory(target) as staging:
        save_weights(staging)
        tokenizer.chat_template = manifest.template.chat_template
        tokenizer.save_pretrained(staging)
        _point_adapter_at_base(staging, base_directory)
        write_json_atomic(staging / "training_log.json", log_history)
        if rejects:
            write_jsonl_atomic(staging / "rejects.jsonl", rejects)
        write_json_atomic(staging / MANIFEST_NAME, json.loads(manifest.model_dump_json()))


def _point_adapter_at_base(directory: Path, base_directory: Path) -> None:
    """PEFT records the path it loaded from; keep the checkpoint directory so PeftModel.from_pretrained finds it."""
    config_path = directory / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = str(base_directory)
    write_json_atomic(config_path, adapter_config)


def discover_specialists(directory: Path) -> dict[str, tuple[Path, SpecialistManifest]]:
    """Every subdirectory holding a niche.json, by specialist name."""
    found = {}
    for manifest_path in sorted(Path(directory).glob(f"*/{MANIFEST_NAME}")):
        manifest = read_manifest(manifest_path.parent)
        found[manifest.name] = (manifest_path.parent, manifest)
    return found
