"""Pick device, dtype and thread settings from the hardware actually present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from niche.errors import ConfigError

# CPU flags that mean bf16 matrix multiplication runs natively (AVX512-BF16, AMX). Without them bf16 is
# emulated and ran about 18x slower than fp32; with AVX512-BF16 a bf16 matmul ran about 5x faster than fp32.
NATIVE_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


@dataclass(frozen=True)
class Hardware:
    device: str
    dtype: torch.dtype
    description: str

    @property
    def bf16(self) -> bool:
        return self.dtype == torch.bfloat16


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def detect_hardware() -> Hardware:
    """bf16 where the hardware computes it natively (most CUDA GPUs, CPUs with AVX512-BF16 or AMX), else fp32.

    NICHE_DTYPE=float32|bfloat16|float16 overrides the choice (float16 on a CUDA GPU only: on CPU it has no
    fast kernels and no loss scaling).
    """
    override = os.environ.get("NICHE_DTYPE")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        device, description = "cuda", f"cuda ({name})"
    else:
        configure_cpu_threads()
        dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        device, description = "cpu", f"cpu ({torch.get_num_threads()} threads)"
    if override:
        choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if override not in choices:
            raise ConfigError(f"NICHE_DTYPE={override!r}: expected one of {', '.join(choices)}")
        if override == "float16" and device != "cuda":
            raise ConfigError("NICHE_DTYPE=float16 needs a CUDA GPU; on CPU use bfloat16 or float32")
        dtype = choices[override]
    return Hardware(device, dtype, f"{description}, {str(dtype).removeprefix('torch.')}")


def configure_cpu_threads() -> None:
    """Use one intra-op thread per core unless the user chose otherwise with OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the torch work inside on one intra-op thread, for work beside a thread that serves forward passes.

    OpenMP gives every thread that runs a parallel torch op a team of worker threads of its own, and on CPU a
    second team slows the first long after its own work is done: on 2 cores, once the main thread had run
    parallel ops (loading a model), another thread's elementwise ops ran 2-4x and its bf16 matmuls 1.2x
    slower; a thread on one intra-op thread creates no team."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# oneDNN, which runs bf16 matmuls on CPU, compiles a kernel for every input shape it meets and keeps each, about
# 0.7 MiB, in two caches of 1,024 entries (its own and ideep's). A server's prefills come in ever new shapes:
# in a 10-minute soak the torch engine grew from 1.0 to 1.9 GiB resident, and a bf16 linear fed 2,000 random row
# counts grew 1.0 GiB; bounded at 256 entries the same loop grew 0.5 GiB and per-call time on the 16 decode
# shapes stayed within noise (entries are LRU, and decode shapes recur every step).
KERNEL_CACHE_ENTRIES = 256
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Bound oneDNN's per-shape kernel caches, unless the user set them. oneDNN reads these once, at its first
    matmul in the process, so call this before any bf16 work."""
    for variable in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(variable, str(entries))


# Up to this many tokens a row, plain matmul attention trained ~10% faster per step on CPU than PyTorch's fused
# CPU kernel (SmolLM2-135M, rows of ~110 tokens, bf16); its memory grows with the square of the length.
EAGER_ATTENTION_MAX_TOKENS = 256


def training_attention(hardware: Hardware, longest_row: int) -> str | None:
    """The attention implementation to train with, or None for the model's default."""
    if hardware.device == "cpu" and longest_row <= EAGER_ATTENTION_MAX_TOKENS:
        return "eager"
    return None
