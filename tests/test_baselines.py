import json

import pytest

from conftest import LABELS, ticket_rows, write_jsonl
from niche.data.examples import Example
from niche.errors import ConfigError
from niche.eval.baselines import C_GRID, run_baselines


def examples(rows: list[dict]) -> list[Example]:
    return [
        Example(messages=({"role": "user", "content": row["text"]},), response=row["label"], label=row["label"])
        for row in rows
    ]


def toy_split() -> tuple[list[Example], list[Example], list[Example]]:
    return examples(ticket_rows(30)), examples(ticket_rows(6, offset=40)), examples(ticket_rows(9, offset=60))


def test_both_baselines_learn_the_toy_task_and_give_the_same_answers_twice() -> None:
    train, validation, test = toy_split()
    references = [example.label for example in test]
    first = run_baselines(train, validation, test, references, LABELS, latency_requests=2)
    second = run_baselines(train, validation, test, references, LABELS, latency_requests=2)
    assert [score.name for score in first] == ["tfidf+logreg", "embeddings+logreg"]
    for one, two in zip(first, second):
        assert one.metrics["accuracy"] == 1.0 and one.predictions == two.predictions
        assert one.fit_seconds > 0 and one.examples_per_s > 0 and one.latency_p50_ms > 0
        assert one.settings["C"] in C_GRID and set(one.settings["validation_accuracy"]) == {str(c) for c in C_GRID}
        assert one.cost_per_thousand_requests(0.10) == pytest.approx(0.10 / 3600 / one.examples_per_s * 1000)


def test_the_regularisation_is_chosen_on_validation_rows_not_test_rows() -> None:
    train, validation, test = toy_split()
    references = [example.label for example in test]

    def shifted(label: str) -> str:
        return LABELS[(LABELS.index(label) + 1) % 3]

    # Test labels wrong, validation labels right: every C scores 1.0 on validation and the test scores 0.
    scrambled = [shifted(label) for label in references]
    (score,) = run_baselines(train, validation, test, scrambled, LABELS, names=["tfidf+logreg"], latency_requests=1)
    assert score.metrics["accuracy"] == 0.0 and set(score.settings["validation_accuracy"].values()) == {1.0}
    # Validation labels wrong, test labels right: every C scores 0 on validation (a tie: the smallest C is kept),
    # and the test rows are still scored against their own labels.
    wrong_validation = [
        Example(messages=example.messages, response=shifted(example.label), label=shifted(example.label))
        for example in validation
    ]
    (score,) = run_baselines(
        train, wrong_validation, test, references, LABELS, names=["tfidf+logreg"], latency_requests=1
    )
    assert set(score.settings["validation_accuracy"].values()) == {0.0} and score.settings["C"] == C_GRID[0]
    assert score.metrics["accuracy"] == 1.0


def test_eval_with_baselines_fits_them_on_the_specialists_own_training_rows(tiny_config, label_data) -> None:
    from niche.eval import evaluate, markdown_report
    from niche.train import train

    specialist = train(tiny_config("training.max_steps=2"), show_progress=False).specialist_dir
    report = evaluate(specialist, label_data["test"], baselines=True, show_progress=False)
    names = [result.name for result in report.results]
    assert names == ["specialist (toy)", "tfidf+logreg", "embeddings+logreg"]
    assert all(result.details["fit_seconds"] > 0 for result in report.results[1:])
    assert "Classic baselines, fitted on the specialist's training rows" in markdown_report(report)
    label_data["train"].write_text(
        label_data["train"].read_text() + json.dumps({"text": "x", "label": "outage"}) + "\n"
    )
    with pytest.raises(ConfigError, match="changed since 'toy' was trained"):
        evaluate(specialist, label_data["test"], baselines=True, show_progress=False)


def test_the_cli_prints_the_baselines_beside_the_specialist(tiny_config, label_data, tmp_path) -> None:
    from typer.testing import CliRunner

    from niche.cli import app
    from niche.train import train

    specialist = train(tiny_config("training.max_steps=2"), show_progress=False).specialist_dir
    arguments = ["eval", str(specialist), "--data", str(label_data["test"]), "--baselines"]
    completed = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "report")])
    assert completed.exit_code == 0, completed.output
    assert "tfidf+logreg" in completed.output and "fit (s)" in completed.output
    written = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert [result["name"] for result in written["results"]][1:] == ["tfidf+logreg", "embeddings+logreg"]


def test_baselines_are_for_label_tasks(tiny_config, tmp_path) -> None:
    from niche.eval import evaluate
    from niche.train import train

    rows = [{"prompt": f"say {word}", "completion": word} for word in ["alpha", "beta", "gamma", "delta"] * 3]
    data = write_jsonl(tmp_path / "gen.jsonl", rows)
    config = tiny_config(f"data.train={data}", f"data.validation={data}", f"data.test={data}", "prompt.system_prompt=")
    specialist = train(config, show_progress=False).specialist_dir
    with pytest.raises(ConfigError, match="classic baselines classify labels"):
        evaluate(specialist, data, baselines=True, show_progress=False)


def extraction_examples(rows: list[dict]) -> list[Example]:
    return [
        Example(messages=({"role": "user", "content": row["prompt"]},), response=row["completion"], source=f"t:{n}")
        for n, row in enumerate(rows, start=1)
    ]


def test_the_crf_baseline_learns_the_toy_extraction_and_gives_the_same_answers_twice() -> None:
    from conftest import extraction_rows
    from niche.data.schema import infer_schema
    from niche.eval.crf import CRF_GRID, run_crf_baseline

    train, validation = extraction_examples(extraction_rows(36)), extraction_examples(extraction_rows(9, offset=40))
    test = extraction_examples(extraction_rows(12, offset=60))
    schema = infer_schema(train, conditional=True)
    references = [example.response for example in test]
    first = run_crf_baseline(train, validation, test, references, schema, latency_requests=2)
    second = run_crf_baseline(train, validation, test, references, schema, latency_requests=2)
    assert first.name == "crf+logreg" and first.predictions == second.predictions
    assert first.settings == second.settings and len(first.settings["crf"]["validation_span_f1"]) == len(CRF_GRID)
    assert first.metrics["field_f1"] == 1.0 and first.metrics["schema_valid"] == 1.0
    assert first.settings["copied_fields"] == ["slots.food", "slots.city", "slots.time"]
    assert first.settings["choice_fields"] == ["intent"] and first.settings["out_of_reach"] == {}


def test_fields_neither_copied_nor_closed_are_out_of_the_crf_reach_and_named() -> None:
    from conftest import extraction_rows
    from niche.data.schema import infer_schema
    from niche.eval.crf import run_crf_baseline

    def with_count(rows: list[dict]) -> list[dict]:
        return [
            row | {"completion": json.dumps(json.loads(row["completion"]) | {"count": n})} for n, row in enumerate(rows)
        ]

    train = extraction_examples(with_count(extraction_rows(36)))
    validation = extraction_examples(with_count(extraction_rows(9, offset=40)))
    test = extraction_examples(with_count(extraction_rows(6, offset=60)))
    schema = infer_schema(train)
    score = run_crf_baseline(train, validation, test, [example.response for example in test], schema)
    assert set(score.settings["out_of_reach"]) == {"count"}
    assert score.metrics["fields"]["count"]["recall"] == 0.0 and score.metrics["fields"]["intent"]["f1"] == 1.0
