"""The layers of src/niche, checked from its imports (docs/ARCHITECTURE.md draws them).

kernel (shared by all) <- stages (side by side, never importing each other) <- flows (compose stages) <- cli.
The kernel has two floors: the records (what data and specialists are, read and written without torch) below the
runtime (models, heads, decoding, loading a specialist to run it).
Every import counts, module-level and function-level alike; only imports under `if TYPE_CHECKING:` are left out,
since they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "niche"
MAX_MODULE_LINES = 600

KERNEL = {
    "niche",
    "niche.artifact",
    "niche.config",
    "niche.data",  # and every niche.data.* module
    "niche.decoding",
    "niche.embed",
    "niche.errors",
    "niche.families",
    "niche.gguf",
    "niche.hardware",
    "niche.head",
    "niche.io",
    "niche.metrics",
    "niche.models",
    "niche.probes",
    "niche.ray_runtime",
    "niche.specialist",
    "niche.tagger",
    "niche.teachers",
    "niche.tracking",
    "niche.vllm_compat",
}
# The kernel's lower floor: it imports nothing above itself and loads no torch, so that the catalog, the router and
# the CLI can read data and specialists without loading a model.
RECORDS_FLOOR = {
    "niche",
    "niche.errors",
    "niche.io",
    "niche.config",
    "niche.data",
    "niche.artifact",
    "niche.families",
}
NOT_IN_RECORDS = ("torch", "transformers", "peft", "safetensors")
STAGES = ("curate", "synth", "train", "eval", "rag", "export", "serve")
FLOWS = ("ladder", "pipeline", "watch", "distill", "demo", "plan", "studio")
# What the serving path must not load: a serve-only install has none of the training or tracking stack.
NOT_AT_SERVE_IMPORT = ("niche.train", "trl", "datasets", "mlflow")
SERVE_MODULES = (
    "niche.serve",
    "niche.serve.app",
    "niche.serve.base",
    "niche.serve.http",
    "niche.serve.llamacpp",
    "niche.serve.router",
    "niche.serve.torch_engine",
    "niche.serve.vllm",
)


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(ast.walk(node))
    return skipped


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported niche module, line, inside a function) for every import the module can run."""
    tree = ast.parse(path.read_text())
    skipped = type_checking_only(tree)
    in_function = {
        inner
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    found = []
    for node in ast.walk(tree):
        if node in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import submodule` imports the submodule; `from module import name` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            if target == "niche" or target.startswith("niche."):
                resolved = resolve(target)
                if resolved and resolved != name:
                    found.append((resolved, node.lineno, node in in_function))
    return found


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> tuple[str, str]:
    """(layer, part): the kernel, a stage or flow by name, or the CLI."""
    if module in KERNEL or module.startswith("niche.data."):
        return "kernel", "kernel"
    part = module.split(".")[1]
    for layer, parts in (("stage", STAGES), ("flow", FLOWS)):
        if part in parts:
            return layer, part
    if part == "cli":
        return "cli", "cli"
    raise AssertionError(f"{module} is in no layer: add it to the kernel, a stage or a flow in this test")


def in_records_floor(module: str) -> bool:
    return module in RECORDS_FLOOR or module.startswith("niche.data.")


def violation(source: str, target: str) -> str | None:
    (source_layer, source_part), (target_layer, target_part) = layer_of(source), layer_of(target)
    if target_layer == "cli" and source_layer != "cli":
        return "only the CLI imports the CLI"
    if source_layer == "kernel" and target_layer != "kernel":
        return f"the kernel imports only the kernel, not a {target_layer}"
    if in_records_floor(source) and not in_records_floor(target):
        return "the records floor (errors, io, config, data/, artifact) imports only itself, not the runtime kernel"
    if source_layer == "stage" and target_layer in ("stage", "flow") and target_part != source_part:
        return f"stages never import another stage or a flow ({source_part} -> {target_part})"
    return None


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    edges = {name: sorted({target for target, _, _ in imports}) for name, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_import_crosses_the_layers() -> None:
    problems = [
        f"{source} -> {target} (line {line}): {reason}"
        for source, imports in import_graph().items()
        for target, line, _ in imports
        if (reason := violation(source, target))
    ]
    assert problems == [], "\n".join(problems)


def test_every_function_level_import_of_niche_says_why() -> None:
    """Imports inside functions hide the module's real dependencies; outside the CLI (whose commands import their
    library when they run, so that `niche --help` loads none of it) each one carries a reason: a comment on its
    line or the line above."""
    modules = module_files()
    problems = []
    for name, path in modules.items():
        if layer_of(name)[0] == "cli":
            continue
        lines = path.read_text().splitlines()
        for _target, line, inside_function in imports_of(name, path, modules):
            said = "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")
            if inside_function and not said:
                problems.append(f"{path.relative_to(SOURCE)}:{line}: {lines[line - 1].strip()}")
    assert problems == [], "function-level imports without a reason:\n" + "\n".join(sorted(set(problems)))


def test_no_module_is_over_the_size_bound() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    assert {name: size for name, size in sizes.items() if size > MAX_MODULE_LINES} == {}


def test_serving_loads_none_of_the_training_or_tracking_stack() -> None:
    probe = (
        f"import sys\nfor name in {SERVE_MODULES!r}:\n    __import__(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {{'trl', 'datasets', 'mlflow'}} "
        "or m == 'niche.train' or m.startswith('niche.train.')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_records_floor_loads_no_torch() -> None:
    records = sorted(name for name in module_files() if in_records_floor(name))
    assert "niche.artifact" in records and "niche.data.prepare" in records
    probe = (
        f"import sys\nfor name in {records!r}:\n    __import__(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {NOT_IN_RECORDS!r}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("niche.serve.app", "niche.train.sft", "stages never import another stage"),
        ("niche.export", "niche.ladder.run", "stages never import another stage or a flow"),
        ("niche.specialist", "niche.serve.base", "the kernel imports only the kernel"),
        ("niche.pipeline", "niche.cli.app", "only the CLI imports the CLI"),
        ("niche.pipeline", "niche.train", None),
        ("niche.serve.torch_engine", "niche.serve.base", None),
        ("niche.data.prepare", "niche.specialist", "the records floor"),
        ("niche.artifact", "niche.models", "the records floor"),
        ("niche.artifact", "niche.data.prepare", None),
        ("niche.specialist", "niche.artifact", None),
    ],
)
def test_the_layer_rules_catch_what_they_name(source: str, target: str, expected: str | None) -> None:
    found = violation(source, target)
    assert (found is None) if expected is None else (found is not None and found.startswith(expected))


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "niche"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from niche.b import x\n")
    (package / "b.py").write_text("def x():\n    from niche.c import y  # late\n")
    (package / "c.py").write_text("from niche import a\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from niche.a import z\n")
    modules = module_files(package)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == [["niche.a", "niche.b", "niche.c"]]
    assert graph["niche.d"] == []
