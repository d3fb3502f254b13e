"""`niche watch DATA_DIR`: start a pipeline run when new data calls for one.

A check compares the examples in DATA_DIR now with those the last successful run trained on (a digest per
row, kept in the pipeline's work directory) and fires when any trigger does:
- at least `watch.min_new_examples` rows are new;
- a label appears that the last run never saw (`watch.new_labels`);
- the new rows' label distribution shifted from the last run's: population stability index at or above
  `watch.psi_threshold` (0.2 is the customary "significant shift"), or a chi-square goodness-of-fit test
  below `watch.chi2_alpha`; either only once `watch.shift_min_rows` new rows exist;
- the deployed champion's headline metric on the new rows is below `watch.min_quality`.
The first check, with no earlier run, always fires. A run that fails leaves the state as it was, so the next
check fires again. `--once` checks one time (for cron); otherwise file events (watchdog) wake a check once
writes have settled, with a periodic check as a fallback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from niche.artifact import is_specialist
from niche.config import NicheConfig, WatchSettings
from niche.curate import example_row
from niche.data.examples import Example
from niche.data.formats import read_examples
from niche.errors import ConfigError, require_extra
from niche.eval import evaluate
from niche.io import write_json_atomic, write_jsonl_atomic
from niche.pipeline import PipelineResult, StageFailed, example_files, run_pipeline

log = logging.getLogger(__name__)


def row_digest(example: Example) -> str:
    payload = [example.context or "", [turn["content"] for turn in example.messages], example.response]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:32]


@dataclass
class DataSnapshot:
    """What a pipeline run trained on: a digest per row and the label counts."""

    digests: set[str] = field(default_factory=set)
    labels: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"digests": sorted(self.digests), "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> DataSnapshot:
        return cls(set(payload["digests"]), Counter(payload["labels"]))


def read_data(data_dir: Path) -> list[Example]:
    """Every example under DATA_DIR; unreadable rows are left to curate, which rejects them with a reason."""
    examples: list[Example] = []
    for path in example_files([data_dir]):
        examples += read_examples(path).examples
    return examples


def snapshot_of(examples: list[Example]) -> DataSnapshot:
    return DataSnapshot(
        {row_digest(example) for example in examples},
        Counter(example.label for example in examples if example.label is not None),
    )


def population_stability_index(expected: Counter, actual: Counter, floor: float = 1e-4) -> float:
    """PSI = sum over labels of (a - e) * ln(a / e), with shares floored so an empty label stays finite."""
    labels = set(expected) | set(actual)
    expected_total, actual_total = sum(expected.values()) or 1, sum(actual.values()) or 1
    psi = 0.0
    for label in labels:
        e = max(expected[label] / expected_total, floor)
        a = max(actual[label] / actual_total, floor)
        psi += (a - e) * math.log(a / e)
    return psi


def chi_square_p_value(expected: Counter, actual: Counter) -> float:
    """Goodness of fit of the new rows' label counts to the earlier shares (add-one smoothed, so a new label
    with no earlier rows does not divide by zero)."""
    from scipy.stats import chisquare

    labels = sorted(set(expected) | set(actual))
    if len(labels) < 2:
        return 1.0
    smoothed = [expected[label] + 1 for label in labels]
    total = sum(actual[label] for label in labels)
    expected_counts = [count / sum(smoothed) * total for count in smoothed]
    return float(chisquare([actual[label] for label in labels], expected_counts).pvalue)


@dataclass
class TriggerCheck:
    fire: bool
    reasons: list[str]
    rows: int
    new_rows: int
    new_labels: list[str] = field(default_factory=list)
    shift: dict[str, Any] = field(default_factory=dict)
    quality: float | None = None


def check_triggers(
    previous: DataSnapshot | None,
    examples: list[Example],
    settings: WatchSettings,
    quality_on: Callable[[list[Example]], float | None] | None = None,
) -> TriggerCheck:
    """Which triggers fire for `examples` (all rows in the data directory) against the last run's snapshot."""
    if previous is None:
        return TriggerCheck(True, ["first run: no earlier pipeline run on this data"], len(examples), len(examples))
    new = [example for example in examples if row_digest(example) not in previous.digests]
    check = TriggerCheck(False, [], len(examples), len(new))
    if len(new) >= settings.min_new_examples:
        check.reasons.append(f"{len(new)} new examples (trigger at {settings.min_new_examples})")
    new_counts = Counter(example.label for example in new if example.label is not None)
    check.new_labels = sorted(set(new_counts) - set(previous.labels))
    if settings.new_labels and check.new_labels and previous.labels:
        check.reasons.append(f"new label(s): {', '.join(check.new_labels)}")
    if settings.shift_test != "none" and previous.labels and sum(new_counts.values()) >= settings.shift_min_rows:
        if settings.shift_test == "psi":
            psi = population_stability_index(previous.labels, new_counts)
            check.shift = {"test": "psi", "value": psi, "threshold": settings.psi_threshold}
            if psi >= settings.psi_threshold:
                check.reasons.append(f"label distribution shift: PSI {psi:.3f} >= {settings.psi_threshold:g}")
        else:
            p_value = chi_square_p_value(previous.labels, new_counts)
            check.shift = {"test": "chi2", "p_value": p_value, "alpha": settings.chi2_alpha}
            if p_value < settings.chi2_alpha:
                check.reasons.append(f"label distribution shift: chi-square p {p_value:.2g} < {settings.chi2_alpha:g}")
    if settings.min_quality is not None and new and quality_on is not None:
        check.quality = quality_on(new)
        if check.quality is not None and check.quality < settings.min_quality:
            check.reasons.append(f"champion scores {check.quality:.3f} on the new rows (< {settings.min_quality:g})")
    check.fire = bool(check.reasons)
    return check


