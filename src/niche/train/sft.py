"""The LoRA SFT recipe: niche.yaml in, a specialist directory out.

Readable top to bottom: load data, freeze the template, encode, build the LoRA
model, train with the Trainer (validation every N steps, best checkpoint kept,
resumable), then write adapter + niche.json atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from niche.config import NicheConfig
from niche.data.examples import Example
from niche.data.formats import load_examples
from niche.data.prepare import PreparedData, fingerprint_of, prepare_data
from niche.data.schema import allowed_by_value
from niche.data.spans import extraction_plan
from niche.data.template import EncodedExample, PromptTemplate, TemplateEncoder, specialist_template
from niche.decoding import JsonGrammar
from niche.errors import ConfigError, DataError, require_extra
from niche.hardware import Hardware, detect_hardware, training_attention
from niche.head import HEAD_TEMPLATE
from niche.models import ResolvedBase, load_model, load_tokenizer, resolve_base
from niche.specialist import load_specialist
from niche.tagger import TAGGER_TEMPLATE, Tagger
from niche.tracking import tracked_run
from niche.train.budget import PlannerCallback, TrainingPlan
from niche.train.classify import (
    ClassifierTrainer,
    HeadCollator,
    HeadModel,
    accuracy_metric,
    build_head_model,
    encode_for_head,
)
from niche.train.common import (
    TrainResult,
    build_manifest,
    checkpoint_dir_for,
    lora_config,
    write_trained_specialist,
)
from niche.train.engine import (
    PaddingCollator,
    RichProgressCallback,
    SupervisedOnlyTrainer,
    TrackerCallback,
    as_features,
)
from niche.train.forgetting import ForgettingProbeCallback, everyday_accuracy
from niche.train.kd import DistillTrainer
from niche.train.memory import MicroBatch, activation_bytes_per_row, choose_micro_batch
from niche.train.recipe import DataProfile, apply_recipe, choose_recipe, default_objective
from niche.train.tag import (
    TaggerCollator,
    TaggerModel,
    TaggerTrainer,
    build_tagger_model,
    encode_for_tagger,
    field_f1_metric,
    tagged_features,
)

log = logging.getLogger(__name__)


def encode_examples(
    encoder: TemplateEncoder, examples: list[Example], max_length: int
) -> tuple[list[EncodedExample], list[dict[str, Any]]]:
    """Encode every example; rows longer than max_length are rejected with their reason, not truncated."""
    encoded, rejects = [], []
    for example in examples:
        item = encoder.training_example(example)
        if len(item.input_ids) > max_length:
            rejects.append(
                {
                    "source": example.source,
                    "reason": f"{len(item.input_ids)} tokens > max_seq_length {max_length}",
                    "input": example.input_text,
                    "response": example.response,
                }
            )
            continue
        encoded.append(item)
    return encoded, rejects


def encode_replay(
    config: NicheConfig, tokenizer: Any, template: Any, train_rows: int
) -> tuple[list[EncodedExample], list[dict[str, Any]]]:
    """General-domain rows mixed into training (replay against forgetting): a seeded sample of
    `replay_fraction` x the training rows, rendered with the chat template but without the specialist's
    system prompt, so they keep the model's general behaviour rather than teach the task's prompt to answer
    everything."""
    assert config.data.replay is not None
    rows = load_examples(config.data.replay).examples
    count = min(len(rows), round(train_rows * config.data.replay_fraction))
    chosen = random.Random(config.training.seed).sample(rows, count)
    encoder = TemplateEncoder(tokenizer, dataclasses.replace(template, system_prompt=None))
    return encode_examples(encoder, chosen, config.training.max_seq_length)


# The Trainer's validation cadence argument; the planner (niche.train.budget) sets the cadence it runs.
PROVISIONAL_EVAL_EVERY = 50


def training_arguments(
    config: NicheConfig,
    hardware: Hardware,
    checkpoint_dir: Path,
    micro_batch: MicroBatch,
    classify: bool = False,
    label_names: Sequence[str] = ("labels",),
) -> Any:
    """The Trainer's arguments; a head keeps the checkpoint with the best validation score (a label head's accuracy,
    a tagger's field F1), a generative specialist the one with the lowest validation loss. Each optimizer step takes
    batch_size rows in passes of micro_batch.rows."""
    from transformers import TrainingArguments

    settings = config.training
    eval_every = settings.eval_every or PROVISIONAL_EVAL_EVERY
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_ratio,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=micro_batch.rows,
        per_device_eval_batch_size=micro_batch.rows,
        gradient_accumulation_steps=settings.gradient_accumulation * micro_batch.accumulation,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        seed=settings.seed,
        data_seed=settings.seed,
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_selection_score" if classify else "eval_loss",
        greater_is_better=classify,
        logging_steps=max(1, min(10, eval_every)),
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=not classify,
        label_names=list(label_names),
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        use_cpu=hardware.device == "cpu",
        # The base is loaded in this dtype; PEFT keeps the LoRA weights in fp32, and autocast runs the matmuls.
        bf16=hardware.bf16,
        fp16=hardware.dtype == torch.float16,
        dataloader_num_workers=0,
    )


def train_sft(
    config: NicheConfig, *, resume: bool = False, show_progress: bool = True, callbacks: Sequence[Any] = ()
) -> TrainResult:
    """Supervised fine-tuning (generative, label head, or with a KD teacher) as configured; the specialist is
    written to config.output_dir / config.name."""
    require_extra("train", ("accelerate",), "training")
    from accelerate import PartialState

    # The time budget covers the whole run, from here to the specialist written.
    clock = time.monotonic()
    hardware = detect_hardware()
    # Under a multi-process launcher the first process converts (or hashes) the base; the others wait for its cache.
    with PartialState().main_process_first():
        base = resolve_base(config.base)
    tokenizer = load_tokenizer(base)
    data = prepare_data(config)
    objective = choose_objective(config, data)
    encoder, train_encoded, validation_encoded, rejects, tagger = encode_for(objective, config, tokenizer, data)
    if data.output_schema is not None:
        # Eval and serve decode under it: a schema the grammar engine refuses fails now, not after training.
        JsonGrammar(tokenizer, len(tokenizer), encoder.stop_ids).compile(
            data.output_schema, f"data.schema ({data.schema_source})"
        )
    replayed = 0
    if config.data.replay is not None:
        replay_encoded, replay_rejects = encode_replay(config, tokenizer, encoder.template, len(data.train))
        train_encoded += replay_encoded
        rejects += replay_rejects
        replayed = len(replay_encoded)
        data.fingerprints["replay"] = fingerprint_of(config.data.replay, replayed)
    if not train_encoded or not validation_encoded:
        raise DataError(
            config.data.train, f"every row is longer than training.max_seq_length={config.training.max_seq_length}"
        )
    if rejects:
        log.warning("%d row(s) longer than max_seq_length were left out; see rejects.jsonl", len(rejects))
    model_config = base_config(base)
    recipe = choose_recipe(config, profile_of(data, train_encoded), objective, model_config.num_hidden_layers)
    config = apply_recipe(config, recipe)
    checkpoint_dir = checkpoint_dir_for(config)
    if resume and not any(checkpoint_dir.glob("checkpoint-*")):
        raise ConfigError(f"--resume: no checkpoint to resume from in {checkpoint_dir}")

    longest_row = max(len(item.input_ids) for item in train_encoded + validation_encoded)
    micro_batch = micro_batch_for(config, hardware, model_config, longest_row, recipe.head_layer)
    plan = plan_for(config, clock, train_encoded, validation_encoded)
    # Only the main process of a multi-process run talks to MLflow.
    tracking_on = config.tracking.enabled and PartialState().is_main_process
    with tracked_run(config.experiment, "train", enabled=tracking_on, run_name=f"train {config.name}") as tracker:
        tracker.params(json.loads(config.model_dump_json()) | {"base.sha256": base.weights_sha256})
        fingerprints = {split: fingerprint.model_dump() for split, fingerprint in data.fingerprints.items()}
        tracker.tags({f"data.{split}.sha256": fingerprint["sha256"] for split, fingerprint in fingerprints.items()})
        tracker.artifact_json(fingerprints, "data.json")
        if tagger is not None and recipe.head_layer is not None:
            model = build_tagger(config, base, hardware, longest_row, recipe.head_layer, tagger)
        elif recipe.head_layer is not None:
            model = build_classifier(config, base, hardware, longest_row, recipe.head_layer, data.labels or [])
        else:
            model = build_lora_model(config, base, hardware, longest_row)
        trainer = build_trainer(
            config, hardware, model, tokenizer, train_encoded, validation_encoded, show_progress, plan, micro_batch
        )
        if tracker.active:
            trainer.add_callback(TrackerCallback(tracker))
        for callback in callbacks:
            trainer.add_callback(callback)
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=True if resume else None)
        runtime = time.perf_counter() - started
        metrics = {
            "train_loss": output.training_loss,
            **best_validation(trainer, objective),
            "best_step": trainer.state.best_global_step,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_runtime_s": runtime,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "tokens_per_s": trainer.state.num_input_tokens_seen / runtime if runtime else 0.0,
            "train_examples": len(train_encoded),
            "validation_examples": len(validation_encoded),
            "validation_source": data.validation_source,
            "longest_answer_tokens": longest_answer_tokens(tokenizer, data, train_encoded, tagger),
            "replay_examples": replayed,
            "plan": plan.summary() | micro_batch.summary(),
        }
        probe = next(
            (callback for callback in trainer.callback_handler.callbacks if hasattr(callback, "stopped_at")), None
        )
        if probe is not None:
            if probe.stopped_at is not None:
                metrics["plan"]["stopped_by"] = "forgetting"
            metrics |= {
                "forgetting_probe_base_accuracy": probe.baseline,
                "forgetting_probe": probe.history,
                "forgetting_probe_stopped_at": probe.stopped_at,
            }
        manifest = build_manifest(config, base, hardware, model, encoder, data, metrics, len(rejects), recipe)
        if trainer.is_world_process_zero():
            write_trained_specialist(
                config.specialist_dir, model, tokenizer, base, manifest, rejects, trainer.state.log_history
            )
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        result = TrainResult(
            config.specialist_dir, manifest, trainer.state.log_history, trainer.is_world_process_zero()
        )
        if result.is_main_process:
            tracker.metrics(_scalar_metrics(result.manifest.metrics))
            tracker.artifacts(result.specialist_dir, "specialist")
        result.run_id = tracker.run_id
    return result


def best_validation(trainer: Any, objective: str) -> dict[str, float]:
    """The kept checkpoint's validation scores, read from the log (no second pass): loss, and a head's score."""
    keys = {"classify": ("eval_accuracy", "eval_loss"), "tag": ("eval_field_f1", "eval_loss")}.get(
        objective, ("eval_loss",)
    )
    best = trainer.state.best_global_step
    logged = [row for row in trainer.state.log_history if row.get("step") == best and "eval_loss" in row]
    scores = logged[-1] if logged else trainer.evaluate()
    return {key: scores[key] for key in keys}


def longest_answer_tokens(tokenizer: Any, data: PreparedData, encoded: list[Any], tagger: Tagger | None) -> int:
    """The longest training answer in tokens (what sizes a decoding budget): a tagger's answers are its JSON."""
    if tagger is None:
        return max(item.supervised_tokens for item in encoded)
    return 1 + max(len(tokenizer(example.response, add_special_tokens=False)["input_ids"]) for example in data.train)


