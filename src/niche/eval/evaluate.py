"""`niche eval`: score a specialist (and optionally its bare base, same prompt) on held-out examples."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from niche.data.examples import Example
from niche.data.formats import load_examples
from niche.data.tasks import check_labels_known, label_of
from niche.data.template import TemplateEncoder
from niche.errors import ModelError
from niche.eval.generation import generate_answers
from niche.eval.metrics import HEADLINE_METRIC, SCORERS
from niche.hardware import detect_hardware
from niche.io import atomic_directory, sha256_of_file, write_json_atomic, write_text_atomic
from niche.specialist import SpecialistManifest, load_specialist
from niche.tracking import log_to_run


@dataclass
class ModelScore:
    name: str
    metrics: dict[str, Any]
    seconds: float
    examples_per_s: float
    predictions: list[str] = field(repr=False)


@dataclass
class EvalReport:
    specialist: str
    data: str
    task_kind: str
    rows: int
    constrained: bool
    headline_metric: str
    results: list[ModelScore]
    sources: list[str] = field(default_factory=list, repr=False)
    references: list[str] = field(default_factory=list, repr=False)
    run_id: str | None = None  # the MLflow run; write_report attaches the report files to it

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        del payload["sources"], payload["references"], payload["run_id"]
        for result in payload["results"]:
            result.pop("predictions")
        return payload


def load_test_examples(path: Path, manifest: SpecialistManifest) -> list[Example]:
    fields = manifest.config.get("data", {}).get("fields") or {}
    examples = load_examples(path, manifest.task.data_format, fields).examples
    if manifest.task.kind == "label" and manifest.task.labels:
        check_labels_known(examples, manifest.task.labels)
    return examples


def references_of(examples: list[Example], task_kind: str) -> list[str]:
    return [label_of(example) if task_kind == "label" else example.response for example in examples]


def evaluate(
    specialist_dir: Path,
    data_path: Path,
    *,
    base: str | None = None,
    constrain: bool | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    show_progress: bool = True,
) -> EvalReport:
    """Score the specialist, and the bare base model with the identical prompt when `base` is given."""
    hardware = detect_hardware()
    model, tokenizer, manifest = load_specialist(specialist_dir, hardware.device, hardware.dtype)
    examples = load_test_examples(Path(data_path), manifest)
    settings = manifest.config.get("eval", {})
    constrain = settings.get("constrain_to_labels", True) if constrain is None else constrain
    constrained = bool(constrain and manifest.task.kind == "label" and manifest.task.labels)
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    options = {
        "batch_size": batch_size or settings.get("batch_size", 16),
        "max_new_tokens": max_new_tokens or settings.get("max_new_tokens", 128),
        "allowed_answers": manifest.task.labels if constrained else None,
    }
    references = references_of(examples, manifest.task.kind)
    results = []
    if base is not None:
        with _bare_base(model, tokenizer, manifest, base, hardware) as base_model:
            results.append(
                score_model(
                    f"base ({base})", base_model, encoder, examples, references, manifest, options, show_progress
                )
            )
    results.append(
        score_model(
            f"specialist ({manifest.name})", model, encoder, examples, references, manifest, options, show_progress
        )
    )
    report = EvalReport(
        specialist=str(specialist_dir),
        data=str(data_path),
        task_kind=manifest.task.kind,
        rows=len(examples),
        constrained=constrained,
        headline_metric=HEADLINE_METRIC[manifest.task.kind],
        results=results,
        sources=[example.source for example in examples],
        references=references,
    )
    report.run_id = track_eval(report, manifest, Path(data_path))
    return report


def track_eval(report: EvalReport, manifest: SpecialistManifest, data_path: Path) -> str | None:
    """One MLflow run per evaluation: what was scored on which data (by content hash), and every score."""
    from niche.tracking import tracked_run

    tracking = manifest.config.get("tracking") or {}
    experiment = tracking.get("experiment") or manifest.name
    with tracked_run(
        experiment, "eval", enabled=tracking.get("enabled", True), run_name=f"eval {manifest.name}"
    ) as tracker:
        tracker.params(
            {
                "specialist": report.specialist,
                "data": report.data,
                "rows": report.rows,
                "constrained": report.constrained,
                "task": report.task_kind,
            }
        )
        tracker.tags({"data.test.sha256": sha256_of_file(data_path), "specialist.name": manifest.name})
        for result in report.results:
            role = "specialist" if result.name.startswith("specialist") else "base"
            tracker.metrics({f"{role}.{key}": value for key, value in result.metrics.items()})
            tracker.metrics({f"{role}.examples_per_s": result.examples_per_s})
        return tracker.run_id


@contextlib.contextmanager
def _bare_base(model: Any, tokenizer: Any, manifest: SpecialistManifest, base: str, hardware: Any) -> Iterator[Any]:
    """The specialist's own base with the adapter switched off, or another base model loaded separately."""
    from niche.models import load_model, load_tokenizer, prepare_for_inference, resolve_base

    if base in ("base", manifest.base.spec):
        with model.disable_adapter():
            yield model
        return
    other_base = resolve_base(base)
    if load_tokenizer(other_base).get_vocab() != tokenizer.get_vocab():
        raise ModelError(
            f"base {base!r} has a different tokenizer from {manifest.base.spec!r}, so the stored prompt "
            "would not mean the same to it; compare with a base that shares the tokenizer"
        )
    other = load_model(other_base, hardware.dtype, hardware.device)
    yield prepare_for_inference(other.eval())