def champion_quality(config: NicheConfig, scratch: Path) -> Callable[[list[Example]], float | None]:
    """The deployed champion's headline metric on given rows (None when nothing is deployed yet)."""

    def score(rows: list[Example]) -> float | None:
        if not is_specialist(config.specialist_dir):
            return None
        path = scratch / "newest-rows.jsonl"
        write_jsonl_atomic(path, (example_row(row) for row in rows))
        report = evaluate(config.specialist_dir, path, show_progress=False)
        return report.results[-1].metrics[report.headline_metric]

    return score


@dataclass
class WatchOutcome:
    check: TriggerCheck
    pipeline: PipelineResult | None = None
    failure: str | None = None  # the run failed; the data stays unconsumed, so the next check fires again


def watch_once(config: NicheConfig, data_dir: Path, *, show_progress: bool = True) -> WatchOutcome:
    """One check; a pipeline run on DATA_DIR when a trigger fires, after which DATA_DIR is the new baseline."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise ConfigError(f"watch: {data_dir} is not a directory")
    config = config.model_copy(update={"pipeline": config.pipeline.model_copy(update={"inputs": [data_dir]})})
    work_dir = config.pipeline_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / "watch.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    previous = DataSnapshot.from_json(state["snapshot"]) if "snapshot" in state else None
    examples = read_data(data_dir)
    check = check_triggers(previous, examples, config.watch, champion_quality(config, work_dir))
    log.info("watch: %s", "; ".join(check.reasons) if check.fire else f"no trigger ({check.new_rows} new rows)")
    history = state.get("history", [])
    history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **asdict(check)})
    outcome = WatchOutcome(check)
    if check.fire:
        try:
            outcome.pipeline = run_pipeline(config, show_progress=show_progress)
        except StageFailed as error:
            log.error("watch: the pipeline run failed: %s", error)
            outcome.failure = history[-1]["failure"] = str(error)
        else:
            state["snapshot"] = snapshot_of(examples).to_json()
            history[-1]["decision"] = outcome.pipeline.decision
    state["history"] = history[-100:]
    write_json_atomic(state_path, state)
    return outcome


def watch(
    config: NicheConfig,
    data_dir: Path,
    *,
    stop: threading.Event | None = None,
    on_outcome: Callable[[WatchOutcome], None] | None = None,
    show_progress: bool = True,
) -> None:
    """Check now, then after every settled burst of file changes (and every `watch.poll_seconds`) until `stop`."""
    require_extra("track", ("watchdog", "scipy"), "niche watch")
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    stop = stop or threading.Event()
    changed = threading.Event()

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if not event.is_directory:
                changed.set()

    observer = Observer()
    observer.schedule(Wake(), str(data_dir), recursive=True)
    observer.start()
    settings = config.watch
    try:
        while not stop.is_set():
            outcome = watch_once(config, data_dir, show_progress=show_progress)
            if on_outcome is not None:
                on_outcome(outcome)
            deadline = time.monotonic() + settings.poll_seconds
            while not stop.is_set() and not changed.is_set() and time.monotonic() < deadline:
                changed.wait(timeout=0.2)
            # Writes come in bursts (a copy, a sync): check once they have stopped for settle_seconds.
            while changed.is_set() and not stop.is_set():
                changed.clear()
                stop.wait(settings.settle_seconds)
    finally:
        observer.stop()
        observer.join(timeout=10)