def base_config(base: ResolvedBase) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base.directory)


def micro_batch_for(
    config: NicheConfig, hardware: Hardware, model_config: Any, longest_row: int, head_layer: int | None
) -> MicroBatch:
    """Rows per forward/backward pass, from the activations the longest rows need through the layers trained."""
    settings = config.training
    assert settings.batch_size is not None
    eager = training_attention(hardware, longest_row) == "eager"
    layers = head_layer or model_config.num_hidden_layers
    dtype_bytes = hardware.dtype.itemsize
    row_bytes = activation_bytes_per_row(model_config, longest_row, dtype_bytes, layers, eager)
    return choose_micro_batch(settings.batch_size, settings.micro_batch_size, row_bytes, hardware.device)


def choose_objective(config: NicheConfig, data: PreparedData) -> str:
    """classify (a label head), tag (a tagging head) or generate: the config's choice; `auto` picks a label head
    for a label task and a tagger for a JSON task whose every field is copied or a closed set, unless the config
    asks for something only a generative specialist has (replay, the forgetting probe, distillation, QLoRA)."""
    task_kind = data.task_kind
    plan = extraction_plan(data.output_schema) if data.output_schema is not None else None
    generative_only = {
        "data.replay": config.data.replay is not None,
        "training.forgetting_probe_every": bool(config.training.forgetting_probe_every),
        "distill.teacher": config.distill.teacher is not None,
        "quantization": config.quantization != "none",
    }
    asked = [name for name, set_ in generative_only.items() if set_]
    objective = config.training.objective
    if objective == "auto":
        return "generate" if asked else default_objective(task_kind, plan is not None and plan.taggable)
    if objective == "tag":
        if plan is None:
            raise ConfigError(f"training.objective tag: needs a JSON task, and this data is a {task_kind} task")
        if not plan.taggable:
            out = "; ".join(f"{name}: {why}" for name, why in plan.unsupported.items()) or "no fields"
            raise ConfigError(
                f"training.objective tag: a tagger answers fields copied from the input or from a closed set, and "
                f"this schema has others ({out}); set training.objective: generate"
            )
        if asked:
            raise ConfigError(
                f"training.objective tag: a tagging head does not generate, so {', '.join(asked)} do not apply; "
                "set training.objective: generate"
            )
    if objective == "classify":
        if task_kind != "label":
            raise ConfigError(f"training.objective classify: needs a label task, and this data is a {task_kind} task")
        if asked:
            raise ConfigError(
                f"training.objective classify: a label head does not generate, so {', '.join(asked)} do not apply; "
                "set training.objective: generate"
            )
    return objective


