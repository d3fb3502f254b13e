"""What the studio shows about the specialists in a directory, read from the artifacts niche already writes:
niche.json and training_log.json in each specialist, eval reports (`reports/*/eval.json` and predictions.jsonl),
ladder reports (`ladder.json`), exports (`exports/NAME-TARGET[-QUANT]`) and the registry version it was deployed
from. Nothing here is stored twice: every view is computed from those files when it is asked for."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from niche.artifact import MANIFEST_NAME, SpecialistManifest, load_test_examples, read_manifest
from niche.errors import NicheError
from niche.tracking import REGISTRY_RECORD

log = logging.getLogger("niche.studio")

REPORTS_DIR = "reports"
EXPORTS_DIR = "exports"
# How deep under the directory ladder and eval reports are looked for (reports/NAME/, NAME-ladder/, ...).
REPORT_DEPTH = 3
WORST_ROWS = 20


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        log.warning("studio: unreadable %s (%s)", path, error)
        return None


def specialist_dirs(directory: Path) -> dict[str, Path]:
    """Specialist directories by name, as `niche serve` discovers them; an unreadable manifest is skipped (the
    serving engine reports it) rather than hiding every other card."""
    found = {}
    for manifest_path in sorted(Path(directory).glob(f"*/{MANIFEST_NAME}")):
        try:
            found[read_manifest(manifest_path.parent).name] = manifest_path.parent
        except NicheError as error:
            log.warning("studio: %s", error)
    return found


def _under(directory: Path, filename: str) -> list[Path]:
    found: list[Path] = []
    for depth in range(1, REPORT_DEPTH + 1):
        found += Path(directory).glob("/".join(["*"] * depth) + f"/{filename}")
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def _is_for(report_specialist: str, specialist_dir: Path) -> bool:
    return Path(report_specialist).name == specialist_dir.name


def eval_reports(directory: Path) -> list[dict[str, Any]]:
    """Every eval report under the directory, newest first, with its headline per model."""
    reports = []
    for path in _under(directory, "eval.json"):
        payload = _read_json(path)
        if not isinstance(payload, dict) or "results" not in payload:
            continue
        metric = payload.get("headline_metric", "")
        reports.append(
            _report_record(directory, path, payload)
            | {
                "data": payload.get("data"),
                "rows": payload.get("rows"),
                "task_kind": payload.get("task_kind"),
                "headline_metric": metric,
                "results": [
                    {
                        "name": result["name"],
                        "headline": result["metrics"].get(metric),
                        "metrics": result["metrics"],
                        "examples_per_s": result.get("examples_per_s"),
                    }
                    for result in payload["results"]
                ],
                "markdown": _text(path.parent / "eval.md"),
            }
        )
    return reports


def ladder_reports(directory: Path) -> list[dict[str, Any]]:
    reports = []
    for path in _under(directory, "ladder.json"):
        payload = _read_json(path)
        if not isinstance(payload, dict):
            continue
        reports.append(
            _report_record(directory, path, payload)
            | {
                "recommendation": payload.get("recommendation"),
                "reason": payload.get("reason"),
                "headline_metric": payload.get("headline_metric"),
                "forgetting": payload.get("forgetting") or {},
                "html": str((path.parent / "ladder.html").relative_to(directory))
                if (path.parent / "ladder.html").is_file()
                else None,
            }
        )
    return reports


def _report_record(directory: Path, path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """Where a report is (relative to the directory), whose it is and when it was written."""
    return {
        "path": str(path.parent.relative_to(directory)),
        "specialist": Path(payload.get("specialist", "")).name,
        "written": path.stat().st_mtime,
    }


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def exports_of(directory: Path, name: str) -> list[dict[str, Any]]:
    """Exports `niche export` wrote to its default place: exports/NAME-merged, NAME-gguf-Q, NAME-ollama-Q, NAME-vllm."""
    found = []
    for path in sorted((Path(directory) / EXPORTS_DIR).glob(f"{name}-*")):
        target = path.name[len(name) + 1 :]
        if path.is_dir() and target.split("-")[0] in ("merged", "gguf", "ollama", "vllm"):
            size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
            found.append({"target": target, "path": str(path.relative_to(directory)), "bytes": size})
    return found


def _headline(manifest: SpecialistManifest, report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    specialist = next((item for item in report["results"] if item["name"].startswith("specialist")), None)
    base = next((item for item in report["results"] if item["name"].startswith("base")), None)
    baselines = [item for item in report["results"] if item is not specialist and item is not base]
    return {
        "metric": report["headline_metric"],
        "specialist": specialist["headline"] if specialist else None,
        "base": base["headline"] if base else None,
        "best_baseline": max(baselines, key=lambda item: item["headline"] or 0.0) if baselines else None,
        "report": report["path"],
        "rows": report["rows"],
    }


def _forgetting(manifest: SpecialistManifest, ladder: dict[str, Any] | None) -> dict[str, Any] | None:
    """The latest forgetting reading: the ladder's probe of the specialist against its base, else the training-time
    probe recorded in niche.json."""
    if ladder and ladder["forgetting"]:
        reading = ladder["forgetting"]
        return {
            "source": f"ladder ({ladder['path']})",
            "accuracy_relative_change": reading.get("accuracy_relative_change"),
            "perplexity_relative_change": reading.get("perplexity_relative_change"),
            "forgetting": reading.get("forgetting"),
        }
    history = manifest.metrics.get("forgetting_probe") or []
    if history and isinstance(history[-1], dict) and "forgetting_probe_change" in history[-1]:
        change = history[-1]["forgetting_probe_change"]
        return {
            "source": f"training-time probe (step {history[-1].get('step')})",
            "accuracy_relative_change": round(change, 4),
            "forgetting": change < -manifest.trained_config().training.forgetting_threshold,
        }
    return None


def _registry(specialist_dir: Path) -> dict[str, Any] | None:
    """The registry version this directory was deployed from (`niche pipeline` / the champion poller write it)."""
    record = specialist_dir / REGISTRY_RECORD
    deployed = _read_json(record) if record.is_file() else None
    return deployed if isinstance(deployed, dict) else None


def card(
    directory: Path,
    specialist_dir: Path,
    evals: list[dict[str, Any]] | None = None,
    ladders: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One specialist's card: what it is, what it was trained on and how, how it measured, where it ships."""
    manifest = read_manifest(specialist_dir)
    evals = eval_reports(directory) if evals is None else evals
    ladders = ladder_reports(directory) if ladders is None else ladders
    last_eval = next((report for report in evals if _is_for(report["specialist"], specialist_dir)), None)
    last_ladder = next((report for report in ladders if _is_for(report["specialist"], specialist_dir)), None)
    metrics = manifest.metrics
    recipe = manifest.hyperparameters.get("recipe", {})
    return {
        "name": manifest.name,
        "created_at": manifest.created_at,
        "base": {
            "spec": manifest.base.spec,
            "sha256": manifest.base.weights_sha256,
            "model_type": manifest.base.model_type,
        },
        "task": {
            "kind": manifest.task.kind,
            "labels": manifest.task.labels,
            "output_schema": manifest.task.output_schema,
            "answers_with": manifest.task.head.describe().removeprefix("a ") if manifest.task.head else "generation",
        },
        "objective": recipe.get("objective"),
        "data": {split: record.model_dump() for split, record in manifest.data.items()},
        "rejected_rows": manifest.rejected_rows,
        "training": {
            "runtime_s": metrics.get("train_runtime_s"),
            "tokens_per_s": metrics.get("tokens_per_s"),
            "steps": metrics.get("steps"),
            "train_loss": metrics.get("train_loss"),
            "hardware": manifest.hardware,
        },
        "headline": _headline(manifest, last_eval),
        "forgetting": _forgetting(manifest, last_ladder),
        "registry": _registry(specialist_dir),
        "exports": exports_of(directory, specialist_dir.name),
        "ladder": last_ladder,
    }


