"""bench/harness.py, the rules every results file follows, and bench/tables.py, which renders the published tables
from those files: a dirty tree is refused, configurations interleave, a comparison of different work is invalid,
and a table that disagrees with its file is caught."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import harness  # noqa: E402
import tables  # noqa: E402


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def clean_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "src.py").write_text("x = 1\n")
    (repo / "bench" / "results" / "speed.json").write_text("{}\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    return repo


def test_provenance_names_the_commit_of_a_clean_tree(clean_repo) -> None:
    record = harness.provenance(clean_repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clean_repo, capture_output=True, text=True).stdout
    assert record["commit"] == head.strip()
    assert record["uncommitted_changes"] == []
    assert len(record["load_average_before"]) == 3
    assert record["cpu"] and record["cores"] >= 1


def test_provenance_refuses_a_modified_or_untracked_file(clean_repo) -> None:
    (clean_repo / "src.py").write_text("x = 2\n")
    with pytest.raises(harness.DirtyTree, match="src.py"):
        harness.provenance(clean_repo)
    git(clean_repo, "checkout", "src.py")
    (clean_repo / "new_module.py").write_text("")
    with pytest.raises(harness.DirtyTree, match="new_module.py"):
        harness.provenance(clean_repo)
    # A quick run may say it ran on uncommitted code, and the record says which.
    assert harness.provenance(clean_repo, allow_dirty=True)["uncommitted_changes"] == ["new_module.py"]


def test_results_files_being_rewritten_do_not_make_the_tree_dirty(clean_repo) -> None:
    (clean_repo / "bench" / "results" / "speed.json").write_text('{"new": 1}\n')
    (clean_repo / "bench" / "results" / "other.json").write_text("{}\n")
    assert harness.provenance(clean_repo)["uncommitted_changes"] == []


def test_a_report_refuses_a_dirty_tree_before_any_work_and_writes_atomically(clean_repo) -> None:
    (clean_repo / "src.py").write_text("x = 3\n")
    published = argparse.Namespace(quick=False, repeats=3)
    with pytest.raises(SystemExit, match="uncommitted changes"):
        harness.Report("speed", published, repo=clean_repo)
    git(clean_repo, "checkout", "src.py")
    report = harness.Report("speed", published, repo=clean_repo)
    path = report.write({"ratio": {"value": 2.0}})
    record = json.loads(path.read_text())
    assert path == clean_repo / "bench" / "results" / "speed.json"
    assert record["benchmark"] == "speed" and record["repeats"] == 3 and record["ratio"] == {"value": 2.0}
    assert record["commit"] == record["provenance"]["commit"] and record["clean"] is True
    assert len(record["provenance"]["load_average_after"]) == 3
    assert not list(path.parent.glob("*.tmp"))


def test_a_published_report_needs_three_repetitions(clean_repo) -> None:
    with pytest.raises(SystemExit, match="at least 3"):
        harness.Report("speed", argparse.Namespace(quick=False, repeats=2), repo=clean_repo)
    quick = harness.Report("speed", argparse.Namespace(quick=True, repeats=3), repo=clean_repo)
    assert quick.repeats == 1 and quick.path.parent == harness.QUICK_DIR


def test_repetitions_are_interleaved_with_a_rotating_order_and_warmup_dropped() -> None:
    calls: list[tuple[str, int]] = []

    def configuration(name: str):
        def run(round_: int) -> float:
            calls.append((name, round_))
            return float(round_)

        return run

    measured, schedule = harness.interleave({name: configuration(name) for name in "abc"}, repeats=3, warmup=1)
    # Each round runs every configuration once before the next round starts; the first of a round rotates.
    assert [name for name, _ in calls] == list("abcbcacababc")
    assert [round_ for _, round_ in calls] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    # The warm-up round (round 0) is run but not measured.
    assert measured == {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0], "c": [1.0, 2.0, 3.0]}
    assert schedule.as_dict()["order"][:4] == ["0:a", "0:b", "0:c", "1:b"]


def test_a_run_cut_off_resumes_from_its_journal_and_only_on_the_same_commit_and_arguments(clean_repo, tmp_path) -> None:
    calls: list[tuple[str, int]] = []

    class CutOff(Exception):
        pass

    def configuration(name: str, stop_at: int | None = None):
        def run(round_: int) -> dict:
            if len(calls) == stop_at:
                raise CutOff
            calls.append((name, round_))
            return {"name": name, "pair": (round_, 1)}

        return run

    arguments = argparse.Namespace(quick=False, repeats=3, budget="5m")
    first = harness.Report("accuracy", arguments, repo=clean_repo)
    with pytest.raises(CutOff):
        harness.interleave({n: configuration(n, stop_at=4) for n in "ab"}, repeats=3, journal=first.journal(tmp_path))
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]

    calls.clear()
    second = harness.Report("accuracy", arguments, repo=clean_repo)
    measured, schedule = harness.interleave(
        {n: configuration(n) for n in "ab"}, repeats=3, journal=second.journal(tmp_path)
    )
    assert calls == [("a", 2), ("b", 2)]  # only what the first run had not finished
    assert schedule.as_dict()["resumed_from_journal"] == ["0:a", "0:b", "1:b", "1:a"]
    # Resumed and fresh results look alike (JSON types: the tuple is a list either way).
    assert measured["a"] == [{"name": "a", "pair": [round_, 1]} for round_ in range(3)]
    second.write({"done": True})
    assert not (tmp_path / "accuracy.jsonl").exists()  # a written results file ends its journal

    calls.clear()
    third = harness.Report("accuracy", arguments, repo=clean_repo)
    with pytest.raises(CutOff):
        harness.interleave({n: configuration(n, stop_at=1) for n in "ab"}, repeats=3, journal=third.journal(tmp_path))
    other_arguments = argparse.Namespace(quick=False, repeats=3, budget="10m")
    fourth = harness.Report("accuracy", other_arguments, repo=clean_repo)
    calls.clear()
    harness.interleave({n: configuration(n) for n in "ab"}, repeats=3, journal=fourth.journal(tmp_path))
    assert len(calls) == 6  # other arguments: nothing is taken from the journal
    (clean_repo / "src.py").write_text("x = 4\n")
    git(clean_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "change")
    fifth = harness.Report("accuracy", other_arguments, repo=clean_repo)
    assert fifth.journal(tmp_path).done == {}  # another commit: nothing either
    assert harness.Report("accuracy", argparse.Namespace(quick=True, repeats=3), repo=clean_repo).journal() is None


def test_summaries_keep_every_run_beside_the_median_and_range() -> None:
    assert harness.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}
    with pytest.raises(ValueError):
        harness.summarize([])


def test_a_comparison_with_mismatched_answers_is_invalid() -> None:
    check = harness.same_answers(["a", "b", "c", "d"], ["a", "b", "", ""], tolerance=0.25)
    assert not check.valid and check.agreement == 0.5
    compared = harness.ratio([4.0, 4.2, 3.8], [2.0, 2.0, 2.0], [check])
    assert compared["valid"] is False and compared["value"] is None
    assert "2/4 answers agree" in compared["invalid_because"][0]
    assert compared["median_ratio"] == pytest.approx(2.0)


def test_a_comparison_of_the_same_work_keeps_its_ratio_and_range() -> None:
    answers = harness.same_answers(["a", "b", "c", "d"], ["a", "b", "c", "x"], tolerance=0.25)
    tokens = harness.same_count(1000, 1000)
    compared = harness.ratio([4.0, 4.4, 3.6], [2.0, 2.0, 2.0], [answers, tokens])
    assert compared["valid"] and compared["value"] == pytest.approx(2.0)
    assert (compared["min"], compared["max"]) == (pytest.approx(1.8), pytest.approx(2.2))
    assert not harness.same_count(1000, 900, tolerance=0.05).valid
    assert not harness.same_answers(["a"], ["a", "b"]).valid


def test_format_range_prints_invalid_comparisons_as_invalid() -> None:
    assert (
        harness.format_range({"value": 2.0, "min": 1.8, "max": 2.2, "valid": True}, suffix="x") == "2.00x (1.80-2.20)"
    )
    assert harness.format_range({"value": None, "valid": False, "min": 1.0, "max": 2.0}) == "invalid"


def test_a_marked_table_that_disagrees_with_its_results_file_is_found(tmp_path, monkeypatch) -> None:
    (tmp_path / "speed.json").write_text(json.dumps({"benchmark": "speed", "ratio": 2.5}))

    class Speed:
        @staticmethod
        def tables(results: dict) -> dict[str, str]:
            return {"main": f"| ratio |\n|---|\n| {results['ratio']}x |"}

    monkeypatch.setattr(tables, "benchmark_module", lambda script: Speed)
    document = "text\n<!-- bench-table: speed.json main -->\n| ratio |\n|---|\n| 2.4x |\n<!-- /bench-table -->\nend\n"
    updated, changed = tables.regenerate(document, tmp_path)
    assert changed == ["speed.json main"]
    assert "| 2.5x |" in updated and updated.endswith("<!-- /bench-table -->\nend\n")
    assert tables.regenerate(updated, tmp_path)[1] == []


def test_every_published_table_agrees_with_its_results_file() -> None:
    disagreeing = []
    for document in tables.DOCUMENTS:
        disagreeing += [f"{document.name}: {name}" for name in tables.regenerate(document.read_text())[1]]
    assert not disagreeing, f"run python bench/tables.py to regenerate: {disagreeing}"


def makefile_list(name: str) -> list[str]:
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith(f"{name} :="):
            return line.partition(":=")[2].split()
    raise AssertionError(f"the Makefile has no {name} list")


@pytest.mark.parametrize("script", makefile_list("BENCHMARKS") + makefile_list("DESIGN_SEARCHES"))
def test_every_benchmark_goes_through_the_harness(script: str) -> None:
    """Each script `make bench` runs renders its own tables, takes --quick and --repeats, and writes through a
    harness Report (so it refuses a dirty tree)."""
    module = tables.benchmark_module(script)
    assert callable(getattr(module, "tables", None)), f"bench/{script}.py has no tables(results)"
    source = (REPO / "bench" / f"{script}.py").read_text()
    assert f'Report("{script}"' in source, f"bench/{script}.py writes no harness Report"
    usage = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{script}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert "--quick" in usage.stdout
