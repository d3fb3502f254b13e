"""The benchmark tables in bench/README.md and README.md, generated from bench/results/*.json.

A generated table sits between two markers naming its results file and the table:

    <!-- bench-table: train_speed.json runs -->
    | ... |
    <!-- /bench-table -->

The results file's benchmark script (bench/<script>.py, the `benchmark` field of the file) renders it with its
`tables(results) -> {name: markdown}` function. `python bench/tables.py` rewrites every marked table; `--check`
only reports the tables that disagree with their files (a test runs it).

    python bench/tables.py [--check] [files ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS_DIR = BENCH / "results"
DOCUMENTS = (BENCH / "README.md", REPO / "README.md")
MARKED = re.compile(
    r"(?P<open><!-- bench-table: (?P<file>[\w.-]+\.json|\*) (?P<table>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /bench-table -->)",
    re.DOTALL,
)


def benchmark_module(script: str):
    """bench/<script>.py, imported by path (bench/ is not a package)."""
    path = BENCH / f"{script}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark script {path} to render its tables")
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{script}", path)
        module = importlib.util.module_from_spec(spec)
        # Dataclasses look their module up in sys.modules while the class is built.
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def provenance_index(results_dir: Path = RESULTS_DIR) -> str:
    """Every results file: which commit wrote it, when, how many repetitions, and whether through the harness."""
    lines = ["| results file | written | commit | repetitions | through the harness |", "|---|---|---|---|---|"]
    for path in sorted(results_dir.glob("*.json")):
        results = json.loads(path.read_text())
        provenance = results.get("provenance")
        if provenance:
            written = provenance.get("finished", provenance["started"])[:10]
            lines.append(f"| `{path.name}` | {written} | {provenance['commit'][:7]} | {results.get('repeats')} | yes |")
        else:
            code = results.get("code") or {}
            written = (code.get("written") or results.get("measured_at") or "")[:10] or "not recorded"
            lines.append(
                f"| `{path.name}` | {written} | {code.get('commit', 'not recorded')} | 1 | no (older format) |"
            )
    return "\n".join(lines) + "\n"


def render(results_file: str, table: str, results_dir: Path = RESULTS_DIR) -> str:
    """The markdown of one table of one results file (`*`: the index of all of them), ending with a newline."""
    if results_file == "*":
        if table != "provenance":
            raise KeyError(f"the results index renders the table 'provenance', not {table!r}")
        return provenance_index(results_dir)
    path = results_dir / results_file
    results = json.loads(path.read_text())
    script = results.get("benchmark")
    if not script:
        raise ValueError(f"{path}: no 'benchmark' field; it was not written through bench/harness.py")
    tables = benchmark_module(script).tables(results)
    if table not in tables:
        raise KeyError(f"{path}: bench/{script}.py renders tables {sorted(tables)}, not {table!r}")
    return tables[table].rstrip("\n") + "\n"


def regenerate(text: str, results_dir: Path = RESULTS_DIR) -> tuple[str, list[str]]:
    """The document with every marked table rendered again, and the names of those that changed."""
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        body = render(match["file"], match["table"], results_dir)
        if body != match["body"]:
            changed.append(f"{match['file']} {match['table']}")
        return match["open"] + body + match["close"]

    return MARKED.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="report tables that disagree; change nothing")
    parser.add_argument("documents", nargs="*", type=Path, default=list(DOCUMENTS))
    args = parser.parse_args(argv)
    disagreeing = []
    for document in args.documents:
        text = document.read_text()
        updated, changed = regenerate(text)
        disagreeing += [f"{document}: {name}" for name in changed]
        if changed and not args.check:
            temporary = document.with_suffix(document.suffix + ".tmp")
            temporary.write_text(updated)
            temporary.replace(document)
    verb = "disagree with their results files" if args.check else "regenerated"
    for line in disagreeing:
        print(f"{verb}: {line}")
    return 1 if args.check and disagreeing else 0


if __name__ == "__main__":
    raise SystemExit(main())
