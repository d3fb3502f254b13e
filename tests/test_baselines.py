import json
import math

import pytest

from conftest import LABELS, ticket_rows, write_jsonl
from niche.data.examples import Example
from niche.errors import ConfigError
from niche.eval.baselines import C_GRID, run_baselines, search_log_grid, searches_at_edge


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
        # Every C scores 1.0 on the toy validation rows: the smallest C is kept, so the search goes down to its
        # limit and says the choice is at the edge.
        searched = one.settings["validation_accuracy"]
        assert {f"{c:g}" for c in C_GRID} < set(searched) and set(searched.values()) == {1.0}
        assert one.settings["C"] == pytest.approx(1e-5) and one.settings["C_interior"] is False
        assert searches_at_edge(one.settings) == ["C"]
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
    # Validation labels wrong, test labels right: every C scores 0 on validation (a tie: the smallest C tried is
    # kept), and the test rows are still scored against their own labels.
    wrong_validation = [
        Example(messages=example.messages, response=shifted(example.label), label=shifted(example.label))
        for example in validation
    ]
    (score,) = run_baselines(
        train, wrong_validation, test, references, LABELS, names=["tfidf+logreg"], latency_requests=1
    )
    assert set(score.settings["validation_accuracy"].values()) == {0.0}
    assert score.settings["C"] == min(float(c) for c in score.settings["validation_accuracy"])
    assert score.metrics["accuracy"] == 1.0


def peaked_at(best: float):
    """A validation score that peaks at `best` and falls off by decade on either side, counting the fits."""
    fitted: list[float] = []

    def fit(value: float) -> tuple[float, str]:
        fitted.append(value)
        return -abs(math.log10(value) - math.log10(best)), f"model at {value:g}"

    return fit, fitted


def test_the_grid_is_log_spaced_from_1e_2_to_1e4() -> None:
    assert pytest.approx([1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4]) == C_GRID


def test_an_optimum_beyond_the_old_grid_is_found_interior() -> None:
    # The old grid {1, 10, 100} would have chosen 100, its edge, for a baseline best at 1000.
    fit, _ = peaked_at(1e3)
    model, search = search_log_grid(fit, range(0, 3), extra_decades=3)
    assert search.chosen == pytest.approx(1e3) and search.interior and model == "model at 1000"
    assert list(search.scores) == ["1", "10", "100", "1000", "10000"]
    # The grid in use brackets it without growing.
    fit, fitted = peaked_at(1e3)
    _, search = search_log_grid(fit, range(-2, 5), extra_decades=3)
    assert search.chosen == pytest.approx(1e3) and search.interior and len(fitted) == 7


def test_the_search_grows_past_either_end_until_the_choice_is_interior() -> None:
    fit, _ = peaked_at(1e6)
    _, search = search_log_grid(fit, range(-2, 5), extra_decades=3)
    assert search.chosen == pytest.approx(1e6) and search.interior and list(search.scores)[-1] == "1e+07"
    fit, _ = peaked_at(1e-4)
    _, search = search_log_grid(fit, range(-2, 5), extra_decades=3)
    assert search.chosen == pytest.approx(1e-4) and search.interior and list(search.scores)[0] == "1e-05"


def test_a_search_stopped_at_its_limit_says_its_choice_is_at_the_edge() -> None:
    fit, fitted = peaked_at(1e9)
    _, search = search_log_grid(fit, range(-2, 5), extra_decades=3)
    assert search.chosen == pytest.approx(1e7) and not search.interior and len(fitted) == 10
    # Ties go to the stronger regularisation: the smaller C, or the larger penalty.
    _, search = search_log_grid(lambda value: (1.0, None), range(-2, 5), extra_decades=1)
    assert search.chosen == pytest.approx(1e-3) and not search.interior
    _, search = search_log_grid(lambda value: (1.0, None), range(-2, 5), extra_decades=1, ties_to_larger=True)
    assert search.chosen == pytest.approx(1e5) and not search.interior


def test_searches_at_the_edge_are_named_wherever_they_sit_in_the_settings() -> None:
    settings = {"C": 1.0, "C_interior": True, "crf": {"c1_interior": True, "c2_interior": False}}
    settings["choices"] = {"intent": {"C_interior": False}}
    assert searches_at_edge(settings) == ["crf.c2", "choices.intent.C"]


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
    from niche.eval.crf import CRF_DECADES, run_crf_baseline

    train, validation = extraction_examples(extraction_rows(36)), extraction_examples(extraction_rows(9, offset=40))
    test = extraction_examples(extraction_rows(12, offset=60))
    schema = infer_schema(train, conditional=True)
    references = [example.response for example in test]
    first = run_crf_baseline(train, validation, test, references, schema, latency_requests=2)
    second = run_crf_baseline(train, validation, test, references, schema, latency_requests=2)
    assert first.name == "crf+logreg" and first.predictions == second.predictions
    assert first.settings == second.settings
    # c2 over its grid, then c1 at the chosen c2 (the pair both sweeps share fitted once); both interior here.
    crf = first.settings["crf"]
    assert (
        len(crf["validation_span_f1"]) >= 2 * len(CRF_DECADES) - 1
        and f"c1={crf['c1']:g},c2={crf['c2']:g}" in crf["validation_span_f1"]
    )
    assert crf["c1_interior"] and crf["c2_interior"]
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
