"""`niche pipeline run`: curate → (synth) → train → eval → gate → register, resumable stage by stage.

Each stage has a fingerprint: the content hashes of its inputs (files, the upstream stage's outputs) and the
part of the config it reads. A stage whose fingerprint matches its last successful run, and whose outputs are
still on disk, is skipped; so a second run on unchanged data does nothing, new data re-runs everything
downstream of curate, and after a failure the next run starts at the failed stage. `--stage NAME` re-runs one
stage alone from the stored outputs of the stages before it.

The gate compares the candidate with the current champion on the same held-out rows (both scored now) and
with an everyday-knowledge probe: the candidate is promoted when it beats the champion's headline metric by
more than `pipeline.gate.min_improvement` without losing more than `pipeline.gate.forgetting_threshold` of
the champion's probe accuracy (relative). With MLflow tracking on, candidates become registry versions
(alias `challenger`) and a promoted one takes the alias `champion`; either way the champion is deployed to
output_dir/NAME, where `niche serve` finds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from niche import tracking
from niche.artifact import is_specialist, read_manifest
from niche.config import NicheConfig
from niche.curate import curate, example_row
from niche.data.formats import load_examples
from niche.errors import ConfigError, NicheError
from niche.eval import evaluate, write_report
from niche.hardware import detect_hardware
from niche.io import atomic_directory, sha256_of_file, write_json_atomic, write_jsonl_atomic, write_text_atomic
from niche.models import load_model, load_tokenizer, prepare_for_inference
from niche.probes import everyday_questions, multiple_choice_accuracy, relative_change
from niche.specialist import load_specialist, resolve_specialist_base
from niche.synth import synthesize
from niche.teachers import teacher_of
from niche.tracking import tracked_run
from niche.train import train

log = logging.getLogger(__name__)

STAGES = ("curate", "synth", "train", "eval", "gate", "register")
EXAMPLE_SUFFIXES = (".jsonl", ".json", ".csv")


class StageFailed(NicheError):
    """A stage raised; the pipeline state records it so the next run starts there."""


@dataclass
class StageOutcome:
    name: str
    status: str  # ran, skipped (unchanged), off (not configured), failed
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    work_dir: Path
    stages: list[StageOutcome]
    run_id: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return bool(self.decision.get("promoted"))

    def stage(self, name: str) -> StageOutcome:
        return next(outcome for outcome in self.stages if outcome.name == name)


def example_files(paths: list[Path]) -> list[Path]:
    """Example files named directly, and those inside directories (sorted; hidden files and rejects skipped)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                child
                for child in path.rglob("*")
                if child.is_file()
                and child.suffix.lower() in EXAMPLE_SUFFIXES
                and not any(part.startswith(".") for part in child.relative_to(path).parts)
                and "rejects" not in child.name
            )
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"pipeline.inputs: {path} does not exist")
    return files


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_hashes(paths: list[Path]) -> list[tuple[str, str]]:
    return [(str(path), sha256_of_file(path)) for path in paths]


class PipelineState:
    """state.json in the work directory: per stage, the fingerprint, outputs and summary of its last run."""

    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / "state.json"
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.stages = json.loads(self.path.read_text())["stages"]
            except (ValueError, KeyError) as error:
                raise ConfigError(
                    f"{self.path}: unreadable pipeline state ({error}); delete it to start over"
                ) from error

    def unchanged(self, stage: str, stage_fingerprint: str) -> bool:
        record = self.stages.get(stage)
        return bool(
            record
            and record["status"] == "done"
            and record["fingerprint"] == stage_fingerprint
            and all(Path(path).exists() for path in record["outputs"].values() if path)
        )

    def outputs(self, stage: str) -> dict[str, Any]:
        record = self.stages.get(stage)
        if not record or record["status"] != "done":
            raise ConfigError(f"stage {stage!r} has no successful run to build on: run the whole pipeline first")
        return record["outputs"] | {"summary": record["summary"], "fingerprint": record["fingerprint"]}

    def record(self, stage: str, status: str, stage_fingerprint: str, outputs: dict, summary: dict) -> None:
        self.stages[stage] = {
            "status": status,
            "fingerprint": stage_fingerprint,
            "outputs": {key: str(value) if value is not None else None for key, value in outputs.items()},
            "summary": summary,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(self.path, {"stages": self.stages})


@dataclass
class StageContext:
    config: NicheConfig
    work_dir: Path
    state: PipelineState
    show_progress: bool
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)

    def train_config(self, **data: Any) -> NicheConfig:
        return self.config.model_copy(update={"data": self.config.data.model_copy(update=data)})


