"""The `niche` application: its sub-command groups, console, logging and the entry point."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from niche import __version__
from niche.errors import NicheError

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

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="niche.yaml whose section for this command sets its defaults; flags override it."),
]
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
    """List the base-model catalog and what is cached, with sizes; then the model families' public checkpoints
    with their peak training memory (`niche plan`'s estimate)."""
    from niche.families import CHECKPOINTS
    from niche.models import list_models
    from niche.plan import CATALOG_PLANS, catalog_plans

    table = Table("name", "cached", "size", "description")
    for listing in list_models(cache_dir):
        size = f"{listing.size_bytes / 2**20:.0f} MiB" if listing.size_bytes else "-"
        table.add_row(listing.name, "yes" if listing.cached else "no", size, listing.description)
    console.print(table)
    families = Table(title="Model families (peak GiB to train: rows of 512 tokens, batch 8, LoRA r16; * does not fit)")
    # The hub id is what a user copies into `base:`: kept whole however narrow the terminal; the rest may wrap.
    families.add_column("hub id", no_wrap=True, min_width=max(len(checkpoint.hub_id) for checkpoint in CHECKPOINTS))
    for heading in ("family", "parameters", "licence", "context", *(label for label, _, _ in CATALOG_PLANS)):
        families.add_column(heading, no_wrap=heading == "licence")
    for row in catalog_plans():
        families.add_row(
            row.checkpoint.hub_id,
            row.checkpoint.family,
            f"{row.parameters / 1e9:.2f}B",
            row.checkpoint.licence,
            f"{row.checkpoint.context_length:,}",
            *(f"{plan.peak_gib:.1f}{'' if plan.fits else '*'}" for plan in row.plans.values()),
        )
    # Nine columns need about 160 characters; a pipe or a narrow terminal gets them whole rather than cut.
    Console(width=max(console.width, 160)).print(families)
    console.print(
        "Also accepted as a base: a local Hugging Face model directory, a .gguf file, or a hub id (needs network)."
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


def run() -> None:
    """Console-script entry point: NicheErrors print as one clear message, not a traceback."""
    try:
        app()
    except NicheError as error:
        if state["debug"]:
            raise
        # The message is text, not markup: "pip install 'niche[train]'" must print its brackets.
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        sys.exit(2)
