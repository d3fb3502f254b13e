"""The `niche` command: one sub-command per pipeline stage, each a thin wrapper over a library function."""

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

app = typer.Typer(
    help="Turn a small open model into a measured domain specialist.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
rag_app = typer.Typer(help="Retrieval: index domain documents and search them.", no_args_is_help=True)
app.add_typer(rag_app, name="rag")
pipeline_app = typer.Typer(
    help="Curate, train, evaluate, gate and register in one resumable run.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")
registry_app = typer.Typer(
    help="The MLflow registry of specialists: versions, champion, rollback.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
console = Console(soft_wrap=True)
state = {"debug": False}

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Config overrides as key=value, e.g. training.max_steps=20.")
]


def _configure_logging(debug: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:
        # niche shows its own progress; the libraries' per-file loading bars are noise.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    for noisy in ("transformers", "peft", "accelerate", "huggingface_hub", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    if not debug:
        import warnings

        warnings.filterwarnings("ignore", module="transformers|peft|torch")


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and library logs.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"niche {__version__}")
        raise typer.Exit()
    state["debug"] = debug
    _configure_logging(debug)


@app.command()
def models(
    cache_dir: Annotated[
        Path | None, typer.Option(help="Converted-checkpoint cache (default $NICHE_CACHE_DIR or ~/.cache/niche).")
    ] = None,
) -> None:
    """List the base-model catalog and what is cached, with sizes."""
    from niche.models import list_models

    table = Table("name", "cached", "size", "description")
    for listing in list_models(cache_dir):
        size = f"{listing.size_bytes / 2**20:.0f} MiB" if listing.size_bytes else "-"
        table.add_row(listing.name, "yes" if listing.cached else "no", size, listing.description)
    console.print(table)
    console.print(
        "Also accepted as a base: a local Hugging Face model directory, a .gguf file, or a hub id (needs network)."
    )


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

    from niche.synth import SynthSettings, make_teacher, synthesize

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


@app.command("train")
def train_command(
    config: Annotated[Path, typer.Argument(help="niche.yaml for the specialist.")],
    overrides: Overrides = None,
    base: Annotated[str | None, typer.Option(help="Override the base model.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Override output_dir.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override training.max_steps.")] = None,
    budget: Annotated[
        str | None,
        typer.Option(help="Wall-clock budget for the whole run (90s, 30m, 1h30m): training.time_budget."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint of an interrupted run.")] = False,
) -> None:
    """LoRA fine-tune a specialist; writes an adapter with its niche.json manifest."""
    from niche.config import load_config
    from niche.train import train

    flags = [f"base={base}"] if base else []
    flags += [f"output_dir={output_dir.resolve()}"] if output_dir else []
    flags += [f"training.max_steps={max_steps}"] if max_steps is not None else []
    flags += [f"training.time_budget={budget}"] if budget is not None else []
    result = train(load_config(config, [*(overrides or []), *flags]), resume=resume)
    if not result.is_main_process:
        return
    metrics = result.manifest.metrics
    console.print(f"[green]specialist written to[/] {result.specialist_dir}")
    if metrics.get("method") == "grpo":
        console.print(
            f"grpo: steps {metrics['steps']}, {metrics['train_runtime_s']:.0f} s "
            f"({metrics['seconds_per_step']:.1f} s/step), {metrics['prompts']} prompts"
        )
        return
    validation = (
        f"validation accuracy {metrics['eval_accuracy']:.4f}"
        if metrics.get("eval_accuracy") is not None
        else f"eval loss {metrics['eval_loss']:.4f}"
    )
    plan = metrics["plan"]
    stopped = {"budget": ", stopped by the time budget", "plateau": ", stopped on a validation plateau"}
    console.print(
        f"{result.manifest.hyperparameters['recipe']['objective']}: steps {metrics['steps']}, best step "
        f"{metrics['best_step']}, {validation}, {metrics['train_runtime_s']:.0f} s, {metrics['tokens_per_s']:.0f} "
        f"tokens/s{stopped.get(plan['stopped_by'] or '', '')}"
    )


def print_report(report: Any) -> None:
    table = Table(
        title=f"{report.rows} examples · task {report.task_kind}"
        + (" · constrained to labels" if report.constrained else "")
    )
    table.add_column("metric")
    for result in report.results:
        table.add_column(result.name, justify="right")
    for metric, value in report.results[0].metrics.items():
        if isinstance(value, (int, float)):
            table.add_row(metric, *[_cell(result.metrics.get(metric, "")) for result in report.results])
    table.add_row("examples/s", *[f"{result.examples_per_s:.2f}" for result in report.results])
    if any("fit_seconds" in result.details for result in report.results):
        table.add_row("fit (s)", *[_cell(result.details.get("fit_seconds", "")) for result in report.results])
    console.print(table)


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@app.command("eval")
def eval_command(
    specialist: Annotated[Path, typer.Argument(help="Specialist directory written by `niche train`.")],
    data: Annotated[Path, typer.Option(help="Held-out examples (same format as training).")],
    base: Annotated[
        str | None,
        typer.Option(help="Also score this bare base model with the same prompt ('base' = the specialist's own)."),
    ] = None,
    constrain: Annotated[
        bool | None,
        typer.Option(
            help="Decode label tasks within the label set and JSON tasks under the stored schema (on by default)."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Inference batch size.")] = None,
    baselines: Annotated[
        bool,
        typer.Option(
            help="Label tasks: also fit TF-IDF and sentence-embedding logistic regressions on the specialist's "
            "training rows and score them beside it."
        ),
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Write eval.json, eval.md and predictions.jsonl here.")] = None,
) -> None:
    """Score a specialist (and optionally its base) on held-out data: table in the terminal, JSON and markdown on disk."""
    from niche.eval import evaluate, write_report

    report = evaluate(specialist, data, base=base, constrain=constrain, batch_size=batch_size, baselines=baselines)
    print_report(report)
    target = write_report(report, out or specialist.parent / "reports" / f"{specialist.name}-{data.stem}")
    console.print(f"report written to {target}")


@app.command()
def plan(
    model: Annotated[
        str, typer.Option(help="Size preset (1b, 3b, 7b, 8b, smollm2-135m) or any base model niche loads.")
    ] = "smollm2-135m",
    method: Annotated[str, typer.Option(help="full, lora or qlora.")] = "lora",
    seq_len: Annotated[int, typer.Option(help="Tokens per example.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Examples per step (per device).")] = 8,
    device: Annotated[str, typer.Option(help="cpu, rtx4090, a100-40gb, a100-80gb, h100 or h200.")] = "cpu",
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (all linear layers).")] = 16,
    calibration: Annotated[
        bool, typer.Option(help="Also show the estimate's error at its calibration points.")
    ] = False,
) -> None:
    """Estimate peak memory and step time of a training run before starting it."""
    from niche.plan import DEVICES, PlanRequest, calibration_errors, estimate, resolve_shape

    if method not in ("full", "lora", "qlora"):
        raise ConfigError(f"--method {method!r}: expected full, lora or qlora")
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    request = PlanRequest(model, method, seq_len, batch_size, device, lora_rank)  # type: ignore[arg-type]
    result = estimate(request, resolve_shape(model))
    table = Table("", "estimate", title=f"{model} · {method} · {batch_size}×{seq_len} tokens · {result.device}")
    table.add_row(
        "parameters", f"{result.parameters / 1e9:.2f} B ({result.trainable_parameters / 1e6:.1f} M trainable)"
    )
    for name in ("weights", "trainable_state", "activations", "overhead"):
        table.add_row(name.replace("_", " "), f"{getattr(result, f'{name}_gib'):.2f} GiB")
    table.add_row("rows per pass", f"{result.micro_batch_size} of {result.request.batch_size} (activations above)")
    verdict = "fits" if result.fits else f"does NOT fit in {DEVICES[device].memory_gib:.0f} GiB"
    table.add_row("peak memory", f"[bold]{result.peak_gib:.2f} GiB[/] ({verdict})")
    table.add_row("step time", f"{result.step_seconds:.2f} s ({result.tokens_per_s:,.0f} tokens/s)")
    console.print(table)
    if calibration:
        for row in calibration_errors():
            console.print(
                f"{row['source']}: estimated {row['estimated_gib']:.1f} GiB, measured {row['measured_gib']:.1f} GiB "
                f"({row['memory_error']:+.0%})"
                + (f", tokens/s {row['time_error']:+.0%}" if "time_error" in row else "")
            )


@app.command()
def serve(
    specialists: Annotated[Path, typer.Argument(help="Directory whose subdirectories are specialists (niche.json).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_loaded: Annotated[int, typer.Option(help="Adapters kept in memory; the least recently used is evicted.")] = 8,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Require this bearer key (repeatable; or NICHE_API_KEYS=a,b).")
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 1 << 20,
    max_batch_size: Annotated[
        int, typer.Option(help="Requests decoded together, across specialists (1: one request at a time).")
    ] = 16,
    max_wait_ms: Annotated[
        float, typer.Option(help="When idle, how long a request waits for companions before its batch starts.")
    ] = 2.0,
    timeout: Annotated[float, typer.Option(help="Seconds a request may run before it is stopped (504).")] = 120.0,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Waiting requests past which a new request gets 429 with Retry-After.")
    ] = 256,
    engine: Annotated[
        str,
        typer.Option(
            help="torch (batched, this process), llamacpp (GGUF base + GGUF LoRAs, this process) or vllm "
            "(print the equivalent vLLM command)."
        ),
    ] = "torch",
    launch: Annotated[bool, typer.Option(help="With --engine vllm: run the command instead of printing it.")] = False,
    routing: Annotated[
        bool, typer.Option(help="Serve model 'auto': route each request to the closest specialist.")
    ] = True,
    route_threshold: Annotated[
        float, typer.Option(help="Below this similarity 'auto' answers with the base model.")
    ] = 0.4,
    registry_poll: Annotated[
        float,
        typer.Option(help="Every N seconds, switch each specialist to its MLflow registry champion (0: off)."),
    ] = 0.0,
) -> None:
    """Serve the specialists (and their bare base as model 'base') behind an OpenAI-compatible API."""
    import shlex

    if engine == "vllm":
        from niche.serve.vllm import vllm_command

        command = vllm_command(specialists, host, port)
        if launch:
            os.execvp(command[0], command)
        console.print(shlex.join(command))
        console.print(
            "Note: vLLM applies the base tokenizer's chat template; send each specialist's system prompt "
            "(niche.json template.system_prompt) with the request to match training."
        )
        return
    from niche.serve import create_engine
    from niche.serve.app import ServeSettings, create_app
    from niche.serve.http import serve_http

    # Request logs are JSON lines for log shippers, not rich-formatted text.
    request_log = logging.getLogger("niche.serve")
    request_log.propagate = False
    request_log.addHandler(logging.StreamHandler(sys.stderr))
    keys = set(api_key or []) | {key for key in os.environ.get("NICHE_API_KEYS", "").split(",") if key}
    serving_engine = create_engine(
        engine,
        specialists,
        max_loaded=max_loaded,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        timeout_s=timeout,
        max_queue=max_queue,
    )
    if registry_poll > 0:
        from niche.serve.registry import ChampionPoller

        poller = ChampionPoller(serving_engine, registry_poll)
        poller.check_once()
        poller.start()
    router = serving_engine.router(route_threshold) if routing else None
    app = create_app(serving_engine, ServeSettings(frozenset(keys), max_body_bytes), router)
    console.print(f"serving {', '.join(serving_engine.model_names())} on http://{host}:{port}/v1")
    serve_http(app, host, port)


@rag_app.command("index")
def rag_index(
    documents: Annotated[list[Path], typer.Argument(help="Text, markdown or PDF files, or directories of them.")],
    out: Annotated[Path, typer.Option(help="Index directory to write.")],
    chunk_size: Annotated[int, typer.Option(help="Characters per passage.")] = 800,
    overlap: Annotated[int, typer.Option(help="Characters shared by consecutive passages.")] = 150,
) -> None:
    """Chunk, embed (all-MiniLM-L6-v2) and store documents in one SQLite file (sqlite-vec + FTS5)."""
    from niche.rag import RagIndex

    index = RagIndex.build(documents, out, chunk_size=chunk_size, overlap=overlap)
    console.print(f"indexed {index.meta['chunks']} passages from {len(index.meta['documents'])} documents into {out}")


@rag_app.command("search")
def rag_search(
    index: Annotated[Path, typer.Argument(help="Index directory from `niche rag index`.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option(help="Passages to return.")] = 3,
    mode: Annotated[str, typer.Option(help="vector, bm25 or hybrid.")] = "hybrid",
) -> None:
    """The best passages for a query."""
    from niche.rag import RagIndex

    for hit in RagIndex.open(index).search(query, k, mode):  # type: ignore[arg-type]
        console.print(f"[bold]{hit.chunk.source}[/] ({hit.score:.4f})\n{hit.chunk.text}\n")


@app.command()
def ladder(
    config_path: Annotated[Path, typer.Argument(help="niche.yaml (with rag.documents for the retrieval rungs).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory; SPECIALIST/ladder when absent.")] = None,
) -> None:
    """Base, base+RAG, specialist, specialist+RAG on the held-out set: quality, latency, cost, forgetting."""
    from niche.config import load_config
    from niche.ladder import run_ladder, write_ladder_report
    from niche.report import ladder_markdown

    config = load_config(config_path, overrides)
    report = run_ladder(config)
    directory = write_ladder_report(report, out or config.specialist_dir / "ladder")
    console.print(ladder_markdown(report))
    console.print(f"report: {directory / 'ladder.html'}")


@app.command("export")
def export_command(
    specialist: Annotated[Path, typer.Argument(help="Specialist directory written by `niche train`.")],
    to: Annotated[str, typer.Option("--to", help="merged, gguf, ollama or vllm.")],
    quant: Annotated[str, typer.Option(help="GGUF quantization: f16, q8_0 or q4_k_m.")] = "q4_k_m",
    out: Annotated[
        Path | None, typer.Option(help="Export directory; SPECIALIST-TO[-QUANT] beside it when absent.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Held-out rows for the parity check (default: data.test).")] = None,
    parity_rows: Annotated[int, typer.Option(help="Held-out rows the parity check runs.")] = 32,
    max_metric_drop: Annotated[
        float, typer.Option(help="Quantized exports: warn when the task metric drops by more than this.")
    ] = 0.02,
) -> None:
    """Export a specialist (merged weights, GGUF, Ollama, vLLM) and check it answers like the trained model."""
    from niche.export import export_specialist, parity_table

    suffix = f"-{quant}" if to in ("gguf", "ollama") else ""
    target = out or specialist.parent / "exports" / f"{specialist.name}-{to}{suffix}"
    result = export_specialist(
        specialist,
        to,  # type: ignore[arg-type]
        target,
        quant=quant,  # type: ignore[arg-type]
        data=data,
        parity_rows=parity_rows,
        max_metric_drop=max_metric_drop,
    )
    if result.parity:
        console.print(parity_table(result.parity))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if "command" in result.details:
        import shlex

        console.print(shlex.join(result.details["command"]))
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in result.files.items())
    console.print(f"[green]exported to[/] {result.directory}: {sizes}")


@app.command()
def distill(
    config_path: Annotated[Path, typer.Argument(help="niche.yaml of the student (its data, training and name).")],
    teacher: Annotated[
        str,
        typer.Option(
            help="Teacher: a specialist directory; with --mode sequence also an OpenAI-compatible base URL or local:NAME."
        ),
    ],
    overrides: Overrides = None,
    mode: Annotated[str, typer.Option(help="logits (KD on the teacher's distributions) or sequence.")] = "logits",
    student_layers: Annotated[
        str | None,
        typer.Option(help="Make the student from the teacher's base: 'every_other' or indices like 0,2,4."),
    ] = None,
    inputs: Annotated[Path | None, typer.Option(help="--mode sequence: unlabeled inputs the teacher answers.")] = None,
    teacher_model: Annotated[str | None, typer.Option(help="Model name to ask an endpoint teacher for.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight to an endpoint teacher.")] = 4,
) -> None:
    """Train a smaller student from a teacher specialist (logit-level KD, or on the teacher's answers)."""
    from niche.config import load_config
    from niche.distill import distill_logits, distill_sequences, parse_student_layers

    config = load_config(config_path, overrides)
    layers = parse_student_layers(student_layers) if student_layers else None
    if mode == "logits":
        if layers is None:
            raise ConfigError("--mode logits: give --student-layers (the student is made from the teacher's base)")
        result = distill_logits(config, Path(teacher), layers)
    elif mode == "sequence":
        if inputs is None:
            raise ConfigError("--mode sequence: give --inputs, the unlabeled inputs the teacher answers")
        if layers is not None:
            from niche.distill import student_from_layers
            from niche.models import resolve_base
            from niche.specialist import MANIFEST_NAME, read_manifest, resolve_specialist_base

            local = (Path(teacher) / MANIFEST_NAME).is_file()
            base = resolve_specialist_base(read_manifest(Path(teacher))) if local else resolve_base(config.base)
            student = student_from_layers(base, layers, config.output_dir / f"{config.name}-student-base")
            config = config.model_copy(update={"base": str(student)})
        result, summary = distill_sequences(
            config, teacher, inputs, teacher_model=teacher_model, concurrency=concurrency
        )
        console.print(
            f"teacher answered {summary['answered']} of {summary['inputs']} inputs usably "
            f"(rejected {summary['rejected'] or 'none'}); curated {summary['curated']}"
        )
    else:
        raise ConfigError(f"--mode {mode!r}: expected logits or sequence")
    metrics = result.manifest.metrics
    console.print(f"[green]student written to[/] {result.specialist_dir} (eval loss {metrics['eval_loss']:.4f})")


@pipeline_app.command("run")
def pipeline_run(
    config_path: Annotated[
        Path, typer.Argument(help="niche.yaml (pipeline.inputs: the raw example files or directories).")
    ],
    overrides: Overrides = None,
    stage: Annotated[
        str | None, typer.Option(help="Re-run this stage alone from the stored outputs before it.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-run every stage even when its inputs did not change.")] = False,
) -> None:
    """curate → (synth) → train → eval → gate → register; unchanged stages are skipped."""
    from niche.config import load_config
    from niche.pipeline import run_pipeline

    result = run_pipeline(load_config(config_path, overrides), only=stage, force=force)
    _print_pipeline(result)


def _print_pipeline(result: Any) -> None:
    table = Table(title="niche pipeline")
    for column in ("stage", "status", "seconds"):
        table.add_column(column)
    for outcome in result.stages:
        table.add_row(outcome.name, outcome.status, f"{outcome.seconds:.1f}")
    console.print(table)
    decision = result.decision
    if decision:
        verdict = "[green]promoted to champion[/]" if decision.get("promoted") else "[yellow]kept as challenger[/]"
        version = f" (version {decision['version']})" if decision.get("version") else ""
        console.print(f"{verdict}{version}: {decision.get('reason', '')}")
    console.print(f"report: {result.work_dir / 'report' / 'pipeline.md'}")


@app.command()
def watch(
    data_dir: Annotated[Path, typer.Argument(help="Directory of example files (JSONL/CSV) that new data lands in.")],
    config_path: Annotated[Path, typer.Option("--config", help="niche.yaml of the specialist to keep up to date.")],
    overrides: Overrides = None,
    once: Annotated[bool, typer.Option(help="Check one time and exit (for cron).")] = False,
) -> None:
    """Start a pipeline run when new data calls for one: new rows, new labels, label shift, falling quality."""
    from niche.config import load_config
    from niche.watch import watch as watch_loop
    from niche.watch import watch_once

    config = load_config(config_path, overrides)

    def show(outcome: Any) -> None:
        check = outcome.check
        console.print(
            f"{check.rows} rows, {check.new_rows} new: "
            + ("; ".join(check.reasons) if check.fire else "no trigger, nothing to do")
        )
        if outcome.pipeline is not None:
            _print_pipeline(outcome.pipeline)
        if outcome.failure is not None:
            console.print(f"[red]pipeline run failed[/] (the next check tries again): {outcome.failure}")

    if once:
        outcome = watch_once(config, data_dir)
        show(outcome)
        if outcome.failure is not None:
            raise typer.Exit(1)
        return
    console.print(f"watching {data_dir} (Ctrl-C to stop)")
    try:
        watch_loop(config, data_dir, on_outcome=show)
    except KeyboardInterrupt:
        console.print("stopped")


@registry_app.command("show")
def registry_show(name: Annotated[str, typer.Argument(help="Specialist (registered model) name.")]) -> None:
    """Versions of a specialist with their aliases and gate results."""
    from niche.tracking import registry_versions

    table = Table(title=f"registry: {name}")
    for column in ("version", "aliases", "gate", "reason", "run"):
        table.add_column(column)
    for version, aliases in registry_versions(name):
        tags = version.tags
        table.add_row(
            version.version, ", ".join(aliases), tags.get("gate", ""), tags.get("reason", ""), version.run_id or ""
        )
    console.print(table)


@registry_app.command("promote")
def registry_promote(
    name: Annotated[str, typer.Argument(help="Specialist (registered model) name.")],
    version: Annotated[str, typer.Argument(help="Version that becomes the champion (e.g. to roll back).")],
) -> None:
    """Make a version the champion; servers polling the registry switch to it."""
    from niche.tracking import promote

    promote(name, version)
    console.print(f"{name} version {version} is the champion")


@app.command()
def demo(
    config: Annotated[Path | None, typer.Option(help="Example config (default examples/cloudsec/niche.yaml).")] = None,
    overrides: Overrides = None,
) -> None:
    """Train a specialist on the example domain and compare it with the base model on the held-out split."""
    from niche.demo import run_demo

    result = run_demo(config, overrides)
    metrics = result.train.manifest.metrics
    console.print(
        f"trained in {metrics['train_runtime_s']:.0f} s ({metrics['tokens_per_s']:.0f} tokens/s, "
        f"{metrics['steps']} steps); specialist at {result.train.specialist_dir}"
    )
    print_report(result.report)
    console.print(f"report written to {result.report_dir}")


def run() -> None:
    """Console-script entry point: NicheErrors print as one clear message, not a traceback."""
    try:
        app()
    except NicheError as error:
        if state["debug"]:
            raise
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    run()
