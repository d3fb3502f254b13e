"""Tagging heads: a JSON extraction specialist answering in one forward pass, through train, eval, serve and
export, on tiny random models."""

import json

import jsonschema
import pytest
import torch

from conftest import write_jsonl
from niche.data.spans import ExtractionField, ExtractionPlan
from niche.errors import ConfigError
from niche.tagger import Tagger, bio_transitions, viterbi


@pytest.fixture
def tagger_config(tiny_config, extraction_data):
    def build(*overrides: str):
        return tiny_config(
            f"data.train={extraction_data['train']}",
            f"data.validation={extraction_data['validation']}",
            f"data.test={extraction_data['test']}",
            "name=extract",
            "training.objective=auto",
            "training.max_steps=20",
            "training.eval_every=10",
            "prompt.system_prompt=",
            *overrides,
        )

    return build


def test_viterbi_never_starts_a_value_inside_and_keeps_fields_apart() -> None:
    tags = ["O", "B-a", "I-a", "B-b", "I-b"]
    transitions = bio_transitions(tags)
    # Greedy reading would give I-a, I-b, I-b: two invalid starts and a field switch inside a value.
    log_probs = torch.log(
        torch.tensor([[0.1, 0.3, 0.5, 0.05, 0.05], [0.1, 0.05, 0.05, 0.3, 0.5], [0.1, 0.05, 0.05, 0.3, 0.5]])
    )
    path = [tags[index] for index in viterbi(log_probs, transitions)]
    assert path[0] != "I-a" and all(
        not tag.startswith("I-") or previous[2:] == tag[2:] for previous, tag in zip(path, path[1:])
    )


def test_a_closed_field_value_masks_the_copied_fields_it_never_went_with() -> None:
    plan = ExtractionPlan(
        [
            ExtractionField(("intent",), "choice", choices=("order", "weather")),
            ExtractionField(("slots",), "object"),
            ExtractionField(("slots", "food"), "span", required=False),
            ExtractionField(("slots", "city"), "span", required=False),
        ],
        allowed_with={"intent": {"order": ["slots.food"], "weather": ["slots.city"]}},
    )
    tagger = Tagger(plan, hidden_size=8)
    masked = tagger._disallowed({"intent": "order"})
    assert [tag for tag, penalty in zip(tagger.tags, masked) if penalty == float("-inf")] == [
        "B-slots.city",
        "I-slots.city",
    ]
    assert not torch.isinf(tagger._disallowed({"intent": None})).any(), "no value chosen: nothing is masked"


def test_a_conditional_schema_gives_the_tagger_the_fields_each_intent_allows(tagger_config) -> None:
    from niche.data.prepare import prepare_data
    from niche.train.sft import tagging_plan

    plain = tagging_plan(prepare_data(tagger_config()))
    assert plain.allowed_with == {}, "no conditional schema: nothing is masked"
    conditional = tagging_plan(prepare_data(tagger_config("data.conditional_schema=true")))
    assert conditional.allowed_with == {
        "intent": {"alarm": ["slots.city", "slots.time"], "order": ["slots.food"], "weather": ["slots.city"]}
    }


def test_a_json_task_of_copied_fields_and_closed_sets_trains_a_tagger_that_eval_serve_and_export_agree_on(
    tagger_config, extraction_data, tmp_path
) -> None:
    from niche.eval import evaluate
    from niche.export import export_specialist
    from niche.train import train

    config = tagger_config()
    result = train(config, show_progress=False)
    head = result.manifest.task.head
    assert head is not None and head.kind == "tagger" and head.echo and result.manifest.manifest_version == 3
    assert result.manifest.hyperparameters["recipe"]["objective"] == "tag"
    assert (result.specialist_dir / "tagger.safetensors").is_file()

    report = evaluate(result.specialist_dir, extraction_data["test"], baselines=True, show_progress=False)
    specialist, crf = report.results
    assert crf.name == "crf+logreg" and crf.details["settings"]["copied_fields"] == [
        "slots.food",
        "slots.city",
        "slots.time",
    ]
    assert specialist.metrics["schema_valid"] == 1.0 and specialist.metrics["field_f1"] >= 0.8
    assert crf.metrics["field_f1"] >= 0.8, "the toy task is in reach of a CRF"

    exported = export_specialist(result.specialist_dir, "merged", tmp_path / "merged")
    assert exported.parity[0].identical_rate == 1.0 and (tmp_path / "merged" / "tagger.safetensors").is_file()
    with pytest.raises(ConfigError, match="answers with a tagging head"):
        export_specialist(result.specialist_dir, "gguf", tmp_path / "gguf")


def test_a_tagger_serves_beside_a_label_head_and_a_generative_specialist(tiny_config, tagger_config, tmp_path) -> None:
    import openai

    from conftest import running
    from niche.serve.app import create_app
    from niche.serve.base import SamplingParams
    from niche.serve.torch_engine import TorchEngine
    from niche.train import train

    tagger = train(tagger_config(), show_progress=False)
    out = tagger.specialist_dir.parent
    train(tiny_config(f"output_dir={out}", "name=router", "training.objective=classify"), show_progress=False)
    train(tiny_config(f"output_dir={out}", "name=writer"), show_progress=False)
    schema = tagger.manifest.task.output_schema
    engine = TorchEngine(out)
    try:
        requests = [
            ("extract", "order noodles for me please"),
            ("router", "ticket 7: site is down again"),
            ("writer", "ticket 8: invoice charged twice"),
            ("extract", "wake me at noon in lima"),
        ]
        generations = [
            engine.submit(
                name, [{"role": "user", "content": text}], SamplingParams(max_tokens=6, temperature=0, response="auto")
            )
            for name, text in requests
        ]
        answers = [generation.result().text for generation in generations]
        for (name, text), answer in zip(requests, answers):
            if name == "extract":
                parsed = json.loads(answer)
                jsonschema.validate(parsed, schema)
                assert all(value in text for value in parsed["slots"].values()), "every slot is copied from the text"
        assert answers[1] in ("billing", "outage", "security")
        with running(create_app(engine)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            reply = client.chat.completions.create(
                model="extract", messages=[{"role": "user", "content": "what is the weather in oslo"}]
            )
            jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
            with pytest.raises(openai.BadRequestError, match="tagging head"):
                client.chat.completions.create(
                    model="extract",
                    messages=[{"role": "user", "content": "x"}],
                    response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
                )
    finally:
        engine.close()
    from niche.errors import ModelError
    from niche.serve.vllm import vllm_command

    with pytest.raises(ModelError, match=r"extract: answers with a tagging head .* vLLM cannot run"):
        vllm_command(out)


def test_the_tag_objective_names_the_fields_a_tagger_cannot_answer(tiny_config, tmp_path) -> None:
    from niche.train import train

    rows = [{"prompt": f"count {n} apples", "completion": json.dumps({"kind": "count", "n": n})} for n in range(12)]
    path = write_jsonl(tmp_path / "numbers.jsonl", rows)
    config = tiny_config(f"data.train={path}", "data.validation=null", "training.objective=tag")
    with pytest.raises(
        ConfigError, match=r"training.objective tag: .*n: neither copied from the input nor one of a closed set"
    ):
        train(config, show_progress=False)
