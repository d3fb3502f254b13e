"""Loading a specialist to run it: its base checkpoint (checked against the hash it was trained on), the adapter on
it, and the head a head specialist answers with. The records these read are `niche.artifact`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from niche.artifact import SpecialistManifest, read_manifest
from niche.errors import ModelError
from niche.head import cut_at_layer, load_head
from niche.models import load_model, load_tokenizer, prepare_for_inference, resolve_base
from niche.tagger import load_tagger


def resolve_specialist_base(manifest: SpecialistManifest) -> Any:
    """The base checkpoint the specialist was trained on, refusing one whose weights changed since."""

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

    manifest = read_manifest(specialist_dir)
    base = resolve_specialist_base(manifest)
    tokenizer = load_tokenizer(base)
    base_model = load_model(base, dtype, device)
    if manifest.task.head is not None:
        # A label head reads one layer's output: the layers past it are never needed.
        base_model = cut_at_layer(base_model, manifest.task.head.layer)
    model = PeftModel.from_pretrained(base_model, str(specialist_dir))
    model.eval()
    return prepare_for_inference(model), tokenizer, manifest


def load_answer_head(specialist_dir: Path, manifest: SpecialistManifest, hidden_size: int, device: Any = "cpu") -> Any:
    """What a head specialist answers with, on `device`: its LabelHead or its Tagger (None for a generative
    specialist)."""
    record = manifest.task.head
    if record is None:
        return None
    if record.pooling != "mean":
        raise ModelError(
            f"{specialist_dir}: task.head.pooling {record.pooling!r}; this niche reads mean-pooled heads only"
        )
    if record.kind == "tagger":
        if record.extraction is None:
            raise ModelError(f"{specialist_dir}: task.head.kind tagger without task.head.extraction; retrain it")
        tagger = load_tagger(Path(specialist_dir), hidden_size, record.extraction, record.echo, record.file)
        assert tagger.heads is not None
        tagger.heads.to(device)
        return tagger
    return load_head(Path(specialist_dir), hidden_size, len(manifest.task.labels or []), record.file).to(device)


def load_label_head(specialist_dir: Path, manifest: SpecialistManifest, model: Any) -> Any:
    """The head of a head specialist (a LabelHead or a Tagger; None for any other), for the model
    `load_specialist` returned."""
    hidden_size = model.get_base_model().config.hidden_size
    return load_answer_head(specialist_dir, manifest, hidden_size, model.device)
