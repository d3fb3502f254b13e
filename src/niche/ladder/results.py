"""What a ladder run produces: one scored rung per way of answering, the report that holds them, and the
recommendation (the cheapest rung that reaches the target)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from niche.eval.baselines import BASELINES

# Label tasks add the classic baselines (niche.eval.baselines.BASELINES) as rungs: no language model at all.
RUNGS = (("base", False, False), ("base+rag", False, True), ("specialist", True, False), ("specialist+rag", True, True))


@dataclass
class Rung:
    name: str
    metrics: dict[str, Any]
    headline: float
    examples_per_s: float
    tokens_per_s: float
    prompt_tokens_per_request: float
    latency_p50_ms: float
    latency_p95_ms: float
    cost_per_million_tokens: float
    cost_per_thousand_requests: float
    predictions: list[str] = field(default_factory=list, repr=False)
    build_seconds: float | None = None  # what it took to get: the specialist's training, a baseline's fit


@dataclass
class LadderReport:
    specialist: str
    test_rows: int
    task_kind: str
    headline_metric: str
    target: float
    price_per_hour: float
    rungs: list[Rung]
    recommendation: str
    reason: str
    retrieval: dict[str, Any] = field(default_factory=dict)
    forgetting: dict[str, Any] = field(default_factory=dict)
    training_log: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)
    engines: list[dict[str, Any]] = field(default_factory=list)  # measured serving options, costed
    run_id: str | None = None  # the MLflow run; write_ladder_report attaches the report to it

    def to_json(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload.pop("references")
        payload.pop("run_id")
        for rung in payload["rungs"]:
            rung.pop("predictions")
        return payload


def recommend(rungs: list[Rung], target: float) -> tuple[str, str]:
    """The cheapest rung (per request) reaching the target; otherwise the best-scoring one, saying so. A classic
    baseline that reaches the target is recommended like any rung: it needs no language model at all."""
    meeting = [rung for rung in rungs if rung.headline >= target]
    if meeting:
        choice = min(meeting, key=lambda rung: rung.cost_per_thousand_requests)
        reason = (
            f"{choice.name} reaches the target {target:g} ({choice.headline:.3f}) at the lowest cost per request "
            f"among the {len(meeting)} rung(s) that do"
        )
        if choice.name in BASELINES:
            specialist = next((rung for rung in rungs if rung.name == "specialist"), None)
            versus = f" (the specialist scores {specialist.headline:.3f})" if specialist else ""
            reason += f"; a classic baseline needs no language model: use it{versus}"
        return choice.name, reason
    best = max(rungs, key=lambda rung: rung.headline)
    return best.name, f"no rung reaches the target {target:g}; {best.name} scores highest ({best.headline:.3f})"