def encode_for(
    objective: str, config: NicheConfig, tokenizer: Any, data: PreparedData
) -> tuple[TemplateEncoder, list[Any], list[Any], list[dict[str, Any]], Tagger | None]:
    """The template frozen for the specialist, the rows encoded for the objective (over-long rows rejected), and a
    tagger's fields and rules when the objective is tag."""
    max_length = config.training.max_seq_length
    if objective == "classify":
        encoder = TemplateEncoder(tokenizer, PromptTemplate(chat_template=HEAD_TEMPLATE))
        labels = data.labels or []
        train_encoded, rejects = encode_for_head(encoder, data.train, labels, max_length)
        validation_encoded, validation_rejects = encode_for_head(encoder, data.validation, labels, max_length)
        return encoder, train_encoded, validation_encoded, rejects + validation_rejects, None
    if objective == "tag":
        assert data.output_schema is not None
        tagger = Tagger(tagging_plan(data), echo=True)
        encoder = TemplateEncoder(tokenizer, PromptTemplate(chat_template=TAGGER_TEMPLATE))
        train_encoded, rejects, unplaced = encode_for_tagger(tagger, encoder, data.train, max_length)
        validation_encoded, validation_rejects, _ = encode_for_tagger(tagger, encoder, data.validation, max_length)
        if unplaced:
            log.warning(
                "%d copied value(s) of the training rows were not found in their input; they train as text", unplaced
            )
        return encoder, train_encoded, validation_encoded, rejects + validation_rejects, tagger
    template = specialist_template(tokenizer, config.prompt, data.labels)
    encoder = TemplateEncoder(tokenizer, template)
    train_encoded, rejects = encode_examples(encoder, data.train, max_length)
    validation_encoded, validation_rejects = encode_examples(encoder, data.validation, max_length)
    return encoder, train_encoded, validation_encoded, rejects + validation_rejects, None


