"""The CLI as a user runs it: a real subprocess, real files, exit codes and messages."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import write_jsonl


def niche(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "niche.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_is_instant_and_imports_no_torch() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, niche.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"
    result = niche("--help")
    assert result.returncode == 0
    for command in ("models", "data", "train", "eval", "demo"):
        assert command in result.stdout


def test_errors_print_one_clear_line_without_a_traceback(tmp_path: Path) -> None:
    result = niche("data", "check", str(tmp_path / "missing.jsonl"), "--no-tokens")
    assert result.returncode == 2
    assert "error:" in result.stderr and "missing.jsonl: file not found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_base_model_error(tmp_path: Path, label_data) -> None:
    config = tmp_path / "niche.yaml"
    config.write_text(yaml.safe_dump({"base": "llama-99b", "data": {"train": str(label_data["train"])}}))
    result = niche("train", str(config))
    assert result.returncode == 2 and "unknown base model 'llama-99b'" in result.stderr


def test_data_check_reports_counts_lengths_and_every_problem(tmp_path: Path, smollm2_base) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "disk full", "label": "ops"}\n{"text": "bad json\n{"text": "login failed", "label": "security"}\n'
        '{"text": "no label"}\n'
    )
    result = niche("data", "check", str(path))
    assert result.returncode == 1
    out = " ".join(result.stdout.split())
    assert "2 examples, format label, task label" in out
    assert "prompt tokens: min" in out and "response tokens: min" in out
    assert f"{path}:2: malformed JSON" in out.replace("\n", "")
    assert f"{path}:4: missing or empty field 'label'" in out.replace("\n", "")


def test_models_lists_the_default(smollm2_base) -> None:
    result = niche("models")
    assert result.returncode == 0 and "smollm2-135m" in result.stdout and "yes" in result.stdout
    assert "Qwen/Qwen3-0.6B" in result.stdout and "QLoRA" in result.stdout and "Gemma Terms of Use" in result.stdout


def test_train_then_eval_from_the_command_line(tmp_path: Path, tiny_base: Path, label_data) -> None:
    config = tmp_path / "niche.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "cli-toy",
                "base": str(tiny_base),
                "output_dir": "out",
                "data": {"train": str(label_data["train"]), "validation": str(label_data["validation"])},
                "training": {"max_steps": 10, "batch_size": 4, "eval_every": 5},
                "lora": {"r": 4, "alpha": 8},
            }
        )
    )
    trained = niche("train", str(config), "training.learning_rate=0.001", "--max-steps", "2")
    assert trained.returncode == 0, trained.stderr
    specialist = tmp_path / "out" / "cli-toy"
    manifest = json.loads((specialist / "niche.json").read_text())
    assert manifest["metrics"]["steps"] == 2 and manifest["config"]["training"]["learning_rate"] == 0.001
    report_dir = tmp_path / "report"
    evaluated = niche(
        "eval", str(specialist), "--data", str(label_data["test"]), "--base", "base", "--out", str(report_dir)
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "accuracy" in evaluated.stdout and "base" in evaluated.stdout
    assert json.loads((report_dir / "eval.json").read_text())["rows"] == 9


def test_eval_with_unknown_test_label_fails_cleanly(tmp_path: Path, tiny_base: Path, label_data) -> None:
    config = tmp_path / "niche.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "base": str(tiny_base),
                "output_dir": "out",
                "data": {"train": str(label_data["train"])},
                "training": {"max_steps": 1, "batch_size": 4},
            }
        )
    )
    assert niche("train", str(config)).returncode == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "unheard-of"}])
    result = niche("eval", str(tmp_path / "out" / "t"), "--data", str(bad))
    assert result.returncode == 2 and f"{bad}:1: unknown label 'unheard-of'" in result.stderr
