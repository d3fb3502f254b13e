import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import LABELS, write_jsonl
from niche.artifact import read_manifest
from niche.errors import ConfigError, DataError
from niche.train import train


def test_train_writes_a_peft_adapter_with_a_complete_manifest(tiny_config, tiny_base) -> None:
    config = tiny_config()
    result = train(config, show_progress=False)
    directory = result.specialist_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "niche.json", "training_log.json"} <= {
        p.name for p in directory.iterdir()
    }
    manifest = read_manifest(directory)
    assert manifest.task.kind == "label" and manifest.task.labels == LABELS
    assert manifest.template.system_prompt == "Route the ticket to one of: billing, outage, security."
    assert manifest.template.stop_token_ids == [2]
    assert manifest.base.kind == "local" and len(manifest.base.weights_sha256) == 64
    assert manifest.data["train"].rows == 24 and len(manifest.data["train"].sha256) == 64
    assert manifest.hyperparameters["lora"]["r"] == 4
    assert manifest.metrics["steps"] == 4 and manifest.metrics["best_step"] in (2, 4)
    assert {"torch", "transformers", "peft"} <= set(manifest.versions)
    evals = [row for row in result.log_history if "eval_loss" in row]
    assert [row["step"] for row in evals][:2] == [2, 4]
    assert not any(config.output_dir.glob(".toy*")), "checkpoints and staging directories are cleaned up"


def test_lora_weights_change_and_base_weights_do_not(tiny_config, tiny_base) -> None:
    result = train(tiny_config("training.max_steps=2"), show_progress=False)
    adapter = load_file(result.specialist_dir / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b), "lora_B starts at zero and must have moved"
    base_before = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(result.specialist_dir))
    merged_free = loaded.get_base_model().state_dict()
    for name, tensor in base_before.items():
        peft_name = name.replace(".weight", ".base_layer.weight") if "proj" in name else name
        torch.testing.assert_close(merged_free.get(peft_name, merged_free.get(name)), tensor)


def test_resume_continues_from_the_last_checkpoint(tiny_config, monkeypatch) -> None:
    from niche.train import sft

    config = tiny_config("training.max_steps=4", "training.eval_every=2")
    original_write = sft.write_trained_specialist
    monkeypatch.setattr(
        sft, "write_trained_specialist", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        train(config, show_progress=False)
    assert not config.specialist_dir.exists(), "an interrupted run leaves no half-written specialist"
    assert (sft.checkpoint_dir_for(config) / "checkpoint-4").is_dir()
    monkeypatch.setattr(sft, "write_trained_specialist", original_write)
    from niche.train.engine import SupervisedOnlyTrainer

    steps_run = []
    original_step = SupervisedOnlyTrainer.training_step
    monkeypatch.setattr(
        SupervisedOnlyTrainer,
        "training_step",
        lambda self, *args, **kwargs: (steps_run.append(1), original_step(self, *args, **kwargs))[1],
    )
    resumed = train(
        config.model_copy(update={"training": config.training.model_copy(update={"max_steps": 6})}),
        resume=True,
        show_progress=False,
    )
    assert len(steps_run) == 2, "only the two steps after checkpoint-4 are trained"
    assert resumed.manifest.metrics["steps"] == 6
    assert [row["step"] for row in resumed.log_history if "loss" in row] == [2, 4, 6]  # logged every eval_every steps


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_config) -> None:
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        train(tiny_config(), resume=True, show_progress=False)


def test_rows_longer_than_max_seq_length_go_to_rejects(tiny_config, label_data) -> None:
    rows = [json.loads(line) for line in label_data["train"].read_text().splitlines()]
    rows.append({"text": "word " * 300, "label": "billing"})
    write_jsonl(label_data["train"], rows)
    result = train(tiny_config("training.max_seq_length=128", "training.max_steps=1"), show_progress=False)
    rejects = [json.loads(line) for line in (result.specialist_dir / "rejects.jsonl").read_text().splitlines()]
    assert (
        len(rejects) == 1
        and rejects[0]["source"].endswith("train.jsonl:25")
        and "max_seq_length 128" in rejects[0]["reason"]
    )
    assert result.manifest.rejected_rows == 1


def test_unknown_label_in_validation_names_file_and_line(tiny_config, label_data) -> None:
    write_jsonl(label_data["validation"], [{"text": "x", "label": "billing"}, {"text": "y", "label": "refund"}])
    with pytest.raises(DataError, match=r"validation\.jsonl:2: unknown label 'refund'"):
        train(tiny_config(), show_progress=False)


def test_trained_model_learns_to_stop(tiny_config, tiny_base) -> None:
    """Pitfall 1: with pad == eos the end-of-turn token must still be learned, so generation ends by itself."""
    from niche.data.formats import load_examples
    from niche.data.template import TemplateEncoder
    from niche.eval.generation import generate_answers
    from niche.specialist import load_specialist

    config = tiny_config(
        "training.max_steps=40", "training.eval_every=40", "training.learning_rate=0.01", "lora.r=16", "lora.alpha=32"
    )
    result = train(config, show_progress=False)
    model, tokenizer, manifest = load_specialist(result.specialist_dir, "cpu", torch.float32)
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    examples = load_examples(config.data.test).examples
    prompts = [encoder.prompt_ids(example) for example in examples]
    for prompt in prompts:
        output = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=manifest.template.stop_token_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        generated = output[0, len(prompt) :].tolist()
        assert tokenizer.eos_token_id in generated, f"never stopped: {tokenizer.decode(generated)!r}"
    answers = generate_answers(model, encoder, examples, max_new_tokens=12)
    assert sum(answer == example.label for answer, example in zip(answers, examples)) >= len(examples) * 2 // 3


def test_single_process_training_takes_the_supervised_only_path(tiny_config, monkeypatch) -> None:
    from niche.train import engine

    calls = []
    original = engine.supervised_loss_sum
    monkeypatch.setattr(
        engine,
        "supervised_loss_sum",
        lambda *args, **kwargs: (calls.append(kwargs["supervised_only_logits"]), original(*args, **kwargs))[1],
    )
    train(tiny_config("training.max_steps=1"), show_progress=False)
    assert calls and all(calls)


def test_qlora_on_a_machine_without_cuda_is_a_clear_error(tiny_config, monkeypatch) -> None:
    from niche.hardware import Hardware
    from niche.train import sft

    monkeypatch.setattr(sft, "detect_hardware", lambda: Hardware("cpu", torch.float32, "cpu (2 threads)"))
    with pytest.raises(ConfigError, match="quantization: 4bit .*needs a CUDA GPU"):
        train(tiny_config("quantization=4bit"), show_progress=False)
