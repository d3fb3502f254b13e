"""Pick device, dtype and thread settings from the hardware actually present."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Hardware:
    device: str
    dtype: torch.dtype
    description: str


def detect_hardware() -> Hardware:
    """CUDA with bf16 when the GPU has it; otherwise fp32, because bf16 on CPUs without it is emulated (~18x slower)."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Hardware("cuda", dtype, f"cuda ({name})")
    configure_cpu_threads()
    return Hardware("cpu", torch.float32, f"cpu ({torch.get_num_threads()} threads)")


def configure_cpu_threads() -> None:
    """Use one intra-op thread per core unless the user chose otherwise with OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores))