def cards(directory: Path) -> list[dict[str, Any]]:
    evals, ladders = eval_reports(directory), ladder_reports(directory)
    return [card(directory, path, evals, ladders) for path in specialist_dirs(directory).values()]


def detail(directory: Path, name: str) -> dict[str, Any]:
    """A card and everything behind it: loss curves, the last eval with its confusion matrix (label tasks) or
    per-field scores (JSON tasks), the worst predictions, the data card and niche.json itself."""
    found = specialist_dirs(directory)
    if name not in found:
        raise KeyError(name)
    specialist_dir = found[name]
    manifest = read_manifest(specialist_dir)
    evals = eval_reports(directory)
    result = card(directory, specialist_dir, evals)
    log_path = specialist_dir / "training_log.json"
    history = _read_json(log_path) if log_path.is_file() else []
    result["curves"] = [
        {key: entry[key] for key in ("step", "loss", "eval_loss", "eval_accuracy") if key in entry}
        for entry in history or []
        if "loss" in entry or "eval_loss" in entry
    ]
    last_eval = next((report for report in evals if _is_for(report["specialist"], specialist_dir)), None)
    result["eval"] = last_eval
    result["analysis"] = analysis(directory / last_eval["path"], manifest, last_eval.get("data")) if last_eval else None
    result["data_card"] = {
        "splits": result["data"],
        "rejected_rows": manifest.rejected_rows,
        "recipe": manifest.hyperparameters.get("recipe", {}),
        "template": {"system_prompt": manifest.template.system_prompt},
    }
    result["manifest"] = json.loads(manifest.model_dump_json())
    return result


