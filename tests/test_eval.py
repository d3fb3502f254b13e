import json
from pathlib import Path

import pytest

from conftest import LABELS, write_jsonl
from niche.errors import DataError
from niche.eval import evaluate, markdown_report, write_report
from niche.train import train


@pytest.fixture
def toy_specialist(tiny_config) -> Path:
    return train(tiny_config("training.max_steps=6", "training.eval_every=3"), show_progress=False).specialist_dir


def test_eval_compares_base_and_specialist_with_the_same_prompt(toy_specialist, label_data, tmp_path) -> None:
    report = evaluate(toy_specialist, label_data["test"], base="base", show_progress=False)
    assert [result.name.split(" ")[0] for result in report.results] == ["base", "specialist"]
    assert report.constrained and report.rows == 9 and report.headline_metric == "accuracy"
    for result in report.results:
        assert set(result.predictions) <= set(LABELS), "constrained decoding only emits labels"
        assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.metrics["out_of_label_set"] == 0
    written = write_report(report, tmp_path / "report")
    payload = json.loads((written / "eval.json").read_text())
    assert [result["name"] for result in payload["results"]] == [result.name for result in report.results]
    rows = [json.loads(line) for line in (written / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and rows[0]["source"].endswith("test.jsonl:1") and rows[0]["reference"] in LABELS
    assert "| accuracy |" in (written / "eval.md").read_text()


def test_unconstrained_eval_reports_free_text_answers(toy_specialist, label_data) -> None:
    report = evaluate(toy_specialist, label_data["test"], constrain=False, max_new_tokens=4, show_progress=False)
    assert not report.constrained and len(report.results) == 1
    assert "out_of_label_set" in report.results[0].metrics
    assert "specialist" in markdown_report(report)


def test_unknown_label_in_the_test_set_names_file_and_line(toy_specialist, tmp_path) -> None:
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "a", "label": "outage"}, {"text": "b", "label": "refunds"}])
    with pytest.raises(DataError, match=r"test\.jsonl:2: unknown label 'refunds'"):
        evaluate(toy_specialist, test, show_progress=False)


def test_eval_refuses_a_specialist_whose_base_weights_changed(toy_specialist, label_data) -> None:
    from niche.errors import ModelError

    manifest_path = toy_specialist / "niche.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["base"]["weights_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="was trained on 000000000000"):
        evaluate(toy_specialist, label_data["test"], show_progress=False)


def test_eval_of_a_directory_that_is_not_a_specialist(tmp_path, label_data) -> None:
    from niche.errors import ModelError

    with pytest.raises(ModelError, match="not a niche specialist"):
        evaluate(tmp_path, label_data["test"], show_progress=False)


def test_comparing_with_a_base_of_another_tokenizer_is_refused(toy_specialist, label_data, tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from niche.errors import ModelError

    other = tmp_path / "other-base"
    vocab = {"<unk>": 0, "<eos>": 1, "a": 2, "b": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>").save_pretrained(other)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=4,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(other)
    with pytest.raises(ModelError, match="different tokenizer"):
        evaluate(toy_specialist, label_data["test"], base=str(other), show_progress=False)
