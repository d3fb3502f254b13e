"""The studio's training form: the fields a new run usually sets, described by `NicheConfig` itself (defaults,
choices, help), and the values checked by that same model, so the page can never accept what `niche train`
would refuse, nor disagree with it about a default."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from niche.config import NicheConfig, apply_override
from niche.errors import ConfigError

# The form, in the order it is shown; every other setting can be given in its "more settings" YAML box.
FORM_FIELDS = (
    "name",
    "base",
    "data.train",
    "data.validation",
    "data.test",
    "data.task",
    "prompt.system_prompt",
    "training.objective",
    "training.time_budget",
    "training.epochs",
    "training.max_steps",
    "training.learning_rate",
    "training.batch_size",
    "training.max_seq_length",
    "training.seed",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
)
REQUIRED = ("name", "data.train")


def _field(path: str) -> FieldInfo:
    model: type[BaseModel] = NicheConfig
    parts = path.split(".")
    for part in parts[:-1]:
        model = _model_of(model.model_fields[part].annotation)
    return model.model_fields[parts[-1]]


def _model_of(annotation: Any) -> type[BaseModel]:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise TypeError(f"{annotation} is not a settings section")


def _kind(annotation: Any) -> tuple[str, list[Any] | None]:
    """How the page asks for a value: a choice (with its options), a yes/no, or text the model parses."""
    arguments = [item for item in typing.get_args(annotation) if item is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return "choice", list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(arguments) == 1:
        return _kind(arguments[0])
    if annotation is bool:
        return "bool", [True, False]
    return "text", None


def form_fields(defaults: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each form field: its dotted path, how it is asked, its default (from `NicheConfig`, or `defaults` where the
    studio knows better, e.g. the base it serves) and its help text."""
    defaults = defaults or {}
    fields = []
    for path in FORM_FIELDS:
        info = _field(path)
        kind, choices = _kind(info.annotation)
        default = defaults.get(path, None if info.is_required() else info.get_default(call_default_factory=True))
        fields.append(
            {
                "path": path,
                "kind": kind,
                "choices": choices,
                "default": str(default) if isinstance(default, Path) else default,
                "required": path in REQUIRED,
                "description": info.description or "",
            }
        )
    return fields


def raw_config(values: dict[str, Any], extra_yaml: str = "", defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The niche.yaml mapping the form describes: the YAML box first, then every filled field on top of it (a
    blank field keeps the default), then `defaults` for fields left blank."""
    try:
        raw = yaml.safe_load(extra_yaml) if extra_yaml.strip() else {}
    except yaml.YAMLError as error:
        raise ConfigError(f"more settings: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"more settings: expected a mapping of settings, found {type(raw).__name__}")
    for path, value in {**(defaults or {}), **{key: item for key, item in values.items() if _filled(item)}}.items():
        if path not in FORM_FIELDS:
            raise ConfigError(f"{path}: not a field of this form; put it in 'more settings' as YAML")
        apply_override(raw, f"{path}={value}")
    return raw


def _filled(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


def validate(
    values: dict[str, Any],
    extra_yaml: str = "",
    defaults: dict[str, Any] | None = None,
    forced: dict[str, Any] | None = None,
) -> tuple[NicheConfig | None, list[dict[str, str]], str]:
    """(the configuration, or None; every problem by field; the niche.yaml text) for the form's values;
    `forced` top-level settings win over anything given (the studio trains into its own directory)."""
    problems: list[dict[str, str]] = []
    try:
        raw = raw_config(values, extra_yaml, defaults) | (forced or {})
    except ConfigError as error:
        return None, [{"field": "more settings", "message": str(error)}], ""
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    for path in REQUIRED:
        if not _filled(_lookup(raw, path)):
            problems.append({"field": path, "message": "required"})
    for path in ("data.train", "data.validation", "data.test"):
        value = _lookup(raw, path)
        if _filled(value) and not Path(str(value)).is_file():
            problems.append({"field": path, "message": f"{value}: no such file"})
    try:
        config = NicheConfig.model_validate(raw)
    except ValidationError as error:
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"])
            problems.append({"field": field, "message": item["msg"]})
        return None, problems, text
    return (None if problems else config), problems, text


def _lookup(raw: dict[str, Any], path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