def score_model(
    name: str,
    model: Any,
    encoder: TemplateEncoder,
    examples: list[Example],
    references: list[str],
    manifest: SpecialistManifest,
    options: dict[str, Any],
    show_progress: bool,
) -> ModelScore:
    started = time.perf_counter()
    with progress_bar(name, len(examples), show_progress) as advance:
        predictions = generate_answers(model, encoder, examples, on_batch=advance, **options)
    seconds = time.perf_counter() - started
    metrics = SCORERS[manifest.task.kind](predictions, references, manifest.task.labels)
    return ModelScore(name, metrics, seconds, len(examples) / seconds if seconds else 0.0, predictions)


@contextlib.contextmanager
def progress_bar(name: str, total: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn(f"[bold]eval {name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task(name, total=total)
        yield lambda done: progress.advance(task, done)


def markdown_report(report: EvalReport) -> str:
    """Side-by-side table of every scalar metric, then each model's top confusions for label tasks."""
    scalar_names = [key for key, value in report.results[0].metrics.items() if isinstance(value, (int, float))]
    header = "| metric | " + " | ".join(result.name for result in report.results) + " |"
    lines = [
        f"# niche eval: {Path(report.specialist).name}",
        "",
        f"Data: `{report.data}` ({report.rows} rows, task {report.task_kind}"
        f"{', decoding constrained to the label set' if report.constrained else ''}).",
        "",
        header,
        "|" + "---|" * (len(report.results) + 1),
    ]
    for metric in scalar_names:
        lines.append(f"| {metric} | " + " | ".join(_format(result.metrics[metric]) for result in report.results) + " |")
    lines.append("| examples/s | " + " | ".join(f"{result.examples_per_s:.2f}" for result in report.results) + " |")
    for result in report.results:
        confusions = result.metrics.get("confusions")
        if confusions:
            lines += ["", f"Top confusions, {result.name}:", ""]
            lines += [f"- {row['gold']} → {row['predicted']}: {row['count']}" for row in confusions[:5]]
    return "\n".join(lines) + "\n"


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_report(report: EvalReport, out_dir: Path) -> Path:
    """eval.json, eval.md and predictions.jsonl, written together into out_dir."""
    with atomic_directory(Path(out_dir)) as staging:
        write_json_atomic(staging / "eval.json", report.to_json())
        write_text_atomic(staging / "eval.md", markdown_report(report))
        rows = []
        for index in range(report.rows):
            row = {"source": report.sources[index], "reference": report.references[index]}
            row |= {result.name: result.predictions[index] for result in report.results}
            rows.append(json.dumps(row, ensure_ascii=False))
        write_text_atomic(staging / "predictions.jsonl", "\n".join(rows) + "\n")
    log_to_run(report.run_id, Path(out_dir), "report")
    return Path(out_dir)
