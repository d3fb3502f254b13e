import json

import jsonschema
import pytest
import torch

from conftest import write_jsonl
from niche.data.examples import Example
from niche.data.schema import check_answers_match, infer_schema, read_schema
from niche.errors import ConfigError, DataError


def answers(*objects: dict) -> list[Example]:
    return [
        Example(messages=({"role": "user", "content": "x"},), response=json.dumps(value), source=f"train.jsonl:{line}")
        for line, value in enumerate(objects, start=1)
    ]


def test_inferred_schema_has_keys_types_required_fields_and_enums_for_closed_sets() -> None:
    rows = [{"intent": "book", "slots": {"city": f"city-{i}"}, "nights": i, "price": 10.5} for i in range(4)]
    rows += [{"intent": "cancel", "slots": {}, "nights": None, "price": 3} for _ in range(4)]
    schema = infer_schema(answers(*rows))
    assert schema["required"] == ["intent", "slots", "nights", "price"] and schema["additionalProperties"] is False
    assert schema["properties"]["intent"] == {"type": "string", "enum": ["book", "cancel"]}, "each value recurs"
    city = schema["properties"]["slots"]["properties"]["city"]
    assert "enum" not in city and city["maxLength"] >= 32, "values seen once are an open field, bounded in length"
    assert schema["properties"]["slots"]["required"] == [], "city is missing from some answers"
    assert schema["properties"]["nights"]["type"] == ["integer", "null"]
    assert schema["properties"]["price"]["type"] == "number", "whole and fractional numbers make a number"
    for row in rows:
        jsonschema.validate(row, schema)


def test_a_lone_repeated_value_or_a_rare_value_is_not_an_enum() -> None:
    one_value = infer_schema(answers(*[{"currency": "EUR"}] * 8))
    assert "enum" not in one_value["properties"]["currency"]
    with_singleton = infer_schema(answers(*([{"city": "Paris"}] * 5 + [{"city": "Rome"}] * 5 + [{"city": "Oslo"}])))
    assert "enum" not in with_singleton["properties"]["city"]


def test_array_items_are_merged_and_bounded() -> None:
    schema = infer_schema(answers({"tags": ["a", "b"]}, {"tags": []}, {"tags": ["c"]}))
    tags = schema["properties"]["tags"]
    assert tags["type"] == "array" and tags["items"]["type"] == "string" and tags["maxItems"] == 8


def test_a_given_schema_is_checked_against_every_training_answer(tmp_path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}))
    schema = read_schema(path)
    check_answers_match(answers({"n": 1}), schema)
    with pytest.raises(DataError, match=r"train\.jsonl:2: answer does not match data\.schema at n"):
        check_answers_match(answers({"n": 1}, {"n": "two"}), schema)
    path.write_text(json.dumps({"type": "nonsense"}))
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        read_schema(path)


def test_an_answer_that_is_not_a_json_object_is_named_by_its_row(tmp_path) -> None:
    rows = [
        *answers({"n": 1}),
        Example(messages=({"role": "user", "content": "x"},), response="n=2", source="t.jsonl:7"),
    ]
    with pytest.raises(DataError, match=r"t\.jsonl:7: a JSON task's answer must be a JSON object, got 'n=2'"):
        infer_schema(rows)
    with pytest.raises(DataError, match=r"t\.jsonl:7"):
        check_answers_match(rows, {"type": "object"})


@pytest.fixture
def json_task(tmp_path):
    severities, teams = ["low", "high"], ["payments", "search", "identity"]
    rows = [
        {
            "prompt": f"alert {index}: {severities[index % 2]} risk for the {teams[index % 3]} team",
            "completion": json.dumps({"severity": severities[index % 2], "team": teams[index % 3]}),
        }
        for index in range(24)
    ]
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows[:18]),
        "validation": write_jsonl(tmp_path / "validation.jsonl", rows[18:21]),
        "test": write_jsonl(tmp_path / "test.jsonl", rows[21:]),
    }