# ---- stages: each returns (fingerprint, work) where work() gives (outputs, summary) -------------------------------


def _curate(context: StageContext) -> tuple[str, Callable[[], tuple[dict, dict]]] | None:
    settings = context.config.pipeline
    if not settings.inputs:
        return None
    files = example_files(settings.inputs)
    if not files:
        raise ConfigError(f"pipeline.inputs: no {'/'.join(EXAMPLE_SUFFIXES)} files in {settings.inputs}")
    # The pipeline's inputs are the specialist's data: they are read in data.format.
    options = context.config.curate.updated(format=context.config.data.format)
    stage_fingerprint = fingerprint("curate", options.model_dump(mode="json"), _file_hashes(files))

    def work() -> tuple[dict, dict]:
        out = context.work_dir / "curated"
        report = curate(files, out, options)
        outputs = {split: out / f"{split}.jsonl" for split in ("train", "validation", "test")}
        return outputs, {"files": len(files), "stages": report.stages, "splits": report.splits}

    return stage_fingerprint, work


def _data_paths(context: StageContext) -> dict[str, Path | None]:
    """The splits the later stages read: curated ones when curate ran, otherwise the config's data files."""
    if "curate" in context.upstream:
        return {split: Path(context.upstream["curate"][split]) for split in ("train", "validation", "test")}
    data = context.config.data
    return {"train": data.train, "validation": data.validation, "test": data.test}


def _synth(context: StageContext) -> tuple[str, Callable[[], tuple[dict, dict]]] | None:
    options = context.config.synth
    if options is None:
        return None
    if options.teacher is None:
        raise ConfigError("synth.teacher: the pipeline's synth stage needs a teacher (a base URL or local:NAME)")
    splits = _data_paths(context)
    train_path = splits["train"]
    stage_fingerprint = fingerprint("synth", options.model_dump(mode="json"), sha256_of_file(train_path))

    def work() -> tuple[dict, dict]:
        out = context.work_dir / "synth"
        shutil.rmtree(out, ignore_errors=True)  # synth resumes from its own progress file; a new input starts over
        teacher = teacher_of(options)
        report = synthesize(train_path, teacher, out / "rows.jsonl", options, test_path=splits["test"])
        rows = [example_row(example) for example in load_examples(train_path).examples]
        if report.accepted:
            rows += [example_row(example) for example in load_examples(out / "rows.jsonl").examples]
        merged = out / "train.jsonl"
        write_jsonl_atomic(merged, rows)
        summary = {"accepted": report.accepted, "rejected": report.rejected, "cost": report.cost, "rows": len(rows)}
        return {"train": merged}, summary

    return stage_fingerprint, work


def _training_inputs(context: StageContext) -> dict[str, Path | None]:
    splits = _data_paths(context)
    if "synth" in context.upstream:
        splits["train"] = Path(context.upstream["synth"]["train"])
    return splits


def _train(context: StageContext) -> tuple[str, Callable[[], tuple[dict, dict]]]:
    splits = _training_inputs(context)
    if splits["train"] is None:
        raise ConfigError("pipeline: nothing to train on: set pipeline.inputs (curated) or data.train")
    recipe = context.config.model_dump(mode="json", exclude={"pipeline", "watch", "tracking", "output_dir", "ladder"})
    recipe["data"] = {key: value for key, value in recipe["data"].items() if key not in ("train", "validation", "test")}
    data_hashes = {split: sha256_of_file(path) for split, path in splits.items() if path and split != "test"}
    stage_fingerprint = fingerprint("train", recipe, data_hashes)

    def work() -> tuple[dict, dict]:
        config = context.train_config(train=splits["train"], validation=splits["validation"], test=splits["test"])
        config = config.model_copy(update={"output_dir": context.work_dir / "candidate"})
        result = train(config, show_progress=context.show_progress)
        metrics = result.manifest.metrics
        summary = {
            "run_id": result.run_id,
            "eval_loss": metrics["eval_loss"],
            "steps": metrics["steps"],
            "train_runtime_s": metrics["train_runtime_s"],
        }
        return {"specialist": result.specialist_dir}, summary

    return stage_fingerprint, work


