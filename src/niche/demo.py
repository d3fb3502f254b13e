"""`niche demo`: the main job on the project's own example domain, from data to a measured specialist."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from niche.config import load_config
from niche.errors import ConfigError
from niche.eval.evaluate import EvalReport, evaluate, write_report
from niche.train import TrainResult, train

DEFAULT_EXAMPLE = "cloudsec"


@dataclass
class DemoResult:
    train: TrainResult
    report: EvalReport
    report_dir: Path


def find_example_config(example: str = DEFAULT_EXAMPLE) -> Path:
    """examples/<name>/niche.yaml in the working directory, else in the source checkout niche runs from."""
    candidates = [
        Path.cwd() / "examples" / example / "niche.yaml",
        Path(__file__).resolve().parents[2] / "examples" / example / "niche.yaml",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"example {example!r} not found (looked for {', '.join(map(str, candidates))}); "
        "run from the niche checkout or pass --config"
    )


def run_demo(
    config_path: Path | None = None, overrides: list[str] | None = None, show_progress: bool = True
) -> DemoResult:
    """Train the example specialist, then score it on its held-out test split beside the base model and the classic
    baselines (fitted on the same training rows)."""
    config = load_config(config_path or find_example_config(), overrides)
    if config.data.test is None:
        raise ConfigError("the demo needs data.test in its config: a held-out split to measure on")
    trained = train(config, show_progress=show_progress)
    report = evaluate(
        trained.specialist_dir, config.data.test, base=config.base, baselines=True, show_progress=show_progress
    )
    report_dir = write_report(report, config.output_dir / "reports" / config.name)
    return DemoResult(trained, report, report_dir)
