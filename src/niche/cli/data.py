"""`niche data check`, `niche curate`, `niche synth`: the data stages."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from niche import __version__
from niche.errors import ConfigError, NicheError

from niche.cli.app import app, console, data_app, pipeline_app, rag_app, registry_app, state, print_report


def _parse_fields(pairs: list[str] | None) -> dict[str, str]:
    fields = {}
    for pair in pairs or []:
        canonical, separator, column = pair.partition("=")
        if not separator:
            raise ConfigError(f"--field {pair!r}: expected canonical=column, e.g. text=finding")
        fields[canonical.strip()] = column.strip()
    return fields

@data_app.command("check")
def data_check(
    file: Annotated[Path, typer.Argument(help="JSONL or CSV file.")],
    format: Annotated[str, typer.Option(help="auto, label, prompt_completion, alpaca or chat.")] = "auto",
    field: Annotated[list[str] | None, typer.Option(help="Map a canonical field to your column: text=finding.")] = None,
    base: Annotated[str, typer.Option(help="Base model whose tokenizer counts tokens.")] = "smollm2-135m",
    tokens: Annotated[bool, typer.Option(help="Count tokens with the base model's tokenizer.")] = True,
) -> None:
    """Counts, label distribution, token lengths and every problem with file:line."""
    from niche.data.check import check_data
    from niche.models import load_tokenizer, resolve_base

    tokenizer = load_tokenizer(resolve_base(base)) if tokens else None
    report = check_data(file, format, _parse_fields(field), tokenizer=tokenizer)
    console.print(f"[bold]{report.path}[/]: {report.rows} examples, format {report.format}, task {report.task_kind}")
    if report.label_counts:
        table = Table("label", "examples", "share")
        for label, count in report.label_counts.items():
            table.add_row(label, str(count), f"{count / report.rows:.1%}")
        console.print(table)
    for title, stats in (("prompt tokens", report.prompt_tokens), ("response tokens", report.response_tokens)):
        if stats:
            console.print(
                f"{title}: min {stats.min}, mean {stats.mean:.1f}, p50 {stats.p50:.0f}, p95 {stats.p95:.0f}, max {stats.max}"
            )
    console.print(f"duplicate inputs: {report.duplicate_inputs}; empty responses: {report.empty_responses}")
    for note in report.notes:
        console.print(f"[yellow]note[/]: {note}")
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    for problem in report.problems:
        console.print(f"[red]problem[/]: {problem}")
    if report.problems:
        raise typer.Exit(1)

@app.command("curate")
def curate_command(
    inputs: Annotated[list[Path], typer.Argument(help="JSONL or CSV files, any of niche's row shapes.")],
    out: Annotated[Path, typer.Option(help="Directory for the splits, rejects.jsonl and the data card.")],
    near_duplicate_threshold: Annotated[
        float, typer.Option(help="Estimated Jaccard similarity of word shingles above which inputs are near-same.")
    ] = 0.8,
    conflicts: Annotated[
        str, typer.Option(help="Same input, different answers: majority (keep the majority answer), drop, keep.")
    ] = "majority",
    redact_pii: Annotated[
        bool, typer.Option(help="Replace emails, phones, cards, IBANs and IPs by placeholders.")
    ] = False,
    split: Annotated[str, typer.Option(help="train/validation/test fractions.")] = "0.7,0.15,0.15",
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    max_chars: Annotated[int, typer.Option(help="Rows longer than this (characters) are rejected.")] = 20_000,
    decontaminate: Annotated[
        list[Path] | None, typer.Option(help="Benchmark file whose n-grams training rows must not share (repeatable).")
    ] = None,
    ngram: Annotated[int, typer.Option(help="n of the decontamination n-grams (13 as in GPT-3).")] = 13,
    format: Annotated[str, typer.Option(help="auto, label, prompt_completion, alpaca or chat.")] = "auto",
) -> None:
    """Normalise, deduplicate (exact and MinHash near duplicates), resolve conflicts, redact PII, split."""
    from niche.data.curate import CurateSettings, curate

    try:
        fractions = tuple(float(part) for part in split.split(","))
    except ValueError as error:
        raise ConfigError(f"--split {split!r}: expected three comma-separated fractions") from error
    settings = CurateSettings(
        near_duplicate_threshold=near_duplicate_threshold,
        conflicts=conflicts,  # type: ignore[arg-type]
        redact_pii=redact_pii,
        split=fractions,  # type: ignore[arg-type]
        seed=seed,
        max_chars=max_chars,
        decontaminate=tuple(decontaminate or ()),
        ngram=ngram,
        format=format,
    )
    report = curate(inputs, out, settings)
    table = Table("stage", "rows")
    for stage, count in report.stages.items():
        table.add_row(stage, str(count))
    console.print(table)
    console.print(
        f"splits: {', '.join(f'{name} {count}' for name, count in report.splits.items())}; "
        f"conflict groups: {len(report.conflicts)}; PII redacted: {report.pii_redacted or 'none'}"
    )
    console.print(f"wrote {out}/{{train,validation,test}}.jsonl, rejects.jsonl ({report.rejects} rows), data_card.md")

def _read_schema(path: Path) -> dict[str, Any]:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable JSON schema ({error})") from error
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: a JSON schema must be an object")
    return schema

@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option(help="Output JSONL (append-only; a rerun continues it).")],
    teacher: Annotated[str, typer.Option(help="OpenAI-compatible base URL, or local:NAME (model run in process).")],
    seeds: Annotated[Path | None, typer.Option(help="Seed examples (any niche row shape).")] = None,
    teacher_model: Annotated[str | None, typer.Option(help="Model name to ask the endpoint for.")] = None,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the endpoint's API key.")
    ] = "OPENAI_API_KEY",
    n: Annotated[int, typer.Option(help="Rows wanted (accepted); rejected rows are replaced, up to 3 rounds.")] = 100,
    strategy: Annotated[
        str, typer.Option(help="variations (of the seeds, balanced per label) or documents.")
    ] = "variations",
    documents: Annotated[list[Path] | None, typer.Option(help="Text/markdown files for strategy documents.")] = None,
    test: Annotated[Path | None, typer.Option(help="Held-out rows no synthetic row may nearly duplicate.")] = None,
    per_request: Annotated[int, typer.Option(help="Rows asked for in one teacher request.")] = 5,
    concurrency: Annotated[int, typer.Option(help="Teacher requests in flight.")] = 4,
    temperature: Annotated[float, typer.Option(help="Teacher sampling temperature.")] = 0.9,
    timeout: Annotated[float, typer.Option(help="Seconds per teacher request before it is retried.")] = 60.0,
    max_retries: Annotated[int, typer.Option(help="Retries on 429, 5xx, timeouts.")] = 5,
    judge: Annotated[bool, typer.Option(help="Score each row with the teacher as a judge (1-5).")] = False,
    min_judge_score: Annotated[int, typer.Option(help="Lowest judge score accepted.")] = 4,
    prompt_template: Annotated[
        Path | None,
        typer.Option(help="Your prompt template (str.format fields: labels, label, examples, count, passage)."),
    ] = None,
    price_input: Annotated[float, typer.Option(help="Price per million prompt tokens.")] = 0.0,
    price_output: Annotated[float, typer.Option(help="Price per million completion tokens.")] = 0.0,
    structured: Annotated[
        bool, typer.Option(help="Ask the teacher for schema-constrained JSON (response_format).")
    ] = True,
    output_schema: Annotated[
        Path | None, typer.Option(help="JSON schema every generated answer must match (JSON-output tasks).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the plan and of sampling.")] = 0,
) -> None:
    """Generate rows with a teacher model; validate, deduplicate and cost every one."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from niche.synth import SynthSettings, synthesize
    from niche.teachers import make_teacher

    settings = SynthSettings(
        n=n,
        strategy=strategy,  # type: ignore[arg-type]
        per_request=per_request,
        concurrency=concurrency,
        temperature=temperature,
        seed=seed,
        judge=judge,
        min_judge_score=min_judge_score,
        prompt_template=prompt_template.read_text(encoding="utf-8") if prompt_template else None,
        price_input_per_million=price_input,
        price_output_per_million=price_output,
        output_schema=_read_schema(output_schema) if output_schema else None,
    )
    options = {"api_key_env": api_key_env, "timeout_s": timeout, "max_retries": max_retries, "structured": structured}
    client = make_teacher(teacher, teacher_model, **({} if teacher.startswith("local:") else options))
    with Progress(
        TextColumn("synth"), BarColumn(), TextColumn("{task.completed}/{task.total} requests"), TimeRemainingColumn()
    ) as progress:
        task = progress.add_task("synth", total=None)
        report = synthesize(
            seeds,
            client,
            out,
            settings,
            documents=documents,
            test_path=test,
            on_request=lambda done, total: progress.update(task, completed=done, total=total),
        )
    console.print(
        f"accepted {report.accepted} of {report.generated} generated; rejected {report.rejected or 'none'}; "
        f"tokens {report.prompt_tokens}+{report.completion_tokens}, cost {report.cost:.4f}; "
        f"{report.requests_failed} requests failed"
    )
    console.print(f"wrote {out}, its .rejects.jsonl and .report.md")
