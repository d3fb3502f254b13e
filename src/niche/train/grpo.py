"""`training.method: grpo`: reinforcement learning with rewards, TRL's GRPOTrainer with LoRA.

The prompts are the training examples rendered with the specialist's template (the same text `serve` and
`eval` send), the references ride along as dataset columns for the rewards, and generation stops at the
template's end-of-turn tokens. Training starts from the bare base (fresh LoRA) or, with `grpo.start_from`,
from an SFT specialist's adapter, kept trainable, whose template it reuses. The result is an ordinary
specialist directory whose niche.json records the method, the rewards and the reward curve.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from niche.artifact import read_manifest, require_generative
from niche.config import NicheConfig
from niche.data.examples import Example
from niche.data.prepare import prepare_data
from niche.data.tasks import label_of
from niche.data.template import TemplateEncoder, specialist_template
from niche.errors import ConfigError, require_extra
from niche.hardware import detect_hardware
from niche.models import load_model, load_tokenizer, resolve_base
from niche.specialist import resolve_specialist_base
from niche.tracking import tracked_run
from niche.train.common import (
    TrainResult,
    build_manifest,
    checkpoint_dir_for,
    lora_config,
    write_trained_specialist,
)
from niche.train.engine import RichProgressCallback, TrackerCallback
from niche.train.recipe import DataProfile, apply_recipe, choose_recipe
from niche.train.rewards import build_reward

log = logging.getLogger(__name__)


def default_rewards(task_kind: str) -> list[dict[str, Any]]:
    return {
        "label": [{"name": "label", "weight": 1.0}, {"name": "label_set", "weight": 0.2}],
        "json": [{"name": "json", "weight": 0.5}, {"name": "exact_match", "weight": 1.0}],
    }.get(task_kind, [{"name": "token_f1", "weight": 1.0}])


def prompt_rows(
    encoder: TemplateEncoder, examples: list[Example], task_kind: str, labels: list[str] | None
) -> list[dict]:
    """GRPO's dataset: the rendered prompt, the reference answer and the label set for every example."""
    rows = []
    for example in examples:
        prompt = encoder.template.render_prompt(encoder.tokenizer, example)
        reference = label_of(example) if task_kind == "label" else example.response
        rows.append({"prompt": prompt, "reference": reference, "labels": json.dumps(labels or [])})
    # TRL tokenizes string prompts itself: make sure it sees the very tokens niche trains and serves with.
    if rows and encoder.tokenizer(rows[0]["prompt"])["input_ids"] != encoder.prompt_ids(examples[0]):
        raise ConfigError(
            "the tokenizer adds special tokens to the rendered prompt, so GRPO would see a different prompt from "
            "serve and eval (template drift); use a tokenizer without automatic BOS for GRPO"
        )
    return rows


