"""`niche serve`, `niche rag`, `niche export`, `niche registry`: running and shipping specialists."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from niche.cli.app import ConfigOption, app, console, rag_app, registry_app


@app.command()
def serve(
    specialists: Annotated[Path, typer.Argument(help="Directory whose subdirectories are specialists (niche.json).")],
    config_path: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8000].")] = None,
    max_loaded: Annotated[
        int | None, typer.Option(help="Adapters kept in memory; the least recently used is evicted [8].")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Require this bearer key (repeatable; or NICHE_API_KEYS=a,b).")
    ] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help="Largest request body accepted [1 MiB].")] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Requests decoded together, across specialists (1: one at a time) [16].")
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="When idle, how long a request waits for companions before its batch [2].")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds a request may run before it is stopped (504) [120].")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Waiting requests past which a new request gets 429 with Retry-After [256].")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="torch (batched, this process), llamacpp (GGUF base + GGUF LoRAs, this process) or vllm "
            "(print the equivalent vLLM command) [torch]."
        ),
    ] = None,
    launch: Annotated[bool, typer.Option(help="With --engine vllm: run the command instead of printing it.")] = False,
    routing: Annotated[
        bool | None, typer.Option(help="Serve model 'auto': route each request to the closest specialist [on].")
    ] = None,
    route_threshold: Annotated[
        float | None, typer.Option(help="Below this similarity 'auto' answers with the base model [0.4].")
    ] = None,
    registry_poll: Annotated[
        float | None,
        typer.Option(help="Every N seconds, switch each specialist to its MLflow registry champion (0: off) [0]."),
    ] = None,
    ui: Annotated[
        bool, typer.Option("--ui", help="Also serve niche studio, the web page, at / (as `niche studio`).")
    ] = False,
) -> None:
    """Serve the specialists (and their bare base as model 'base') behind an OpenAI-compatible API."""
    from niche.config import command_section
    from niche.serve import serve_specialists

    settings = command_section(config_path, "serve").updated(
        engine=engine,
        host=host,
        port=port,
        max_loaded=max_loaded,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        timeout=timeout,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        routing=routing,
        route_threshold=route_threshold,
        registry_poll=registry_poll,
    )
    keys = frozenset(set(api_key or []) | {key for key in os.environ.get("NICHE_API_KEYS", "").split(",") if key})
    if ui:
        from niche.studio import run_studio

        run_studio(specialists, settings, api_keys=keys, say=console.print)
    else:
        serve_specialists(specialists, settings, api_keys=keys, launch=launch, say=console.print)


@app.command()
def studio(
    specialists: Annotated[
        Path, typer.Argument(help="Directory whose subdirectories are specialists (niche.json).")
    ] = Path("specialists"),
    config_path: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on; other than loopback only with a key [127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8000].")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(help="Require this bearer key for the page and the API (repeatable; or NICHE_API_KEYS=a,b)."),
    ] = None,
    engine: Annotated[str | None, typer.Option(help="torch or llamacpp [torch].")] = None,
    max_loaded: Annotated[int | None, typer.Option(help="Adapters kept in memory [8].")] = None,
) -> None:
    """The web page: specialist cards, side-by-side compare, data checks and training jobs, reports, live serving;
    on the same OpenAI-compatible server as `niche serve`."""
    serve(
        specialists, config_path, host=host, port=port, api_key=api_key, engine=engine, max_loaded=max_loaded, ui=True
    )


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
        console.print(f"[bold]{escape(hit.chunk.source)}[/] ({hit.score:.4f})\n{escape(hit.chunk.text)}\n")


@app.command("export")
def export_command(
    specialist: Annotated[Path, typer.Argument(help="Specialist directory written by `niche train`.")],
    to: Annotated[str, typer.Option("--to", help="merged, gguf, ollama or vllm.")],
    config_path: ConfigOption = None,
    quant: Annotated[str | None, typer.Option(help="GGUF quantization: f16, q8_0 or q4_k_m [q4_k_m].")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Export directory; SPECIALIST-TO[-QUANT] beside it when absent.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Held-out rows for the parity check (default: data.test).")] = None,
    parity_rows: Annotated[int | None, typer.Option(help="Held-out rows the parity check runs [32].")] = None,
    max_metric_drop: Annotated[
        float | None, typer.Option(help="Quantized exports: warn when the task metric drops by more than this [0.02].")
    ] = None,
) -> None:
    """Export a specialist (merged weights, GGUF, Ollama, vLLM) and check it answers like the trained model."""
    from niche.config import command_section
    from niche.export import default_export_dir, export_specialist, parity_table

    settings = command_section(config_path, "export").updated(
        quant=quant, parity_rows=parity_rows, max_metric_drop=max_metric_drop
    )
    target = out or default_export_dir(specialist, to, settings.quant)
    result = export_specialist(specialist, to, target, data=data, **settings.model_dump())  # type: ignore[arg-type]
    if result.parity:
        console.print(parity_table(result.parity))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if "command" in result.details:
        import shlex

        console.print(shlex.join(result.details["command"]))
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in result.files.items())
    console.print(f"[green]exported to[/] {escape(str(result.directory))}: {sizes}")


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
