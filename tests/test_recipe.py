import pytest
from transformers import AutoTokenizer

from conftest import write_jsonl
from niche.config import load_config
from niche.data.examples import Example
from niche.data.prepare import prepare_data, split_validation
from niche.data.sampling import hold_out, stratified_sample
from niche.export import ollama_template, render_ollama_template
from niche.train.recipe import OBJECTIVE_DEFAULTS, DataProfile, choose_epochs, choose_recipe


def profile(rows: int, labels: int | None = 10, kind: str = "label") -> DataProfile:
    return DataProfile(task_kind=kind, rows=rows, labels=labels, mean_tokens=20.0, longest_tokens=40)


def test_small_sets_get_several_passes_and_large_sets_few() -> None:
    generate = OBJECTIVE_DEFAULTS["generate"]
    assert choose_epochs(490, generate) >= 4, "a few hundred rows must not stop after one short epoch"
    assert choose_epochs(100_000, generate) == 1
    assert choose_epochs(10, generate) == generate.max_epochs


def test_the_recipe_fills_only_what_the_config_left_empty_and_says_so() -> None:
    config = load_config(None, ["training.learning_rate=0.002", "lora.r=8"])
    recipe = choose_recipe(config, profile(1500), "classify", base_layers=30)
    assert recipe.learning_rate == 0.002 and recipe.lora_r == 8 and recipe.lora_alpha == 16
    assert recipe.head_layer == 15 and recipe.batch_size == OBJECTIVE_DEFAULTS["classify"].batch_size
    assert recipe.sources == {
        "lora_r": "config",
        "learning_rate": "config",
        "epochs": "recipe",
        "batch_size": "recipe",
        "lora_alpha": "recipe",
        "head_layer": "recipe",
    }


def test_a_head_layer_past_the_base_is_a_clear_error() -> None:
    from niche.errors import ConfigError

    with pytest.raises(ConfigError, match="training.head_layer 40: the base has decoder layers 1 to 30"):
        choose_recipe(load_config(None, ["training.head_layer=40"]), profile(100), "classify", base_layers=30)
    with pytest.raises(ConfigError, match="training.head_layer: set, but this run trains the generate objective"):
        choose_recipe(load_config(None, ["training.head_layer=10"]), profile(100), "generate", base_layers=30)


def test_a_stratified_sample_keeps_each_labels_share() -> None:
    keys = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    chosen = stratified_sample(keys, 100, seed=1)
    counts = {key: sum(keys[position] == key for position in chosen) for key in "abc"}
    assert len(chosen) == 100 and counts == {"a": 60, "b": 30, "c": 10}
    assert chosen == stratified_sample(keys, 100, seed=1), "seeded"


def test_holding_out_never_takes_a_labels_last_row() -> None:
    keys = ["a"] * 20 + ["rare"]
    kept, held = hold_out(keys, 10, seed=0)
    assert len(held) == 10 and 20 in kept, "the only 'rare' row stays in training"


def rows_for(labels: int, per_label: int) -> list[dict]:
    return [
        {"text": f"row {index} of {label}", "label": f"label-{label}"}
        for label in range(labels)
        for index in range(per_label)
    ]


def test_validation_held_out_of_train_is_capped_and_stratified(tmp_path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", rows_for(labels=20, per_label=100))
    data = prepare_data(load_config(None, [f"data.train={train}", "data.validation_max_rows=200"]))
    assert len(data.validation) == 200 and len(data.train) == 1800, "10% would be 200 rows: within the cap"
    data = prepare_data(load_config(None, [f"data.train={train}", "data.validation_max_rows=60"]))
    assert len(data.validation) == 60 and data.validation_source == "held out of train"
    per_label = {
        label: sum(example.label == label for example in data.validation)
        for label in {e.label for e in data.validation}
    }
    assert len(per_label) == 20 and set(per_label.values()) == {3}


def test_a_large_validation_file_is_sampled_down_to_the_cap(tmp_path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", rows_for(labels=4, per_label=10))
    validation = write_jsonl(tmp_path / "validation.jsonl", rows_for(labels=4, per_label=50))
    config = load_config(None, [f"data.train={train}", f"data.validation={validation}", "data.validation_max_rows=40"])
    data = prepare_data(config)
    assert len(data.validation) == 40 and len(data.train) == 40 and data.validation_source == "file (sampled)"
    small = load_config(None, [f"data.train={train}", f"data.validation={validation}"])
    assert len(prepare_data(small).validation) == 200, "a validation file within the cap is used whole"


def test_a_split_with_one_row_per_label_still_holds_rows_out() -> None:
    examples = [
        Example(messages=({"role": "user", "content": str(i)},), response=f"l{i}", label=f"l{i}") for i in range(10)
    ]
    train, validation = split_validation(examples, "label", 0.2, 500, seed=0)
    assert len(validation) == 2 and len(train) == 8


def test_the_base_models_default_system_prompt_is_left_out_of_every_row(tiny_config, tokenizer) -> None:
    from niche.data.template import TemplateEncoder
    from niche.train import train

    result = train(tiny_config("prompt.system_prompt=", "training.max_steps=1"), show_progress=False)
    template = result.manifest.template.to_template()
    prompt = TemplateEncoder(tokenizer, template).template.render_prompt(
        tokenizer, Example(messages=({"role": "user", "content": "ticket 1"},), response="")
    )
    assert "SmolLM" not in prompt and prompt.startswith("<|im_start|>system\n<|im_end|>")
    # The empty system turn is part of the stored template, so every consumer of it renders the same prompt:
    # the tokenizer saved with the adapter (vLLM, lm-eval, PeftModel users) and the Ollama Modelfile.
    saved = AutoTokenizer.from_pretrained(result.specialist_dir)
    user_only = [{"role": "user", "content": "ticket 1"}]
    assert saved.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True) == prompt
    ollama = render_ollama_template(ollama_template(tokenizer, template.chat_template), None, "ticket 1")
    assert ollama == prompt