def reward_summary(log_history: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean reward over the first and the last tenth of the logged steps."""
    rewards = [entry["reward"] for entry in log_history if "reward" in entry]
    if not rewards:
        return {"reward_first": None, "reward_last": None}
    tenth = max(1, len(rewards) // 10)
    return {"reward_first": statistics.fmean(rewards[:tenth]), "reward_last": statistics.fmean(rewards[-tenth:])}


def train_grpo(config: NicheConfig, *, show_progress: bool = True, callbacks: Sequence[Any] = ()) -> Any:
    require_extra("train", ("accelerate", "trl", "datasets"), "GRPO training")
    from accelerate import PartialState
    from peft import PeftModel
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    for field_name in ("time_budget", "early_stopping_patience"):
        if getattr(config.training, field_name) is not None:
            raise ConfigError(
                f"training.{field_name}: GRPO runs its steps (training.max_steps or epochs) and has no validation loss to "
                "plan or stop on; remove it, or train with method: sft"
            )
    settings = config.grpo
    hardware = detect_hardware()
    start = settings.start_from
    if start is not None:
        manifest = read_manifest(start)
        require_generative(
            manifest,
            "grpo.start_from:",
            "samples no completions to reward",
            "start from a generative specialist (training.objective: generate) or from the base",
        )
        base = resolve_specialist_base(manifest)
        template = manifest.template.to_template()
    else:
        base = resolve_base(config.base)
    tokenizer = load_tokenizer(base)
    data = prepare_data(config)
    profile = DataProfile(data.task_kind, len(data.train), len(data.labels or []) or None, None, None)
    recipe = choose_recipe(config, profile, objective="grpo")
    config = apply_recipe(config, recipe)
    if start is None:
        template = specialist_template(tokenizer, config.prompt, data.labels)
    encoder = TemplateEncoder(tokenizer, template)
    rewards = settings.rewards or default_rewards(data.task_kind)
    reward_functions = [build_reward(spec, settings.group_size) for spec in rewards]
    rows = prompt_rows(encoder, data.train, data.task_kind, data.labels)

    from datasets import Dataset

    set_seed(config.training.seed)
    model = load_model(base, hardware.dtype, hardware.device)
    model.generation_config.eos_token_id = list(encoder.stop_ids)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if start is not None:
        model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
    else:
        peft_config = lora_config(config)
    checkpoint_dir = checkpoint_dir_for(config)
    arguments = GRPOConfig(
        output_dir=str(checkpoint_dir),
        num_generations=settings.group_size,
        per_device_train_batch_size=settings.group_size * settings.prompts_per_step,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        beta=settings.kl,
        reward_weights=[float(spec.get("weight", 1.0)) for spec in rewards],
        learning_rate=config.training.learning_rate,
        lr_scheduler_type=config.training.scheduler,
        warmup_steps=config.training.warmup_ratio,
        weight_decay=config.training.weight_decay,
        max_grad_norm=config.training.max_grad_norm,
        max_steps=config.training.max_steps if config.training.max_steps > 0 else -1,
        num_train_epochs=config.training.epochs,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.training.seed,
        bf16=hardware.bf16,
        use_cpu=hardware.device == "cpu",
        remove_unused_columns=False,
        disable_tqdm=True,
        # TRL turns checkpointing on by default; for LoRA on a small model it only re-computes activations.
        gradient_checkpointing=False,
    )
    tracking_on = config.tracking.enabled and PartialState().is_main_process
    with tracked_run(config.experiment, "train", enabled=tracking_on, run_name=f"grpo {config.name}") as tracker:
        tracker.params(json.loads(config.model_dump_json()) | {"method": "grpo"})
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_functions,
            args=arguments,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        if show_progress:
            trainer.add_callback(RichProgressCallback())
        if tracker.active:
            trainer.add_callback(TrackerCallback(tracker))
        for callback in callbacks:
            trainer.add_callback(callback)
        started = time.perf_counter()
        output = trainer.train()
        runtime = time.perf_counter() - started
        history = trainer.state.log_history
        judge = next((function for function in reward_functions if hasattr(function, "usage")), None)
        metrics = {
            "method": "grpo",
            "train_loss": output.training_loss,
            "steps": trainer.state.global_step,
            "train_runtime_s": runtime,
            "seconds_per_step": runtime / max(1, trainer.state.global_step),
            "prompts": len(rows),
            **reward_summary(history),
            "reward_curve": [entry["reward"] for entry in history if "reward" in entry],
        }
        if judge is not None:
            metrics["judge"] = {key: value for key, value in vars(judge.usage).items() if key != "failure_reasons"}
        trained = trainer.model
        manifest = build_manifest(config, base, hardware, trained, encoder, data, metrics, 0, recipe)
        manifest.hyperparameters |= {"method": "grpo", "grpo": settings.model_dump(mode="json") | {"rewards": rewards}}
        if start is not None:
            manifest.hyperparameters["grpo"]["start_from"] = str(Path(start).resolve())
        write_trained_specialist(config.specialist_dir, trained, tokenizer, base, manifest, [], history)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        tracker.metrics({key: value for key, value in metrics.items() if isinstance(value, (int, float))})
        tracker.artifacts(config.specialist_dir, "specialist")
        return TrainResult(config.specialist_dir, manifest, history, True, tracker.run_id)
