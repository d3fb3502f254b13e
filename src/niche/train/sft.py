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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niche.config import NicheConfig
from niche.data.examples import Example
from niche.data.formats import load_examples
from niche.data.tasks import check_labels_known, detect_task_kind, label_set
from niche.data.template import EncodedExample, TemplateEncoder, build_template
from niche.errors import ConfigError, DataError
from niche.hardware import Hardware, detect_hardware, training_attention
from niche.io import atomic_directory, sha256_of_file, write_json_atomic, write_text_atomic
from niche.models import ResolvedBase, load_model, load_tokenizer, resolve_base
from niche.specialist import (
    MANIFEST_NAME,
    BaseModelRecord,
    DataFingerprint,
    SpecialistManifest,
    TaskRecord,
    TemplateRecord,
    library_versions,
)
from niche.tracking import tracked_run

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    specialist_dir: Path
    manifest: SpecialistManifest
    log_history: list[dict[str, Any]] = field(default_factory=list)
    is_main_process: bool = True
    run_id: str | None = None  # the MLflow run, when tracked


@dataclass
class PreparedData:
    train: list[Example]
    validation: list[Example]
    data_format: str
    task_kind: str
    labels: list[str] | None
    fingerprints: dict[str, DataFingerprint]


def prepare_data(config: NicheConfig) -> PreparedData:
    """Load train and validation examples, detect the task, and check labels agree between them."""
    if config.data.train is None:
        raise ConfigError("data.train: no training file; set it, or run `niche pipeline run` to curate pipeline.inputs")
    train_read = load_examples(config.data.train, config.data.format, config.data.fields)
    fingerprints = {"train": _fingerprint(config.data.train, len(train_read.examples))}
    train_examples = train_read.examples
    if config.data.validation is not None:
        validation = load_examples(config.data.validation, train_read.format, config.data.fields).examples
        fingerprints["validation"] = _fingerprint(config.data.validation, len(validation))
    else:
        train_examples, validation = split_validation(
            train_examples, config.data.validation_fraction, config.training.seed
        )
    if len(train_examples) < 2 or not validation:
        raise DataError(config.data.train, f"too few examples to train ({len(train_read.examples)}); need at least 3")
    task_kind = detect_task_kind(train_read.examples, train_read.format, config.data.task)
    labels = label_set(train_read.examples) if task_kind == "label" else None
    if labels:
        check_labels_known(validation, labels)
    return PreparedData(train_examples, validation, train_read.format, task_kind, labels, fingerprints)


def split_validation(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    held_out = max(1, round(len(shuffled) * fraction))
    return shuffled[held_out:], shuffled[:held_out]


def _fingerprint(path: Path, rows: int) -> DataFingerprint:
    return DataFingerprint(path=str(path), sha256=sha256_of_file(path), rows=rows)


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


def lora_config(config: NicheConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def training_arguments(config: NicheConfig, hardware: Hardware, checkpoint_dir: Path) -> Any:
    import torch
    from transformers import TrainingArguments

    settings = config.training
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_ratio,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        seed=settings.seed,
        data_seed=settings.seed,
        eval_strategy="steps",
        eval_steps=settings.eval_every,
        save_strategy="steps",
        save_steps=settings.eval_every,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(10, settings.eval_every)),
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,
        label_names=["labels"],
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        use_cpu=hardware.device == "cpu",
        # The base is loaded in this dtype; PEFT keeps the LoRA weights in fp32, and autocast runs the matmuls.
        bf16=hardware.bf16,
        fp16=hardware.dtype == torch.float16,
        dataloader_num_workers=0,
    )


def checkpoint_dir_for(config: NicheConfig) -> Path:
    return config.output_dir / f".{config.name}.checkpoints"


