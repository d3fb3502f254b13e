"""`niche train`, `niche eval`, `niche plan`, `niche distill`: training and measuring specialists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from niche.cli.app import Overrides, app, console, print_report
from niche.errors import ConfigError


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
    console.print(f"[green]specialist written to[/] {escape(str(result.specialist_dir))}")
    if metrics.get("method") == "grpo":
        console.print(
            f"grpo: steps {metrics['steps']}, {metrics['train_runtime_s']:.0f} s "
            f"({metrics['seconds_per_step']:.1f} s/step), {metrics['prompts']} prompts"
        )
        return
    if metrics.get("eval_accuracy") is not None:
        validation = f"validation accuracy {metrics['eval_accuracy']:.4f}"
    elif metrics.get("eval_field_f1") is not None:
        validation = f"validation field F1 {metrics['eval_field_f1']:.4f}"
    else:
        validation = f"eval loss {metrics['eval_loss']:.4f}"
    plan = metrics["plan"]
    stopped = {"budget": ", stopped by the time budget", "plateau": ", stopped on a validation plateau"}
    console.print(
        f"{result.manifest.hyperparameters['recipe']['objective']}: steps {metrics['steps']}, best step "
        f"{metrics['best_step']}, {validation}, {metrics['train_runtime_s']:.0f} s, {metrics['tokens_per_s']:.0f} "
        f"tokens/s{stopped.get(plan['stopped_by'] or '', '')}"
    )


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
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config", help="niche.yaml whose `eval` section replaces the one the specialist was trained with."
        ),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="local (this process) or ray (a pool of Ray actors; the `scale` extra), same answers.")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join with --engine ray; none starts a local Ray.")
    ] = None,
) -> None:
    """Score a specialist (and optionally its base) on held-out data: table in the terminal, JSON and markdown on disk."""
    from niche.config import command_section
    from niche.eval import evaluate, write_report

    settings = command_section(config_path, "eval") if config_path is not None else None
    report = evaluate(
        specialist,
        data,
        base=base,
        constrain=constrain,
        batch_size=batch_size,
        baselines=baselines,
        settings=settings,
        engine=engine,
        ray_address=ray_address,
    )
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
            from niche.artifact import is_specialist, read_manifest
            from niche.distill import student_from_layers
            from niche.models import resolve_base
            from niche.specialist import resolve_specialist_base

            local = is_specialist(Path(teacher))
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
    console.print(
        f"[green]student written to[/] {escape(str(result.specialist_dir))} (eval loss {metrics['eval_loss']:.4f})"
    )
