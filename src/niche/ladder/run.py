"""Running the ladder: build each rung, score and time it on the held-out rows, cost it, probe forgetting, and
write the reports."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from niche.artifact import is_specialist, load_test_examples, references_of
from niche.config import NicheConfig
from niche.data.examples import Example
from niche.data.template import TemplateEncoder
from niche.errors import ConfigError
from niche.eval.answering import bare_base, decoding_options, zero_shot
from niche.eval.baselines import run_baselines
from niche.eval.crf import run_crf_baseline
from niche.eval.evaluate import score_model, training_rows
from niche.eval.generation import answer_examples
from niche.hardware import detect_hardware
from niche.io import atomic_directory, sha256_of_file, write_json_atomic, write_text_atomic
from niche.ladder.report import ladder_html, ladder_markdown
from niche.ladder.results import RUNGS, LadderReport, Rung, recommend
from niche.metrics import HEADLINE_METRIC
from niche.probes import everyday_questions, probe, read_general_text, read_questions, relative_change
from niche.rag import RagIndex, context_of, retrieval_metrics
from niche.specialist import load_label_head, load_specialist
from niche.tracking import log_to_run, tracked_run
from niche.train import train


def _index_for(config: NicheConfig, show_progress: bool) -> Any | None:
    directory = config.rag.index or config.output_dir / f"{config.name}-index"
    if (directory / "index.sqlite").is_file():
        return RagIndex.open(directory)
    if not config.rag.documents:
        return None
    if show_progress:
        print(f"building the retrieval index {directory} from {len(config.rag.documents)} document path(s)")
    return RagIndex.build(config.rag.documents, directory, chunk_size=config.rag.chunk_size, overlap=config.rag.overlap)


def _relevant_sources(test_path: Path, field_name: str) -> list[str]:
    rows = [json.loads(line) for line in test_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [number for number, row in enumerate(rows, start=1) if field_name not in row]
    if missing:
        raise ConfigError(f"{test_path}:{missing[0]}: rag.relevant_field {field_name!r} missing from the test row")
    return [str(row[field_name]) for row in rows]


def _cost(price_per_hour: float, per_second: float) -> float:
    return price_per_hour / 3600 / per_second if per_second else float("inf")


def _score_rung(
    name: str,
    model: Any,
    encoder: TemplateEncoder,
    examples: list[Example],
    references: list[str],
    manifest: Any,
    options: dict[str, Any],
    settings: Any,
    show_progress: bool,
) -> Rung:
    scored = score_model(name, model, encoder, examples, references, manifest, options, show_progress)
    predictions, metrics, seconds = scored.predictions, scored.metrics, scored.seconds
    prompt_tokens = sum(len(encoder.prompt_ids(example)) for example in examples)
    completion_tokens = sum(len(encoder.tokenizer(prediction)["input_ids"]) + 1 for prediction in predictions)
    latencies = []
    for example in examples[: settings.latency_requests]:
        single = time.perf_counter()
        answer_examples(model, encoder, [example], options | {"batch_size": 1})
        latencies.append((time.perf_counter() - single) * 1000)
    latencies.sort()
    tokens_per_s = (prompt_tokens + completion_tokens) / seconds
    return Rung(
        name=name,
        metrics=metrics,
        headline=float(metrics[HEADLINE_METRIC[manifest.task.kind]]),
        examples_per_s=len(examples) / seconds,
        tokens_per_s=tokens_per_s,
        prompt_tokens_per_request=prompt_tokens / len(examples),
        latency_p50_ms=statistics.median(latencies),
        latency_p95_ms=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        cost_per_million_tokens=_cost(settings.price_per_hour, tokens_per_s) * 1e6,
        cost_per_thousand_requests=_cost(settings.price_per_hour, len(examples) / seconds) * 1000,
        predictions=predictions,
    )


def run_ladder(config: NicheConfig, *, show_progress: bool = True) -> LadderReport:
    if config.data.test is None:
        raise ConfigError("ladder: data.test must name the held-out set every rung is scored on")
    if not is_specialist(config.specialist_dir):
        if show_progress:
            print(f"no specialist at {config.specialist_dir}: training it first")
        train(config, show_progress=show_progress)
    hardware = detect_hardware()
    model, tokenizer, manifest = load_specialist(config.specialist_dir, hardware.device, hardware.dtype)
    examples = load_test_examples(config.data.test, manifest)
    references = references_of(examples, manifest.task.kind)
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    options = decoding_options(manifest, config.eval.constrain_to_labels, config.eval.batch_size)
    head = load_label_head(config.specialist_dir, manifest, model)
    notes: list[str] = []
    index = _index_for(config, show_progress)
    retrieval: dict[str, Any] = {}
    rag_examples: list[Example] | None = None
    if index is None:
        notes.append("no rag.documents and no index: the retrieval rungs were skipped")
    else:
        hits = index.search_many([example.input_text for example in examples], config.rag.top_k, config.rag.mode)
        rag_examples = [
            dataclasses.replace(example, context=context_of(found)) for example, found in zip(examples, hits)
        ]
        retrieval = {"chunks": index.meta.get("chunks"), "top_k": config.rag.top_k, "mode": config.rag.mode}
        if config.rag.relevant_field:
            relevant = _relevant_sources(config.data.test, config.rag.relevant_field)
            retrieval |= retrieval_metrics(hits, relevant, config.rag.top_k)
    # Read before any rung is scored: a training file moved since training fails the ladder at once.
    baseline_rows = training_rows(manifest) if manifest.task.kind in ("label", "json") else None
    if head is not None and rag_examples is not None:
        notes.append(
            f"specialist+rag was skipped: {manifest.task.head.describe()} reads the bare text and was not trained "
            "with context"
        )
    rungs = []
    for name, with_adapter, with_rag in RUNGS:
        if with_rag and (rag_examples is None or (with_adapter and head is not None)):
            continue
        rung_examples = rag_examples if with_rag and rag_examples is not None else examples
        if with_adapter:
            rung_encoder = encoder
            rung_options = options | ({"head": head, "labels": manifest.task.labels} if head else {})
            scored_model = contextlib.nullcontext(model)
        else:
            rung_encoder, rung_options = (encoder, options) if head is None else zero_shot(manifest, tokenizer, options)
            scored_model = bare_base(model, tokenizer, manifest, "base", hardware)
        with scored_model as rung_model:
            rung = _score_rung(
                name,
                rung_model,
                rung_encoder,
                rung_examples,
                references,
                manifest,
                rung_options,
                config.ladder,
                show_progress,
            )
        if with_adapter:
            rung.build_seconds = manifest.metrics.get("train_runtime_s")
        rungs.append(rung)
    if baseline_rows is not None:
        rungs += _baseline_rungs(baseline_rows, manifest, examples, references, config.ladder, show_progress)
    recommendation, reason = recommend(rungs, config.ladder.target)
    if head is None:
        forgetting = _forgetting(model, tokenizer, config, show_progress)
    else:
        forgetting = {}
        notes.append(
            f"the specialist answers with {manifest.task.head.describe()} and never generates: the shared base "
            "answers every other request unchanged, so there is nothing to forget and the forgetting probes were "
            "not run"
        )
    log_path = config.specialist_dir / "training_log.json"
    report = LadderReport(
        specialist=str(config.specialist_dir),
        test_rows=len(examples),
        task_kind=manifest.task.kind,
        headline_metric=HEADLINE_METRIC[manifest.task.kind],
        target=config.ladder.target,
        price_per_hour=config.ladder.price_per_hour,
        rungs=rungs,
        recommendation=recommendation,
        reason=reason,
        retrieval=retrieval,
        forgetting=forgetting,
        training_log=json.loads(log_path.read_text()) if log_path.is_file() else [],
        labels=list(manifest.task.labels or []),
        references=references,
        notes=notes,
    )
    report.engines = engine_costs(config.ladder.engine_speeds, config.ladder.price_per_hour)
    report.run_id = _track_ladder(config, report)
    return report


def _baseline_rungs(
    rows: tuple[list[Example], list[Example]],
    manifest: Any,
    examples: list[Example],
    references: list[str],
    settings: Any,
    show_progress: bool,
) -> list[Rung]:
    """The classic baselines fitted on the specialist's training rows, as rungs: TF-IDF and embedding logistic
    regressions for a label task, the CRF tagger for JSON."""

    train_rows, validation_rows = rows
    if show_progress:
        print(f"ladder: fitting the classic baselines on {len(train_rows)} training rows")
    if manifest.task.kind == "json":
        scores = [
            run_crf_baseline(
                train_rows,
                validation_rows,
                examples,
                references,
                manifest.task.output_schema,
                latency_requests=settings.latency_requests,
            )
        ]
    else:
        scores = run_baselines(
            train_rows,
            validation_rows,
            examples,
            references,
            manifest.task.labels,
            latency_requests=settings.latency_requests,
        )
    return [
        Rung(
            name=score.name,
            metrics=score.metrics,
            headline=float(score.metrics[HEADLINE_METRIC[manifest.task.kind]]),
            examples_per_s=score.examples_per_s,
            tokens_per_s=float("nan"),
            prompt_tokens_per_request=0.0,
            latency_p50_ms=score.latency_p50_ms,
            latency_p95_ms=score.latency_p95_ms,
            cost_per_million_tokens=float("nan"),
            cost_per_thousand_requests=score.cost_per_thousand_requests(settings.price_per_hour),
            predictions=score.predictions,
            build_seconds=score.fit_seconds,
        )
        for score in scores
    ]


def engine_costs(path: Path | None, price_per_hour: float) -> list[dict[str, Any]]:
    """Each serving engine and format measured by bench/edge_speed.py, costed at this ladder's hardware price."""
    if path is None:
        return []
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"ladder.engine_speeds: {path}: expected bench/edge_speed.py's results ({error})") from error
    return [
        {
            "engine": name,
            "ttft_p50_ms": row["ttft_p50_ms"],
            "decode_tokens_per_s": row["decode_tokens_per_s"],
            "file_mb": row.get("file_mb"),
            "cost_per_million_tokens": _cost(price_per_hour, row["decode_tokens_per_s"]) * 1e6,
        }
        for name, row in rows.items()
    ]


