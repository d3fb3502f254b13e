"""niche export: merged weights, GGUF (llama.cpp), Ollama, vLLM, each with its parity check.

Tiny random models cover the pieces; the last test exports a real SmolLM2 specialist the whole way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from niche.artifact import read_manifest
from niche.config import load_config
from niche.errors import ModelError
from niche.export import (
    Parity,
    ParityError,
    export_specialist,
    first_difference,
    judge_parity,
    modelfile,
    ollama_template,
    render_ollama_template,
)
from niche.train import train


@pytest.fixture(scope="module")
def tiny_specialist(tmp_path_factory, tiny_base) -> Path:
    from conftest import ticket_rows, write_jsonl

    root = tmp_path_factory.mktemp("export")
    write_jsonl(root / "train.jsonl", ticket_rows(24))
    write_jsonl(root / "test.jsonl", ticket_rows(6, offset=70))
    config = load_config(
        None,
        [
            f"base={tiny_base}",
            f"output_dir={root / 'specialists'}",
            "name=tickets",
            f"data.train={root / 'train.jsonl'}",
            f"data.test={root / 'test.jsonl'}",
            "prompt.system_prompt=Route the ticket: {labels}.",
            "training.max_steps=12",
            "training.batch_size=8",
            "training.eval_every=12",
            "training.learning_rate=0.01",
            "training.objective=generate",
            "lora.r=8",
            "lora.alpha=16",
        ],
    )
    return train(config, show_progress=False).specialist_dir


def test_ollama_template_renders_like_the_stored_chat_template(tokenizer) -> None:
    chat_template = tokenizer.chat_template
    template = ollama_template(tokenizer, chat_template)
    for system in ("Route the ticket: billing, outage.", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "site is down"}
        ]
        expected_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_ollama_template(template, system, "site is down") == expected_prompt
        whole = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "outage"}], tokenize=False)
        assert render_ollama_template(template, system, "site is down", "outage") == whole


def test_modelfile_carries_template_system_prompt_and_every_stop_token(tiny_specialist, tokenizer) -> None:
    manifest = read_manifest(tiny_specialist)
    text = modelfile(manifest, tokenizer, "base-f16.gguf", "adapter-f16.gguf")
    assert "FROM ./base-f16.gguf\nADAPTER ./adapter-f16.gguf\n" in text
    assert f'SYSTEM """{manifest.template.system_prompt}"""' in text
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == [f'PARAMETER stop "{tokenizer.convert_ids_to_tokens(i)}"' for i in manifest.template.stop_token_ids]
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>' in text


def test_parity_judgement_fails_full_precision_and_warns_for_quantized() -> None:
    broken = Parity("f16 merged", 10, 0.9, 0.01, "accuracy", 1.0, 0.9, -0.1, [-1] * 9 + [2])
    with pytest.raises(ParityError, match="90% of 10 greedy outputs identical"):
        judge_parity(broken, True, 0.25, 0.02)
    quantized = Parity("q4_k_m merged", 10, 0.9, 1.3, "accuracy", 1.0, 0.9, -0.1, [])
    assert "more than the 0.02 allowed drop" in judge_parity(quantized, False, 0.25, 0.02)
    assert judge_parity(Parity("q8_0", 10, 1.0, 0.1, "accuracy", 1.0, 1.0, 0.0, []), False, 0.25, 0.02) is None
    assert first_difference([1, 2, 3], [1, 2, 3]) == -1
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1 and first_difference([1, 2], [1, 2, 3]) == 2


def test_merged_export_loads_with_automodel_and_matches_the_specialist(tiny_specialist, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_specialist(tiny_specialist, "merged", tmp_path / "merged")
    (parity,) = result.parity
    assert parity.identical_rate == 1.0 and parity.max_logit_diff < 1e-3 and parity.rows == 6
    assert parity.metric_exported == parity.metric_trained
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in model.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template == read_manifest(tiny_specialist).template.chat_template
    recorded = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert recorded["parity"][0]["identical_rate"] == 1.0 and recorded["quant"] == "fp32"


def test_an_export_that_breaks_parity_fails_loudly_and_writes_nothing(tiny_specialist, tmp_path, monkeypatch) -> None:
    import niche.export as export

    merge = export.merge_into_base

    def damaged_merge(specialist_dir, out_dir):  # a merge that went wrong, as a broken converter would
        model = merge(specialist_dir, out_dir)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std())
        return model

    monkeypatch.setattr(export, "merge_into_base", damaged_merge)
    with pytest.raises(ParityError, match="merged"):
        export_specialist(tiny_specialist, "merged", tmp_path / "broken")
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob("*broken*"))


def test_vllm_export_checks_the_adapter_and_writes_the_command(tiny_specialist, tmp_path) -> None:
    result = export_specialist(tiny_specialist, "vllm", tmp_path / "vllm")
    script = (tmp_path / "vllm" / "serve.sh").read_text()
    assert "--enable-lora" in script and f"tickets={tiny_specialist.resolve()}" in script
    assert result.details["command"][:2] == ["vllm", "serve"]
    config_path = tiny_specialist / "adapter_config.json"
    original = config_path.read_text()
    try:
        config_path.write_text(json.dumps(json.loads(original) | {"modules_to_save": ["lm_head"]}))
        with pytest.raises(ModelError, match="vLLM would reject this adapter"):
            export_specialist(tiny_specialist, "vllm", tmp_path / "rejected")
        assert not (tmp_path / "rejected").exists()
    finally:
        config_path.write_text(original)


@pytest.mark.parametrize("target", ["gguf", "ollama"])
def test_gguf_export_without_llama_cpp_says_what_to_run_before_any_work(
    tiny_specialist, tmp_path, monkeypatch, target
) -> None:
    import importlib.util

    from niche import export

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "llama_cpp" else real_find_spec(name, *args)
    )
    monkeypatch.setattr(export, "merge_into_base", lambda *args: pytest.fail("merged before checking llama.cpp"))
    with pytest.raises(ModelError, match=rf"--to {target} needs llama-cpp-python.*`make llama-cpp`.*C/C\+\+ compiler"):
        export_specialist(tiny_specialist, target, tmp_path / target)
    assert not (tmp_path / target).exists()


def test_gguf_export_of_a_tiny_model_keeps_parity_through_llama_cpp(tiny_specialist, tmp_path) -> None:
    from niche.gguf import gguf_metadata

    result = export_specialist(tiny_specialist, "gguf", tmp_path / "gguf", quant="q8_0")
    variants = {parity.variant: parity for parity in result.parity}
    assert set(variants) == {"f16 merged (llama.cpp)", "q8_0 merged (llama.cpp)", "base f16 + LoRA (llama.cpp)"}
    for name in ("f16 merged (llama.cpp)", "base f16 + LoRA (llama.cpp)"):
        assert variants[name].identical_rate == 1.0, variants[name]
    assert sorted(result.files) == ["adapter-f16.gguf", "base-f16.gguf", "export.json", "model-q8_0.gguf"]
    manifest = read_manifest(tiny_specialist)
    metadata = gguf_metadata(tmp_path / "gguf" / "model-q8_0.gguf")
    assert metadata["chat_template"] == manifest.template.chat_template
    assert metadata["eos_token_id"] in manifest.template.stop_token_ids
    assert "Q8_0" in metadata["tensor_types"]


@pytest.mark.slow
def test_smollm2_specialist_exports_to_ollama_and_merged_with_parity(tmp_path, monkeypatch) -> None:
    """The whole export of a real specialist: merged, F16 and Q4_K_M GGUF, LoRA GGUF, Modelfile, parity."""
    monkeypatch.setenv("NICHE_DTYPE", "float32")
    config = load_config(
        REPO / "examples" / "cloudsec" / "niche.yaml",
        [
            f"output_dir={tmp_path}",
            "training.max_steps=6",
            "training.batch_size=8",
            "training.eval_every=6",
            "training.objective=generate",
        ],
    )
    specialist = train(config, show_progress=False).specialist_dir
    command = [sys.executable, "-m", "niche.cli", "export", str(specialist), "--parity-rows", "8"]
    ollama = subprocess.run([*command, "--to", "ollama", "--quant", "q4_k_m"], capture_output=True, text=True)
    assert ollama.returncode == 0, ollama.stderr
    out = tmp_path / "exports" / "cloudsec-ollama-q4_k_m"
    record = json.loads((out / "export.json").read_text())
    parity = {row["variant"]: row for row in record["parity"]}
    assert parity["f16 merged (llama.cpp)"]["identical_rate"] == 1.0
    assert parity["base f16 + LoRA (llama.cpp)"]["identical_rate"] == 1.0
    assert parity["f16 merged (llama.cpp)"]["max_logit_diff"] < 0.25
    assert "q4_k_m merged (llama.cpp)" in parity and record["bits_per_weight"] > 4
    assert (out / "Modelfile").read_text().startswith("# niche export of cloudsec")
    assert {"Modelfile", "Modelfile.adapter", "model-q4_k_m.gguf", "adapter-f16.gguf", "base-f16.gguf"} <= {
        path.name for path in out.iterdir()
    }
    assert "| f16 merged (llama.cpp) | 8 | 100% |" in ollama.stdout
    merged = subprocess.run([*command, "--to", "merged"], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    record = json.loads((tmp_path / "exports" / "cloudsec-merged" / "export.json").read_text())
    assert record["parity"][0]["identical_rate"] == 1.0
    assert np.isfinite(record["parity"][0]["max_logit_diff"])