def _specialist_hash(directory: Path) -> str:
    return fingerprint(
        [
            sha256_of_file(directory / name)
            for name in ("niche.json", "adapter_model.safetensors", "adapter_config.json")
        ]
    )


def _held_out(context: StageContext) -> Path:
    test = _data_paths(context)["test"]
    if test is None:
        raise ConfigError("pipeline: the gate needs held-out rows: set pipeline.inputs (curated) or data.test")
    return test


def _eval(context: StageContext) -> tuple[str, Callable[[], tuple[dict, dict]]]:
    candidate = Path(context.upstream["train"]["specialist"])
    test = _held_out(context)
    stage_fingerprint = fingerprint("eval", _specialist_hash(candidate), sha256_of_file(test))

    def work() -> tuple[dict, dict]:
        report = evaluate(candidate, test, show_progress=context.show_progress)
        out = write_report(report, context.work_dir / "eval")
        score = report.results[-1]
        summary = {
            "run_id": report.run_id,
            "metric": report.headline_metric,
            "value": score.metrics[report.headline_metric],
        }
        summary["metrics"] = {key: value for key, value in score.metrics.items() if isinstance(value, (int, float))}
        return {"report": out}, summary

    return stage_fingerprint, work


def _champion_dir(context: StageContext) -> tuple[Path | None, str | None]:
    """Where the current champion is: the registry's `champion` version (downloaded), or, without tracking,
    the specialist deployed at output_dir/NAME."""

    config = context.config
    if tracking.tracking_enabled(config.tracking.enabled):
        version = tracking.version_with_alias(config.name, tracking.CHAMPION)
        if version is None:
            return None, None
        target = context.work_dir / "champions" / f"v{version.version}" / config.name
        if not is_specialist(target):
            tracking.deploy(version, target)
        return target, version.version
    deployed = config.specialist_dir
    return (deployed, None) if is_specialist(deployed) else (None, None)


def _probe_accuracy(specialist_dir: Path | None, questions: list[Any], base_of: Path) -> float:
    """Everyday multiple-choice accuracy of a specialist, or of the bare base when there is none. A head (label or
    tagging) never generates: every other request is answered by the unchanged base, so its score is the base's."""

    hardware = detect_hardware()
    manifest = read_manifest(specialist_dir or base_of)
    if specialist_dir is None or manifest.task.head is not None:
        base = resolve_specialist_base(manifest)
        model = prepare_for_inference(load_model(base, hardware.dtype, hardware.device).eval())
        return multiple_choice_accuracy(model, load_tokenizer(base), questions)
    model, tokenizer, _ = load_specialist(specialist_dir, hardware.device, hardware.dtype)
    return multiple_choice_accuracy(model, tokenizer, questions)


def gate_decision(
    candidate: float,
    champion: float | None,
    candidate_probe: float,
    reference_probe: float,
    min_improvement: float,
    forgetting_threshold: float,
    metric: str,
) -> tuple[bool, str]:
    """Promote when the candidate beats the champion (any candidate beats no champion) and keeps its everyday
    knowledge within the threshold."""

    change = relative_change(reference_probe, candidate_probe)
    if champion is not None and candidate <= champion + min_improvement:
        return False, (
            f"{metric} {candidate:.4f} does not beat the champion's {champion:.4f}"
            + (f" by more than {min_improvement:g}" if min_improvement else "")
        )
    if champion is not None and change is not None and change < -forgetting_threshold:
        return False, (
            f"forgetting: everyday-question accuracy {candidate_probe:.3f} vs the champion's {reference_probe:.3f} "
            f"({change:+.1%}, more than the {forgetting_threshold:.0%} allowed)"
        )
    if champion is None:
        return True, f"no champion yet; {metric} {candidate:.4f}"
    kept = "n/a (the champion scored 0)" if change is None else f"{change:+.1%}"
    return True, f"{metric} {candidate:.4f} beats the champion's {champion:.4f}; everyday accuracy change {kept}"