def analysis(report_dir: Path, manifest: SpecialistManifest, data_path: str | None) -> dict[str, Any] | None:
    """From an eval's predictions.jsonl: the confusion matrix of a label task and the rows the specialist got
    wrong (for JSON tasks ordered by how many fields differ), with their input (read back from the evaluated
    file by each row's file:line), reference and the base's answer."""
    path = report_dir / "predictions.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return None
    columns = [key for key in rows[0] if key not in ("source", "reference")]
    specialist = next((key for key in columns if key.startswith("specialist")), None)
    base = next((key for key in columns if key.startswith("base")), None)
    if specialist is None:
        return None
    wrong = [row for row in rows if row[specialist] != row["reference"]]
    result: dict[str, Any] = {"rows": len(rows), "wrong": len(wrong)}
    if manifest.task.kind == "label":
        labels = list(manifest.task.labels or sorted({row["reference"] for row in rows}))
        pairs = Counter((row["reference"], row[specialist]) for row in rows)
        predicted = sorted({answer for _, answer in pairs} - set(labels))
        result["confusion"] = {
            "labels": labels,
            "predicted": labels + predicted,
            "counts": [[pairs[(truth, answer)] for answer in labels + predicted] for truth in labels],
        }
    elif manifest.task.kind == "json":
        wrong.sort(key=lambda row: -_fields_differing(row["reference"], row[specialist]))
    inputs = _inputs_by_source(data_path, manifest)
    result["worst"] = [
        {
            "source": row["source"],
            "input": inputs.get(row["source"]),
            "reference": row["reference"],
            "prediction": row[specialist],
            "base": row.get(base) if base else None,
        }
        for row in wrong[:WORST_ROWS]
    ]
    return result


def _inputs_by_source(data_path: str | None, manifest: SpecialistManifest) -> dict[str, str]:
    if not data_path or not Path(data_path).is_file():
        return {}
    try:
        return {example.source: example.input_text for example in load_test_examples(Path(data_path), manifest)}
    except NicheError as error:
        log.warning("studio: %s", error)
        return {}


def _fields_differing(reference: str, prediction: str) -> int:
    try:
        expected, got = json.loads(reference), json.loads(prediction)
    except (json.JSONDecodeError, TypeError):
        return 1_000  # not JSON at all: the worst kind of wrong
    if not isinstance(expected, dict) or not isinstance(got, dict):
        return int(expected != got)
    return sum(expected.get(key) != got.get(key) for key in set(expected) | set(got))
