"""The rules every benchmark follows, written once.

- Provenance: the commit, refused when the tree has uncommitted changes (the results files excepted), the time,
  the CPU, the load average before and after, the library versions.
- Runs: configurations interleaved round by round (the order rotates each round, so no configuration always
  runs first or last), at least 3 measured repetitions, warm-up rounds dropped; each measurement is kept with
  its median and min-max.
- Same work: a comparison between two sides is valid only when they did the same work (the same answers within a
  stated tolerance, the same tokens counted); otherwise it is recorded as invalid, with why, and no ratio is
  claimed from it.

A `--quick` run (the smoke mode of `make bench`) may run on a dirty tree and writes under build/bench-quick/, never
over a published results file.

A run cut off before it writes (hours of training on 2 cores outlast a session) resumes: with a Journal, each
finished (round, configuration) is kept under build/bench-journal/ and taken back, not re-run, by the next run of
the same script on the same commit with the same arguments; anything else starts afresh.

No torch here: the harness is imported by every benchmark and by the tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
QUICK_DIR = REPO / "build" / "bench-quick"
JOURNAL_DIR = REPO / "build" / "bench-journal"
MIN_REPEATS = 3
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "scikit-learn",
    "sklearn-crfsuite",
    "sentence-transformers",
    "llama_cpp_python",
    "datasketch",
    "vllm",
    "niche",
)


class DirtyTree(RuntimeError):
    """The tree has uncommitted changes: a results file would not say which code wrote it."""


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def uncommitted_changes(repo: Path = REPO) -> list[str]:
    """Paths with uncommitted changes, untracked files included (ignored ones not), bench/results/ excepted."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", ".", ":!bench/results")
    # Porcelain lines are "XY path": the two status columns may be blank, so the line is not stripped.
    return [line[3:] for line in status.splitlines() if line.strip()]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def provenance(repo: Path = REPO, allow_dirty: bool = False) -> dict[str, Any]:
    """Where and on what code a benchmark runs; raises DirtyTree unless the tree is clean or allow_dirty."""
    dirty = uncommitted_changes(repo)
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
        raise DirtyTree(
            f"{repo} has uncommitted changes ({shown}): commit them (or run from a clean worktree: "
            "git worktree add ../bench-tree HEAD) so the results file names the code that wrote it; "
            "--quick runs accept a dirty tree"
        )
    return {
        "commit": _git(repo, "rev-parse", "HEAD").strip() or "unknown (not a git checkout)",
        "uncommitted_changes": dirty,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "load_average_before": load_average(),
    }


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median and min-max of the measured repetitions, and the repetitions themselves."""
    if not values:
        raise ValueError("no measured repetitions to summarize")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


@dataclass
class Schedule:
    """Which configuration ran in which round; warm-up rounds are run but not measured."""

    order: list[tuple[int, str]] = field(default_factory=list)
    warmup_rounds: int = 0
    resumed: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "warmup_rounds": self.warmup_rounds,
            "order": [f"{round_}:{name}" for round_, name in self.order],
            "resumed_from_journal": [f"{round_}:{name}" for round_, name in self.resumed],
        }


class Journal:
    """The finished (round, configuration) results of a run, one JSON line each, so that a run cut off resumes.

    The first line is the run's key (commit and arguments); a journal with another key is discarded, so results
    of other code or other settings are never mixed in. Results must be JSON: tuples come back as lists.
    """

    def __init__(self, path: Path, key: Mapping[str, Any]):
        self.path = path
        self.key = json.loads(json.dumps(key, default=_jsonable))
        self.done: dict[tuple[int, str], Any] = {}
        lines = path.read_text().splitlines() if path.is_file() else []
        if lines and json.loads(lines[0]) == {"key": self.key}:
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # the line being written when the run was cut off
                self.done[(entry["round"], entry["name"])] = entry["result"]
        else:
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"key": self.key}) + "\n")
        temporary.replace(self.path)

    def record(self, round_: int, name: str, result: Any) -> None:
        line = json.dumps({"round": round_, "name": name, "result": result}, default=_jsonable)
        with self.path.open("a") as journal:
            journal.write(line + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        self.done[(round_, name)] = json.loads(line)["result"]

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def interleave(
    configurations: Mapping[str, Callable[[int], Any]],
    repeats: int = MIN_REPEATS,
    warmup: int = 0,
    on_result: Callable[[str, int, Any], None] | None = None,
    journal: Journal | None = None,
) -> tuple[dict[str, list[Any]], Schedule]:
    """Run every configuration once per round, the order rotating each round; returns the measured results.

    `configurations` maps a name to a function of the round number (0-based, warm-up rounds included) that runs
    the configuration once and returns its measurement. Warm-up rounds run in the same rotation and their
    results are dropped. With a journal, results it holds are taken from it (listed in the schedule as resumed)
    and each new one is recorded as soon as it is measured; only for measurements that do not depend on what ran
    beside them (accuracies, not speeds).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(configurations)
    measured: dict[str, list[Any]] = {name: [] for name in names}
    schedule = Schedule(warmup_rounds=warmup)
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if journal is not None and (round_, name) in journal.done:
                result = journal.done[(round_, name)]
                schedule.resumed.append((round_, name))
            else:
                result = configurations[name](round_)
                if journal is not None:
                    journal.record(round_, name, result)
                    result = journal.done[(round_, name)]  # as a resumed run would see it (JSON types)
            schedule.order.append((round_, name))
            if round_ >= warmup:
                measured[name].append(result)
                if on_result is not None:
                    on_result(name, round_, result)
    return measured, schedule


