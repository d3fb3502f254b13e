"""The studio's page and JSON API, mounted on the app of `niche serve` (same engine, same keys, same port).

Everything under /studio/api answers only with a valid key when the server has keys; the page at / and its
files under /studio/static are public, since the login form is on them. Data uploads get a body limit of their
own (`UPLOAD_LIMIT_BYTES`); every other request keeps the server's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from niche import tracking
from niche.artifact import read_manifest
from niche.data.check import check_data
from niche.data.examples import Example
from niche.errors import NicheError
from niche.serve.app import ServeSettings
from niche.serve.base import BASE_MODEL_NAME
from niche.serve.registry import ChampionPoller
from niche.serve.router import training_inputs
from niche.studio import catalog, forms
from niche.studio.jobs import Job, JobRunner, JobStore, log_tail

log = logging.getLogger("niche.studio")

STATIC = Path(__file__).parent / "static"
UPLOAD_LIMIT_BYTES = 256 << 20
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
READABLE_REPORT_SUFFIXES = (".html", ".md", ".json")
TRAIN_MODULES = ("accelerate", "trl", "datasets")


def state_dir_for(directory: Path) -> Path:
    """Where the studio keeps its jobs database, uploads and job logs: a directory beside DIR, never inside it
    (DIR holds specialists only, as `niche serve` expects)."""
    directory = Path(directory).resolve()
    return directory.parent / f"{directory.name}.studio"


class DataPath(BaseModel):
    path: str


class TrainingForm(BaseModel):
    values: dict[str, Any] = Field(default_factory=dict)
    extra_yaml: str = ""


class PromptRequest(BaseModel):
    model: str
    messages: list[dict[str, str]] = Field(min_length=1)


class Promotion(BaseModel):
    version: str


def training_unavailable() -> str | None:
    missing = [module for module in TRAIN_MODULES if importlib.util.find_spec(module) is None]
    if missing:
        return f"training needs niche's `train` extra ({', '.join(missing)} not installed): pip install 'niche[train]'"
    return None


class Studio:
    """The studio over one specialists directory and the engine serving it."""

    def __init__(self, app: FastAPI, directory: Path, state_dir: Path | None = None) -> None:
        self.app = app
        self.engine = app.state.engine
        self.router = app.state.router
        self.directory = Path(directory).resolve()
        self.state_dir = Path(state_dir or state_dir_for(self.directory))
        self.uploads = self.state_dir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "jobs").mkdir(exist_ok=True)
        self.store = JobStore(self.state_dir / "jobs.sqlite")
        self.runner = JobRunner(self.store, self.directory, on_success=self.serve_new_specialist)

    # ---- specialists ----------------------------------------------------------------------------------------

    def cards(self) -> list[dict[str, Any]]:
        loaded = set(self.engine.loaded_specialists())
        served = set(self.engine.specialists)
        return [
            card | {"loaded": card["name"] in loaded, "served": card["name"] in served}
            for card in catalog.cards(self.directory)
        ]

    def serve_new_specialist(self, job: Job) -> None:
        """A finished job's specialist joins the running server (and the router) at once."""
        specialist_dir = Path(job.specialist or self.directory / job.name)
        try:
            self.engine.refresh(specialist_dir.name)
        except NicheError as error:
            log.warning("studio: %s is not served by this server: %s", specialist_dir.name, error)
            return
        if self.router is not None:
            manifest = read_manifest(specialist_dir)
            self.router.add_specialist(manifest.name, training_inputs(specialist_dir, manifest))

    # ---- data -----------------------------------------------------------------------------------------------

    def known_data(self) -> list[dict[str, Any]]:
        """Files the page may check and train on: uploads, and the files the specialists were trained and
        evaluated on."""
        files: dict[str, dict[str, Any]] = {}
        specialists = catalog.specialist_dirs(self.directory)
        for path in sorted(self.uploads.glob("[!.]*"), key=lambda item: item.stat().st_mtime, reverse=True):
            files[str(path)] = {"path": str(path), "name": path.name, "source": "uploaded"}
        for name, specialist_dir in specialists.items():
            for split, record in read_manifest(specialist_dir).data.items():
                if Path(record.path).is_file():
                    files.setdefault(
                        record.path,
                        {
                            "path": record.path,
                            "name": Path(record.path).name,
                            "source": f"{name} ({split})",
                            "specialist": name,
                            "split": split,
                        },
                    )
        # The held-out file each specialist was last evaluated on: a successor is scored on the same rows.
        for report in catalog.eval_reports(self.directory):
            path = report.get("data")
            if path and Path(path).is_file() and report["specialist"] in specialists:
                files.setdefault(
                    path,
                    {
                        "path": path,
                        "name": Path(path).name,
                        "source": f"{report['specialist']} (evaluated on)",
                        "specialist": report["specialist"],
                        "split": "test",
                    },
                )
        return list(files.values())

    def save_upload(self, filename: str, body: bytes) -> Path:
        stem, suffix = Path(Path(filename).name).stem, Path(filename).suffix.lower()
        if suffix not in DATA_SUFFIXES:
            raise NicheError(f"{filename}: expected a data file ({', '.join(DATA_SUFFIXES)})")
        safe_stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:80] or "data"
        # The content's hash in the name: a new upload never overwrites a file a job may be training on.
        path = self.uploads / f"{safe_stem}-{hashlib.sha256(body).hexdigest()[:8]}{suffix}"
        if not path.exists():
            staging = path.with_name(f".{path.name}.tmp")
            staging.write_bytes(body)
            staging.replace(path)
        return path

    def check(self, path: Path, shown_as: str | None = None) -> dict[str, Any]:
        """`niche data check`'s report; an upload's problems name the file as the user sent it (shown_as)."""
        report = check_data(path, tokenizer=self.engine.tokenizer)
        payload = dataclasses.asdict(report) | {"ok": report.ok}
        if shown_as:
            for key in ("problems", "warnings"):
                payload[key] = [text.replace(str(path), shown_as) for text in payload[key]]
        return payload

    # ---- jobs -----------------------------------------------------------------------------------------------

    def form_defaults(self) -> dict[str, Any]:
        return {"base": self.engine.base_spec}

    def start_job(self, form: TrainingForm) -> Job:
        if reason := training_unavailable():
            raise HTTPException(409, reason)
        config, problems, text = forms.validate(
            form.values, form.extra_yaml, self.form_defaults(), forced={"output_dir": str(self.directory)}
        )
        if config is None:
            raise HTTPException(400, {"problems": problems, "yaml": text})
        active = {job.name for job in self.store.all() if job.state in ("queued", "running")}
        if config.name in active:
            raise HTTPException(409, f"a job training {config.name!r} is already queued or running")
        job_dir = self.state_dir / "jobs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-{config.name}"
        job_dir.mkdir(parents=True)
        (job_dir / "niche.yaml").write_text(text, encoding="utf-8")
        return self.store.add(config.name, job_dir / "niche.yaml", job_dir / "worker.log")

    def job_json(self, job: Job) -> dict[str, Any]:
        return job.to_json() | {"log_tail": log_tail(job.log_path, 30)}

    # ---- serving --------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "base": engine.base_spec,
            "engine": type(engine).__name__,
            "specialists": list(engine.specialists),
            "loaded": engine.loaded_specialists(),
            "max_loaded": engine.max_loaded,
            "decoding": engine.decoding(),
            "queued": engine.queued(),
            "max_queue": engine.max_queue,
            "prefix_hits": engine.prefix_hits,
            "forward_seconds": dict(engine.forward_seconds),
            "forward_calls": dict(engine.forward_calls),
            "live": self.app.state.metrics.live.snapshot(),
        }

    def rendered_prompt(self, request: PromptRequest) -> dict[str, Any]:
        """The exact text the model receives for these messages: its stored template, rendered and tokenized the
        way the engine does, then decoded token by token back to text."""
        encoder = self.engine.encoder_of(request.model)
        ids = encoder.prompt_ids(Example(messages=tuple(request.messages), response=""))
        source = "the base model's own template" if request.model == BASE_MODEL_NAME else "niche.json (template)"
        return {
            "model": request.model,
            "text": self.engine.tokenizer.decode(ids),
            "tokens": len(ids),
            "template": source,
        }

    def report_file(self, relative: str) -> Path:
        path = (self.directory / relative).resolve()
        if not path.is_relative_to(self.directory) or path.suffix not in READABLE_REPORT_SUFFIXES or not path.is_file():
            raise HTTPException(404, f"{relative}: not a report file under {self.directory}")
        return path


