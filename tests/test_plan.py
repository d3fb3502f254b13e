import json
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from niche.hardware import cpu_has_native_bf16
from niche.plan import (
    CALIBRATION,
    DEVICES,
    SHAPES,
    TRAIN_SPEED_RESULTS,
    PlanRequest,
    calibration_errors,
    estimate,
    shape_from_config,
)

REPO = Path(__file__).resolve().parents[1]


def test_parameter_counts_match_the_real_model_and_its_lora(tiny_base) -> None:
    shape = shape_from_config(json.loads((tiny_base / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert shape.parameters() == sum(parameter.numel() for parameter in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(parameter.numel() for parameter in peft_model.parameters() if parameter.requires_grad)
    assert shape.lora_parameters(8) == trainable


def test_presets_have_their_published_sizes() -> None:
    assert SHAPES["7b"].parameters() == pytest.approx(6.74e9, rel=0.01)
    assert SHAPES["8b"].parameters() == pytest.approx(8.03e9, rel=0.01)
    assert SHAPES["smollm2-135m"].parameters() == pytest.approx(134.5e6, rel=0.01)


@pytest.mark.parametrize(
    ("hub_id", "published"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 134.5e6),
        ("Qwen/Qwen2.5-0.5B-Instruct", 0.494e9),
        ("Qwen/Qwen2.5-7B-Instruct", 7.62e9),
        ("Qwen/Qwen3-8B", 8.19e9),
        ("meta-llama/Llama-3.2-1B-Instruct", 1.24e9),
        ("meta-llama/Llama-3.1-8B-Instruct", 8.03e9),
        ("google/gemma-2-2b-it", 2.61e9),
        ("google/gemma-2-9b-it", 9.24e9),
        ("microsoft/Phi-3.5-mini-instruct", 3.82e9),
        ("mistralai/Mistral-7B-Instruct-v0.3", 7.25e9),
    ],
)
def test_the_listed_checkpoints_have_their_published_sizes(hub_id: str, published: float) -> None:
    """The catalog's dimensions are right when the size they give is the size the model card states."""
    from niche.families import CHECKPOINTS, FAMILIES

    checkpoint = next(checkpoint for checkpoint in CHECKPOINTS if checkpoint.hub_id == hub_id)
    assert checkpoint.family in FAMILIES
    assert checkpoint.shape.parameters() == pytest.approx(published, rel=0.01)


def test_every_listed_checkpoint_has_a_plan_for_lora_and_qlora_on_cpu_and_gpus() -> None:
    from niche.families import CHECKPOINTS
    from niche.plan import CATALOG_PLANS, catalog_plans

    rows = catalog_plans()
    assert [row.checkpoint for row in rows] == CHECKPOINTS
    for row in rows:
        plans = list(row.plans.values())
        assert len(plans) == len(CATALOG_PLANS) and all(plan.peak_gib > 0 for plan in plans)
        lora_gpu, qlora_gpu = row.plans["LoRA, RTX 4090"], row.plans["QLoRA, RTX 4090"]
        assert qlora_gpu.weights_gib < lora_gpu.weights_gib


def test_estimates_stay_within_20_percent_of_every_calibration_point() -> None:
    errors = calibration_errors()
    assert len(errors) == len(CALIBRATION)
    for row in errors:
        assert abs(row["memory_error"]) < 0.2, row
        if "time_error" in row:
            assert abs(row["time_error"]) < 0.2, row


def test_memory_orders_full_above_lora_above_qlora_and_grows_with_batch() -> None:
    peaks = {
        method: estimate(PlanRequest("7b", method, 2048, 1, "a100-80gb")).peak_gib
        for method in ("full", "lora", "qlora")
    }
    assert peaks["full"] > peaks["lora"] > peaks["qlora"]
    small, large = (estimate(PlanRequest("7b", "lora", 512, batch, "h100")) for batch in (1, 8))
    assert large.activations_gib == pytest.approx(8 * small.activations_gib)
    assert not estimate(PlanRequest("7b", "full", 2048, 1, "rtx4090")).fits


def test_every_calibration_point_is_labelled_with_the_dtype_it_trained_in() -> None:
    for point, row in zip(CALIBRATION, calibration_errors(), strict=True):
        assert row["dtype"] == DEVICES[point.request.device].dtype in ("float32", "bfloat16")
        assert row["source"].endswith(f"({row['dtype']})")
        if point.request.device.startswith("cpu"):
            assert point.evidence, point.source  # a measured point says where its numbers come from


def test_plain_cpu_is_the_dtype_this_cpu_trains_in() -> None:
    assert DEVICES["cpu"].dtype == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert estimate(PlanRequest("smollm2-135m", device="cpu")).device.endswith(
        "bf16)" if cpu_has_native_bf16() else "fp32)"
    )


def test_the_bf16_cpu_point_is_the_train_speed_benchmarks_niche_run() -> None:
    results = json.loads((REPO / TRAIN_SPEED_RESULTS).read_text())
    label = results["workloads"]["label"]
    run = label["runs"]["niche"]
    assert results["dtype"] == "bfloat16"  # the engine trained in bf16 there
    (point,) = [point for point in CALIBRATION if TRAIN_SPEED_RESULTS in point.evidence]
    assert point.dtype == "bfloat16"
    assert point.request.batch_size == results["batch_size"]
    assert point.request.seq_len == round(label["tokens_per_example"])
    assert point.measured_peak_gib == pytest.approx(run["peak_rss_mib"]["median"] / 1024, rel=1e-3)
    assert point.measured_tokens_per_s == pytest.approx(run["tokens_per_s"]["median"], rel=1e-3)
