"""`niche data check`, `niche curate`, `niche synth`: the data stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from niche.cli.app import ConfigOption, app, console, data_app
from niche.errors import ConfigError


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
    console.print(
        f"[bold]{escape(str(report.path))}[/]: {report.rows} examples, format {report.format}, task {report.task_kind}"
    )
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
        console.print(f"[yellow]note[/]: {escape(str(note))}")
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {escape(str(warning))}")
    for problem in report.problems:
        console.print(f"[red]problem[/]: {escape(str(problem))}")
    if report.problems:
        raise typer.Exit(1)


@app.command("curate")
def curate_command(
    inputs: Annotated[list[Path], typer.Argument(help="JSONL or CSV files, any of niche's row shapes.")],
    out: Annotated[Path, typer.Option(help="Directory for the splits, rejects.jsonl and the data card.")],
    config_path: ConfigOption = None,
    near_duplicate_threshold: Annotated[
        float | None,
        typer.Option(help="Estimated Jaccard similarity of word shingles above which inputs are near-same [0.8]."),
    ] = None,
    conflicts: Annotated[
        str | None, typer.Option(help="Same input, different answers: majority (keep the majority answer), drop, keep.")
    ] = None,
    redact_pii: Annotated[
        bool | None, typer.Option(help="Replace emails, phones, cards, IBANs and IPs by placeholders [off].")
    ] = None,
    split: Annotated[str | None, typer.Option(help="train/validation/test fractions [0.7,0.15,0.15].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split [0].")] = None,
    max_chars: Annotated[
        int | None, typer.Option(help="Rows longer than this (characters) are rejected [20000].")
    ] = None,
    decontaminate: Annotated[
        list[Path] | None, typer.Option(help="Benchmark file whose n-grams training rows must not share (repeatable).")
    ] = None,
    ngram: Annotated[int | None, typer.Option(help="n of the decontamination n-grams [13, as in GPT-3].")] = None,
    format: Annotated[str | None, typer.Option(help="auto, label, prompt_completion, alpaca or chat [auto].")] = None,
    engine: Annotated[
        str | None, typer.Option(help="local (one process) or ray (Ray Data; the `scale` extra), same decisions.")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join with --engine ray; none starts a local Ray.")
    ] = None,
) -> None:
    """Normalise, deduplicate (exact and MinHash near duplicates), resolve conflicts, redact PII, split."""
    from niche.config import command_section, parse_fractions
    from niche.curate import curate

    settings = command_section(config_path, "curate").updated(
        near_duplicate_threshold=near_duplicate_threshold,
        conflicts=conflicts,
        redact_pii=redact_pii,
        split=parse_fractions(split, "--split") if split is not None else None,
        seed=seed,
        max_chars=max_chars,
        decontaminate=decontaminate,
        ngram=ngram,
        format=format,
        engine=engine,
        ray_address=ray_address,
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
    config_path: ConfigOption = None,
    teacher: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL, or local:NAME (model run in process).")
    ] = None,
    seeds: Annotated[Path | None, typer.Option(help="Seed examples (any niche row shape).")] = None,
    teacher_model: Annotated[str | None, typer.Option(help="Model name to ask the endpoint for.")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the endpoint's API key [OPENAI_API_KEY].")
    ] = None,
    n: Annotated[
        int | None, typer.Option(help="Rows wanted (accepted); rejected rows are replaced, up to 3 rounds [100].")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="variations (of the seeds, balanced per label) or documents [variations].")
    ] = None,
    documents: Annotated[list[Path] | None, typer.Option(help="Text/markdown files for strategy documents.")] = None,
    test: Annotated[Path | None, typer.Option(help="Held-out rows no synthetic row may nearly duplicate.")] = None,
    per_request: Annotated[int | None, typer.Option(help="Rows asked for in one teacher request [5].")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Teacher requests in flight [4].")] = None,
    temperature: Annotated[float | None, typer.Option(help="Teacher sampling temperature [0.9].")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds per teacher request before it is retried [60].")
    ] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries on 429, 5xx, timeouts [5].")] = None,
    judge: Annotated[bool | None, typer.Option(help="Score each row with the teacher as a judge (1-5) [off].")] = None,
    min_judge_score: Annotated[int | None, typer.Option(help="Lowest judge score accepted [4].")] = None,
    prompt_template: Annotated[
        Path | None,
        typer.Option(help="Your prompt template (str.format fields: labels, label, examples, count, passage)."),
    ] = None,
    price_input: Annotated[float | None, typer.Option(help="Price per million prompt tokens [0].")] = None,
    price_output: Annotated[float | None, typer.Option(help="Price per million completion tokens [0].")] = None,
    structured: Annotated[
        bool | None, typer.Option(help="Ask the teacher for schema-constrained JSON (response_format) [on].")
    ] = None,
    output_schema: Annotated[
        Path | None, typer.Option(help="JSON schema every generated answer must match (JSON-output tasks).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the plan and of sampling [0].")] = None,
) -> None:
    """Generate rows with a teacher model; validate, deduplicate and cost every one."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from niche.config import command_section
    from niche.synth import synthesize
    from niche.teachers import teacher_of

    settings = command_section(config_path, "synth").updated(
        teacher=teacher,
        model=teacher_model,
        api_key_env=api_key_env,
        timeout_s=timeout,
        max_retries=max_retries,
        structured=structured,
        n=n,
        strategy=strategy,
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
    client = teacher_of(settings)
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
