"""bench/gpu_check.sh's dry run, as CI runs it: every GPU step's command line is parsed by niche's own parser and
its configs validated, so a step that no longer parses fails here rather than on the GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


def test_the_dry_run_checks_every_gpu_step(tmp_path) -> None:
    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.dry-run.json").read_text())
    steps = {step["name"]: step for step in record["steps"]}
    assert all(step["status"] == "checked" for step in steps.values()), steps
    for part in (
        "QLoRA train (tiny)",
        "QLoRA merged export (smollm2)",
        "CUDA fp16 train",
        "torch engine on CUDA",
        "DDP train",
        "vLLM serving two adapters",
    ):
        assert any(name.startswith(part) for name in steps), part
    assert "4bit" in (tmp_path / "configs" / "tiny-qlora.yaml").read_text()
    assert not (REPO / "bench" / "results" / "gpu_check.dry-run.json").exists()


def test_a_step_whose_command_line_no_longer_parses_fails_the_dry_run(tmp_path) -> None:
    with pytest.raises(Exception, match="no-such-option"):
        gpu_check.check_command(gpu_check.niche("train", "x.yaml", "--no-such-option"))
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nquantization: 8bit\n")
    with pytest.raises(Exception, match="quantization"):
        gpu_check.check_command(gpu_check.niche("train", str(config)))
    with pytest.raises(SyntaxError):
        gpu_check.check_command([sys.executable, "-c", "def broken("])
