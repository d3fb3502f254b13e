"""Training jobs started from the studio: recorded in SQLite, run one at a time, each in its own worker process.

A job's whole life is in its row (state, progress, loss curve, error), so the page can be reloaded, or opened in
another tab, at any time. The worker (`niche.studio.worker`) trains and writes the specialist the way
`niche train` does (staged, then renamed into place whole) and reports its outcome; cancelling sends it SIGTERM,
which it turns into an exception so the staging directory is removed. When the worker is gone the runner removes
what the Trainer kept for a resume (the checkpoint directory) and any staging left by a worker that had to be
killed, and only then records the final state. A cancelled or crashed job never leaves a half-written
specialist.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("niche.studio")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
# How long a cancelled worker has to clean up after SIGTERM before it is killed.
CANCEL_GRACE_S = 20.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    config_path TEXT NOT NULL,
    log_path TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress TEXT NOT NULL DEFAULT '{}',
    curve TEXT NOT NULL DEFAULT '[]',
    outcome TEXT,
    error TEXT,
    specialist TEXT
)
"""


@dataclass
class Job:
    id: int
    name: str
    state: str
    config_path: str
    log_path: str
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    cancel_requested: bool
    progress: dict[str, Any]
    curve: list[dict[str, Any]]
    outcome: str | None  # what the worker reported; `state` becomes final only once the runner has cleaned up
    error: str | None
    specialist: str | None

    def to_json(self) -> dict[str, Any]:
        payload = self.__dict__.copy()
        payload["config"] = (
            Path(self.config_path).read_text(encoding="utf-8") if Path(self.config_path).is_file() else ""
        )
        return payload


