"""Which code wrote a results file: the commit, whether the tree had uncommitted changes, and when."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def code_provenance() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)",
        # The results files themselves are left out: a benchmark rewrites them as it runs.
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def machine() -> dict:
    """The machine a benchmark ran on: cores, the dtype niche chose, native bf16, Python."""
    import os
    import platform

    from niche.hardware import cpu_flags, detect_hardware

    return {
        "cores": len(os.sched_getaffinity(0)),
        "dtype": detect_hardware().description,
        "native_bf16": bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}),
        "python": platform.python_version(),
    }