def test_a_json_specialist_stores_its_schema_and_eval_decodes_every_answer_under_it(tiny_config, json_task) -> None:
    from niche.eval import evaluate, markdown_report
    from niche.train import train

    config = tiny_config(
        f"data.train={json_task['train']}",
        f"data.validation={json_task['validation']}",
        f"data.test={json_task['test']}",
        "training.max_steps=2",
        "prompt.system_prompt=",
    )
    result = train(config, show_progress=False)
    task = result.manifest.task
    assert task.kind == "json" and task.schema_source == "inferred from the training answers"
    assert task.output_schema["properties"]["team"]["enum"] == ["identity", "payments", "search"]
    # Two steps teach a random 2-layer model nothing: the grammar alone makes its answers valid.
    report = evaluate(result.specialist_dir, json_task["test"], show_progress=False)
    metrics = report.results[0].metrics
    assert report.constrained and metrics["valid_json"] == 1.0 and metrics["schema_valid"] == 1.0
    assert set(metrics["fields"]) == {"severity", "team"} and report.headline_metric == "field_f1"
    assert "Per field, specialist" in markdown_report(report)
    free = evaluate(result.specialist_dir, json_task["test"], constrain=False, max_new_tokens=8, show_progress=False)
    assert not free.constrained


def test_the_server_answers_a_json_specialist_under_its_stored_schema(tiny_config, json_task) -> None:
    import jsonschema
    import openai

    from conftest import running
    from niche.serve.app import create_app
    from niche.serve.torch_engine import TorchEngine
    from niche.train import train

    config = tiny_config(
        f"data.train={json_task['train']}", f"data.validation={json_task['validation']}", "training.max_steps=1"
    )
    result = train(config, show_progress=False)
    engine = TorchEngine(result.specialist_dir.parent)
    try:
        with running(create_app(engine)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
            messages = [{"role": "user", "content": "alert 99: high risk for the search team"}]
            # No response_format: one step teaches a random model nothing, so only the stored schema makes this valid.
            reply = client.chat.completions.create(model=config.name, messages=messages, temperature=0, max_tokens=40)
            answer = json.loads(reply.choices[0].message.content)
            jsonschema.validate(answer, result.manifest.task.output_schema)
    finally:
        engine.close()


def requests(*rows: tuple[str, dict]) -> list[Example]:
    return [
        Example(messages=({"role": "user", "content": text},), response=json.dumps(value), source=f"train.jsonl:{line}")
        for line, (text, value) in enumerate(rows, start=1)
    ]


def test_fields_copied_from_the_input_are_marked_instead_of_getting_an_enum() -> None:
    cities = [f"town{number}" for number in range(12)]
    rows = [(f"weather in {city} today", {"kind": "weather", "city": city, "cities": [city]}) for city in cities]
    rows += [(f"rain in {city}", {"kind": "rain", "city": city, "cities": [city]}) for city in cities]
    schema = infer_schema(requests(*rows))
    city = schema["properties"]["city"]
    assert city["x-niche-copy"] is True and "enum" not in city
    assert schema["properties"]["cities"]["items"]["x-niche-copy"] is True
    # The input bounds a copied value: a longer span, or more of them, than training ever had is still valid.
    assert "maxLength" not in city and "maxItems" not in schema["properties"]["cities"]
    jsonschema.validate({"kind": "rain", "city": "a" * 200, "cities": ["b"] * 40}, schema)
    kind = schema["properties"]["kind"]
    assert "x-niche-copy" not in kind and kind["enum"] == ["rain", "weather"], "a closed set every answer has"
    # A value spelled otherwise than the text (case, spacing) is still found; most values elsewhere are not.
    spaced = infer_schema(requests(("what is mom's email", {"who": "mom 's"}), ("call Dad now", {"who": "dad"})))
    assert spaced["properties"]["who"]["x-niche-copy"] is True
    invented = infer_schema(requests(*[(f"row {i}", {"who": f"person {i + 1}"}) for i in range(10)]))
    assert "x-niche-copy" not in invented["properties"]["who"]


def test_a_conditional_schema_allows_each_value_only_the_fields_seen_with_it() -> None:
    import llguidance
    import llguidance.hf

    from niche.data.schema import allowed_by_value
    from niche.data.spans import union_of
    from niche.models import load_tokenizer, resolve_base

    rows = [("order pizza", {"intent": "order", "slots": {"food": "pizza"}})] * 4
    rows += [("weather in oslo", {"intent": "weather", "slots": {"city": "oslo"}})] * 4
    rows += [("weather", {"intent": "weather", "slots": {}})] * 2
    schema = infer_schema(requests(*rows), conditional=True)
    assert schema["x-niche-conditional"] == "intent" and len(schema["anyOf"]) == 2
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"intent": "order", "slots": {"food": "x"}})
    assert not validator.is_valid({"intent": "order", "slots": {"city": "x"}}), "city never came with order"
    assert jsonschema.Draft202012Validator(union_of(schema)).is_valid({"intent": "order", "slots": {"city": "x"}})
    assert allowed_by_value(schema, [("slots", "food"), ("slots", "city")]) == {
        "intent": {"order": ["slots.food"], "weather": ["slots.city"]}
    }
    for row in rows:
        validator.validate(row[1])
    # The grammar engine decodes under it as the validator reads it.
    tokenizer = load_tokenizer(resolve_base("smollm2-135m"))
    engine_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=[2])
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    for answer, accepted in (
        ('{"intent":"order","slots":{"food":"x"}}', True),
        ('{"intent":"order","slots":{"city":"x"}}', False),
    ):
        matcher = llguidance.LLMatcher(engine_tokenizer, grammar)
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert (all(matcher.consume_token(token) for token in ids) and matcher.is_accepting()) == accepted