def tagging_plan(data: PreparedData) -> Any:
    """The tagger's fields from the output schema, with the copied fields each value of its conditional field
    allows (`niche.data.schema.conditional_schema`)."""
    assert data.output_schema is not None
    plan = extraction_plan(data.output_schema)
    plan.allowed_with = allowed_by_value(data.output_schema, [item.path for item in plan.spans])
    return plan


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float)) and value is not None}


def profile_of(data: PreparedData, train_encoded: list[EncodedExample]) -> DataProfile:
    lengths = [len(item.input_ids) for item in train_encoded]
    return DataProfile(
        task_kind=data.task_kind,
        rows=len(train_encoded),
        labels=len(data.labels) if data.labels else None,
        mean_tokens=sum(lengths) / len(lengths),
        longest_tokens=max(lengths),
    )


def plan_for(
    config: NicheConfig,
    clock: float,
    train_encoded: list[EncodedExample],
    validation_encoded: list[EncodedExample],
) -> TrainingPlan:
    """The run's plan: its budget, and what a validation pass costs against a step (before either is timed)."""
    settings = config.training
    assert settings.batch_size is not None
    train_tokens = sum(len(item.input_ids) for item in train_encoded)
    step_tokens = train_tokens / len(train_encoded) * settings.batch_size * settings.gradient_accumulation
    validation_tokens = sum(len(item.input_ids) for item in validation_encoded)
    return TrainingPlan(
        warmup_ratio=settings.warmup_ratio,
        eval_every=settings.eval_every,
        budget_s=settings.time_budget,
        started=clock,
        validation_cost=validation_tokens / step_tokens,
    )


