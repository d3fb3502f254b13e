import json
import time

import pytest

from niche.config import load_config, parse_duration
from niche.errors import ConfigError
from niche.train import train
from niche.train.budget import EVALUATIONS_PER_RUN, TrainingPlan, derived_eval_every


@pytest.mark.parametrize(
    ("text", "seconds"), [(1800, 1800.0), ("1800", 1800.0), ("90s", 90.0), ("30m", 1800.0), ("1h30m", 5400.0)]
)
def test_durations_read_as_seconds(text, seconds) -> None:
    assert parse_duration(text) == seconds


def test_a_budget_that_is_not_a_duration_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"training\.time_budget.*not a duration"):
        load_config(None, ["training.time_budget=soon"])


def test_the_schedule_warms_up_then_decays_to_zero_at_the_planned_horizon() -> None:
    plan = TrainingPlan(warmup_ratio=0.1, eval_every=None)
    plan.begin(1000)
    plan.total_steps = 100  # the budget cut the run to 100 steps: warmup and decay follow
    factors = [plan.learning_rate_factor(step, "cosine") for step in range(101)]
    assert factors[0] < factors[5] < factors[9] <= 1.0, "linear warmup over the first 10 steps"
    assert factors[10] == pytest.approx(1.0) and factors[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])), "then it only decays"
    assert plan.learning_rate_factor(50, "linear") == pytest.approx(1 - 40 / 90)


def test_validation_cadence_keeps_validation_under_a_tenth_of_training() -> None:
    # Cheap validation: about EVALUATIONS_PER_RUN passes a run.
    assert derived_eval_every(800, seconds_per_step=1.0, seconds_per_validation=2.0) == 800 // EVALUATIONS_PER_RUN
    # Expensive validation (60 s a pass against 1 s a step): no more often than every 600 steps.
    assert derived_eval_every(800, seconds_per_step=1.0, seconds_per_validation=60.0) == 600


def test_the_plan_fits_the_steps_left_in_the_budget() -> None:
    plan = TrainingPlan(warmup_ratio=0.0, eval_every=None, budget_s=100.0, started=time.monotonic())
    plan.begin(10_000)
    plan.seconds_per_step, plan.eval_seconds, plan.save_seconds = 0.5, 2.0, 0.5
    plan.replan(step=10)
    reserve = plan.end_reserve()
    left = plan.total_steps - 10
    spent = left * 0.5 + left / plan.eval_every * 2.5
    assert 90.0 < spent + reserve <= 100.0, "the planned steps fill the budget, no more"


def test_a_tiny_model_stops_within_its_time_budget(tiny_config) -> None:
    budget = 12.0
    config = tiny_config("training.max_steps=-1", "training.epochs=10000", f"training.time_budget={budget}")
    config = config.model_copy(update={"training": config.training.model_copy(update={"eval_every": None})})
    started = time.monotonic()
    result = train(config, show_progress=False)
    elapsed = time.monotonic() - started
    plan = result.manifest.metrics["plan"]
    assert plan["stopped_by"] == "budget" and plan["planned_steps"] < plan["ceiling_steps"]
    assert budget * 0.75 <= elapsed <= budget * 1.05, f"ran {elapsed:.1f} s on a {budget:.0f} s budget"
    rates = [row["learning_rate"] for row in result.log_history if "learning_rate" in row]
    assert rates[-1] < 0.2 * max(rates), "the schedule decayed towards the planned end"
    evaluations = [row for row in result.log_history if "eval_loss" in row]
    assert evaluations and evaluations[-1]["step"] == result.manifest.metrics["steps"], "the last step is validated"
    assert plan["validation_seconds"] > 0 and plan["training_seconds"] + plan["validation_seconds"] <= elapsed
    assert plan["validation_share"] <= 0.15, "a derived cadence keeps validation near a tenth of the time"


def test_early_stopping_ends_a_run_whose_validation_stops_improving(tiny_config) -> None:
    config = tiny_config(
        "training.max_steps=40",
        "training.eval_every=2",
        "training.early_stopping_patience=1",
        "training.learning_rate=1e-12",  # nothing moves: the second validation cannot improve on the first
    )
    result = train(config, show_progress=False)
    assert result.manifest.metrics["steps"] == 4
    assert result.manifest.metrics["plan"]["stopped_by"] == "plateau"


def test_the_budget_and_plan_are_recorded_in_the_manifest(tiny_config) -> None:
    result = train(tiny_config("training.time_budget=5m"), show_progress=False)
    manifest = json.loads((result.specialist_dir / "niche.json").read_text())
    assert manifest["config"]["training"]["time_budget"] == 300.0
    assert manifest["metrics"]["plan"]["budget_s"] == 300.0 and manifest["metrics"]["plan"]["stopped_by"] is None
