import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from niche.data.formats import load_examples, read_examples
from niche.errors import DataError


def test_label_rows_become_canonical_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "card declined", "label": "billing"}])
    result = load_examples(path)
    assert result.format == "label"
    (example,) = result.examples
    assert example.messages == ({"role": "user", "content": "card declined"},)
    assert example.response == example.label == "billing"
    assert example.source == f"{path}:1"


def test_prompt_completion_alpaca_and_chat_shapes_are_detected(tmp_path: Path) -> None:
    prompt = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "completion": "4"}])
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "hola", "output": "hello"}])
    chat = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            }
        ],
    )
    assert load_examples(prompt).examples[0].response == "4"
    alpaca_example = load_examples(alpaca).examples[0]
    assert alpaca_example.messages[0]["content"] == "Translate\n\nhola"
    chat_result = load_examples(chat)
    assert chat_result.format == "chat"
    assert [m["role"] for m in chat_result.examples[0].messages] == ["system", "user"]
    assert chat_result.examples[0].response == "Hello"


def test_csv_with_mapped_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('finding,category\n"port 22 open, prod",network\nkey leaked,secrets\n', encoding="utf-8")
    result = load_examples(path, fields={"text": "finding", "label": "category"})
    assert [example.label for example in result.examples] == ["network", "secrets"]
    assert result.examples[0].input_text == "port 22 open, prod"
    assert result.examples[1].source.endswith("d.csv:3")


def test_malformed_json_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n{"text": "c", "label": "y"}\n')
    result = read_examples(path)
    assert len(result.examples) == 2
    assert [(problem.line, "malformed JSON" in problem.message) for problem in result.problems] == [(2, True)]
    with pytest.raises(DataError) as error:
        load_examples(path)
    assert f"{path}:2" in str(error.value)


def test_missing_field_names_the_field_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": ""}])
    with pytest.raises(DataError, match=r"d\.jsonl:2.*'label'"):
        load_examples(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        load_examples(path)


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps({"text": "ok", "label": "x"}).encode()
        + b"\n"
        + '{"text": "café", "label": "x"}'.encode("latin-1")
        + b"\n"
    )
    result = read_examples(path)  # one bad line is one bad row, not a lost file
    assert len(result.examples) == 1 and len(result.problems) == 1
    assert result.problems[0].line == 2 and "caf\ufffd" in result.problems[0].raw
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        load_examples(path)
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"text,label\n" + "café,x\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv:2: not valid UTF-8"):
        read_examples(csv_path)


def test_unrecognised_shape_lists_the_accepted_ones(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}, {"text": "t", "label": "l"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: cannot tell the row shape.*prompt\+completion"):
        load_examples(path)
    result = read_examples(path)  # the rows after it still count
    assert len(result.examples) == 1 and result.problems[0].raw == '{"question": "a", "answer": "b"}'


def test_chat_row_must_end_with_the_assistant(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="last message must be the assistant"):
        load_examples(path)


def test_unsupported_extension_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="expected .jsonl or .csv"):
        load_examples(path)


@pytest.mark.parametrize(
    ("row", "field", "kind"),
    [
        ({"text": {"a": 1}, "label": "a"}, "text", "object"),
        ({"text": "card declined", "label": ["a", "b"]}, "label", "array"),
        ({"prompt": {"q": 1}, "completion": "x"}, "prompt", "object"),
        ({"instruction": "do", "input": [1], "output": "x"}, "input", "array"),
    ],
)
def test_a_json_object_where_text_belongs_is_a_problem_on_its_line(tmp_path: Path, row, field, kind) -> None:
    good = {key: "x" for key in row}
    path = write_jsonl(tmp_path / "d.jsonl", [good, row])
    result = read_examples(path)
    assert len(result.examples) == 1
    assert [(problem.line, problem.message) for problem in result.problems] == [
        (2, f"field {field!r} is a JSON {kind}; expected text (a string) (format {result.format})")
    ]
    assert json.loads(result.problems[0].raw) == row, "the rejected row is kept whole for the rejects file"


def test_an_answer_may_be_a_json_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "extract", "completion": {"team": "billing"}}])
    assert load_examples(path).examples[0].response == '{"team": "billing"}'


def test_a_directory_given_as_the_data_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is a directory; expected a data file \(\.jsonl or \.csv\)") as error:
        read_examples(tmp_path)
    assert "not found" not in str(error.value)


def test_one_class_is_a_warning_for_check_and_an_error_for_train(tmp_path: Path) -> None:
    from niche.config import load_config
    from niche.data.check import check_data
    from niche.data.prepare import prepare_data

    rows = [{"text": f"card declined {number}", "label": "billing"} for number in range(8)]
    path = write_jsonl(tmp_path / "one.jsonl", rows)
    report = check_data(path)
    assert report.ok and report.label_counts == {"billing": 8}
    assert report.warnings == [
        f"{path}: every one of the 8 rows has the label 'billing': a label task needs at least two classes "
        "(add rows of the other labels, or use prompt/completion rows for a generation task); "
        "`niche train` refuses this file"
    ]
    with pytest.raises(DataError, match=r"one\.jsonl: every one of the 8 rows has the label 'billing'"):
        prepare_data(load_config(None, [f"data.train={path}"]))
    rows.append({"text": "site down", "label": "outage"})
    write_jsonl(path, rows)
    assert check_data(path).warnings == []
