"""`python -m niche.studio.worker STATE_DB JOB_ID`: one studio training job, in a process of its own.

It trains exactly as `niche train` does (the job's niche.yaml, `niche.train.train`), reporting progress, the
loss curve and its outcome into the job's row (the runner records the final state once it has cleaned up);
with data.test it then scores the specialist as `niche demo` does, into reports/NAME beside it. SIGTERM (the studio's cancel) becomes an exception, so the specialist's staging
directory is removed on the way out and nothing half-written is left.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from niche.artifact import read_manifest
from niche.config import NicheConfig, load_config
from niche.errors import NicheError
from niche.eval.evaluate import evaluate, write_report
from niche.studio.catalog import REPORTS_DIR
from niche.studio.jobs import JobStore
from niche.train import train

PROGRESS_EVERY_S = 0.5


class JobCancelled(BaseException):
    """Raised by SIGTERM: a BaseException, so no `except Exception` on the way up can swallow it."""


def cancel_on_sigterm(signum: int, frame: Any) -> None:
    raise JobCancelled


class StudioProgress(TrainerCallback):
    """Steps, loss, validation, tokens/s and ETA into the job's row; every logged loss onto its curve."""

    def __init__(self, store: JobStore, job_id: int) -> None:
        self.store = store
        self.job_id = job_id
        self.figures: dict[str, Any] = {"phase": "preparing"}
        self.started = time.perf_counter()
        self.tokens_at_start = 0
        self.first_step = 0
        self.reported = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()
        self.tokens_at_start = state.num_input_tokens_seen
        self.first_step = state.global_step
        self.figures |= {"phase": "training", "step": state.global_step, "max_steps": state.max_steps}
        self.store.progress(self.job_id, self.figures)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = state.global_step - self.first_step
        self.figures |= {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 3),
            "elapsed_s": round(elapsed, 1),
            "tokens_per_s": round((state.num_input_tokens_seen - self.tokens_at_start) / elapsed, 1),
            "eta_s": round(elapsed / done * (state.max_steps - state.global_step), 1) if done else None,
        }
        if time.perf_counter() - self.reported >= PROGRESS_EVERY_S or state.global_step >= state.max_steps:
            self.reported = time.perf_counter()
            self.store.progress(self.job_id, self.figures)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        point = {key: value for key, value in (logs or {}).items() if key in ("loss", "eval_loss", "eval_accuracy")}
        if not point:
            return
        self.figures |= point
        self.store.progress(self.job_id, self.figures, {"step": state.global_step, **point})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.figures["phase"] = "writing the specialist"
        self.store.progress(self.job_id, self.figures)


def run_job(store: JobStore, job_id: int) -> int:
    """Train the job's configuration and record how it ended; the process's exit code."""
    job = store.get(job_id)
    progress = StudioProgress(store, job_id)
    try:
        config = load_config(Path(job.config_path))
        result = train(config, show_progress=True, callbacks=[progress])
    except JobCancelled:
        store.report_outcome(job_id, "cancelled", error="cancelled")
        print("cancelled", flush=True)
        return 0
    except NicheError as error:
        store.report_outcome(job_id, "failed", error=str(error))
        print(f"error: {error}", flush=True)
        return 1
    except Exception as error:  # noqa: BLE001 - any failure ends the job with its reason on the page
        traceback.print_exc()
        store.report_outcome(job_id, "failed", error=f"{type(error).__name__}: {error}")
        return 1
    print(f"wrote {result.specialist_dir}", flush=True)
    note = evaluate_on_test(config, result.specialist_dir, store, job_id, progress)
    progress.figures["phase"] = "done"
    store.progress(job_id, progress.figures)
    store.report_outcome(job_id, "succeeded", error=note, specialist=str(result.specialist_dir))
    return 0


def evaluate_on_test(
    config: NicheConfig, specialist_dir: Path, store: JobStore, job_id: int, progress: StudioProgress
) -> str | None:
    """With data.test, score the new specialist as `niche demo` does (beside its base and, for label tasks, the
    classic baselines) into reports/NAME, so its card shows how it measured. The specialist is complete before
    this starts: a failed or cancelled evaluation is a note on a finished job, never a lost specialist."""
    if config.data.test is None:
        return None
    progress.figures["phase"] = "evaluating on data.test"
    store.progress(job_id, progress.figures)
    try:
        label_task = read_manifest(specialist_dir).task.kind == "label"
        report = evaluate(
            specialist_dir,
            config.data.test,
            base=config.base,
            baselines=label_task,
            show_progress=True,
            settings=config.eval,
        )
        write_report(report, config.output_dir / REPORTS_DIR / config.name)
    except JobCancelled:
        return "evaluation cancelled; the specialist is complete"
    except Exception as error:  # noqa: BLE001 - the trained specialist stands; the page shows why it has no eval
        traceback.print_exc()
        return f"evaluation failed: {type(error).__name__}: {error}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m niche.studio.worker STATE_DB JOB_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, cancel_on_sigterm)
    return run_job(JobStore(Path(argv[0])), int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
