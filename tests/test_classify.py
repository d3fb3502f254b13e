"""Label heads: a label specialist that classifies in one forward pass, from training to serving and export."""

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch

from conftest import LABELS, ticket_rows, write_jsonl
from niche.errors import ConfigError, NicheError
from niche.eval import evaluate
from niche.head import HEAD_FILE, HEAD_TEMPLATE
from niche.train import train


@pytest.fixture(scope="module")
def head_specialists(tmp_path_factory, tiny_base) -> Path:
    """A head specialist and a generative one, side by side in one directory, on the tiny base."""
    from niche.config import load_config

    root = tmp_path_factory.mktemp("heads")
    write_jsonl(root / "train.jsonl", ticket_rows(48))
    write_jsonl(root / "validation.jsonl", ticket_rows(6, offset=40))
    write_jsonl(root / "test.jsonl", ticket_rows(9, offset=60))
    common = [
        f"base={tiny_base}",
        f"output_dir={root / 'specialists'}",
        f"data.train={root / 'train.jsonl'}",
        f"data.validation={root / 'validation.jsonl'}",
        f"data.test={root / 'test.jsonl'}",
        "training.batch_size=8",
        "training.learning_rate=0.01",
        "lora.r=4",
    ]
    train(load_config(None, [*common, "name=triage", "training.max_steps=24"]), show_progress=False)
    generative = [*common, "name=writer", "training.objective=generate", "training.max_steps=2"]
    train(load_config(None, generative), show_progress=False)
    return root


def test_a_label_task_trains_a_head_by_default(head_specialists) -> None:
    directory = head_specialists / "specialists" / "triage"
    manifest = json.loads((directory / "niche.json").read_text())
    head = manifest["task"]["head"]
    assert {key: head[key] for key in ("layer", "kind", "pooling", "file")} == {
        "layer": 1,
        "kind": "label",
        "pooling": "mean",
        "file": HEAD_FILE,
    }
    assert manifest["template"]["chat_template"] == HEAD_TEMPLATE and manifest["template"]["system_prompt"] is None
    recipe = manifest["hyperparameters"]["recipe"]
    assert recipe["objective"] == "classify" and recipe["sources"]["head_layer"] == "recipe"
    assert recipe["sources"]["learning_rate"] == "config" and recipe["values"]["learning_rate"] == 0.01
    assert 0.0 <= manifest["metrics"]["eval_accuracy"] <= 1.0
    adapter = json.loads((directory / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == [0], "LoRA only on the layers the head reads"
    assert not adapter.get("modules_to_save"), "the head lives beside the adapter, which stays a plain LoRA"
    assert (directory / HEAD_FILE).is_file()


def test_eval_answers_with_the_head_and_asks_the_base_zero_shot(head_specialists) -> None:
    report = evaluate(
        head_specialists / "specialists" / "triage", head_specialists / "test.jsonl", base="base", show_progress=False
    )
    base, specialist = report.results
    assert base.name == "base (base)" and set(base.predictions) <= set(LABELS), "the base picks from the label list"
    assert specialist.metrics["accuracy"] == 1.0, "24 steps teach the head the keyword task"


def test_the_server_answers_a_head_specialist_with_its_label(head_specialists) -> None:
    from conftest import running
    from niche.serve.app import create_app
    from niche.serve.torch_engine import TorchEngine

    engine = TorchEngine(head_specialists / "specialists")
    try:
        with running(create_app(engine)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            for row in ticket_rows(6, offset=70):
                messages = [{"role": "user", "content": row["text"]}]
                reply = client.chat.completions.create(model="triage", messages=messages, temperature=0)
                assert reply.choices[0].message.content == row["label"]
                assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 1
            stream = client.chat.completions.create(model="triage", messages=messages, stream=True)
            assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == row["label"]
            other = client.chat.completions.create(model="writer", messages=messages, max_tokens=3, temperature=0)
            assert other.usage.completion_tokens >= 1, "a generative specialist beside it still decodes"
            with pytest.raises(openai.BadRequestError, match="cannot answer in JSON"):
                client.chat.completions.create(
                    model="triage", messages=messages, response_format={"type": "json_object"}
                )
    finally:
        engine.close()


def test_served_labels_match_eval_row_for_row(head_specialists) -> None:
    from niche.data.formats import load_examples
    from niche.serve.base import SamplingParams
    from niche.serve.torch_engine import TorchEngine

    examples = load_examples(head_specialists / "test.jsonl").examples
    report = evaluate(head_specialists / "specialists" / "triage", head_specialists / "test.jsonl", show_progress=False)
    engine = TorchEngine(head_specialists / "specialists")
    try:
        generations = [
            engine.submit("triage", list(example.messages), SamplingParams(temperature=0)) for example in examples
        ]
        served = [generation.result().text for generation in generations]
    finally:
        engine.close()
    assert served == report.results[0].predictions


def test_an_engine_without_heads_refuses_a_head_specialist_clearly(head_specialists) -> None:
    from niche.serve.base import EngineCore, SamplingParams

    core = EngineCore(head_specialists / "specialists")
    with pytest.raises(NicheError, match="answers with a label head.*--engine torch"):
        core.submit("triage", [{"role": "user", "content": "x"}], SamplingParams())


def test_a_merged_export_labels_like_the_specialist_and_its_readme_recipe_works(head_specialists, tmp_path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from niche.export import export_specialist

    specialist = head_specialists / "specialists" / "triage"
    result = export_specialist(specialist, "merged", tmp_path / "merged", parity_rows=9)
    assert result.parity[0].identical_rate == 1.0 and (tmp_path / "merged" / HEAD_FILE).is_file()
    # What the exported README tells a user to do, without niche:
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    head = load_file(tmp_path / "merged" / HEAD_FILE)
    readme = (tmp_path / "merged" / "README.md").read_text()
    assert "hidden_states" not in readme and "register_forward_hook" in readme
    layer = json.loads((specialist / "niche.json").read_text())["task"]["head"]["layer"]
    captured = {}
    model.model.layers[layer - 1].register_forward_hook(
        lambda module, args, output: captured.update(hidden=output[0] if isinstance(output, tuple) else output)
    )
    for row in ticket_rows(6, offset=60):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["text"]}], return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            model(**ids)
        pooled = (captured["hidden"] * ids["attention_mask"][..., None]).sum(1) / ids["attention_mask"].sum()
        pooled = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], head["norm.weight"], head["norm.bias"])
        assert LABELS[int((pooled @ head["linear.weight"].T + head["linear.bias"]).argmax())] == row["label"]


def test_exports_that_cannot_carry_a_head_are_refused_naming_what_can(head_specialists, tmp_path) -> None:
    command = [sys.executable, "-m", "niche.cli", "export", str(head_specialists / "specialists" / "triage")]
    refused = subprocess.run([*command, "--to", "gguf", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert refused.returncode == 2 and "label head" in refused.stderr and "--to merged" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_a_head_cannot_be_asked_for_what_only_generation_does(tiny_config, tmp_path) -> None:
    replay = write_jsonl(tmp_path / "general.jsonl", [{"prompt": "hi", "completion": "hello"}] * 4)
    with pytest.raises(ConfigError, match="data.replay.*training.objective: generate"):
        train(tiny_config("training.objective=classify", f"data.replay={replay}"), show_progress=False)
    # Left to choose, niche trains a generative specialist when replay asks for one.
    result = train(tiny_config("training.objective=auto", f"data.replay={replay}"), show_progress=False)
    assert result.manifest.task.head is None
