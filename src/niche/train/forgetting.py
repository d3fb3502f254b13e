"""Forgetting watched during training: everyday multiple-choice accuracy every N steps, against the base.

The baseline is the same model with its adapters switched off, measured before the first step; when the
relative drop passes the threshold the callback warns, or stops training (`forgetting_action: stop`). Each
measurement is added to the training log (and so to training_log.json and the ladder's plots).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from niche.probes import everyday_questions, multiple_choice_accuracy

log = logging.getLogger(__name__)


def everyday_accuracy(tokenizer: Any, count: int) -> Callable[[Any], float]:
    """A measurement: accuracy on the first `count` of niche's everyday questions (a fixed, seeded subset)."""

    questions = everyday_questions()[:: max(1, len(everyday_questions()) // count)][:count]

    def measure(model: Any) -> float:
        # The frozen base weights are flagged for the probe only: bf16 CPU linear layers over sliced inputs take a
        # weight-copying path when the weight is frozen (see niche.models.prepare_for_inference).
        frozen = [parameter for parameter in model.parameters() if not parameter.requires_grad]
        for parameter in frozen:
            parameter.requires_grad_(True)
        try:
            with torch.no_grad():
                return multiple_choice_accuracy(model, tokenizer, questions)
        finally:
            for parameter in frozen:
                parameter.requires_grad_(False)

    return measure


class ForgettingProbeCallback(TrainerCallback):
    def __init__(self, measure: Callable[[Any], float], every: int, threshold: float, action: str) -> None:
        self.measure = measure
        self.every = every
        self.threshold = threshold
        self.action = action
        self.baseline: float | None = None
        self.history: list[dict[str, float]] = []
        self.stopped_at: int | None = None

    def _run(self, model: Any) -> float:
        was_training = model.training
        model.eval()
        try:
            return self.measure(model)
        finally:
            model.train(was_training)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        with model.disable_adapter():
            self.baseline = self._run(model)
        log.info("forgetting probe: base accuracy %.3f", self.baseline)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every or self.baseline is None:
            return
        accuracy = self._run(model)
        change = (accuracy - self.baseline) / self.baseline if self.baseline else 0.0
        entry = {"step": state.global_step, "forgetting_probe_accuracy": accuracy, "forgetting_probe_change": change}
        self.history.append(entry)
        state.log_history.append(dict(entry))
        if change < -self.threshold:
            log.warning(
                "forgetting probe at step %d: everyday accuracy %.3f is %.1f%% below the base's %.3f (threshold %.1f%%)",
                state.global_step,
                accuracy,
                -100 * change,
                self.baseline,
                100 * self.threshold,
            )
            if self.action == "stop":
                self.stopped_at = state.global_step
                control.should_training_stop = True
