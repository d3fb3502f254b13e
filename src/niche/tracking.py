"""MLflow tracking and the specialist registry.

Every `train`, `eval`, `ladder` and `pipeline` run is an MLflow run: parameters (the flattened config),
metrics (per step for training), data fingerprints, and artifacts (the specialist directory, reports).
Without `MLFLOW_TRACKING_URI` the store is a local SQLite file, `mlflow.db`, in the working directory (no
server needed); artifacts then go to `mlruns/` beside it. `NICHE_TRACKING=off` (or `tracking.enabled: false`
in niche.yaml) turns tracking off.

The registry holds one registered model per specialist name; each trained candidate is a version, and the
aliases `champion` (what serves) and `challenger` (the latest candidate) point at versions.

The client is MlflowClient with explicit run ids rather than the fluent API's process-global active run, so a
pipeline's stage runs nest under its run without depending on which thread is active.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niche.errors import ConfigError, require_extra
from niche.io import atomic_directory

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
REGISTRY_RECORD = "registry.json"  # in a deployed specialist directory: which registry version it is
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one parameter value
_parent_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("niche_parent_run", default=None)


def tracking_enabled(configured: bool = True) -> bool:
    return configured and os.environ.get("NICHE_TRACKING", "on").lower() not in ("0", "off", "false", "no")


def tracking_uri() -> str:
    """The server or store runs go to: MLFLOW_TRACKING_URI, else ./mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client() -> Any:
    # The data does not leave the building: MLflow's usage telemetry stays off unless the user turns it on.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # niche draws its own progress; a bar per artifact download is noise in logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    require_extra(
        "track", ("mlflow",), "tracking (set tracking.enabled: false, or NICHE_TRACKING=off, to train without it)"
    )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys (`training.learning_rate`), the way MLflow's parameter table reads best."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def _experiment_id(mlflow_client: Any, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri().startswith("sqlite:"):
        # Keep artifacts beside the SQLite store, not wherever the first run happened to start.
        store = Path(tracking_uri().removeprefix("sqlite:///"))
        artifact_location = (store.parent / "mlruns").resolve().as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - another process created it first
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class Tracker:
    """One MLflow run, or nothing when tracking is off, so callers never branch on it."""

    def __init__(self, mlflow_client: Any | None = None, run_id: str | None = None) -> None:
        self.client = mlflow_client
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def params(self, values: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        flat = flatten(values)
        params = [Param(key, _param_text(value)) for key, value in flat.items()]
        for start in range(0, len(params), 100):  # the store takes at most 100 per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def metrics(self, values: Mapping[str, Any], step: int | None = None) -> None:
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [
            Metric(_metric_key(key), float(value), stamp, step or 0)
            for key, value in flatten(values).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def tags(self, values: Mapping[str, Any]) -> None:
        if self.active:
            for key, value in values.items():
                self.client.set_tag(self.run_id, key, str(value))

    def artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        if self.active and Path(directory).is_dir():
            self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def artifact_json(self, payload: Any, file_name: str) -> None:
        if self.active:
            self.client.log_dict(self.run_id, payload, file_name)

    def artifact_uri(self, artifact_path: str) -> str:
        return f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _metric_key(key: str) -> str:
    """MLflow keys allow letters, digits and _-./ and spaces; model names like 'base (smollm2)' need cleaning."""
    return "".join(char if char.isalnum() or char in "_-./ " else "_" for char in key)


@contextlib.contextmanager
def tracked_run(experiment: str, kind: str, *, enabled: bool = True, run_name: str | None = None) -> Iterator[Tracker]:
    """An MLflow run for one niche command; nested under the pipeline run that started it, if any. The run ends
    FINISHED, or FAILED when the work raises (the error is re-raised)."""
    if not tracking_enabled(enabled):
        yield Tracker()
        return
    mlflow_client = client()
    try:
        experiment_id = _experiment_id(mlflow_client, experiment)
        tags = {"niche.kind": kind}
        if (parent := _parent_run.get()) is not None:
            tags["mlflow.parentRunId"] = parent
        run = mlflow_client.create_run(experiment_id, run_name=run_name or kind, tags=tags)
    except Exception as error:  # noqa: BLE001 - a bad store or server is a configuration problem, said before work
        raise ConfigError(
            f"MLflow tracking at {tracking_uri()} failed ({error}); fix MLFLOW_TRACKING_URI or set NICHE_TRACKING=off"
        ) from error
    run_id = run.info.run_id
    token = _parent_run.set(run_id)
    status = "FAILED"
    try:
        yield Tracker(mlflow_client, run_id)
        status = "FINISHED"
    finally:
        _parent_run.reset(token)
        mlflow_client.set_terminated(run_id, status)


def log_to_run(run_id: str | None, directory: Path, artifact_path: str | None = None) -> None:
    """Attach files written after a run ended (reports) to it."""
    if run_id and tracking_enabled():
        Tracker(client(), run_id).artifacts(directory, artifact_path)


# ---- registry -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    source: str
    run_id: str | None
    tags: dict[str, str]


def _as_registered(model_version: Any) -> RegisteredVersion:
    return RegisteredVersion(
        model_version.name,
        str(model_version.version),
        model_version.source,
        model_version.run_id,
        dict(model_version.tags or {}),
    )


def register_specialist(tracker: Tracker, name: str, artifact_path: str, tags: Mapping[str, Any]) -> RegisteredVersion:
    """A new registry version of `name` from the run's logged specialist directory, aliased `challenger`."""
    from mlflow.exceptions import MlflowException

    mlflow_client = tracker.client
    try:
        mlflow_client.create_registered_model(name, description=f"niche specialist {name}")
    except MlflowException as error:
        if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise
    version = mlflow_client.create_model_version(
        name,
        source=tracker.artifact_uri(artifact_path),
        run_id=tracker.run_id,
        tags={key: str(value) for key, value in tags.items()},
    )
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
    return _as_registered(version)


def promote(name: str, version: str) -> None:
    """Point `champion` at a version: the pipeline's promotion, and a manual rollback."""
    from mlflow.exceptions import MlflowException

    try:
        client().set_registered_model_alias(name, CHAMPION, str(version))
    except MlflowException as error:
        raise ConfigError(f"registry: cannot promote {name!r} version {version}: {error.message}") from error


def registry_versions(name: str) -> list[tuple[RegisteredVersion, list[str]]]:
    """Every version of a registered specialist, newest first, with its aliases."""
    mlflow_client = client()
    versions = mlflow_client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise ConfigError(f"registry: no registered specialist named {name!r} at {tracking_uri()}")
    ordered = sorted(versions, key=lambda version: int(version.version), reverse=True)
    # Version search results do not carry aliases; the registered model does.
    aliases = mlflow_client.get_registered_model(name).aliases or {}
    return [
        (
            _as_registered(version),
            sorted(
                (alias for alias, number in aliases.items() if str(number) == str(version.version)),
                key=lambda alias: (alias != CHAMPION, alias != CHALLENGER, alias),
            ),
        )
        for version in ordered
    ]


def version_with_alias(name: str, alias: str = CHAMPION) -> RegisteredVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return _as_registered(client().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def deploy(version: RegisteredVersion, target: Path, swap_lock: Any = None) -> Path:
    """Download a registry version into `target` (a specialist directory), replacing what is there atomically,
    with a registry.json saying which version it is. The replacement happens under `swap_lock` (a server's
    lock, so files never change while an adapter is being read from them)."""
    from mlflow.artifacts import download_artifacts

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".niche-download-", dir=target.parent) as scratch:
        downloaded = Path(
            download_artifacts(artifact_uri=version.source, dst_path=scratch, tracking_uri=tracking_uri())
        )
        (downloaded / REGISTRY_RECORD).write_text(
            json.dumps({"name": version.name, "version": version.version, "run_id": version.run_id}, indent=2)
        )
        with swap_lock or contextlib.nullcontext(), atomic_directory(target) as staging:
            shutil.copytree(downloaded, staging, dirs_exist_ok=True)
    return target


def deployed_version(specialist_dir: Path) -> str | None:
    record = Path(specialist_dir) / REGISTRY_RECORD
    if not record.is_file():
        return None
    try:
        return str(json.loads(record.read_text())["version"])
    except (ValueError, KeyError):
        return None