def _track_ladder(config: NicheConfig, report: LadderReport) -> str | None:
    with tracked_run(
        config.experiment, "ladder", enabled=config.tracking.enabled, run_name=f"ladder {config.name}"
    ) as tracker:
        tracker.params(json.loads(config.model_dump_json()))
        if config.data.test is not None:
            tracker.tags({"data.test.sha256": sha256_of_file(config.data.test)})
        tracker.tags({"recommendation": report.recommendation})
        for rung in report.rungs:
            numbers = {key: value for key, value in dataclasses.asdict(rung).items() if key not in ("name", "metrics")}
            tracker.metrics({f"{rung.name}.{key}": value for key, value in (rung.metrics | numbers).items()})
        tracker.metrics({f"retrieval.{key}": value for key, value in report.retrieval.items()})
        forgetting = report.forgetting
        tracker.metrics(
            {
                "forgetting.accuracy_relative_change": forgetting.get("accuracy_relative_change"),
                "forgetting.perplexity_relative_change": forgetting.get("perplexity_relative_change"),
            }
        )
        return tracker.run_id


def _forgetting(model: Any, tokenizer: Any, config: NicheConfig, show_progress: bool) -> dict[str, Any]:
    settings = config.ladder
    questions = read_questions(settings.general_questions) if settings.general_questions else everyday_questions()
    texts = read_general_text(settings.general_text, settings.general_lines) if settings.general_text else None
    if show_progress:
        print(f"ladder: forgetting probes ({len(questions)} questions, {len(texts or [])} general-text lines)")
    with model.disable_adapter():
        before = probe(model, tokenizer, texts, questions)
    after = probe(model, tokenizer, texts, questions)
    accuracy_change = relative_change(before.accuracy, after.accuracy)
    perplexity_change = relative_change(before.perplexity, after.perplexity)
    forgot = (accuracy_change is not None and accuracy_change < -settings.forgetting_threshold) or (
        perplexity_change is not None and perplexity_change > settings.forgetting_threshold
    )
    return {
        "questions": len(questions),
        "general_text_lines": len(texts or []),
        "base": dataclasses.asdict(before),
        "specialist": dataclasses.asdict(after),
        "accuracy_relative_change": accuracy_change,
        "perplexity_relative_change": perplexity_change,
        "threshold": settings.forgetting_threshold,
        "forgetting": forgot,
    }


def write_ladder_report(report: LadderReport, out_dir: Path) -> Path:

    with atomic_directory(out_dir) as staging:
        write_json_atomic(staging / "ladder.json", report.to_json())
        write_text_atomic(staging / "ladder.md", ladder_markdown(report))
        write_text_atomic(staging / "ladder.html", ladder_html(report))
    log_to_run(report.run_id, Path(out_dir), "ladder")
    return out_dir
