"""The model families users bring, each through every stage: a tiny random model of each family (tests/families.py)
trained with a label head and generatively, evaluated, served on the torch engine (two adapters of the family in
one batch, a label head beside them, answers identical to transformers' own `generate`), exported merged and to
GGUF with parity, and checked for vLLM. A stage a family cannot do must be a named refusal, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conftest import LABELS, ticket_rows, write_jsonl
from families import FAMILIES, build_family
from niche.artifact import read_manifest
from niche.data.examples import Example
from niche.data.template import TemplateEncoder, build_template
from niche.errors import NicheError

PROMPT = "Route the ticket to one of: {labels}."
# Longer than the tiny models' sliding windows (8 tokens), so that the windows are in play when serving.
QUESTIONS = ["ticket 3: invoice charged twice this month", "ticket 5: the site is down again since noon"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, smollm2_base):
    """The family's tiny base, and three specialists on it: two generative (different data), one label head."""
    from niche.config import load_config
    from niche.train import train

    spec = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    base = build_family(spec, smollm2_base.directory, root / "base")
    rows = ticket_rows(16)
    write_jsonl(root / "train.jsonl", rows)
    write_jsonl(root / "train-upper.jsonl", [{"text": row["text"], "label": row["label"].upper()} for row in rows])
    write_jsonl(root / "test.jsonl", ticket_rows(6, offset=40))

    def trained(name: str, data: str, objective: str, steps: int) -> Path:
        config = load_config(
            None,
            [
                f"base={base}",
                f"output_dir={root / 'specialists'}",
                f"name={name}",
                f"data.train={root / data}",
                f"prompt.system_prompt={PROMPT}",
                f"training.max_steps={steps}",
                "training.batch_size=8",
                f"training.eval_every={steps}",
                "training.learning_rate=0.01",
                f"training.objective={objective}",
                "lora.r=8",
                "lora.alpha=16",
                "tracking.enabled=false",
            ],
        )
        return train(config, show_progress=False).specialist_dir

    return {
        "spec": spec,
        "root": root,
        "base": base,
        # Enough steps that the answers are confident: parity compares greedy answers, and an untrained model's
        # near-ties flip on any rounding.
        "router": trained("router", "train.jsonl", "generate", 30),
        "shouter": trained("shouter", "train-upper.jsonl", "generate", 30),
        "head": trained("head", "train.jsonl", "classify", 6),
    }


@pytest.fixture(autouse=True)
def full_precision(monkeypatch):
    # Served-against-generate parity is exact in fp32; bf16 rounds differently in batches of different shapes.
    monkeypatch.setenv("NICHE_DTYPE", "float32")


def test_the_prompt_is_rendered_by_the_familys_own_template(family) -> None:
    spec = family["spec"]
    tokenizer = AutoTokenizer.from_pretrained(family["base"])
    template = read_manifest(family["router"]).template.to_template()
    example = Example(messages=({"role": "user", "content": "ticket 1: site down"},), response="outage")
    prompt = template.render_prompt(tokenizer, example)
    completion = template.render_completion(tokenizer, example)
    system = PROMPT.replace("{labels}", ", ".join(LABELS))
    assert system in prompt
    if not spec.has_system_role:  # folded into the first user turn, as Gemma 3's own template does it
        assert f"user\n{system}\n\nticket 1: site down" in prompt
    assert completion.lstrip().startswith("outage") and "<think>" not in completion
    if spec.thinks:  # thinking off unless asked: the empty thinking block is the prompt's, not the answer's
        assert prompt.rstrip().endswith("</think>")
    if spec.writes_date:  # the date is fixed, so a specialist serves the prompt it trained on, any day
        assert "26 Jul" in prompt and "2026" not in prompt
    encoder = TemplateEncoder(tokenizer, template)
    ids = encoder.training_example(example)
    supervised = [token for token, label in zip(ids.input_ids, ids.labels, strict=True) if label != -100]
    assert supervised[-1] in encoder.stop_ids, "the end of the answer is learned"
    # The bare base, served as `base`, is pinned the same way; thinking stays on only when asked for.
    base_prompt = build_template(tokenizer, None, None, None).render_prompt(tokenizer, example)
    if spec.thinks:
        assert base_prompt.rstrip().endswith("</think>")
        thinking = build_template(tokenizer, None, None, None, thinking=True).render_prompt(tokenizer, example)
        assert not thinking.rstrip().endswith("</think>")
    if spec.writes_date:
        assert "26 Jul" in base_prompt


