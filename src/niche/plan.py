"""`niche plan`: estimate peak memory and step time before a run, from the model's shape and the hardware.

Memory = weights + trainable state (gradients, AdamW moments) + activations + runtime overhead.
Activations follow Korthikanti et al. (2022): about 34·h bytes per token per layer at 16-bit, plus the
attention-score term 5·heads·seq when attention is not fused. Time = training FLOPs / effective FLOP/s.

The constants are calibrated on two kinds of evidence, and `CALIBRATION` keeps both so the error can be shown:
published 7B reference points (full 78.5 GB, LoRA 28 GB, QLoRA 15.5 GB) and runs measured on this
project's 2-core CPU machines with SmolLM2-135M. Every point names the dtype it was trained in: the CPU trains
in bf16 where it computes bf16 natively (`niche.hardware`) and in fp32 elsewhere, and the two differ in speed
and memory, so `cpu` is the device this machine's CPU trains as (`cpu-bf16` or `cpu-fp32`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from niche.families import CHECKPOINTS, Checkpoint, Shape
from niche.hardware import cpu_has_native_bf16
from niche.models import resolve_base

Method = Literal["full", "lora", "qlora"]
GIB = 2**30


SHAPES: dict[str, Shape] = {
    "smollm2-135m": Shape(576, 30, 1536, 9, 3, 49152, tied_embeddings=True),
    "1b": Shape(2048, 16, 8192, 32, 8, 128256, tied_embeddings=True),
    "3b": Shape(3072, 28, 8192, 24, 8, 128256, tied_embeddings=True),
    "7b": Shape(4096, 32, 11008, 32, 32, 32000),
    "8b": Shape(4096, 32, 14336, 32, 8, 128256),
}


DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    dtype: Literal["float32", "bfloat16"]
    effective_tflops: float
    overhead_gib: float
    activation_factor: float = 1.0  # measured peak over the activation formula (CPU allocators keep buffers)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def is_cpu(self) -> bool:
        return self.name.startswith("cpu")


# Effective FLOP/s: GPUs at ~40% of their dense bf16 peak (typical MFU for small-batch fine-tuning). The CPU
# figures are fitted to the CPU calibration points of their dtype (LoRA steps on SmolLM2-135M, 2 cores): fp32
# to the two fp32 points, bf16 (speed and activation factor) to the one bf16 point, so that point checks nothing.
CPU_DEVICES: dict[str, Device] = {
    "cpu-fp32": Device("cpu (2 cores, fp32)", 24.0, "float32", 0.075, 0.9, activation_factor=2.6),
    "cpu-bf16": Device("cpu (2 cores, bf16)", 24.0, "bfloat16", 0.157, 0.9, activation_factor=3.58),
}
DEVICES: dict[str, Device] = {
    "cpu": CPU_DEVICES["cpu-bf16" if cpu_has_native_bf16() else "cpu-fp32"],
    **CPU_DEVICES,
    "rtx4090": Device("RTX 4090 24 GB", 24.0, "bfloat16", 0.4 * 165, 1.0),
    "a100-40gb": Device("A100 40 GB", 40.0, "bfloat16", 0.4 * 312, 1.0),
    "a100-80gb": Device("A100 80 GB", 80.0, "bfloat16", 0.4 * 312, 1.0),
    "h100": Device("H100 80 GB", 80.0, "bfloat16", 0.4 * 989, 1.0),
    "h200": Device("H200 141 GB", 141.0, "bfloat16", 0.4 * 989, 1.0),
}


@dataclass(frozen=True)
class PlanRequest:
    model: str
    method: Method = "lora"
    seq_len: int = 512
    batch_size: int = 8
    device: str = "cpu"
    lora_rank: int = 16
    fused_attention: bool = True
    # Rows per forward/backward pass; None: what `niche train` picks (on CPU, niche.train.memory's rule).
    micro_batch_size: int | None = None


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    parameters: int
    trainable_parameters: int
    weights_gib: float
    trainable_state_gib: float
    activations_gib: float
    micro_batch_size: int
    overhead_gib: float
    peak_gib: float
    fits: bool
    step_seconds: float
    tokens_per_s: float
    device: str

    def to_json(self) -> dict:
        return asdict(self)


def estimate(request: PlanRequest, shape: Shape | None = None) -> Plan:
    """Peak memory and step time for one training configuration."""
    # Importing niche.train loads the Trainer; `niche plan` needs only this rule, so only when estimating.
    from niche.train.memory import choose_micro_batch

    shape = shape or SHAPES[request.model]
    device = DEVICES[request.device]
    parameters = shape.parameters()
    trainable = parameters if request.method == "full" else shape.lora_parameters(request.lora_rank)
    weight_bytes = 0.55 if request.method == "qlora" else device.dtype_bytes  # NF4 + double-quant constants
    linear = shape.layers * shape.linear_parameters_per_layer()
    weights = linear * weight_bytes + (parameters - linear) * device.dtype_bytes
    # Gradients in the training dtype plus two fp32 AdamW moments per trainable parameter.
    trainable_state = trainable * (device.dtype_bytes + 8)
    tokens = request.seq_len * request.batch_size
    per_token_layer = 34 * shape.hidden + (0 if request.fused_attention else 5 * shape.heads * request.seq_len)
    row_activations = (
        shape.layers * request.seq_len * per_token_layer * device.dtype_bytes / 2 * device.activation_factor
    )
    micro_batch = choose_micro_batch(
        request.batch_size, request.micro_batch_size, row_activations, "cpu" if device.is_cpu else "cuda"
    )
    activations = micro_batch.rows * row_activations
    peak = (weights + trainable_state + activations) / GIB + device.overhead_gib
    # Forward 2 FLOPs per weight per token; backward 2 more for input gradients, 2 more where weights train.
    flops_per_token = (
        2 * linear * (3 if request.method == "full" else 2) + 4 * shape.layers * request.seq_len * shape.hidden
    )
    step_seconds = tokens * flops_per_token / (device.effective_tflops * 1e12)
    return Plan(
        request=request,
        parameters=parameters,
        trainable_parameters=trainable,
        weights_gib=weights / GIB,
        trainable_state_gib=trainable_state / GIB,
        activations_gib=activations / GIB,
        micro_batch_size=micro_batch.rows,
        overhead_gib=device.overhead_gib,
        peak_gib=peak,
        fits=peak <= device.memory_gib,
        step_seconds=step_seconds,
        tokens_per_s=tokens / step_seconds,
        device=device.name,
    )


@dataclass(frozen=True)
class CalibrationPoint:
    source: str
    request: PlanRequest
    measured_peak_gib: float
    measured_tokens_per_s: float | None = None
    evidence: str = ""  # where the measured numbers come from: a results file and the script writing it, or a date

    @property
    def dtype(self) -> str:
        return DEVICES[self.request.device].dtype

    @property
    def label(self) -> str:
        return f"{self.source} ({self.dtype})"


# `niche train` as bench/train_speed.py runs it (CLINC150 banking, 16 rows of 96.6 tokens a step): the median
# of workloads.label.runs.niche in bench/results/train_speed.json; tests/test_plan.py keeps the two equal.
TRAIN_SPEED_RESULTS = "bench/results/train_speed.json"
CALIBRATION: list[CalibrationPoint] = [
    # Published 7B points (GB taken as 10^9 bytes), for 16-bit training of 2048 tokens a step.
    CalibrationPoint("published 7B full", PlanRequest("7b", "full", 2048, 1, "a100-80gb"), 78.5e9 / GIB),
    CalibrationPoint("published 7B LoRA", PlanRequest("7b", "lora", 2048, 1, "a100-80gb"), 28e9 / GIB),
    CalibrationPoint("published 7B QLoRA", PlanRequest("7b", "qlora", 2048, 1, "a100-80gb"), 15.5e9 / GIB),
    # `niche train` peak RSS and tokens/s, SmolLM2-135M LoRA r=16 all-linear, 2 CPU cores.
    CalibrationPoint(
        "measured CLINC150 banking, bench/train_speed.py",
        PlanRequest("smollm2-135m", "lora", 97, 16, "cpu-bf16"),  # micro-batches of 8 rows, as niche chose
        2901.23 / 1024,
        386.4,
        evidence=f"{TRAIN_SPEED_RESULTS} workloads.label.runs.niche, medians of 3 rounds (commit 67e40f6)",
    ),
    CalibrationPoint(
        "measured cloudsec demo",
        PlanRequest("smollm2-135m", "lora", 101, 8, "cpu-fp32", micro_batch_size=8),  # before micro-batches
        4.3,
        145.0,
        evidence="one-off fp32 run before commit d69f6e9 (2026-11-23); no script reproduces it",
    ),
    CalibrationPoint(
        "measured CLINC150 bench",
        PlanRequest("smollm2-135m", "lora", 98, 16, "cpu-fp32", micro_batch_size=16),  # before micro-batches
        5.55,
        181.0,
        evidence="one-off fp32 run before commit d69f6e9 (2026-11-23); no script reproduces it",
    ),
]


def calibration_errors() -> list[dict]:
    """Relative error of the estimate at every calibration point, each labelled with the dtype it ran in."""
    rows = []
    for point in CALIBRATION:
        plan = estimate(point.request)
        row = {
            "source": point.label,
            "dtype": point.dtype,
            "evidence": point.evidence,
            "estimated_gib": plan.peak_gib,
            "measured_gib": point.measured_peak_gib,
            "memory_error": plan.peak_gib / point.measured_peak_gib - 1,
        }
        if point.measured_tokens_per_s:
            row |= {
                "estimated_tokens_per_s": plan.tokens_per_s,
                "measured_tokens_per_s": point.measured_tokens_per_s,
                "time_error": point.measured_tokens_per_s / plan.tokens_per_s - 1,
            }
        rows.append(row)
    return rows


def shape_from_config(config: dict) -> Shape:
    """A Hugging Face config.json (Llama, Mistral, Qwen, SmolLM, ...) as a Shape."""
    heads = config["num_attention_heads"]
    return Shape(
        hidden=config["hidden_size"],
        layers=config["num_hidden_layers"],
        intermediate=config["intermediate_size"],
        heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        vocab=config["vocab_size"],
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        explicit_head_dim=config.get("head_dim"),
    )


def resolve_shape(model: str) -> Shape:
    """A size preset (7b, 8b, ...) or any base niche can load (catalog name, directory, .gguf, hub id)."""
    import json

    if model in SHAPES:
        return SHAPES[model]

    return shape_from_config(json.loads((resolve_base(model).directory / "config.json").read_text()))


# The memory plans `niche models` shows for every listed checkpoint: rows of 512 tokens, batch 8, LoRA r16.
CATALOG_PLANS: list[tuple[str, Method, str]] = [
    ("LoRA, CPU 24 GiB", "lora", "cpu"),
    ("LoRA, RTX 4090", "lora", "rtx4090"),
    ("QLoRA, RTX 4090", "qlora", "rtx4090"),
    ("LoRA, H100", "lora", "h100"),
]


@dataclass(frozen=True)
class CatalogRow:
    checkpoint: Checkpoint
    parameters: int
    plans: dict[str, Plan]  # by CATALOG_PLANS label


def catalog_plans(seq_len: int = 512, batch_size: int = 8) -> list[CatalogRow]:
    """Every listed checkpoint with its size and its peak training memory on a CPU and common GPUs."""
    rows = []
    for checkpoint in CHECKPOINTS:
        shape = checkpoint.shape
        plans = {
            label: estimate(PlanRequest(checkpoint.hub_id, method, seq_len, batch_size, device), shape)
            for label, method, device in CATALOG_PLANS
        }
        rows.append(CatalogRow(checkpoint, shape.parameters(), plans))
    return rows