def mount_studio(app: FastAPI, directory: Path, state_dir: Path | None = None) -> Studio:
    """Add the studio's page and API to a `niche serve` app (see `niche.serve.run_server`'s `extend_app`)."""
    studio = Studio(app, directory, state_dir)
    app.state.studio = studio
    settings: ServeSettings = app.state.serve_settings
    app.state.serve_settings = dataclasses.replace(
        settings,
        public_paths=settings.public_paths | {"/", "/favicon.ico"},
        public_prefixes=(*settings.public_prefixes, "/studio/static/"),
        body_limits=(*settings.body_limits, ("/studio/api/data/upload", UPLOAD_LIMIT_BYTES)),
    )
    app.mount("/studio/static", StaticFiles(directory=STATIC), name="studio-static")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, dict) else {"message": str(error.detail)}
        return JSONResponse(status_code=error.status_code, content={"error": detail})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/studio/api/info")
    def info() -> dict[str, Any]:
        return {
            "directory": str(studio.directory),
            "state_dir": str(studio.state_dir),
            "base": studio.engine.base_spec,
            "engine": type(studio.engine).__name__,
            "models": studio.engine.model_names() + (["auto"] if studio.router else []),
            "auth": bool(settings.api_keys),
            "training_unavailable": training_unavailable(),
        }

    @app.get("/studio/api/specialists")
    def specialists() -> list[dict[str, Any]]:
        return studio.cards()

    @app.get("/studio/api/specialists/{name}")
    def specialist(name: str) -> dict[str, Any]:
        try:
            found = catalog.detail(studio.directory, name)
        except KeyError as error:
            raise HTTPException(404, f"no specialist named {name!r} in {studio.directory}") from error
        return found | {
            "loaded": name in studio.engine.loaded_specialists(),
            "served": name in studio.engine.specialists,
        }

    @app.get("/studio/api/reports")
    def reports() -> dict[str, Any]:
        return {"eval": catalog.eval_reports(studio.directory), "ladder": catalog.ladder_reports(studio.directory)}

    @app.get("/studio/api/file")
    def report_file(path: str) -> FileResponse:
        return FileResponse(studio.report_file(path))

    @app.post("/studio/api/prompt")
    def prompt(body: PromptRequest) -> dict[str, Any]:
        return studio.rendered_prompt(body)

    @app.get("/studio/api/route")
    def route(text: str) -> dict[str, Any]:
        if studio.router is None:
            raise HTTPException(404, "this server runs without routing (--no-routing)")
        scores = studio.router.scores(text)
        chosen = studio.router.route(text)
        return {"scores": scores, "model": chosen.model, "score": chosen.score, "threshold": studio.router.threshold}

    @app.get("/studio/api/data")
    def data_files() -> list[dict[str, Any]]:
        return studio.known_data()

    @app.post("/studio/api/data/upload")
    async def upload(request: Request, filename: str) -> dict[str, Any]:
        path = studio.save_upload(filename, await request.body())
        return {"path": str(path), "name": path.name, "report": studio.check(path, shown_as=Path(filename).name)}

    @app.post("/studio/api/data/check")
    def check(body: DataPath) -> dict[str, Any]:
        if body.path not in {item["path"] for item in studio.known_data()}:
            raise HTTPException(404, f"{body.path}: not an uploaded file nor one a specialist here was trained on")
        return {"path": body.path, "name": Path(body.path).name, "report": studio.check(Path(body.path))}

    @app.get("/studio/api/config/form")
    def config_form() -> dict[str, Any]:
        return {"fields": forms.form_fields(studio.form_defaults()), "output_dir": str(studio.directory)}

    @app.post("/studio/api/config/validate")
    def validate(form: TrainingForm) -> dict[str, Any]:
        config, problems, text = forms.validate(
            form.values, form.extra_yaml, studio.form_defaults(), forced={"output_dir": str(studio.directory)}
        )
        return {"ok": config is not None, "problems": problems, "yaml": text}

    @app.get("/studio/api/jobs")
    def jobs() -> list[dict[str, Any]]:
        return [job.to_json() for job in studio.store.all()]

    @app.post("/studio/api/jobs")
    def start_job(form: TrainingForm) -> dict[str, Any]:
        return studio.job_json(studio.start_job(form))

    def known_job(job_id: int) -> None:
        try:
            studio.store.get(job_id)
        except KeyError as error:
            raise HTTPException(404, f"no job {job_id}") from error

    @app.get("/studio/api/jobs/{job_id}")
    def job(job_id: int) -> dict[str, Any]:
        known_job(job_id)
        return studio.job_json(studio.store.get(job_id))

    @app.post("/studio/api/jobs/{job_id}/cancel")
    def cancel(job_id: int) -> dict[str, Any]:
        known_job(job_id)
        return studio.job_json(studio.store.request_cancel(job_id))

    @app.get("/studio/api/stats")
    def stats() -> dict[str, Any]:
        return studio.stats()

    @app.get("/studio/api/registry/{name}")
    def registry(name: str) -> dict[str, Any]:
        deployed = catalog.specialist_dirs(studio.directory).get(name)
        try:
            versions = tracking.registry_versions(name)
        except (NicheError, ImportError) as error:
            return {"available": False, "reason": str(error)}
        return {
            "available": True,
            "deployed": tracking.deployed_version(deployed) if deployed else None,
            "versions": [
                {"version": version.version, "aliases": aliases, "tags": version.tags, "run_id": version.run_id}
                for version, aliases in versions
            ],
        }

    @app.post("/studio/api/registry/{name}/promote")
    def promote(name: str, body: Promotion) -> dict[str, Any]:
        """Make a version the champion (a rollback is promoting an older one), and serve it here at once."""
        tracking.promote(name, body.version)
        updated = ChampionPoller(studio.engine, 0).check_once()
        return {"name": name, "champion": body.version, "redeployed": updated}

    return studio