def test_the_label_head_and_generative_specialists_evaluate(family) -> None:
    from niche.eval import evaluate

    for name in ("router", "head"):
        report = evaluate(family[name], family["root"] / "test.jsonl", show_progress=False)
        metrics = report.results[0].metrics
        assert report.rows == 6 and 0.0 <= metrics["accuracy"] <= 1.0, (family["spec"].name, name, metrics)
    assert read_manifest(family["head"]).task.head is not None


def reference_answer(specialist: Path, text: str, max_tokens: int) -> str:
    """transformers' own greedy `generate` on the specialist, the prompt as niche renders it."""
    from niche.specialist import load_specialist

    model, tokenizer, manifest = load_specialist(specialist, "cpu", torch.float32)
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    prompt = encoder.prompt_ids(Example(messages=({"role": "user", "content": text},), response=""))
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=encoder.stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)


def test_two_adapters_of_the_family_batched_together_answer_as_generate_does(family) -> None:
    from niche.serve.base import SamplingParams
    from niche.serve.torch_engine import TorchEngine

    engine = TorchEngine(family["root"] / "specialists", max_loaded=3)
    try:
        params = SamplingParams(max_tokens=12, temperature=0)
        requests = [(name, text) for text in QUESTIONS for name in ("router", "shouter", "head")]
        pending = [engine.submit(name, [{"role": "user", "content": text}], params) for name, text in requests]
        answers = [generation.result().text for generation in pending]
        assert engine.peak_rows > 1, "the rows shared a batch"
        # Served prompts are the training prompts, token for token.
        manifest = read_manifest(family["router"])
        encoder = TemplateEncoder(engine.tokenizer, manifest.template.to_template())
        example = Example(messages=({"role": "user", "content": QUESTIONS[0]},), response="")
        assert engine.encoder_of("router").prompt_ids(example) == encoder.prompt_ids(example)
    finally:
        engine.close()
    for (name, text), answer in zip(requests, answers, strict=True):
        if name == "head":
            assert answer in LABELS
        else:
            assert answer.strip() == reference_answer(family[name], text, 12).strip(), (family["spec"].name, name)


def test_the_merged_export_answers_like_the_specialist(family, tmp_path) -> None:
    from niche.export import export_specialist

    for name in ("router", "head"):
        result = export_specialist(family[name], "merged", tmp_path / name, data=family["root"] / "test.jsonl")
        assert all(parity.identical_rate == 1.0 for parity in result.parity), (family["spec"].name, result.parity)


def test_gguf_export_keeps_parity_or_refuses_naming_the_family(family, tmp_path) -> None:
    from niche.export import export_specialist

    spec, out = family["spec"], tmp_path / "gguf"
    export = lambda: export_specialist(family["router"], "gguf", out, quant="f16", data=family["root"] / "test.jsonl")  # noqa: E731
    if spec.gguf_refusal is None:
        variants = {parity.variant: parity for parity in export().parity}
        assert variants["f16 merged (llama.cpp)"].identical_rate == 1.0, variants
        assert variants["base f16 + LoRA (llama.cpp)"].identical_rate == 1.0, variants
        return
    with pytest.raises(NicheError) as refused:
        export()
    message = str(refused.value)
    assert "model_type" in message and "'router'" in message and spec.gguf_refusal in message, message
    assert not out.exists(), "a refused export writes nothing"


def test_vllm_checks_the_familys_adapters(family) -> None:
    from niche.vllm_compat import vllm_problems

    for name, expected in (("router", 0), ("head", 1)):
        adapter = json.loads((family[name] / "adapter_config.json").read_text())
        assert len(vllm_problems(read_manifest(family[name]), adapter)) == expected
    # LoRA lands on the family's own projections (Phi-3's are fused), never on embeddings or the output head.
    targets = {
        module.rpartition(".")[2]
        for module in json.loads((family["router"] / "adapter_config.json").read_text())["target_modules"]
    }
    fused = {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"}
    assert targets == fused if family["spec"].name == "phi3" else targets >= {"q_proj", "k_proj", "v_proj", "o_proj"}
