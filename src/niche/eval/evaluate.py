"""`niche eval`: score a specialist (and optionally its bare base, same prompt) on held-out examples."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from niche.artifact import SpecialistManifest, load_test_examples, references_of
from niche.config import EvalSettings
from niche.data.examples import Example
from niche.data.prepare import prepare_data
from niche.data.template import TemplateEncoder
from niche.errors import ConfigError, require_extra
from niche.eval.answering import (
    AnswerRecipe,
    answer_batches,
    answering,
    bare_base,
    decoding_options,
)
from niche.eval.baselines import run_baselines
from niche.eval.crf import run_crf_baseline
from niche.eval.generation import answer_examples
from niche.hardware import detect_hardware
from niche.io import atomic_directory, sha256_of_file, write_json_atomic, write_text_atomic
from niche.metrics import HEADLINE_METRIC, SCORERS, json_metrics
from niche.specialist import load_label_head, load_specialist
from niche.tracking import log_to_run, tracked_run


@dataclass
class ModelScore:
    name: str
    metrics: dict[str, Any]
    seconds: float
    examples_per_s: float
    predictions: list[str] = field(repr=False)
    details: dict[str, Any] = field(default_factory=dict)  # baselines: fit time, latency, chosen settings


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


def evaluate(
    specialist_dir: Path,
    data_path: Path,
    *,
    base: str | None = None,
    constrain: bool | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    baselines: bool = False,
    show_progress: bool = True,
    settings: EvalSettings | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> EvalReport:
    """Score the specialist, the bare base model with the identical prompt when `base` is given, and with
    `baselines` the classic baselines of a label task fitted on the specialist's own training rows. With `engine`
    "ray" the answers come from a pool of Ray actors each holding the model (`niche.eval.ray_answers`), the same
    answers as in this process."""
    if engine not in ENGINES:
        raise ConfigError(f"eval engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "ray":
        require_extra("scale", ("ray",), "eval --engine ray")
    hardware = detect_hardware()
    model, tokenizer, manifest = load_specialist(specialist_dir, hardware.device, hardware.dtype)
    examples = load_test_examples(Path(data_path), manifest)
    options = decoding_options(manifest, constrain, batch_size, max_new_tokens, settings)
    constrained = options["allowed_answers"] is not None or options["json_schema"] is not None
    references = references_of(examples, manifest.task.kind)
    head = load_label_head(specialist_dir, manifest, model)
    recipe = AnswerRecipe(specialist_dir, None, constrain, batch_size, max_new_tokens, settings, ray_address)
    results = []
    if base is not None:
        base_encoder, base_options = answering(manifest, tokenizer, head, options, for_base=True)
        if engine == "ray":
            batches = answer_batches(base_encoder, examples, base_options)
            results.append(
                score_on_ray(f"base ({base})", replace(recipe, base=base), examples, batches, references, manifest)
            )
        else:
            with bare_base(model, tokenizer, manifest, base, hardware) as base_model:
                name = f"base ({base})"
                results.append(
                    score_model(
                        name, base_model, base_encoder, examples, references, manifest, base_options, show_progress
                    )
                )
    encoder, options = answering(manifest, tokenizer, head, options, for_base=False)
    name = f"specialist ({manifest.name})"
    if engine == "ray":
        batches = answer_batches(encoder, examples, options)
        results.append(score_on_ray(name, recipe, examples, batches, references, manifest))
    else:
        results.append(score_model(name, model, encoder, examples, references, manifest, options, show_progress))
    if baselines:
        results += baseline_scores(manifest, examples, references, show_progress)
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


ENGINES = ("local", "ray")


def score_on_ray(
    name: str,
    recipe: AnswerRecipe,
    examples: list[Example],
    batches: list[list[int]],
    references: list[str],
    manifest: SpecialistManifest,
) -> ModelScore:
    # Ray is the scale extra's and loads only for --engine ray.
    from niche.eval.ray_answers import answer_on_ray

    started = time.perf_counter()
    predictions = answer_on_ray(recipe, examples, batches)
    seconds = time.perf_counter() - started
    metrics = score_predictions(manifest, predictions, references)
    return ModelScore(name, metrics, seconds, len(examples) / seconds if seconds else 0.0, predictions)


def track_eval(report: EvalReport, manifest: SpecialistManifest, data_path: Path) -> str | None:
    """One MLflow run per evaluation: what was scored on which data (by content hash), and every score."""

    tracking = manifest.trained_config().tracking
    experiment = tracking.experiment or manifest.name
    with tracked_run(experiment, "eval", enabled=tracking.enabled, run_name=f"eval {manifest.name}") as tracker:
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
            # "specialist (x)", "base (y)", "tfidf+logreg": MLflow keys take no "+".
            role = result.name.split(" ")[0].replace("+", "_")
            tracker.metrics({f"{role}.{key}": value for key, value in result.metrics.items()})
            tracker.metrics({f"{role}.examples_per_s": result.examples_per_s})
        return tracker.run_id


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
        predictions = answer_examples(model, encoder, examples, options, on_batch=advance)
    seconds = time.perf_counter() - started
    metrics = score_predictions(manifest, predictions, references)
    return ModelScore(name, metrics, seconds, len(examples) / seconds if seconds else 0.0, predictions)


def score_predictions(manifest: SpecialistManifest, predictions: list[str], references: list[str]) -> dict[str, Any]:
    if manifest.task.kind == "json":
        return json_metrics(predictions, references, schema=manifest.task.output_schema)
    return SCORERS[manifest.task.kind](predictions, references, manifest.task.labels)


def training_rows(manifest: SpecialistManifest) -> tuple[list[Example], list[Example]]:
    """The rows the specialist trained and validated on, rebuilt from its stored config (the split is seeded), after
    checking the training file is still the one it trained on."""

    recorded = manifest.data.get("train")
    config = manifest.trained_config()
    if recorded is None or config.data.train is None or not Path(config.data.train).is_file():
        raise ConfigError(
            f"the baselines are fitted on the specialist's training rows, and {recorded.path if recorded else 'its training file'} "
            "is not there any more; restore it, or retrain"
        )
    if sha256_of_file(config.data.train) != recorded.sha256:
        raise ConfigError(
            f"{config.data.train}: changed since {manifest.name!r} was trained on it (sha256 {recorded.sha256[:12]}...); "
            "the baselines must be fitted on the same rows: restore the file or retrain"
        )
    data = prepare_data(config)
    return data.train, data.validation


def baseline_scores(
    manifest: SpecialistManifest, examples: list[Example], references: list[str], show_progress: bool
) -> list[ModelScore]:
    """The classic baselines, fitted on the specialist's training rows: TF-IDF and sentence-embedding logistic
    regressions for a label task, the CRF tagger (with logistic regressions for closed-set fields) for JSON."""

    if manifest.task.kind not in ("label", "json"):
        raise ConfigError(
            f"--baselines: the classic baselines classify labels or extract JSON; {manifest.name!r} is a "
            f"{manifest.task.kind} task"
        )
    train_rows, validation_rows = training_rows(manifest)
    if show_progress:
        print(f"fitting the classic baselines on {len(train_rows)} training rows")
    if manifest.task.kind == "json":
        assert manifest.task.output_schema is not None
        scores = [run_crf_baseline(train_rows, validation_rows, examples, references, manifest.task.output_schema)]
    else:
        scores = run_baselines(train_rows, validation_rows, examples, references, manifest.task.labels, seed=0)
    price = manifest.trained_config().ladder.price_per_hour
    return [
        ModelScore(
            score.name,
            score.metrics,
            len(examples) / score.examples_per_s if score.examples_per_s else 0.0,
            score.examples_per_s,
            score.predictions,
            details={
                "fit_seconds": score.fit_seconds,
                "latency_p50_ms": score.latency_p50_ms,
                "latency_p95_ms": score.latency_p95_ms,
                "price_per_hour": price,
                "cost_per_thousand_requests": score.cost_per_thousand_requests(price),
                "settings": score.settings,
            },
        )
        for score in scores
    ]


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
    """Side-by-side table of every scalar metric, the baselines' costs, each model's top confusions (label tasks),
    per-field scores and the worst rows (JSON tasks)."""
    scalar_names = [key for key, value in report.results[0].metrics.items() if isinstance(value, (int, float))]
    header = "| metric | " + " | ".join(result.name for result in report.results) + " |"
    constraint = {"label": ", decoding constrained to the label set", "json": ", decoding constrained to the schema"}
    lines = [
        f"# niche eval: {Path(report.specialist).name}",
        "",
        f"Data: `{report.data}` ({report.rows} rows, task {report.task_kind}"
        f"{constraint.get(report.task_kind, '') if report.constrained else ''}).",
        "",
        header,
        "|" + "---|" * (len(report.results) + 1),
    ]
    for metric in scalar_names:
        lines.append(
            f"| {metric} | " + " | ".join(_format(result.metrics.get(metric, "")) for result in report.results) + " |"
        )
    lines.append("| examples/s | " + " | ".join(f"{result.examples_per_s:.2f}" for result in report.results) + " |")
    lines += _baseline_lines(report)
    for result in report.results:
        confusions = result.metrics.get("confusions")
        if confusions:
            lines += ["", f"Top confusions, {result.name}:", ""]
            lines += [f"- {row['gold']} → {row['predicted']}: {row['count']}" for row in confusions[:5]]
    lines += _field_lines(report)
    return "\n".join(lines) + "\n"


def _baseline_lines(report: EvalReport) -> list[str]:
    fitted = [result for result in report.results if "fit_seconds" in result.details]
    if not fitted:
        return []
    lines = [
        "",
        "Classic baselines, fitted on the specialist's training rows (settings chosen on its validation rows):",
        "",
        "| baseline | fit (s) | latency p50 / p95 (ms) | cost / 1k requests | chosen |",
        "|---|---|---|---|---|",
    ]
    for result in fitted:
        details = result.details
        lines.append(
            f"| {result.name} | {details['fit_seconds']:.1f} | {details['latency_p50_ms']:.1f} / "
            f"{details['latency_p95_ms']:.1f} | {details['cost_per_thousand_requests']:.6f} at "
            f"{details['price_per_hour']:g}/h | {_chosen(details['settings'])} |"
        )
    out_of_reach = [result.details["settings"].get("out_of_reach") for result in fitted]
    for fields in filter(None, out_of_reach):
        lines += ["", f"Out of the classic baseline's reach (neither copied nor a closed set): {', '.join(fields)}."]
    return lines


def _chosen(settings: dict[str, Any]) -> str:
    """The regularisation a baseline chose: C for a regression, the CRF's penalties."""
    if "crf" in settings:
        crf = settings["crf"]
        return f"c1 {crf.get('c1')}, c2 {crf.get('c2')}" if crf else "no copied fields"
    return f"C {settings.get('C')}"


def _field_lines(report: EvalReport) -> list[str]:
    lines: list[str] = []
    for index, result in enumerate(report.results):
        fields = result.metrics.get("fields")
        if not fields:
            continue
        lines += [
            "",
            f"Per field, {result.name}:",
            "",
            "| field | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for name, scores in fields.items():
            support = scores.get("tp", 0) + scores.get("fn", 0)
            lines.append(
                f"| {name} | {scores['precision']:.3f} | {scores['recall']:.3f} | {scores['f1']:.3f} | {support} |"
            )
        worst = result.metrics.get("worst_rows") or []
        if worst and report.references:
            lines += ["", f"Worst rows, {result.name}:", ""]
            for row in worst[:5]:
                position = row["row"]
                lines.append(
                    f"- `{report.sources[position]}` (field F1 {row['field_f1']:.2f}): expected "
                    f"`{report.references[position]}`, got `{report.results[index].predictions[position]}`"
                )
    return lines


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