def test_a_given_schema_marking_a_field_copied_refuses_a_value_not_in_its_input(tmp_path) -> None:
    from niche.data.schema import check_copied_fields

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "x-niche-copy": True}},
        "required": ["city"],
    }
    check_copied_fields(requests(("fly to Paris", {"city": "paris"})), schema)
    with pytest.raises(
        DataError, match=r"train\.jsonl:2: field 'city' is marked x-niche-copy .* 'Lyon' is not in the input"
    ):
        check_copied_fields(requests(("fly to Paris", {"city": "Paris"}), ("fly to Nice", {"city": "Lyon"})), schema)


COPY_SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["ask", "tell"]},
        "who": {"type": "string", "maxLength": 40, "x-niche-copy": True},
        "what": {"type": ["array", "string"], "items": {"type": "string", "x-niche-copy": True}, "x-niche-copy": True},
    },
    "required": ["intent", "who"],
    "additionalProperties": False,
}


def test_a_copied_value_is_always_a_run_of_words_of_its_own_input(tiny_base) -> None:
    from niche.data.spans import occurrences
    from niche.data.template import TemplateEncoder, build_template
    from niche.eval.generation import generate_answers
    from niche.models import load_model, load_tokenizer, resolve_base

    base = resolve_base(str(tiny_base))
    tokenizer = load_tokenizer(base)
    model = load_model(base, torch.float32, "cpu").eval()
    encoder = TemplateEncoder(tokenizer, build_template(tokenizer, "Extract.", None, None))
    texts = [
        'ask "Ana-María" (the CEO) about q3 [draft] at 5.30 pm, $40?',
        "tell bob: c++ & regex .* are \\ fine",
        "who",
        "",  # no span at all: the optional list is left out, the required name may only be empty
    ]
    examples = [Example(messages=({"role": "user", "content": text},), response="") for text in texts]
    # A random model samples arbitrary tokens: only the grammar keeps its copied values to the input's words.
    answers = generate_answers(model, encoder, examples, max_new_tokens=60, json_schema=COPY_SCHEMA)
    for text, answer in zip(texts, answers):
        parsed = json.loads(answer)
        jsonschema.validate(parsed, COPY_SCHEMA)
        values = [parsed["who"], *([parsed["what"]] if isinstance(parsed.get("what"), str) else parsed.get("what", []))]
        for value in [value for value in values if value]:
            whole_words = [text[start:end] for start, end in occurrences(text, value)]
            assert value in whole_words, f"{value!r} is not a run of whole words of {text!r}"
    assert json.loads(answers[-1])["who"] == "" and "what" not in json.loads(answers[-1])


def test_a_copied_value_starts_and_ends_on_word_boundaries() -> None:
    import re

    from niche.decoding import substring_pattern

    pattern = re.compile(substring_pattern("order chinese food, now"))
    assert all(
        pattern.fullmatch(value) for value in ["order", "chinese food", "food,", "food, now", "order chinese food, now"]
    )
    assert not any(pattern.fullmatch(value) for value in ["hinese", "chinese foo", "", "now order", "food now"])
    assert re.compile(substring_pattern("a b", allow_empty=True)).fullmatch("")
    assert not re.compile(substring_pattern("alpha beta gamma", max_length=10)).fullmatch("alpha beta gamma")
