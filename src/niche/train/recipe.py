"""The default recipe: training settings a config leaves empty, chosen from the data by a documented rule.

The rule reads the task kind, the number of training rows and, for a label head, the base's depth; it was found
by `bench/recipe_search.py` on public data (CLINC150 whole and its banking domain, and the project's example
domain), whose results file records every configuration tried, its accuracy and its minutes. A value given in
niche.yaml always wins; every value used, where it came from, and the data profile it was chosen for (rows,
labels, token lengths) are written to niche.json.

- Objective: a label head for label tasks, a tagging head for JSON tasks whose every field is copied from the input
  or a closed set, generation otherwise (`default_objective`; `niche.train.sft.choose_objective` keeps generation
  when the config asks for what only a generative specialist has).
- Head layer: half of the base's decoder layers (`choose_head_layer`).
- Learning rate, batch size, LoRA rank: per objective (OBJECTIVE_DEFAULTS).
- Epochs: enough optimizer steps for small sets, few passes for large ones (`choose_epochs`); with a time budget
  the run also stops when the budget says so, whichever comes first.
- System prompt: none unless given, and a chat template's built-in default system prompt is left out (SmolLM2
  writes 16 tokens of it on every row, paid at every training step and every request).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from niche.config import NicheConfig
from niche.errors import ConfigError


@dataclass(frozen=True)
class ObjectiveDefaults:
    learning_rate: float
    batch_size: int
    lora_r: int
    # Epochs are planned so that training sees at least this many rows (small sets get several passes) ...
    min_rows_seen: int
    # ... and makes at most this many passes (large sets stop early; a budget may stop them earlier still).
    max_epochs: float
    # classify: the head reads this share of the base's decoder layers (the rest are never run).
    head_depth: float | None = None


OBJECTIVE_DEFAULTS = {
    "classify": ObjectiveDefaults(
        learning_rate=1e-3, batch_size=16, lora_r=16, min_rows_seen=50000, max_epochs=10, head_depth=0.5
    ),
    # Chosen on a validation split of SLURP's train file (bench/extraction_design.py): the heads start from zero
    # and read tags of 50-odd fields, so twice the label head's rate; 8,000 rows seen (5 passes of 1,800 rows, 16
    # of 500) is where validation slot F1 stopped rising.
    "tag": ObjectiveDefaults(
        learning_rate=2e-3, batch_size=16, lora_r=16, min_rows_seen=8000, max_epochs=16, head_depth=0.5
    ),
    "generate": ObjectiveDefaults(learning_rate=5e-4, batch_size=8, lora_r=16, min_rows_seen=2000, max_epochs=8),
    # GRPO samples its own completions: one pass over the prompts, at the learning rate TRL's examples use.
    "grpo": ObjectiveDefaults(learning_rate=2e-4, batch_size=8, lora_r=16, min_rows_seen=0, max_epochs=1),
}


@dataclass(frozen=True)
class DataProfile:
    """The training data a recipe is chosen for (the rule reads the task kind and the rows; all is recorded)."""

    task_kind: str
    rows: int
    labels: int | None
    mean_tokens: float | None  # None where rows are not encoded up front (GRPO)
    longest_tokens: int | None


@dataclass
class Recipe:
    """The settings used, each with its source: `config` (given in niche.yaml) or `recipe` (this rule's choice)."""

    objective: str
    learning_rate: float
    epochs: float
    batch_size: int
    lora_r: int
    lora_alpha: int
    head_layer: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    profile: DataProfile | None = None

    def record(self) -> dict[str, Any]:
        names = ("learning_rate", "epochs", "batch_size", "lora_r", "lora_alpha", "head_layer")
        values = {name: getattr(self, name) for name in names}
        profile = dataclasses.asdict(self.profile) if self.profile else None
        return {"objective": self.objective, "values": values, "sources": self.sources, "profile": profile}


def default_objective(task_kind: str, taggable: bool = False) -> str:
    """Label tasks train a label head, JSON tasks a tagger `taggable` says fits; every other task generates."""
    if task_kind == "label":
        return "classify"
    return "tag" if task_kind == "json" and taggable else "generate"


def choose_epochs(rows: int, defaults: ObjectiveDefaults) -> float:
    """At least `min_rows_seen` rows seen, at most `max_epochs` passes, never less than one pass."""
    return float(min(defaults.max_epochs, max(1, math.ceil(defaults.min_rows_seen / max(rows, 1)))))


def choose_head_layer(base_layers: int, defaults: ObjectiveDefaults) -> int:
    return max(1, min(base_layers, round(base_layers * (defaults.head_depth or 1.0))))


def choose_recipe(
    config: NicheConfig, profile: DataProfile, objective: str = "generate", base_layers: int | None = None
) -> Recipe:
    """Fill the settings niche.yaml left empty from the data profile (and, for a head, the base's depth)."""
    defaults = OBJECTIVE_DEFAULTS[objective]
    training, lora = config.training, config.lora
    sources: dict[str, str] = {}

    def pick(name: str, given: Any, chosen: Any) -> Any:
        sources[name] = "config" if given is not None else "recipe"
        return given if given is not None else chosen

    r = pick("lora_r", lora.r, defaults.lora_r)
    head_layer = None
    if defaults.head_depth is None and training.head_layer is not None:
        raise ConfigError(
            f"training.head_layer: set, but this run trains the {objective} objective, which has no head (label "
            "tasks train a label head and JSON extraction a tagging head unless training.objective is generate or "
            "the config asks for a generative specialist); remove it or set training.objective: classify or tag"
        )
    if defaults.head_depth is not None:
        if base_layers is None:
            raise ConfigError("a head's recipe needs the base model's layer count")
        head_layer = pick("head_layer", training.head_layer, choose_head_layer(base_layers, defaults))
        if not 1 <= head_layer <= base_layers:
            raise ConfigError(f"training.head_layer {head_layer}: the base has decoder layers 1 to {base_layers}")
    return Recipe(
        objective=objective,
        learning_rate=pick("learning_rate", training.learning_rate, defaults.learning_rate),
        epochs=pick("epochs", training.epochs, choose_epochs(profile.rows, defaults)),
        batch_size=pick("batch_size", training.batch_size, defaults.batch_size),
        lora_r=r,
        lora_alpha=pick("lora_alpha", lora.alpha, 2 * r),
        head_layer=head_layer,
        sources=sources,
        profile=profile,
    )


def apply_recipe(config: NicheConfig, recipe: Recipe) -> NicheConfig:
    """The config with the recipe's values in place of the empty fields."""
    training = config.training.model_copy(
        update={
            "objective": recipe.objective
            if recipe.objective in ("classify", "tag", "generate")
            else config.training.objective,
            "learning_rate": recipe.learning_rate,
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "head_layer": recipe.head_layer,
        }
    )
    lora = config.lora.model_copy(update={"r": recipe.lora_r, "alpha": recipe.lora_alpha})
    return config.model_copy(update={"training": training, "lora": lora})
