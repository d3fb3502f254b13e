"""niche curate --engine ray: on a real 2-CPU Ray cluster on loopback, the same decisions as the local engine,
row for row, on a few thousand rows with every kind of trouble curate handles."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from niche.cli import app
from niche.curate import CurateSettings, curate
from niche.errors import DataError

WORDS = [
    "invoice",
    "refund",
    "payment",
    "dashboard",
    "outage",
    "timeout",
    "login",
    "password",
    "phishing",
    "account",
    "billing",
    "server",
    "api",
    "region",
    "cluster",
    "latency",
    "error",
    "quota",
    "upgrade",
    "plan",
    "seat",
    "license",
    "export",
    "report",
    "alert",
    "backup",
    "restore",
]
LABELS = ["billing", "outage", "security", "account"]


def troubled_rows(count: int, seed: int = 0) -> list[dict]:
    """Label rows with exact and near duplicates, conflicting answers, wordless and empty rows, PII and
    over-long rows, in a shuffled order."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + f" ticket {index}"
        rows.append({"text": text, "label": rng.choice(LABELS)})
    for row in rng.sample(rows, count // 10):
        rows.append(dict(row))  # exact duplicate
    for row in rng.sample(rows, count // 10):
        words = row["text"].split()
        words[rng.randrange(len(words))] = rng.choice(WORDS)
        rows.append({"text": " ".join(words), "label": row["label"]})  # near duplicate (often)
    for row in rng.sample(rows, count // 20):
        rows.append({"text": row["text"], "label": rng.choice(LABELS)})  # a conflict, or one more vote
    rows += [{"text": "?!", "label": "billing"}, {"text": "?!", "label": "outage"}, {"text": "...", "label": "billing"}]
    rows += [{"text": "  ", "label": "billing"}, {"text": "x" * 30_000, "label": "outage"}]
    rows += [{"text": f"mail me at user{n}@example.com about invoice {n}", "label": "billing"} for n in range(20)]
    rng.shuffle(rows)
    return rows


def chat_rows(count: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(10)) + f" question {index % (count - 10)}"
        answer = " ".join(rng.choice(WORDS) for _ in range(8))
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("ray-curate-inputs")
    labels = write_jsonl(directory / "tickets.jsonl", troubled_rows(2400))
    chats = write_jsonl(directory / "chats.jsonl", chat_rows(400))
    with labels.open("a") as handle:
        handle.write("{not json\n")  # a parse error, rejected with its file:line
    return [labels, chats]


def outputs(directory: Path) -> dict[str, object]:
    card = json.loads((directory / "data_card.json").read_text())
    card.pop("settings")
    return {
        **{name: (directory / f"{name}.jsonl").read_text().splitlines() for name in ("train", "validation", "test")},
        "rejects": sorted((directory / "rejects.jsonl").read_text().splitlines()),
        "card": card,
    }


def test_ray_engine_decides_row_for_row_as_the_local_engine(ray_cluster, inputs, tmp_path) -> None:
    benchmark = tmp_path / "benchmark.jsonl"
    sample = json.loads(inputs[0].read_text().splitlines()[7])["text"]
    benchmark.write_text(json.dumps({"question": sample}) + "\n")
    settings = CurateSettings(redact_pii=True, decontaminate=[benchmark], ngram=5, split=(0.6, 0.2, 0.2), seed=3)
    local = curate(inputs, tmp_path / "local", settings)
    on_ray = curate(inputs, tmp_path / "ray", settings.model_copy(update={"engine": "ray", "ray_address": ray_cluster}))

    expected, found = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    for name in ("train", "validation", "test", "rejects"):
        assert found[name] == expected[name], f"{name} differs between the engines"
    assert found["card"] == expected["card"]
    assert on_ray.stages == local.stages
    # The data exercised every stage, so the comparison means something.
    stages = {json.loads(line)["stage"] for line in expected["rejects"]}
    assert stages == {"parse", "normalize", "exact_duplicate", "near_duplicate", "conflict", "decontaminate"}
    assert local.pii_redacted["EMAIL"] == 20 and local.conflicts and local.near_duplicates


def test_ray_engine_from_the_command_line_and_a_bad_file_named(ray_cluster, inputs, tmp_path) -> None:
    out = tmp_path / "out"
    # Conflicts kept: an input's two answers are two rows, which the split may send to two sides, where the
    # leakage check must drop the held-out one on both engines.
    flags = ["--conflicts", "keep", "--engine", "ray", "--ray-address", ray_cluster]
    result = CliRunner().invoke(app, ["curate", *map(str, inputs), "--out", str(out), *flags])
    assert result.exit_code == 0, result.output
    expected = outputs_of_local(inputs, tmp_path / "local", CurateSettings(conflicts="keep"))
    assert outputs(out) == expected
    assert any(json.loads(line)["stage"] == "leakage" for line in expected["rejects"])
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match="missing.jsonl"):
        curate([missing], tmp_path / "never", CurateSettings(engine="ray", ray_address=ray_cluster))
    assert not (tmp_path / "never").exists()


def outputs_of_local(inputs: list[Path], directory: Path, settings: CurateSettings) -> dict[str, object]:
    curate(inputs, directory, settings)
    return outputs(directory)