def _gate(context: StageContext) -> tuple[str, Callable[[], tuple[dict, dict]]]:
    settings = context.config.pipeline.gate
    candidate = Path(context.upstream["train"]["specialist"])
    evaluation = context.upstream["eval"]["summary"]
    stage_fingerprint = fingerprint("gate", context.upstream["eval"]["fingerprint"], settings.model_dump(mode="json"))

    def work() -> tuple[dict, dict]:
        metric = settings.metric or evaluation["metric"]
        if metric not in evaluation["metrics"]:
            raise ConfigError(f"pipeline.gate.metric: {metric!r} is not one of {sorted(evaluation['metrics'])}")
        champion_dir, champion_version = _champion_dir(context)
        champion_value = None
        if champion_dir is not None:
            report = evaluate(champion_dir, _held_out(context), show_progress=context.show_progress)
            champion_value = report.results[-1].metrics[metric]
        questions = everyday_questions()[: settings.forgetting_questions]
        candidate_probe = _probe_accuracy(candidate, questions, candidate)
        reference_probe = _probe_accuracy(champion_dir, questions, candidate)
        passed, reason = gate_decision(
            evaluation["metrics"][metric],
            champion_value,
            candidate_probe,
            reference_probe,
            settings.min_improvement,
            settings.forgetting_threshold,
            metric,
        )
        decision = {
            "passed": passed,
            "reason": reason,
            "metric": metric,
            "candidate": evaluation["metrics"][metric],
            "champion": champion_value,
            "champion_version": champion_version,
            "probe_questions": len(questions),
            "candidate_probe_accuracy": candidate_probe,
            ("champion_probe_accuracy" if champion_dir else "base_probe_accuracy"): reference_probe,
        }
        out = context.work_dir / "gate.json"
        write_json_atomic(out, decision)
        return {"decision": out}, decision

    return stage_fingerprint, work


def _register(context: StageContext) -> tuple[str, Callable[[], tuple[dict, dict]]]:
    config = context.config
    candidate = Path(context.upstream["train"]["specialist"])
    decision = context.upstream["gate"]["summary"]
    stage_fingerprint = fingerprint("register", context.upstream["gate"]["fingerprint"])

    def work() -> tuple[dict, dict]:
        summary: dict[str, Any] = {"promoted": False, "version": None, "reason": decision["reason"]}
        train_run = context.upstream["train"]["summary"].get("run_id")
        if tracking.tracking_enabled(config.tracking.enabled) and train_run:
            tags = {"gate": "passed" if decision["passed"] else "rejected", "reason": decision["reason"]}
            tags |= {decision["metric"]: decision["candidate"]}
            version = tracking.register_specialist(
                tracking.Tracker(tracking.client(), train_run), config.name, "specialist", tags
            )
            summary["version"] = version.version
            if decision["passed"]:
                tracking.promote(config.name, version.version)
                tracking.deploy(version, config.specialist_dir)
                summary["promoted"] = True
        elif decision["passed"]:
            with atomic_directory(config.specialist_dir) as staging:
                shutil.copytree(candidate, staging, dirs_exist_ok=True)
            summary["promoted"] = True
        summary["deployed_to"] = str(config.specialist_dir) if summary["promoted"] else None
        return {"specialist": config.specialist_dir if summary["promoted"] else None}, summary

    return stage_fingerprint, work


STAGE_BUILDERS: dict[str, Callable[[StageContext], Any]] = {
    "curate": _curate,
    "synth": _synth,
    "train": _train,
    "eval": _eval,
    "gate": _gate,
    "register": _register,
}


