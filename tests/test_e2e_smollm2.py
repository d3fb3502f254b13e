"""End to end on the real default model: a few steps, then the saved adapter must reproduce the in-memory model."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import REPO
from niche.artifact import read_manifest
from niche.config import load_config
from niche.data.formats import load_examples
from niche.data.template import TemplateEncoder
from niche.train import sft


@pytest.mark.slow
def test_smollm2_specialist_reloads_with_peft_and_gives_the_same_outputs(smollm2_base, tmp_path, monkeypatch) -> None:
    # fp32 everywhere: under bf16 autocast the in-memory model and a plain reload round differently by design.
    monkeypatch.setenv("NICHE_DTYPE", "float32")
    config = load_config(
        REPO / "examples" / "cloudsec" / "niche.yaml",
        [
            f"output_dir={tmp_path}",
            "training.max_steps=3",
            "training.batch_size=4",
            "training.eval_every=3",
            "lora.dropout=0.0",
            "lora.r=8",
            "lora.alpha=16",
            "training.objective=generate",
        ],
    )
    # A small validation split keeps the test quick; the real one is still parsed and label-checked by prepare_data.
    monkeypatch.setattr(sft, "encode_examples", _first_rows(sft.encode_examples, 8))
    captured = {}
    original_write = sft.write_trained_specialist
    monkeypatch.setattr(
        sft,
        "write_trained_specialist",
        lambda target, model, *rest: (captured.setdefault("model", model), original_write(target, model, *rest)),
    )
    result = sft.train_sft(config, show_progress=False)
    in_memory = captured["model"].eval()

    manifest = read_manifest(result.specialist_dir)
    assert manifest.base.spec == "smollm2-135m" and manifest.base.weights_sha256 == smollm2_base.weights_sha256
    # The same attention kernel as training chose, so outputs must agree to float tolerance.
    attention = in_memory.get_base_model().config._attn_implementation
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(
            smollm2_base.directory, dtype=torch.float32, attn_implementation=attention
        ),
        str(result.specialist_dir),
    ).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.specialist_dir)
    assert tokenizer.chat_template == manifest.template.chat_template
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    examples = load_examples(config.data.test).examples[:3]
    with torch.inference_mode():
        for example in examples:
            prompt = torch.tensor([encoder.prompt_ids(example)])
            torch.testing.assert_close(reloaded(prompt).logits, in_memory(prompt).logits, rtol=1e-4, atol=1e-4)
            generated = [
                model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                for model in (in_memory, reloaded)
            ]
            assert generated[0].tolist() == generated[1].tolist()


def _first_rows(encode, limit):
    def encode_few(encoder, examples, max_length):
        return encode(encoder, examples[:limit], max_length)

    return encode_few
