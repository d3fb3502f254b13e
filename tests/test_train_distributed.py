"""`niche train` under torchrun: 2 CPU processes (gloo) reach the adapter a single process reaches."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file


def write_config(path: Path, tiny_base: Path, label_data: dict[str, Path], name: str, batch_size: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "base": str(tiny_base),
                "output_dir": str(path.parent / "out"),
                "data": {"train": str(label_data["train"]), "validation": str(label_data["validation"])},
                # One optimizer step sees all 8 rows: the whole batch in one process, or 4 rows in each of two.
                "training": {"max_steps": 3, "batch_size": batch_size, "eval_every": 3, "learning_rate": 0.001},
                "lora": {"r": 4, "alpha": 8},
            }
        )
    )
    return path


def test_two_process_training_matches_one_process(tmp_path: Path, tiny_base: Path, label_data) -> None:
    from conftest import ticket_rows, write_jsonl

    write_jsonl(label_data["train"], ticket_rows(8))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NICHE_DTYPE": "float32"}
    single = write_config(tmp_path / "single.yaml", tiny_base, label_data, "single", batch_size=8)
    double = write_config(tmp_path / "double.yaml", tiny_base, label_data, "double", batch_size=4)
    run = subprocess.run(
        [sys.executable, "-m", "niche.cli", "train", str(single)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    with socket.socket() as probe:  # a free port: a fixed one collides with any other run on the machine
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    run = subprocess.run([*torchrun, "-m", "niche.cli", "train", str(double)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("specialist written to") == 1, "only the main process writes and reports"

    one = load_file(tmp_path / "out" / "single" / "adapter_model.safetensors")
    two = load_file(tmp_path / "out" / "double" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-5, msg=name)
    assert any(tensor.abs().sum() > 0 for name, tensor in one.items() if "lora_B" in name)