@dataclass
class WorkCheck:
    """Whether two sides of a comparison did the same work."""

    valid: bool
    what: str
    detail: str
    agreement: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "what": self.what, "detail": self.detail, "agreement": self.agreement}


def same_answers(
    reference: Sequence[Any],
    candidate: Sequence[Any],
    tolerance: float = 0.0,
    what: str = "answers",
    equal: Callable[[Any, Any], bool] | None = None,
) -> WorkCheck:
    """Valid when the candidate's answers equal the reference's on all but `tolerance` (a share) of the items."""
    if len(reference) != len(candidate):
        return WorkCheck(False, what, f"{len(candidate)} {what} against {len(reference)}: not the same items")
    if not reference:
        return WorkCheck(False, what, f"no {what} to compare")
    compare = equal or (lambda left, right: left == right)
    agreeing = sum(bool(compare(left, right)) for left, right in zip(reference, candidate, strict=True))
    agreement = agreeing / len(reference)
    valid = 1 - agreement <= tolerance + 1e-12
    detail = f"{agreeing}/{len(reference)} {what} agree (tolerance: {tolerance:.0%} may differ)"
    return WorkCheck(valid, what, detail, round(agreement, 4))


def same_count(reference: float, candidate: float, tolerance: float = 0.0, what: str = "tokens") -> WorkCheck:
    """Valid when both sides counted the same work (within a relative tolerance)."""
    if reference <= 0:
        return WorkCheck(False, what, f"the reference counted {reference} {what}")
    difference = abs(candidate - reference) / reference
    detail = f"{candidate:g} against {reference:g} {what} (tolerance {tolerance:.0%})"
    return WorkCheck(difference <= tolerance + 1e-12, what, detail, round(1 - difference, 4))


def ratio(numerator: Sequence[float], denominator: Sequence[float], checks: Sequence[WorkCheck] = ()) -> dict[str, Any]:
    """numerator / denominator: the ratio of medians, and its range over the rounds (paired by round).

    Any failed check makes the comparison invalid: the ratio is still recorded for inspection, under `valid:
    false` with the reasons, and `value` is None so nothing downstream publishes it.
    """
    if not numerator or not denominator:
        raise ValueError("a ratio needs measured repetitions on both sides")
    paired = [left / right for left, right in zip(numerator, denominator, strict=False) if right]
    median_ratio = statistics.median(numerator) / statistics.median(denominator)
    failed = [check for check in checks if not check.valid]
    return {
        "value": None if failed else median_ratio,
        "median_ratio": median_ratio,
        "min": min(paired) if paired else None,
        "max": max(paired) if paired else None,
        "valid": not failed,
        "invalid_because": [f"{check.what}: {check.detail}" for check in failed],
        "checks": [check.as_dict() for check in checks],
    }


def add_arguments(parser: argparse.ArgumentParser, repeats: int = MIN_REPEATS) -> None:
    """The options every benchmark takes."""
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"measured repetitions per configuration (>= {MIN_REPEATS})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: tiny sizes, one repetition, dirty tree allowed, written under build/bench-quick/",
    )


class Report:
    """A results file under construction: provenance taken at the start, load average again at the end."""

    def __init__(self, name: str, args: argparse.Namespace | None = None, repo: Path = REPO):
        self.name = name
        self.quick = bool(getattr(args, "quick", False))
        repeats = getattr(args, "repeats", MIN_REPEATS)
        if not self.quick and repeats < MIN_REPEATS:
            raise SystemExit(f"--repeats {repeats}: a published results file needs at least {MIN_REPEATS}")
        self.repeats = 1 if self.quick else repeats
        try:
            self.provenance = provenance(repo, allow_dirty=self.quick)
        except DirtyTree as error:
            raise SystemExit(f"{name}: {error}") from None
        directory = QUICK_DIR if self.quick else repo / "bench" / "results"
        self.path = directory / f"{name}.json"
        self.arguments = dict(vars(args)) if args is not None else {}
        self._journal: Journal | None = None

    def journal(self, journal_dir: Path = JOURNAL_DIR) -> Journal | None:
        """The journal of this run (None for --quick): same commit and arguments resume, anything else starts afresh."""
        if self.quick:
            return None
        if self._journal is None:
            key = {"commit": self.provenance["commit"], "arguments": self.arguments}
            self._journal = Journal(journal_dir / f"{self.name}.jsonl", key)
        return self._journal

    def write(self, payload: Mapping[str, Any]) -> Path:
        """Adds provenance and the closing load average, writes atomically (temporary file, then rename)."""
        reserved = sorted({"benchmark", "quick", "repeats", "commit", "clean", "provenance"} & set(payload))
        if reserved:
            raise ValueError(f"{self.name}: the payload may not set {reserved}: the harness writes them")
        record = {
            "benchmark": self.name,
            "quick": self.quick,
            "repeats": self.repeats,
            # The stamp readers look for first: the commit, and that no uncommitted change wrote this file.
            "commit": self.provenance["commit"],
            "clean": not self.provenance["uncommitted_changes"],
            "provenance": {
                **self.provenance,
                "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "load_average_after": load_average(),
            },
            **payload,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
        temporary.replace(self.path)
        if self._journal is not None:
            self._journal.discard()
        print(f"written to {self.path}")
        return self.path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars, without importing numpy here
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def format_range(stats: Mapping[str, Any], digits: int = 2, suffix: str = "") -> str:
    """'1.57x (1.49-1.62)': a median with its range, as tables print it."""
    if stats.get("value") is None and "valid" in stats and not stats["valid"]:
        return "invalid"
    middle = stats.get("value", stats.get("median"))
    if stats.get("min") is None:
        return f"{middle:.{digits}f}{suffix}"
    return f"{middle:.{digits}f}{suffix} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
