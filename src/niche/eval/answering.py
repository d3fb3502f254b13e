"""What answers in eval: the specialist, or the bare base asked the same task, with eval's decoding options.

`evaluate` builds it in its own process; `AnswerRecipe` rebuilds the same anywhere (a Ray actor for
`--engine ray`), so both give the same answers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niche.artifact import SpecialistManifest
from niche.config import EvalSettings
from niche.data.examples import Example
from niche.data.spans import union_of
from niche.data.template import TemplateEncoder, build_template
from niche.errors import ModelError
from niche.eval.generation import batches_by_prompt_length
from niche.hardware import detect_hardware
from niche.models import load_model, load_tokenizer, prepare_for_inference, resolve_base
from niche.specialist import load_label_head, load_specialist

# Tokens generated beyond the longest training answer before a JSON or free-text answer is cut.
ANSWER_MARGIN_TOKENS = 32


def decoding_options(
    manifest: SpecialistManifest,
    constrain: bool | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    settings: EvalSettings | None = None,
) -> dict[str, Any]:
    """How eval decodes for this specialist: label tasks within the label set, JSON tasks under the stored schema
    (both on unless turned off), with room for the longest training answer."""
    settings = settings or manifest.trained_config().eval
    constrain = settings.constrain_to_labels if constrain is None else constrain
    task = manifest.task
    # A JSON answer's strings may run to twice the longest seen (the inferred schema's bound: niche.data.schema).
    longest = (task.longest_answer_tokens or 0) * (2 if task.kind == "json" else 1)
    budget = max_new_tokens or max(settings.max_new_tokens, longest + ANSWER_MARGIN_TOKENS)
    return {
        "batch_size": batch_size or settings.batch_size,
        "max_new_tokens": budget,
        "allowed_answers": task.labels if constrain and task.kind == "label" and task.labels else None,
        "json_schema": task.output_schema if constrain and task.kind == "json" else None,
    }


@dataclass(frozen=True)
class AnswerRecipe:
    """How to rebuild, anywhere, what answers: the specialist (or with `base`, the bare base as evaluate asks it)
    and evaluate's decoding options."""

    specialist_dir: Path
    base: str | None
    constrain: bool | None
    batch_size: int | None
    max_new_tokens: int | None
    settings: EvalSettings | None
    ray_address: str | None = None


@contextlib.contextmanager
def answerer(recipe: AnswerRecipe) -> Iterator[tuple[Any, TemplateEncoder, dict[str, Any]]]:
    """(model, encoder, options) for the recipe, as `evaluate` builds them in its own process."""
    hardware = detect_hardware()
    model, tokenizer, manifest = load_specialist(recipe.specialist_dir, hardware.device, hardware.dtype)
    options = decoding_options(manifest, recipe.constrain, recipe.batch_size, recipe.max_new_tokens, recipe.settings)
    head = load_label_head(recipe.specialist_dir, manifest, model)
    encoder, options = answering(manifest, tokenizer, head, options, for_base=recipe.base is not None)
    if recipe.base is None:
        yield model, encoder, options
        return
    with bare_base(model, tokenizer, manifest, recipe.base, hardware) as base_model:
        yield base_model, encoder, options


def answering(
    manifest: SpecialistManifest, tokenizer: Any, head: Any, options: dict[str, Any], for_base: bool
) -> tuple[TemplateEncoder, dict[str, Any]]:
    """The prompt encoder and decoding options of the specialist, or of the bare base asked the same task."""
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    if for_base:
        return (encoder, options) if head is None else zero_shot(manifest, tokenizer, options)
    if head is not None:
        options = options | {"head": head, "labels": manifest.task.labels}
    return encoder, options


def answer_batches(encoder: TemplateEncoder, examples: list[Example], options: dict[str, Any]) -> list[list[int]]:
    """The batches this process would decode (rows of similar prompt length together), so that Ray's actors
    decode the very same ones and give the very same answers."""
    lengths = [len(encoder.prompt_ids(example)) for example in examples]
    return batches_by_prompt_length(lengths, options["batch_size"])


@contextlib.contextmanager
def bare_base(model: Any, tokenizer: Any, manifest: SpecialistManifest, base: str, hardware: Any) -> Iterator[Any]:
    """The specialist's own base with the adapter switched off, or another base model loaded separately."""

    if base in ("base", manifest.base.spec) and manifest.task.head is None:
        with model.disable_adapter():
            yield model
        return
    # A label head's model is cut at the head's layer: the base it is compared with is loaded whole.
    other_base = resolve_base(manifest.base.spec if base == "base" else base)
    if load_tokenizer(other_base).get_vocab() != tokenizer.get_vocab():
        raise ModelError(
            f"base {base!r} has a different tokenizer from {manifest.base.spec!r}, so the stored prompt "
            "would not mean the same to it; compare with a base that shares the tokenizer"
        )
    other = load_model(other_base, hardware.dtype, hardware.device)
    yield prepare_for_inference(other.eval())


# How the bare base is asked a head's task: the head's input is the text alone, which tells a base nothing.
ZERO_SHOT_PROMPT = "Classify the text into one of these labels: {labels}. Answer with the label only."
ZERO_SHOT_JSON_PROMPT = "Extract from the user's text a JSON object with this JSON schema: {schema}"


def zero_shot(
    manifest: SpecialistManifest, tokenizer: Any, options: dict[str, Any]
) -> tuple[TemplateEncoder, dict[str, Any]]:
    """The base model's template with a system prompt naming the labels, or for JSON the schema (the config's own
    system prompt, else ZERO_SHOT_PROMPT or ZERO_SHOT_JSON_PROMPT), decoding within the label set or under the
    stored schema."""

    configured = manifest.trained_config().prompt.system_prompt
    if manifest.task.kind == "json":
        schema = json.dumps(schema_outline(manifest.task.output_schema or {}), separators=(",", ":"))
        template = build_template(tokenizer, configured or ZERO_SHOT_JSON_PROMPT.format(schema=schema), None, None)
        return TemplateEncoder(tokenizer, template), options | {"json_schema": manifest.task.output_schema}
    template = build_template(tokenizer, configured or ZERO_SHOT_PROMPT, None, manifest.task.labels)
    return TemplateEncoder(tokenizer, template), options | {"allowed_answers": manifest.task.labels}


def schema_outline(schema: dict[str, Any]) -> dict[str, Any]:
    """What a prompt shows of a schema: its shape and closed sets, not niche's annotations, the conditional
    branches or the length bounds the grammar enforces anyway."""
    outline: dict[str, Any] = {}
    for key, value in union_of(schema).items():
        if key == "properties":
            outline[key] = {name: schema_outline(child) for name, child in value.items()}
        elif key == "items" and isinstance(value, dict):
            outline[key] = schema_outline(value)
        elif key in ("type", "enum", "const"):
            outline[key] = value
    return outline
