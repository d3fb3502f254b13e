"""Training to a wall-clock budget, with validation that costs little.

The planner times every optimizer step, validation pass and checkpoint save as training runs, and keeps two
numbers current: how many steps fit in what is left of the budget, and how often to validate so that validation
and its checkpoints take at most a tenth of the training time. The learning-rate schedule reads the planned
horizon, so warmup and decay end where training ends instead of where an epoch count would have put them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from niche.errors import ConfigError

# Share of the training time that validation (passes and checkpoint saves) may take when eval_every is derived.
VALIDATION_SHARE = 0.1
# Evaluations over a run when they are cheap: enough to find the best checkpoint and to notice a plateau.
EVALUATIONS_PER_RUN = 8
# Steps timed before the first plan; the very first step (allocations, lazy initialisation) is not counted.
CALIBRATION_STEPS = 3
# Kept back for writing the specialist and its tracking, besides the final validation pass and save: this many
# seconds, or this share of the budget if more.
WRITE_RESERVE_S = 1.0
WRITE_RESERVE_SHARE = 0.01
# Learning-rate schedules that can follow a horizon planned while training runs.
PLANNED_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
# A step count no run reaches.
NEVER = 2**62


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


@dataclass
class TrainingPlan:
    """Steps, warmup and validation cadence, re-planned from measured times while training runs."""

    warmup_ratio: float
    eval_every: int | None  # the user's eval_every, kept as given; None: derived from measured times
    max_steps: int = 0  # the ceiling set by epochs or training.max_steps (the Trainer's count, at train begin)
    budget_s: float | None = None
    started: float = field(default_factory=time.monotonic)  # when the run began (model loading included)
    total_steps: int = 0  # the planned horizon: the schedule decays to zero here and training stops here
    seconds_per_step: float | None = None
    eval_seconds: float | None = None  # one validation pass, measured (estimated before the first)
    save_seconds: float = 1.0  # one checkpoint save, measured after the first
    validation_cost: float = 0.0  # validation tokens / training tokens per step: estimates the first pass
    stopped_by: str | None = None  # "budget" or "plateau" when training ended before max_steps
    spent_training_s: float = 0.0  # measured: optimizer steps
    spent_validating_s: float = 0.0  # measured: validation passes and the checkpoint saves that follow them
    eval_every_given: bool = field(init=False)

    def __post_init__(self) -> None:
        self.eval_every_given = self.eval_every is not None

    def begin(self, max_steps: int) -> None:
        """The ceiling is known once the Trainer has counted its batches."""
        self.max_steps = self.total_steps = max_steps
        if not self.eval_every_given:
            self.eval_every = derived_eval_every(max_steps, 1.0, 0.0)

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.total_steps)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def learning_rate_factor(self, step: int, schedule: str) -> float:
        """The multiplier of the peak learning rate at `step`, for the current horizon."""
        warmup, total = self.warmup_steps, max(self.total_steps, 1)
        if schedule != "constant" and step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    def replan(self, step: int) -> None:
        """Update the horizon and the validation cadence from the times measured so far."""
        if self.seconds_per_step is None:
            return
        validation = (self.eval_seconds or 0.0) + self.save_seconds
        # The horizon and the cadence depend on each other: a pass or two settles both.
        for _ in range(3):
            if not self.eval_every_given:
                self.eval_every = derived_eval_every(self.total_steps, self.seconds_per_step, validation)
            if self.budget_s is None:
                return
            assert self.eval_every is not None
            left = self.budget_s - self.elapsed() - self.end_reserve()
            per_step = self.seconds_per_step + validation / self.eval_every
            self.total_steps = max(step, min(self.max_steps, step + max(0, math.floor(left / per_step))))

    def end_reserve(self) -> float:
        """Time the run needs after its last step: a final validation pass, a save, and writing the specialist."""
        writing = max(WRITE_RESERVE_S, WRITE_RESERVE_SHARE * (self.budget_s or 0.0))
        return (self.eval_seconds or 0.0) + 2 * self.save_seconds + writing

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.elapsed() + self.end_reserve() >= self.budget_s

    def summary(self) -> dict[str, Any]:
        return {
            "budget_s": self.budget_s,
            "planned_steps": self.total_steps,
            "ceiling_steps": self.max_steps,
            "warmup_steps": self.warmup_steps,
            "eval_every": self.eval_every,
            "seconds_per_step": self.seconds_per_step,
            "eval_seconds": self.eval_seconds,
            "save_seconds": self.save_seconds,
            "stopped_by": self.stopped_by,
            "training_seconds": round(self.spent_training_s, 2),
            "validation_seconds": round(self.spent_validating_s, 2),
            "validation_share": round(self.validation_share(), 4),
        }

    def validation_share(self) -> float:
        """The share of step-and-validation time that went to validating (the final pass included)."""
        total = self.spent_training_s + self.spent_validating_s
        return self.spent_validating_s / total if total else 0.0


def derived_eval_every(total_steps: int, seconds_per_step: float, seconds_per_validation: float) -> int:
    """Validate about EVALUATIONS_PER_RUN times, but never so often that validation (pass and checkpoint) takes
    more than VALIDATION_SHARE of the training time."""
    cheap_enough = math.ceil(seconds_per_validation / (VALIDATION_SHARE * max(seconds_per_step, 1e-9)))
    return max(1, math.ceil(total_steps / EVALUATIONS_PER_RUN), cheap_enough)


def planned_scheduler(optimizer: Any, plan: TrainingPlan, schedule: str) -> Any:
    """A LambdaLR whose warmup and decay follow the plan's current horizon."""
    from torch.optim.lr_scheduler import LambdaLR

    if schedule not in PLANNED_SCHEDULES:
        raise ConfigError(
            f"training.scheduler {schedule!r}: with a time budget the schedule follows the planned number of steps; "
            f"use one of {', '.join(PLANNED_SCHEDULES)}"
        )
    return LambdaLR(optimizer, lambda step: plan.learning_rate_factor(step, schedule))