def build_classifier(
    config: NicheConfig, base: ResolvedBase, hardware: Hardware, longest_row: int, layer: int, labels: list[str]
) -> Any:
    """The base cut at the head's layer, LoRA on the layers kept, and a fresh label head."""
    from transformers import set_seed

    set_seed(config.training.seed)
    model = load_model(base, hardware.dtype, hardware.device, attention=training_attention(hardware, longest_row))
    return build_head_model(model, lora_config(config, layers=layer, model=model), layer, len(labels))


def build_tagger(
    config: NicheConfig, base: ResolvedBase, hardware: Hardware, longest_row: int, layer: int, tagger: Tagger
) -> Any:
    """The base cut at the tagger's layer, LoRA on the layers kept, and fresh tagging heads."""
    from transformers import set_seed

    set_seed(config.training.seed)
    model = load_model(base, hardware.dtype, hardware.device, attention=training_attention(hardware, longest_row))
    return build_tagger_model(model, lora_config(config, layers=layer, model=model), layer, tagger)


def build_lora_model(config: NicheConfig, base: ResolvedBase, hardware: Hardware, longest_row: int) -> Any:
    """The base in the hardware's dtype (4-bit for QLoRA) with fresh, seeded LoRA adapters."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    # LoRA's A matrices are drawn at creation: seed first, so every run (and every process) starts the same.
    set_seed(config.training.seed)
    attention = training_attention(hardware, longest_row)
    model = load_model(base, hardware.dtype, hardware.device, config.quantization, attention)
    if config.quantization == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(config))


def build_trainer(
    config: NicheConfig,
    hardware: Hardware,
    model: Any,
    tokenizer: Any,
    train_encoded: list[EncodedExample],
    validation_encoded: list[EncodedExample],
    show_progress: bool,
    plan: TrainingPlan,
    micro_batch: MicroBatch,
) -> Any:
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    options: dict[str, Any] = {}
    trainer_class: Any = SupervisedOnlyTrainer
    collator: Any = PaddingCollator(tokenizer.pad_token_id)
    classify = isinstance(model, (HeadModel, TaggerModel))
    label_names: tuple[str, ...] = ("labels",)
    features = as_features
    if isinstance(model, TaggerModel):
        trainer_class, collator = TaggerTrainer, TaggerCollator(tokenizer.pad_token_id)
        options["compute_metrics"] = field_f1_metric(model.tagger)
        label_names, features = ("labels", "choice_labels"), tagged_features
    elif classify:
        trainer_class, collator = ClassifierTrainer, HeadCollator(tokenizer.pad_token_id)
        options["compute_metrics"] = accuracy_metric
    elif config.distill.teacher is not None:
        teacher, _, _ = load_specialist(config.distill.teacher, hardware.device, hardware.dtype)
        trainer_class, options = DistillTrainer, {"teacher": teacher, "settings": config.distill}
    trainer = trainer_class(
        model=model,
        args=training_arguments(config, hardware, checkpoint_dir_for(config), micro_batch, classify, label_names),
        train_dataset=features(train_encoded),
        eval_dataset=features(validation_encoded),
        data_collator=collator,
        processing_class=tokenizer,
        plan=plan,
        **options,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(PlannerCallback(plan))
    if show_progress:
        trainer.add_callback(RichProgressCallback(plan))
    settings = config.training
    if settings.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(settings.early_stopping_patience))
    if settings.forgetting_probe_every:
        trainer.add_callback(
            ForgettingProbeCallback(
                everyday_accuracy(tokenizer, settings.forgetting_probe_questions),
                settings.forgetting_probe_every,
                settings.forgetting_threshold,
                settings.forgetting_action,
            )
        )
    return trainer
