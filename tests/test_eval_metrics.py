import json

import pytest

from niche.metrics import generation_metrics, json_metrics, label_metrics, rouge_l, token_f1


def test_label_metrics_accuracy_macro_f1_and_confusions() -> None:
    references = ["a", "a", "b", "b"]
    predictions = ["a", "b", "b", "b"]
    metrics = label_metrics(predictions, references, ["a", "b"])
    assert metrics["accuracy"] == 0.75
    # a: precision 1, recall 0.5 -> 2/3; b: precision 2/3, recall 1 -> 0.8
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["confusions"] == [{"gold": "a", "predicted": "b", "count": 1}]
    assert metrics["out_of_label_set"] == 0


def test_predictions_outside_the_label_set_are_counted() -> None:
    assert label_metrics(["zzz", "a"], ["a", "a"], ["a", "b"])["out_of_label_set"] == 1


def test_token_f1_and_rouge_l_by_hand() -> None:
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("the cat", "the dog") == pytest.approx(0.5)
    # LCS of "a b c d" and "a c d e" is "a c d" (3): precision 3/4, recall 3/4.
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("x", "y") == 0.0


def test_generation_metrics_exact_match_ignores_whitespace() -> None:
    metrics = generation_metrics(["Paris ", "Rome"], ["Paris", "Madrid"])
    assert metrics["exact_match"] == 0.5


def test_json_metrics_valid_rate_and_per_field_precision_recall_f1() -> None:
    references = ['{"category": "iam", "severity": "high"}', '{"category": "network", "severity": "low"}']
    predictions = ['{"category": "iam", "severity": "low"}', "not json"]
    metrics = json_metrics(predictions, references)
    assert metrics["valid_json"] == 0.5
    assert metrics["exact_match"] == 0.0
    category, severity = metrics["fields"]["category"], metrics["fields"]["severity"]
    assert (category["precision"], category["recall"]) == (1.0, 0.5), "the unparsable answer misses both fields"
    assert (severity["tp"], severity["fp"], severity["fn"]) == (0, 1, 2), "a wrong value is a false positive and a miss"
    assert metrics["field_precision"] == 0.5 and metrics["field_recall"] == 0.25
    assert metrics["field_f1"] == pytest.approx(1 / 3)
    assert [row["row"] for row in metrics["worst_rows"]] == [1, 0]


def test_json_field_scores_count_list_elements_as_a_multiset_and_nested_fields_by_path() -> None:
    reference = json.dumps({"tags": ["a", "a", "b"], "slots": {"city": "Paris"}})
    prediction = json.dumps({"tags": ["a", "b", "c"], "slots": {"city": "Paris", "date": "today"}})
    metrics = json_metrics([prediction], [reference])
    tags = metrics["fields"]["tags"]
    assert (tags["tp"], tags["fp"], tags["fn"]) == (2, 1, 1), "one 'a' and the 'b' found, 'c' extra, one 'a' missed"
    assert metrics["fields"]["slots.city"]["f1"] == 1.0
    assert (metrics["fields"]["slots.date"]["fp"], metrics["fields"]["slots.date"]["fn"]) == (1, 0)


def test_json_metrics_report_the_share_valid_against_the_schema() -> None:
    schema = {"type": "object", "properties": {"severity": {"enum": ["low", "high"]}}, "required": ["severity"]}
    metrics = json_metrics(
        ['{"severity": "low"}', '{"severity": "urgent"}'], ['{"severity": "low"}'] * 2, schema=schema
    )
    assert metrics["valid_json"] == 1.0 and metrics["schema_valid"] == 0.5
