"""Micro-batches: the optimizer's batch taken in smaller passes, the same step for less memory."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from niche.errors import ConfigError
from niche.train import train
from niche.train.memory import CPU_ACTIVATION_BUDGET_BYTES, activation_bytes_per_row, choose_micro_batch


def test_cpu_takes_the_largest_divisor_of_the_batch_within_the_budget() -> None:
    row = CPU_ACTIVATION_BUDGET_BYTES / 7
    assert choose_micro_batch(16, None, row, "cpu").rows == 4
    assert choose_micro_batch(12, None, row, "cpu").rows == 6
    assert choose_micro_batch(16, None, row / 100, "cpu").rows == 16
    assert choose_micro_batch(16, None, CPU_ACTIVATION_BUDGET_BYTES * 2, "cpu").rows == 1
    whole = choose_micro_batch(16, None, row, "cuda")
    assert (whole.rows, whole.accumulation) == (16, 1)


def test_a_micro_batch_that_does_not_divide_the_batch_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"training.micro_batch_size=5 must divide training.batch_size=16"):
        choose_micro_batch(16, 5, 1.0, "cpu")
    given = choose_micro_batch(16, 8, 1.0, "cuda")
    assert (given.rows, given.accumulation, given.source) == (8, 2, "training.micro_batch_size")


def test_the_estimate_matches_the_measured_smollm2_activations(smollm2_base) -> None:
    """2,331 MiB saved for 16 rows of 130 tokens (bf16, eager, 30 layers), 1.35x that at the backward's peak."""
    config = AutoConfig.from_pretrained(smollm2_base.directory)
    estimate = 16 * activation_bytes_per_row(config, 130, 2, config.num_hidden_layers, eager=True)
    assert 0.9 < estimate / (2331 * 2**20 * 1.35) < 1.15
    assert activation_bytes_per_row(config, 130, 2, 15, eager=True) == pytest.approx(estimate / 16 / 2)


def test_micro_batches_train_the_same_adapter_as_whole_batches(tiny_config, monkeypatch) -> None:
    monkeypatch.setenv("NICHE_DTYPE", "float32")
    adapters, plans = [], []
    for rows in (4, 1):
        result = train(tiny_config(f"training.micro_batch_size={rows}", f"name=micro{rows}"), show_progress=False)
        adapters.append(load_file(result.specialist_dir / "adapter_model.safetensors"))
        plans.append(result.manifest.metrics["plan"])
    assert [plan["micro_batch_size"] for plan in plans] == [4, 1]
    assert [plan["accumulation_per_batch"] for plan in plans] == [1, 4]
    whole, micro = adapters
    assert whole.keys() == micro.keys()
    moved = [name for name in whole if "lora_B" in name and whole[name].abs().sum() > 0]
    assert moved, "the adapters must have trained for the comparison to mean anything"
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=1e-4, atol=1e-5)
