"""The public data the benchmarks read, written out as niche row files: CLINC150 (from ../shared/datasets, never
copied into the repository) and the project's own example domain."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLINC = REPO.parent / "shared" / "datasets" / "clinc150"
EXAMPLES = REPO / "examples"


def clinc150() -> dict:
    """CLINC150's data_full.json; a clear exit when the shared datasets are not beside the checkout."""
    path = CLINC / "data_full.json"
    if not path.is_file():
        sys.exit(
            f"{path} not found: this benchmark reads CLINC150 from the workplace's shared datasets "
            "(../shared/datasets/clinc150/ beside the checkout). Put CLINC150's data_full.json and domains.json "
            "(Larson et al. 2019, CC BY 3.0) there to run it."
        )
    return json.loads(path.read_text())


def clinc150_domain(name: str) -> list[str]:
    return json.loads((CLINC / "domains.json").read_text())[name]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    """[text, label] pairs as label rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    return path


def per_label(rows: list[list[str]], count: int, seed: int = 0) -> list[list[str]]:
    """At most `count` rows of every label, after a seeded shuffle."""
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    taken: dict[str, int] = {}
    kept = []
    for text, label in shuffled:
        if taken.get(label, 0) < count:
            taken[label] = taken.get(label, 0) + 1
            kept.append([text, label])
    return kept


def stratified_rows(rows: list[list[str]], count: int) -> list[list[str]]:
    from niche.data.sampling import stratified_sample

    return [rows[position] for position in stratified_sample([label for _, label in rows], count, seed=0)]


def dataset_files(name: str, directory: Path) -> tuple[Path, Path]:
    """(train, test) files for a data set name: clinc150, clinc150-banking, cloudsec, cloudsec-extract."""
    if name.startswith("cloudsec"):
        return EXAMPLES / name / "train.jsonl", EXAMPLES / name / "test.jsonl"
    data = clinc150()
    train, test = data["train"], data["test"]
    if name != "clinc150":
        labels = set(clinc150_domain(name.removeprefix("clinc150-")))
        train = [row for row in train if row[1] in labels]
        test = [row for row in test if row[1] in labels]
    return write_rows(directory / name / "train.jsonl", train), write_rows(directory / name / "test.jsonl", test)


SLURP = REPO.parent / "shared" / "datasets" / "slurp"


def slurp(split: str) -> list[dict]:
    """SLURP's rows of one split (train or test): text, intent, slots; a clear exit when the shared datasets are
    not beside the checkout."""
    path = SLURP / f"{split}.jsonl"
    if not path.is_file():
        sys.exit(
            f"{path} not found: this benchmark reads SLURP from the workplace's shared datasets "
            "(../shared/datasets/slurp/ beside the checkout): its train.jsonl and test.jsonl (Bastianelli et al. "
            "2020, CC BY 4.0)."
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def extraction_row(row: dict) -> dict:
    """A SLURP row as a niche prompt/completion row: the request, and {"intent", "slots"} as written in SLURP."""
    return {"prompt": row["text"], "completion": json.dumps({"intent": row["intent"], "slots": row["slots"]})}


def write_extraction_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(extraction_row(row)) + "\n" for row in rows))
    return path


def per_intent(rows: list[dict], count: int, seed: int = 0) -> list[dict]:
    """At most `count` rows of every intent, after a seeded shuffle."""
    picked = per_label([[json.dumps(row), row["intent"]] for row in rows], count, seed)
    return [json.loads(text) for text, _ in picked]