class JobStore:
    """The jobs table in `path`, opened per call: the server's threads and the worker processes share it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def add(self, name: str, config_path: Path, log_path: Path) -> Job:
        with self._connect() as connection:
            cursor = connection.execute(
                "INSERT INTO jobs (name, state, config_path, log_path, created) VALUES (?, 'queued', ?, ?, ?)",
                (name, str(config_path), str(log_path), time.time()),
            )
            job_id = cursor.lastrowid
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _job(row)

    def all(self, limit: int = 50) -> list[Job]:
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_job(row) for row in rows]

    def next_queued(self) -> Job | None:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
        return _job(row) if row else None

    def with_state(self, state: str) -> list[Job]:
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_job(row) for row in rows]

    def started(self, job_id: int, pid: int) -> None:
        self._update(job_id, state="running", started=time.time(), pid=pid)

    def progress(self, job_id: int, progress: dict[str, Any], curve_point: dict[str, Any] | None = None) -> None:
        with self._connect() as connection:
            if curve_point is None:
                connection.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))
            else:
                row = connection.execute("SELECT curve FROM jobs WHERE id = ?", (job_id,)).fetchone()
                curve = json.loads(row["curve"]) + [curve_point]
                connection.execute(
                    "UPDATE jobs SET progress = ?, curve = ? WHERE id = ?",
                    (json.dumps(progress), json.dumps(curve), job_id),
                )

    def report_outcome(
        self, job_id: int, outcome: str, *, error: str | None = None, specialist: str | None = None
    ) -> None:
        """The worker's word on how its job ended; the runner records the final state after cleaning up."""
        self._update(job_id, outcome=outcome, error=error, specialist=specialist)

    def finish(self, job_id: int, state: str, *, error: str | None = None, specialist: str | None = None) -> bool:
        """Record a final state, unless the job already has one (the first report wins); whether it was recorded."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final state")
        with self._connect() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, specialist = ? "
                "WHERE id = ? AND state NOT IN ('succeeded', 'failed', 'cancelled')",
                (state, time.time(), error, specialist, job_id),
            )
            return cursor.rowcount == 1

    def request_cancel(self, job_id: int) -> Job:
        with self._connect() as connection:
            connection.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        job = self.get(job_id)
        if job.state == "queued":
            self.finish(job_id, "cancelled", error="cancelled before it started")
        return self.get(job_id)

    def _update(self, job_id: int, **values: Any) -> None:
        assignments = ", ".join(f"{column} = ?" for column in values)
        with self._connect() as connection:
            connection.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["progress"] = json.loads(values["progress"])
    values["curve"] = json.loads(values["curve"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


def remove_leftovers(output_dir: Path, name: str, *, checkpoints: bool) -> list[Path]:
    """Staging directories of an unfinished write of specialist `name` (and, for a job that will not be resumed,
    its checkpoint directory); the paths removed."""
    patterns = [f".{name}.tmp-*"] + ([f".{name}.checkpoints"] if checkpoints else [])
    removed = [path for pattern in patterns for path in Path(output_dir).glob(pattern)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


class JobRunner:
    """Runs queued jobs one at a time in worker processes, from a thread of the server."""

    def __init__(
        self,
        store: JobStore,
        output_dir: Path,
        on_success: Callable[[Job], None] = lambda job: None,
        poll_s: float = 0.3,
    ) -> None:
        self.store = store
        self.output_dir = Path(output_dir)
        self.on_success = on_success
        self.poll_s = poll_s
        self.process: subprocess.Popen | None = None
        self.job_id: int | None = None
        self.cancel_sent_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="niche-studio-jobs", daemon=True)
        self._fail_orphans()

    def start(self) -> JobRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop taking jobs; a running worker is cancelled (its job recorded as such)."""
        self._stop.set()
        if self.process is not None and self.job_id is not None:
            self.store.request_cancel(self.job_id)
        if self._thread.is_alive():
            self._thread.join(timeout=CANCEL_GRACE_S + 10)

    def _fail_orphans(self) -> None:
        """Jobs a previous server left running: their worker went with it (or is stopped now)."""
        for job in self.store.with_state("running"):
            if job.pid and _is_worker(job.pid):
                os.kill(job.pid, signal.SIGTERM)
            self.store.finish(job.id, "failed", error="the studio stopped while this job ran")
            remove_leftovers(self.output_dir, job.name, checkpoints=True)

    def _run(self) -> None:
        while not self._stop.is_set() or self.process is not None:
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - a failed poll must not stop the job queue; the next tick retries
                log.exception("studio job runner")
            time.sleep(self.poll_s)

    def _tick(self) -> None:
        if self.process is None:
            if self._stop.is_set():
                return
            job = self.store.next_queued()
            if job is not None:
                self._launch(job)
            return
        job = self.store.get(self.job_id)
        if job.cancel_requested and self.cancel_sent_at is None:
            self.process.send_signal(signal.SIGTERM)
            self.cancel_sent_at = time.monotonic()
        elif self.cancel_sent_at is not None and time.monotonic() - self.cancel_sent_at > CANCEL_GRACE_S:
            self.process.kill()
        code = self.process.poll()
        if code is not None:
            self._finished(job, code)

    def _launch(self, job: Job) -> None:
        with open(job.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "niche.studio.worker", str(self.store.path), str(job.id)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
            )
        self.job_id, self.cancel_sent_at = job.id, None
        self.store.started(job.id, self.process.pid)
        log.info(json.dumps({"event": "job_started", "job": job.id, "name": job.name, "pid": self.process.pid}))

    def _finished(self, job: Job, code: int) -> None:
        """The worker is gone: clean up, then record the final state (so a page that sees `cancelled` or
        `failed` never finds anything of the job left on disk)."""
        self.process, self.job_id, self.cancel_sent_at = None, None, None
        if job.outcome == "succeeded":
            state, error = "succeeded", job.error  # a note, e.g. why it has no eval report
        elif job.cancel_requested:
            state, error = "cancelled", "cancelled"
        elif job.outcome == "failed":
            state, error = "failed", job.error
        else:
            state, error = "failed", f"the worker exited with code {code} and no result: {log_tail(job.log_path)}"
        # A cancelled or failed job is not resumed from the studio: nothing of it stays beside the specialists.
        remove_leftovers(self.output_dir, job.name, checkpoints=state != "succeeded")
        self.store.finish(job.id, state, error=error, specialist=job.specialist)
        log.info(json.dumps({"event": "job_finished", "job": job.id, "state": state}))
        if state == "succeeded":
            self.on_success(self.store.get(job.id))


def log_tail(path: str | Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _is_worker(pid: int) -> bool:
    try:
        return b"niche.studio.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
