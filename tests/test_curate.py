"""niche curate: normalisation, PII, MinHash near duplicates, conflicts, splits, leakage, decontamination."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from conftest import write_jsonl
from niche.cli import app
from niche.curate import CurateSettings, curate, normalize_text
from niche.data.formats import load_examples
from niche.data.minhash import NearDuplicateIndex, lsh_bands, shingles
from niche.data.pii import iban_valid, luhn_valid, redact
from niche.errors import DataError

TOPICS = {
    "billing": ["my invoice was charged {n} times this month", "refund the duplicate payment of {n} dollars"],
    "outage": ["the dashboard has been down for {n} hours", "api requests fail with timeouts since {n} am"],
    "security": ["we got a phishing email asking for {n} passwords", "suspicious login from {n} new countries"],
}
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()  # noqa: SIM905


def distinct_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows that are pairwise far apart: each has its own random words after the topic sentence."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = list(TOPICS)[index % 3]
        sentence = rng.choice(TOPICS[label]).format(n=index)
        rows.append({"text": f"{sentence} " + " ".join(rng.sample(WORDS, 8)), "label": label})
    return rows


def jaccard(left: str, right: str, size: int = 3) -> float:
    a, b = set(shingles(left, size)), set(shingles(right, size))
    return len(a & b) / len(a | b)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_normalize_text_nfc_and_whitespace() -> None:
    assert normalize_text("cafe\u0301  is\t\topen \r\n\r\n\r\n\nnow  ") == "caf\u00e9 is open\n\nnow"


def test_pii_redaction_counts_each_kind_and_checks_digits() -> None:
    counts = Counter()
    text = (
        "mail jane.doe@example.com, call +44 20 7946 0958 or (020) 7946 0958, card 4111 1111 1111 1111, "
        "IBAN GB82 WEST 1234 5698 7654 32, hosts 10.0.0.12 and 2001:db8::1"
    )
    assert redact(text, counts) == (
        "mail [EMAIL], call [PHONE] or [PHONE], card [CARD], IBAN [IBAN], hosts [IP] and [IP]"
    )
    assert counts == {"EMAIL": 1, "PHONE": 2, "CARD": 1, "IBAN": 1, "IP": 2}
    untouched = (
        "order 1234 5678 9012 3456 on 2024-01-15 at 10:30:00, version 1.2.3.4.5, IBAN GB00 WEST 1234 5698 7654 32"
    )
    assert redact(untouched) == untouched, "no Luhn, no mod-97, dates, times and versions are not PII"
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")


def test_minhash_estimates_jaccard_and_lsh_finds_near_duplicates() -> None:
    rows = [row["text"] for row in distinct_rows(60)]
    variants = [text.replace("alpha", "alpha").rsplit(" ", 1)[0] + " zulu" for text in rows[:20]]  # one word changed
    index = NearDuplicateIndex(threshold=0.6, num_perm=128)
    signatures = index.hasher.signatures(rows + variants)
    for original, variant, position in zip(rows[:20], variants, range(20)):
        estimate = (signatures[position] == signatures[60 + position]).mean()
        assert abs(estimate - jaccard(original, variant)) < 0.15
    clusters = index.clusters_of(signatures)
    assert all(clusters[60 + position] == position for position in range(20)), "each variant joins its original"
    assert len(set(clusters[:60].tolist())) == 60, "distinct rows stay apart"
    bands, rows_per_band = lsh_bands(0.8, 128)
    assert bands * rows_per_band <= 128 and 1 - (1 - 0.95**rows_per_band) ** bands > 0.9


def test_curate_removes_duplicates_resolves_conflicts_and_loses_nothing(tmp_path) -> None:
    rows = distinct_rows(90)
    rows.append(dict(rows[0], text=rows[0]["text"].upper().replace(" ", "   ")))  # not exact: case differs
    rows.append(dict(rows[1], text="  " + rows[1]["text"].replace(" ", "\t") + "  "))  # exact after normalising
    rows.append(dict(rows[2], text=rows[2]["text"].rsplit(" ", 1)[0] + " zulu"))  # near duplicate, same label
    rows += [dict(rows[3], label="outage"), dict(rows[3], label=rows[3]["label"])]  # 2 of 3 agree: majority
    rows += [dict(rows[4], label="outage" if rows[4]["label"] != "outage" else "billing")]  # 1 vs 1: no majority
    source = write_jsonl(tmp_path / "raw.jsonl", rows)
    with source.open("a") as handle:
        handle.write('{"text": "broken row"\n')
    report = curate([source], tmp_path / "out")

    out = tmp_path / "out"
    splits = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "validation", "test")}
    rejects = read_jsonl(out / "rejects.jsonl")
    assert sum(len(split) for split in splits.values()) + len(rejects) == len(rows) + 1, "every row is kept or rejected"
    reasons = Counter(reject["stage"] for reject in rejects)
    assert reasons["parse"] == 1 and rejects[0]["source"].endswith(f"raw.jsonl:{len(rows) + 1}")
    assert rejects[0]["raw"] == '{"text": "broken row"', "an unparseable line is kept as it was read"
    assert reasons["exact_duplicate"] == 2, "the whitespace variant of row 1, the repeated row 3"
    assert reasons["near_duplicate"] == 2, "the upper-case row 0, the one-word variant of row 2"
    conflict_rejects = [reject for reject in rejects if reject["stage"] == "conflict"]
    assert {reject["row"]["text"] for reject in conflict_rejects} == {rows[3]["text"], rows[4]["text"]}
    assert len(conflict_rejects) == 3, "the minority answer of row 3 and both answers of row 4"
    assert len(report.conflicts) == 2
    kept_texts = [row["text"] for split in splits.values() for row in split]
    assert kept_texts.count(rows[3]["text"]) == 1 and rows[4]["text"] not in kept_texts
    assert report.stages["kept"] == len(kept_texts) and report.stages["read"] == len(rows) + 1
    for name in ("train", "validation", "test"):
        load_examples(out / f"{name}.jsonl")  # the outputs are valid niche input
    card = (out / "data_card.md").read_text()
    assert "## Rows per stage" in card and "## Conflicts (2)" in card
    assert json.loads((out / "data_card.json").read_text())["splits"] == report.splits


def test_conflict_policies(tmp_path) -> None:
    rows = distinct_rows(12)
    rows += [dict(rows[0], label="outage"), dict(rows[0])]  # billing x2 vs outage x1
    source = write_jsonl(tmp_path / "raw.jsonl", rows)

    def kept_answers(policy: str) -> list[str]:
        # Everything in train: a kept conflict's two rows could otherwise land on two sides of the split, where
        # the leakage check (not the policy) drops the held-out one.
        curate([source], tmp_path / policy, CurateSettings(conflicts=policy, split=(1, 0, 0)))
        rows_out = [
            row for name in ("train", "validation", "test") for row in read_jsonl(tmp_path / policy / f"{name}.jsonl")
        ]
        return sorted(row["label"] for row in rows_out if row["text"] == rows[0]["text"])

    assert kept_answers("majority") == [rows[0]["label"]]
    assert kept_answers("drop") == []
    assert kept_answers("keep") == sorted({rows[0]["label"], "outage"})
    with pytest.raises(ValidationError, match="conflicts"):
        CurateSettings(conflicts="vote")


def test_splits_are_stratified_seeded_and_leak_free(tmp_path) -> None:
    rows = distinct_rows(300)
    source = write_jsonl(tmp_path / "raw.jsonl", rows)
    first = curate([source], tmp_path / "a", CurateSettings(seed=3))
    again = curate([source], tmp_path / "b", CurateSettings(seed=3))
    assert (tmp_path / "a" / "test.jsonl").read_text() == (tmp_path / "b" / "test.jsonl").read_text()
    assert first.splits == again.splits == {"train": 210, "validation": 45, "test": 45}
    assert first.labels["test"] == {"billing": 15, "outage": 15, "security": 15}
    train = [row["text"] for row in read_jsonl(tmp_path / "a" / "train.jsonl")]
    for name in ("validation", "test"):
        for row in read_jsonl(tmp_path / "a" / f"{name}.jsonl"):
            assert max(jaccard(row["text"], text) for text in train) < 0.8


def test_leakage_check_rejects_held_out_rows_that_duplicate_training_rows(tmp_path) -> None:
    rows = distinct_rows(200)
    # With conflicts kept, an input with two answers is two rows, which the split may send to different sides.
    twins = [dict(row, label="billing") for row in rows[:40] if row["label"] != "billing"]
    source = write_jsonl(tmp_path / "raw.jsonl", rows + twins)
    report = curate([source], tmp_path / "out", CurateSettings(conflicts="keep"))
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    leaked = [reject for reject in rejects if reject["stage"] == "leakage"]
    train_texts = {row["text"] for row in read_jsonl(tmp_path / "out" / "train.jsonl")}
    assert leaked, "some of the 26 twin pairs must have been split across train and a held-out split"
    assert all(reject["row"]["text"] in train_texts for reject in leaked)
    for name in ("validation", "test"):
        assert not {row["text"] for row in read_jsonl(tmp_path / "out" / f"{name}.jsonl")} & train_texts
    assert report.stages["kept"] + report.rejects == len(rows) + len(twins)


def test_decontamination_drops_training_rows_sharing_an_ngram(tmp_path) -> None:
    rows = distinct_rows(60)
    benchmark = tmp_path / "benchmark.jsonl"
    contaminated = [row["text"] for row in rows[:10]]
    write_jsonl(benchmark, [{"question": f"context words here {text} and more"} for text in contaminated])
    source = write_jsonl(tmp_path / "raw.jsonl", rows)
    curate([source], tmp_path / "out", CurateSettings(decontaminate=(benchmark,), ngram=8))
    train = {row["text"] for row in read_jsonl(tmp_path / "out" / "train.jsonl")}
    assert not train & set(contaminated)
    rejects = [
        reject for reject in read_jsonl(tmp_path / "out" / "rejects.jsonl") if reject["stage"] == "decontaminate"
    ]
    assert rejects and all("8-gram" in reject["reason"] for reject in rejects)


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path) -> None:
    source = write_jsonl(tmp_path / "raw.jsonl", distinct_rows(10))
    with pytest.raises(DataError, match="missing.jsonl: decontamination benchmark file not found"):
        curate([source], tmp_path / "out", CurateSettings(decontaminate=(tmp_path / "missing.jsonl",)))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValidationError, match="split"):
        CurateSettings(split=(0.5, 0.5, 0.5))


def test_cli_curate(tmp_path) -> None:
    rows = distinct_rows(30) + [{"text": "write to ops@example.com", "label": "security"}]
    source = write_jsonl(tmp_path / "raw.jsonl", rows)
    result = CliRunner().invoke(app, ["curate", str(source), "--out", str(tmp_path / "out"), "--redact-pii"])
    assert result.exit_code == 0, result.output
    texts = [
        row["text"]
        for name in ("train", "validation", "test")
        for row in read_jsonl(tmp_path / "out" / f"{name}.jsonl")
    ]
    assert "write to [EMAIL]" in texts and "EMAIL" in result.output
    assert len(texts) == 31


def test_cli_curate_takes_the_curate_section_of_a_niche_yaml_and_its_flags_win(tmp_path) -> None:
    source = write_jsonl(tmp_path / "raw.jsonl", distinct_rows(40))
    (tmp_path / "niche.yaml").write_text("curate:\n  split: [0.5, 0.5, 0.0]\n  seed: 5\n")
    expected = {
        (): curate([source], tmp_path / "direct-a", CurateSettings(split=(0.5, 0.5, 0.0), seed=5)).splits,
        ("--split", "1,0,0"): curate([source], tmp_path / "direct-b", CurateSettings(split=(1, 0, 0), seed=5)).splits,
    }
    assert expected[()] != expected[("--split", "1,0,0")]
    for flags, splits in expected.items():
        out = tmp_path / f"out{len(flags)}"
        command = ["curate", str(source), "--out", str(out), "--config", str(tmp_path / "niche.yaml"), *flags]
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        assert {name: len(read_jsonl(out / f"{name}.jsonl")) for name in splits} == splits
        assert json.loads((out / "data_card.json").read_text())["settings"]["seed"] == "5"
