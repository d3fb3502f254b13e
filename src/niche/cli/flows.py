"""`niche models`, `niche ladder`, `niche pipeline`, `niche watch`, `niche demo`: the flows over the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from niche.cli.app import Overrides, app, console, pipeline_app, print_report


@app.command()
def ladder(
    config_path: Annotated[Path, typer.Argument(help="niche.yaml (with rag.documents for the retrieval rungs).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory; SPECIALIST/ladder when absent.")] = None,
) -> None:
    """Base, base+RAG, specialist, specialist+RAG on the held-out set: quality, latency, cost, forgetting."""
    from niche.config import load_config
    from niche.ladder import ladder_markdown, run_ladder, write_ladder_report

    config = load_config(config_path, overrides)
    report = run_ladder(config)
    directory = write_ladder_report(report, out or config.specialist_dir / "ladder")
    console.print(ladder_markdown(report))
    console.print(f"report: {directory / 'ladder.html'}")


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
            console.print(f"[red]pipeline run failed[/] (the next check tries again): {escape(str(outcome.failure))}")

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
