"""What older results files record about their code and machine, now taken from bench/harness.py.

Scripts written through `harness.Report` get the full provenance (and a dirty tree refused) from it; this module
keeps the short `code` and `machine` records for the scripts that still write them (bench/gpu_check.py).
"""

from __future__ import annotations

from harness import provenance


def code_provenance() -> dict:
    """The commit, whether the tree had uncommitted changes (bench/results/ excepted), and when."""
    record = provenance(allow_dirty=True)
    return {
        "commit": record["commit"],
        "uncommitted_changes": bool(record["uncommitted_changes"]),
        "written": record["started"],
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
