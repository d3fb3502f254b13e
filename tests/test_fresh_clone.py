"""A fresh clone has nothing beside it: no file under tests/ may read the workplace folder next to the repo."""

from __future__ import annotations

import re

from conftest import REPO

# Spelled in pieces so that this file does not match its own pattern.
SHARED = "sha" + "red"
OUTSIDE_REFERENCE = re.compile(
    rf"\.\./{SHARED}\b|\.\.\\{SHARED}\b|{SHARED}/(datasets|docs)\b|parents?\b[^\n]*[\"']{SHARED}[\"']"
)


def references_outside_the_repository(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if OUTSIDE_REFERENCE.search(line)]


def test_the_pattern_catches_every_spelling_of_the_workplace_folder() -> None:
    for spelling in (
        f'Path("../{SHARED}/datasets/wiki")',
        f'REPO.parent / "{SHARED}" / "datasets"',
        f"open('{SHARED}/docs/STYLE.md')",
    ):
        assert references_outside_the_repository(spelling), spelling
    assert not references_outside_the_repository('shared = following.split("\\n\\n")[0]')


def test_no_file_under_tests_refers_to_the_workplace_folder() -> None:
    offenders = {
        str(path.relative_to(REPO)): found
        for path in sorted((REPO / "tests").rglob("*"))
        if path.is_file() and path.suffix in {".py", ".json", ".jsonl", ".yaml", ".yml", ".txt", ".md", ".cfg"}
        for found in [references_outside_the_repository(path.read_text(errors="replace"))]
        if found
    }
    assert not offenders, f"tests must not read ../{SHARED} (a fresh clone has none): {offenders}"


def test_the_test_configuration_reads_nothing_outside_the_repository() -> None:
    for name in ("pyproject.toml", "Makefile", ".ci/run"):
        path = REPO / name
        if path.is_file():
            assert not references_outside_the_repository(path.read_text()), name
