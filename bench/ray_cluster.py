"""A Ray cluster of one head on loopback, started and stopped by whoever needs it (bench/scale.py, the tests).

Its temp dir is its own, and stopping it stops exactly its processes and their descendants: `ray stop` would
stop every Ray of the user. Token authentication is off: `ray start` turns it on whenever it finds a token, and
any local `ray.init()` leaves one in ~/.ray, after which clients are refused; a loopback cluster needs none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def ray_executable() -> str:
    beside_python = Path(sys.executable).parent / "ray"
    return str(beside_python) if beside_python.exists() else shutil.which("ray") or "ray"


@contextlib.contextmanager
def local_ray_cluster(cpus: int, temp_dir: Path) -> Iterator[str]:
    """Yields the address of a fresh head with `cpus` CPUs (its workers), stopped on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp_dir.mkdir(parents=True, exist_ok=True)
    command = [
        ray_executable(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={cpus}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        stop_processes_mentioning(str(temp_dir))


def stop_processes_mentioning(text: str) -> None:
    """Stop the processes whose command line names `text`, and their descendants."""
    for stop_signal, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in _processes_mentioning(text):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stop_signal)
        deadline = time.monotonic() + grace
        while _processes_mentioning(text) and time.monotonic() < deadline:
            time.sleep(0.1)


def _processes_mentioning(text: str) -> set[int]:
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                table[int(entry.name)] = (parent, command)
    chosen = {pid for pid, (_, command) in table.items() if text in command} - {os.getpid()}
    while True:
        children = {pid for pid, (parent, _) in table.items() if parent in chosen} - chosen - {os.getpid()}
        if not children:
            return chosen
        chosen |= children