def run_pipeline(
    config: NicheConfig, *, only: str | None = None, force: bool = False, show_progress: bool = True
) -> PipelineResult:
    """Run every stage whose inputs changed (all of them with `force`; just `only` when given)."""

    if only is not None and only not in STAGES:
        raise ConfigError(f"--stage {only!r}: expected one of {', '.join(STAGES)}")
    work_dir = config.pipeline_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    state = PipelineState(work_dir)
    context = StageContext(config, work_dir, state, show_progress)
    outcomes: list[StageOutcome] = []
    with tracked_run(
        config.experiment, "pipeline", enabled=config.tracking.enabled, run_name=f"pipeline {config.name}"
    ) as tracker:
        tracker.params({"stages": list(STAGES), "only": only, "force": force})
        for name in STAGES:
            if only is not None and name != only:
                if name in state.stages and STAGES.index(name) < STAGES.index(only):
                    context.upstream[name] = state.outputs(name)
                outcomes.append(StageOutcome(name, "not selected"))
                continue
            planned = STAGE_BUILDERS[name](context)
            if planned is None:
                outcomes.append(StageOutcome(name, "off"))
                continue
            stage_fingerprint, work = planned
            if not force and only is None and state.unchanged(name, stage_fingerprint):
                context.upstream[name] = state.outputs(name)
                outcomes.append(StageOutcome(name, "skipped", summary=state.stages[name]["summary"]))
                log.info("pipeline: %s unchanged, skipped", name)
                continue
            log.info("pipeline: %s", name)
            started = time.perf_counter()
            try:
                outputs, summary = work()
            except Exception as error:
                state.record(name, "failed", stage_fingerprint, {}, {"error": f"{type(error).__name__}: {error}"})
                outcomes.append(StageOutcome(name, "failed", time.perf_counter() - started, {"error": str(error)}))
                _write_report(work_dir, outcomes, {})
                raise StageFailed(
                    f"pipeline stage {name!r} failed: {error}\n"
                    f"fix it and run the pipeline again (finished stages are skipped), or rerun it alone with --stage {name}"
                ) from error
            state.record(name, "done", stage_fingerprint, outputs, summary)
            context.upstream[name] = state.outputs(name)
            seconds = time.perf_counter() - started
            outcomes.append(StageOutcome(name, "ran", seconds, summary))
            tracker.metrics({f"stage.{name}.seconds": seconds})
        decision = _decision(context)
        tracker.tags({f"stage.{outcome.name}": outcome.status for outcome in outcomes})
        tracker.metrics({key: value for key, value in decision.items() if key in ("candidate", "champion")})
        if decision:
            tracker.tags({"promoted": decision.get("promoted"), "gate.reason": decision.get("reason")})
        report_dir = _write_report(work_dir, outcomes, decision)
        tracker.artifacts(report_dir, "pipeline")
        return PipelineResult(work_dir, outcomes, tracker.run_id, decision)


def _decision(context: StageContext) -> dict[str, Any]:
    gate = context.upstream.get("gate", {}).get("summary", {})
    register = context.upstream.get("register", {}).get("summary", {})
    return gate | {key: register[key] for key in ("promoted", "version", "deployed_to") if key in register}


def _write_report(work_dir: Path, outcomes: list[StageOutcome], decision: dict[str, Any]) -> Path:
    lines = ["# niche pipeline", "", "| stage | status | seconds | summary |", "|---|---|---|---|"]
    for outcome in outcomes:
        brief = ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in outcome.summary.items()
            if isinstance(value, (int, float, str)) and key not in ("run_id",)
        )
        lines.append(f"| {outcome.name} | {outcome.status} | {outcome.seconds:.1f} | {brief} |")
    if decision:
        verdict = "promoted to champion" if decision.get("promoted") else "kept as challenger (not promoted)"
        lines += ["", f"**Decision:** {verdict}. {decision.get('reason', '')}"]
    report_dir = work_dir / "report"
    with atomic_directory(report_dir) as staging:
        write_text_atomic(staging / "pipeline.md", "\n".join(lines) + "\n")
        write_json_atomic(
            staging / "pipeline.json", {"stages": [asdict(outcome) for outcome in outcomes], "decision": decision}
        )
    return report_dir
