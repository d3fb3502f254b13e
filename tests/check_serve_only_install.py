"""`niche serve` from a fresh virtual environment holding only niche's core and its `serve` extra.

Not collected with the suite (its name is not test_*): `make serve-only-check` builds that environment and runs
this file, and `make test` runs that target after the suite. The environment's path comes in
NICHE_SERVE_ONLY_VENV; without it this check fails rather than passing vacuously.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

from conftest import free_port, wait_until_healthy

# peft brings accelerate and sentence-transformers brings scikit-learn, so those two are in a serve install too.
TRAINING_AND_TRACKING = ("trl", "datasets", "mlflow", "apsw", "matplotlib", "openai", "watchdog", "pypdf")


def serve_only_venv() -> Path:
    value = os.environ.get("NICHE_SERVE_ONLY_VENV")
    assert value, "NICHE_SERVE_ONLY_VENV is not set: run `make serve-only-check`, which builds the environment"
    venv = Path(value).resolve()
    assert (venv / "bin" / "niche").is_file(), f"{venv}: no niche installed (run `make serve-only-check`)"
    return venv


def test_a_serve_only_install_lacks_the_training_stack_and_serves(tiny_config, tmp_path) -> None:
    from niche.train import train  # trained by the full install; served by the serve-only one

    venv = serve_only_venv()
    probe = "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in %r}))"
    present = json.loads(
        subprocess.run(
            [venv / "bin" / "python", "-c", probe % (TRAINING_AND_TRACKING,)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert not any(present.values()), f"the serve-only install has {[m for m, found in present.items() if found]}"

    config = tiny_config()
    train(config, show_progress=False)
    port = free_port()
    server = subprocess.Popen(
        [venv / "bin" / "niche", "serve", str(config.output_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, 180, "niche serve from the serve-only install")
        with urllib.request.urlopen(f"{url}/v1/models", timeout=60) as response:
            assert {"toy", "base", "auto"} <= {model["id"] for model in json.loads(response.read())["data"]}
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": "ticket 3: card charged twice"}],
            "max_tokens": 4,
        }
        request = urllib.request.Request(
            f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["message"]["content"] is not None
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert "Traceback" not in output, output[-3000:]