class PlannerCallback(TrainerCallback):
    """Times steps, validation passes and saves; re-plans after each step; stops at the planned step."""

    def __init__(self, plan: TrainingPlan) -> None:
        self.plan = plan
        self.step_started = 0.0
        self.step_seconds: list[float] = []
        self.after_step = 0.0  # when the last step ended: validation and saving follow it
        self.last_validated = 0  # the step of the last validation pass

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.plan.begin(state.max_steps)
        self.last_validated = state.global_step
        self._apply(state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_started = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer's own check (run before this callback) stops at the horizon planned after the last step;
        # a re-plan now must not move the horizon past a step the run is already stopping at.
        reached_horizon = state.global_step >= state.max_steps
        now = time.monotonic()
        self.step_seconds.append(now - self.step_started)
        self.after_step = now
        plan = self.plan
        plan.spent_training_s += now - self.step_started
        timed = self.step_seconds[1:]  # the first step pays one-off costs
        if len(timed) >= CALIBRATION_STEPS:
            plan.seconds_per_step = sum(timed) / len(timed)
            if plan.eval_seconds is None:
                # Until the first pass is timed: a forward pass costs about a third of a training step per token.
                plan.eval_seconds = plan.seconds_per_step * plan.validation_cost / 3
        plan.replan(state.global_step)
        self._apply(state)
        # Validation is counted from the last pass, not by `step % eval_every`: the cadence moves as the plan does,
        # and a modulus of a moving number would fire passes a few steps apart.
        if plan.eval_every is not None and state.global_step - self.last_validated >= plan.eval_every:
            control.should_evaluate = control.should_save = True
        if reached_horizon or state.global_step >= plan.total_steps or plan.over_budget():
            if state.global_step < plan.max_steps:
                plan.stopped_by = "budget"
            plan.total_steps = state.global_step
            state.max_steps = state.global_step
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last_validated = state.global_step
        self.plan.eval_seconds = time.monotonic() - self.after_step
        self.plan.spent_validating_s += self.plan.eval_seconds
        self.after_step = time.monotonic()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = time.monotonic() - self.after_step
        self.plan.save_seconds = max(saved, 0.05)
        self.plan.spent_validating_s += saved

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.plan.stopped_by is None and state.global_step < self.plan.total_steps:
            self.plan.stopped_by = "plateau"

    def _apply(self, state: Any) -> None:
        state.max_steps = self.plan.total_steps
        # The Trainer's own `step % eval_steps` trigger is kept from firing (this callback decides), but it still
        # validates the final step, which no cadence lands on.
        state.eval_steps = state.save_steps = NEVER
