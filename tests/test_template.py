"""The pitfalls of other tools, made impossible: eos is learned, the span is right, train and serve prompts match."""

from niche.artifact import TemplateRecord
from niche.data.examples import Example
from niche.data.template import CHATML_TEMPLATE, IGNORE_INDEX, TemplateEncoder, build_template

EXAMPLE = Example(messages=({"role": "user", "content": "The site is down"},), response="outage", label="outage")


def encoder_for(tokenizer, system_prompt="Pick one: {labels}.", labels=("billing", "outage")) -> TemplateEncoder:
    return TemplateEncoder(tokenizer, build_template(tokenizer, system_prompt, None, list(labels)))


def test_end_of_turn_token_is_supervised_even_though_pad_equals_eos(tokenizer) -> None:
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: the case where other collators mask eos
    encoded = encoder_for(tokenizer).training_example(EXAMPLE)
    assert encoded.input_ids[-1] == tokenizer.eos_token_id
    assert encoded.labels[-1] == tokenizer.eos_token_id != IGNORE_INDEX


def test_supervised_span_decodes_to_the_answer_and_end_of_turn(tokenizer) -> None:
    encoded = encoder_for(tokenizer).training_example(EXAMPLE)
    supervised = [label for label in encoded.labels if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "outage<|im_end|>"
    prompt_part = [token for token, label in zip(encoded.input_ids, encoded.labels) if label == IGNORE_INDEX]
    assert tokenizer.decode(prompt_part).endswith("<|im_start|>assistant\n")


def test_serve_time_prompt_from_the_manifest_equals_the_training_prompt(tokenizer) -> None:
    encoder = encoder_for(tokenizer)
    record = TemplateRecord(
        system_prompt=encoder.template.system_prompt,
        chat_template=encoder.template.chat_template,
        stop_token_ids=encoder.stop_ids,
    )
    restored = TemplateEncoder(tokenizer, TemplateRecord.model_validate(record.model_dump()).to_template())
    training_prompt = encoder.training_example(EXAMPLE).input_ids[: len(encoder.prompt_ids(EXAMPLE))]
    assert restored.prompt_ids(EXAMPLE) == training_prompt
    assert restored.template.render_prompt(tokenizer, EXAMPLE) == encoder.template.render_prompt(tokenizer, EXAMPLE)


def test_label_list_is_frozen_into_the_system_prompt(tokenizer) -> None:
    template = build_template(tokenizer, "Pick one: {labels}.", None, ["a", "b"])
    assert template.system_prompt == "Pick one: a, b."
    assert "Pick one: a, b." in template.render_prompt(tokenizer, EXAMPLE)


def test_context_is_placed_in_the_user_turn(tokenizer) -> None:
    with_context = Example(messages=EXAMPLE.messages, response="outage", context="Status page: all red")
    prompt = build_template(tokenizer, None, None, None).render_prompt(tokenizer, with_context)
    assert "Context:\nStatus page: all red\n\nThe site is down" in prompt


def test_template_without_special_end_of_turn_gets_eos_appended(tokenizer) -> None:
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    encoder = TemplateEncoder(tokenizer, build_template(tokenizer, None, plain, None))
    completion = encoder.completion_ids(EXAMPLE)
    assert completion[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(completion[:-1]) == "outage"


def test_tokenizer_without_a_chat_template_falls_back_to_chatml(tokenizer) -> None:
    class NoTemplate:
        chat_template = None
        apply_chat_template = tokenizer.apply_chat_template  # renders the template it is given

    assert build_template(NoTemplate(), None, None, None).chat_template == CHATML_TEMPLATE
