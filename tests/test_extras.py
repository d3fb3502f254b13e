"""niche's optional extras (pyproject.toml): every stage's own libraries are an extra, `niche serve` runs on the core
and the `serve` extra alone, and a command missing its extra says which one to install."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

from conftest import REPO, free_port, wait_until_healthy


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = {
        name: {requirement_name(item) for item in items if not item.startswith("niche[")}
        for name, items in project["optional-dependencies"].items()
    }
    return {requirement_name(item) for item in project["dependencies"]}, extras


def installed_closure(names: set[str]) -> set[str]:
    """The distributions `names` bring with them, by their installed metadata (their own extras left out)."""
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending += [requirement_name(item) for item in requirements if "extra ==" not in item]
    return seen


def not_in_a_serve_install() -> set[str]:
    """Distributions an install of the core and the serve extra would not have (installed here for the rest)."""
    core, extras = declared()
    everything = installed_closure(core.union(*extras.values()) - extras["dev"] - extras["bench"])
    return everything - installed_closure(core | extras["serve"])


def site_without(distributions: set[str], view: Path) -> Path:
    """A site-packages directory holding links to everything installed here except `distributions` (their
    modules and metadata): what a fresh install without them looks like, to a Python started with -S."""
    site = Path(importlib.metadata.distribution("pydantic").locate_file(""))

    def top_level(distribution: importlib.metadata.Distribution) -> set[str]:
        return {file.parts[0] for file in distribution.files or [] if not file.parts[0].startswith("..")}

    installed = {
        distribution.metadata["Name"].lower().replace("_", "-"): distribution
        for distribution in importlib.metadata.distributions()
    }
    left_out = set().union(*(top_level(installed[name]) for name in distributions if name in installed))
    # A namespace directory (google/, opentelemetry/) stays when a distribution that is kept has files in it too.
    for name, distribution in installed.items():
        if name not in distributions:
            left_out -= top_level(distribution)
    view.mkdir()
    for entry in site.iterdir():
        if entry.name not in left_out and not entry.name.endswith(".pth"):
            (view / entry.name).symlink_to(entry)
    return view


def niche_without(distributions: set[str], view: Path, *arguments: str, **options) -> subprocess.Popen:
    """`niche ARGUMENTS` in a Python that sees none of `distributions` (no site-packages but the view)."""
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(site_without(distributions, view))])
    }
    return subprocess.Popen(
        [sys.executable, "-S", "-m", "niche.cli", *arguments], env=environment, text=True, **options
    )


def test_the_extras_split_the_stack_and_all_brings_every_one() -> None:
    core, extras = declared()
    assert {"fastapi", "uvicorn"} <= extras["serve"] and {"trl", "datasets", "accelerate"} <= extras["train"]
    assert {"mlflow"} <= extras["track"] and {"apsw", "sqlite-vec"} <= extras["rag"]
    assert not core & {"trl", "datasets", "mlflow", "fastapi", "apsw", "matplotlib", "scikit-learn", "openai"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["all"] == ["niche[serve,train,rag,track,edge,scale]"]
    assert {"ray"} <= extras["scale"]
    assert '".[all,dev,bench]"' in (REPO / "Makefile").read_text(), "make install installs every extra"


def http_json(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def test_serve_runs_on_the_core_and_the_serve_extra_alone(tiny_config, tmp_path) -> None:
    from niche.train import train

    missing = not_in_a_serve_install()
    assert {"trl", "datasets", "mlflow", "apsw", "matplotlib", "openai"} <= missing, sorted(missing)
    config = tiny_config()
    train(config, show_progress=False)
    port = free_port()
    server = niche_without(
        missing,
        tmp_path / "site",
        *["serve", str(config.output_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, 120, f"niche serve without {sorted(missing)}")
        status, models = http_json("GET", f"{url}/v1/models")
        assert status == 200 and {"toy", "base", "auto"} <= {model["id"] for model in models["data"]}
        status, answer = http_json(
            "POST",
            f"{url}/v1/chat/completions",
            {
                "model": "auto",
                "messages": [{"role": "user", "content": "ticket 3: card charged twice"}],
                "max_tokens": 4,
            },
        )
        assert status == 200 and answer["choices"][0]["message"]["content"] is not None
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-3000:]


def test_a_command_missing_its_extra_names_the_extra(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "a", "label": "x"}) + "\n" + json.dumps({"text": "b", "label": "y"}) + "\n")
    command = niche_without(
        {"scipy"}, tmp_path / "site", "curate", str(rows), "--out", str(tmp_path / "out"), stderr=subprocess.PIPE
    )
    _, errors = command.communicate(timeout=300)
    assert command.returncode == 2, errors
    assert "needs niche's `train` extra (scipy not installed): pip install 'niche[train]'" in errors
    assert not (tmp_path / "out").exists()
    on_ray = niche_without(
        {"ray"},
        tmp_path / "site-ray",
        "curate",
        str(rows),
        "--out",
        str(tmp_path / "out"),
        "--engine",
        "ray",
        stderr=subprocess.PIPE,
    )
    _, errors = on_ray.communicate(timeout=300)
    assert on_ray.returncode == 2, errors
    assert "needs niche's `scale` extra (ray not installed): pip install 'niche[scale]'" in errors
    assert not (tmp_path / "out").exists()
