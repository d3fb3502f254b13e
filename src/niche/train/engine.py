"""The SFT engine: the transformers Trainer with niche's loss, collator and progress display."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import Trainer, TrainerCallback

from niche.data.template import IGNORE_INDEX, EncodedExample
from niche.train.budget import TrainingPlan, format_duration, planned_scheduler
from niche.train.loss import supervised_loss_sum


def _or_dash(value: float) -> str:
    """A loss, or '-' before the first evaluation."""
    return "-" if math.isnan(value) else f"{value:.4f}"


class PaddingCollator:
    """Right-pads a batch; padded positions get label -100 by position, never by token id (pad may equal eos)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"])
            labels[row, :length] = torch.tensor(feature["labels"])
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def as_features(encoded: Sequence[EncodedExample]) -> list[dict[str, list[int]]]:
    return [{"input_ids": example.input_ids, "labels": example.labels} for example in encoded]


class PlannedTrainer(Trainer):
    """A Trainer whose learning-rate schedule follows a TrainingPlan's horizon when the run has a time budget."""

    def __init__(self, *args: Any, plan: TrainingPlan | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.plan is None or self.plan.budget_s is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            schedule = getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
            self.lr_scheduler = planned_scheduler(optimizer or self.optimizer, self.plan, str(schedule))
        return self.lr_scheduler


class SupervisedOnlyTrainer(PlannedTrainer):
    """Trainer whose loss projects only supervised positions onto the vocabulary (see niche.train.loss)."""

    # The loss below is divided by the token count of the whole accumulated batch, so the Trainer must not rescale it.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Makes the Trainer count supervised tokens across the accumulated batch and pass them as num_items_in_batch.
        self.model_accepts_loss_kwargs = True

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        unwrapped = self.accelerator.unwrap_model(model)
        # A DDP/FSDP wrapper must see its own forward run, or gradients are not synchronised across processes.
        distributed = unwrapped is not model
        loss_sum, supervised = supervised_loss_sum(
            model if distributed else unwrapped,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["labels"],
            supervised_only_logits=not distributed,
        )
        if num_items_in_batch is None:
            loss = loss_sum / supervised.clamp(min=1)
        else:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:
                # num_items_in_batch was summed over processes, and DDP averages gradients over them.
                loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss


class TrackerCallback(TrainerCallback):
    """Training and validation loss, learning rate and grad norm to the MLflow run at every logging step."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            self.tracker.metrics(logs, step=state.global_step)


class RichProgressCallback(TrainerCallback):
    """One progress bar with loss, tokens/s and ETA instead of the Trainer's log dictionaries.

    With a time budget the bar's total follows the planned steps and the budget's use is shown beside it. Where
    output is not a terminal (CI logs, `| tee`), the same figures are printed as one line per log step.
    """

    def __init__(self, plan: TrainingPlan | None = None) -> None:
        self.plan = plan
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.started = 0.0
        self.loss = float("nan")
        self.eval_loss = float("nan")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f} · val {task.fields[eval_loss]:.4f} · {task.fields[tps]:.0f} tok/s"
            ),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[budget]}"),
        )
        self.progress.start()
        self.task_id = self.progress.add_task(
            "train",
            total=state.max_steps,
            completed=state.global_step,
            loss=float("nan"),
            eval_loss=float("nan"),
            tps=0.0,
            first_step=state.global_step,
            budget=self._budget_text(),
        )
        self.started = time.perf_counter()
        self.tokens_at_start = state.num_input_tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tokens_per_s = (state.num_input_tokens_seen - self.tokens_at_start) / elapsed
        self.progress.update(
            self.task_id,
            total=state.max_steps,
            completed=state.global_step,
            tps=tokens_per_s,
            budget=self._budget_text(),
        )

    def _budget_text(self) -> str:
        plan = self.plan
        if plan is None or plan.budget_s is None:
            return ""
        return f"· budget {format_duration(plan.elapsed())}/{format_duration(plan.budget_s)}"

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task_id, loss=logs["loss"])
        if "eval_loss" in logs:
            self.progress.update(self.task_id, eval_loss=logs["eval_loss"])
        if not self.progress.console.is_terminal and ("loss" in logs or "eval_loss" in logs):
            self._print_line(state)

    def _print_line(self, state: Any) -> None:
        task = self.progress.tasks[0]
        elapsed = time.perf_counter() - self.started
        done = max(state.global_step - task.fields.get("first_step", 0), 0)
        remaining = elapsed / done * (state.max_steps - state.global_step) if done else float("nan")
        self.progress.console.print(
            f"train step {state.global_step}/{state.max_steps} · loss {task.fields['loss']:.4f} · val {_or_dash(task.fields['eval_loss'])}"
            f" · {task.fields['tps']:.0f} tok/s · elapsed {elapsed:.0f}s · ETA {remaining:.0f}s {self._budget_text()}",
            highlight=False,
            soft_wrap=True,
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