def train(config: NicheConfig, *, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Train a LoRA specialist as configured and write it to config.output_dir / config.name."""
    from accelerate import PartialState

    if config.training.method == "grpo":
        from niche.train.grpo import train_grpo

        return train_grpo(config, show_progress=show_progress)

    hardware = detect_hardware()
    # Under a multi-process launcher the first process converts (or hashes) the base; the others wait for its cache.
    with PartialState().main_process_first():
        base = resolve_base(config.base)
    tokenizer = load_tokenizer(base)
    data = prepare_data(config)
    template = build_template(tokenizer, config.prompt.system_prompt, config.prompt.chat_template, data.labels)
    encoder = TemplateEncoder(tokenizer, template)
    train_encoded, rejects = encode_examples(encoder, data.train, config.training.max_seq_length)
    validation_encoded, validation_rejects = encode_examples(encoder, data.validation, config.training.max_seq_length)
    rejects += validation_rejects
    replayed = 0
    if config.data.replay is not None:
        replay_encoded, replay_rejects = encode_replay(config, tokenizer, template, len(data.train))
        train_encoded += replay_encoded
        rejects += replay_rejects
        replayed = len(replay_encoded)
        data.fingerprints["replay"] = _fingerprint(config.data.replay, replayed)
    if not train_encoded or not validation_encoded:
        raise DataError(
            config.data.train, f"every row is longer than training.max_seq_length={config.training.max_seq_length}"
        )
    if rejects:
        log.warning("%d row(s) longer than max_seq_length were left out; see rejects.jsonl", len(rejects))
    checkpoint_dir = checkpoint_dir_for(config)
    if resume and not any(checkpoint_dir.glob("checkpoint-*")):
        raise ConfigError(f"--resume: no checkpoint to resume from in {checkpoint_dir}")

    longest_row = max(len(item.input_ids) for item in train_encoded + validation_encoded)
    # Only the main process of a multi-process run talks to MLflow.
    tracking_on = config.tracking.enabled and PartialState().is_main_process
    with tracked_run(config.experiment, "train", enabled=tracking_on, run_name=f"train {config.name}") as tracker:
        tracker.params(json.loads(config.model_dump_json()) | {"base.sha256": base.weights_sha256})
        fingerprints = {split: fingerprint.model_dump() for split, fingerprint in data.fingerprints.items()}
        tracker.tags({f"data.{split}.sha256": fingerprint["sha256"] for split, fingerprint in fingerprints.items()})
        tracker.artifact_json(fingerprints, "data.json")
        model = build_lora_model(config, base, hardware, longest_row)
        trainer = build_trainer(config, hardware, model, tokenizer, train_encoded, validation_encoded, show_progress)
        if tracker.active:
            from niche.train.engine import TrackerCallback

            trainer.add_callback(TrackerCallback(tracker))
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=True if resume else None)
        runtime = time.perf_counter() - started
        metrics = {
            "train_loss": output.training_loss,
            "eval_loss": trainer.evaluate()["eval_loss"],
            "best_step": trainer.state.best_global_step,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_runtime_s": runtime,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "tokens_per_s": trainer.state.num_input_tokens_seen / runtime if runtime else 0.0,
            "train_examples": len(train_encoded),
            "validation_examples": len(validation_encoded),
            "replay_examples": replayed,
        }
        probe = next(
            (callback for callback in trainer.callback_handler.callbacks if hasattr(callback, "stopped_at")), None
        )
        if probe is not None:
            metrics |= {
                "forgetting_probe_base_accuracy": probe.baseline,
                "forgetting_probe": probe.history,
                "forgetting_probe_stopped_at": probe.stopped_at,
            }
        manifest = build_manifest(config, base, hardware, model, encoder, data, metrics, len(rejects))
        if trainer.is_world_process_zero():
            write_specialist(
                config.specialist_dir, model, tokenizer, base, manifest, rejects, trainer.state.log_history
            )
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        result = TrainResult(
            config.specialist_dir, manifest, trainer.state.log_history, trainer.is_world_process_zero()
        )
        if result.is_main_process:
            tracker.metrics({key: value for key, value in result.manifest.metrics.items() if key != "forgetting_probe"})
            tracker.artifacts(result.specialist_dir, "specialist")
        result.run_id = tracker.run_id
    return result


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
) -> Any:
    from transformers.trainer_callback import PrinterCallback

    from niche.train.engine import PaddingCollator, RichProgressCallback, SupervisedOnlyTrainer, as_features

    options: dict[str, Any] = {}
    trainer_class: Any = SupervisedOnlyTrainer
    if config.distill.teacher is not None:
        from niche.distill import DistillTrainer
        from niche.specialist import load_specialist

        teacher, _, _ = load_specialist(config.distill.teacher, hardware.device, hardware.dtype)
        trainer_class, options = DistillTrainer, {"teacher": teacher, "settings": config.distill}
    trainer = trainer_class(
        model=model,
        args=training_arguments(config, hardware, checkpoint_dir_for(config)),
        train_dataset=as_features(train_encoded),
        eval_dataset=as_features(validation_encoded),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        **options,
    )
    trainer.remove_callback(PrinterCallback)
    if show_progress:
        trainer.add_callback(RichProgressCallback())
    settings = config.training
    if settings.forgetting_probe_every:
        from niche.train.forgetting import ForgettingProbeCallback, everyday_accuracy

        trainer.add_callback(
            ForgettingProbeCallback(
                everyday_accuracy(tokenizer, settings.forgetting_probe_questions),
                settings.forgetting_probe_every,
                settings.forgetting_threshold,
                settings.forgetting_action,
            )
        )
    return trainer


def build_manifest(
    config: NicheConfig,
    base: ResolvedBase,
    hardware: Hardware,
    model: Any,
    encoder: TemplateEncoder,
    data: PreparedData,
    metrics: dict[str, Any],
    rejected_rows: int,
) -> SpecialistManifest:
    return SpecialistManifest(
        name=config.name,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        base=BaseModelRecord(
            spec=base.spec,
            kind=base.kind,
            weights_sha256=base.weights_sha256,
            model_type=model.get_base_model().config.model_type,
        ),
        template=TemplateRecord(
            system_prompt=encoder.template.system_prompt,
            chat_template=encoder.template.chat_template,
            stop_token_ids=encoder.stop_ids,
        ),
        task=TaskRecord(kind=data.task_kind, labels=data.labels, data_format=data.data_format),
        data=data.fingerprints,
        hyperparameters={
            "lora": config.lora.model_dump(),
            "training": config.training.model_dump(),
            "quantization": config.quantization,
        },
        metrics=metrics,
        rejected_rows=rejected_rows,
        hardware=hardware.description,
        versions=library_versions(),
        config=json.loads(config.model_dump_json()),
    )


def write_specialist(
    target: Path,
    model: Any,
    tokenizer: Any,
    base: ResolvedBase,
    manifest: SpecialistManifest,
    rejects: list[dict[str, Any]],
    log_history: list[dict[str, Any]],
) -> None:
    """Adapter, tokenizer (carrying the exact chat template), manifest, rejects and loss log, renamed into place whole."""
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.chat_template = manifest.template.chat_template
        tokenizer.save_pretrained(staging)
        _point_adapter_at_base(staging, base)
        write_json_atomic(staging / "training_log.json", log_history)
        if rejects:
            write_text_atomic(
                staging / "rejects.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rejects)
            )
        write_json_atomic(staging / MANIFEST_NAME, json.loads(manifest.model_dump_json()))


def _point_adapter_at_base(directory: Path, base: ResolvedBase) -> None:
    """PEFT records the path it loaded from; keep the checkpoint directory so PeftModel.from_pretrained finds it."""
    config_path = directory / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = str(base.directory)
    write_json_atomic(config_path, adapter_config)
