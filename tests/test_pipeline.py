"""Tracking, the resumable pipeline, retraining triggers, gating, the registry and serve following the champion.

The watch-cycle test runs a real MLflow tracking server on loopback; the others use the session's local SQLite
store (the default kind of store, set up in conftest).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import openai
import pytest

from conftest import free_port, running, ticket_rows, wait_until_healthy, write_jsonl
from niche import tracking
from niche.config import WatchSettings, load_config
from niche.io import sha256_of_file
from niche.pipeline import StageFailed, gate_decision, run_pipeline
from niche.watch import (
    check_triggers,
    chi_square_p_value,
    population_stability_index,
    read_data,
    snapshot_of,
    watch,
    watch_once,
)

WEAK = "training.learning_rate=0.000001"  # trains, but learns nothing: the "worse run"


def watched_config(tiny_base: Path, out: Path, name: str, *overrides: str):
    """The watch loop's runs: long enough that the well-trained candidate clearly beats a run that learned nothing
    on whichever rows the seeded split holds out (24 steps were not, for some splits)."""
    return pipeline_config(tiny_base, out, name, "training.max_steps=48", "training.eval_every=24", *overrides)


def pipeline_config(tiny_base: Path, out: Path, name: str, *overrides: str):
    return load_config(
        None,
        [
            f"base={tiny_base}",
            f"output_dir={out}",
            f"name={name}",
            "prompt.system_prompt=Route the ticket to one of: {labels}.",
            "training.max_steps=24",
            "training.batch_size=8",
            "training.eval_every=12",
            "training.learning_rate=0.01",
            # The loop's mechanics on a generative tiny model, which 24 steps do not teach everything.
            "training.objective=generate",
            "lora.r=8",
            "lora.alpha=16",
            "pipeline.gate.forgetting_questions=8",
            # The tiny random model's everyday-question score is noise; forgetting is gated in its own test.
            "pipeline.gate.forgetting_threshold=1.0",
            "watch.min_new_examples=20",
            *overrides,
        ],
    )


# ---- triggers --------------------------------------------------------------------------------------------------


def test_psi_equals_the_formula_computed_by_hand() -> None:
    before, after = Counter(a=50, b=50), Counter(a=80, b=20)
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert population_stability_index(before, after) == pytest.approx(by_hand)
    assert population_stability_index(before, Counter(a=5, b=5)) == pytest.approx(0.0)


def test_chi_square_flags_a_shifted_mix_but_not_a_sample_of_the_same_mix() -> None:
    before = Counter(a=500, b=500)
    assert chi_square_p_value(before, Counter(a=26, b=24)) > 0.5
    assert chi_square_p_value(before, Counter(a=45, b=5)) < 0.001


def rows_with_labels(labels: list[str], offset: int) -> list[dict]:
    return [{"text": f"ticket {offset + index} about {label}", "label": label} for index, label in enumerate(labels)]


def test_each_trigger_fires_on_its_own_condition(tmp_path) -> None:
    settings = WatchSettings(min_new_examples=10, shift_min_rows=6, psi_threshold=0.2)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl", rows_with_labels(["billing", "outage"] * 20, 0))
    assert check_triggers(None, read_data(data), settings).reasons == [
        "first run: no earlier pipeline run on this data"
    ]
    baseline = snapshot_of(read_data(data))
    assert not check_triggers(baseline, read_data(data), settings).fire

    write_jsonl(data / "b.jsonl", rows_with_labels(["billing", "outage"] * 3, 1000))  # 6 new rows, same mix
    quiet = check_triggers(baseline, read_data(data), settings)
    assert not quiet.fire and quiet.new_rows == 6 and quiet.shift["value"] == pytest.approx(0.0)

    write_jsonl(data / "c.jsonl", rows_with_labels(["billing"] * 6, 2000))  # 12 new rows, 9 billing / 3 outage
    shifted = check_triggers(baseline, read_data(data), settings)
    assert shifted.new_rows == 12 and any(reason.startswith("12 new examples") for reason in shifted.reasons)
    assert any("PSI" in reason for reason in shifted.reasons)

    write_jsonl(data / "c.jsonl", rows_with_labels(["security"], 3000))
    novel = check_triggers(baseline, read_data(data), settings)
    assert novel.new_labels == ["security"] and "new label(s): security" in novel.reasons

    chi = check_triggers(baseline, read_data(data), WatchSettings(shift_test="chi2", shift_min_rows=6))
    assert chi.shift["test"] == "chi2" and 0 <= chi.shift["p_value"] <= 1

    scored = []
    quality = check_triggers(
        baseline,
        read_data(data),
        WatchSettings(min_new_examples=100, new_labels=False, min_quality=0.8),
        quality_on=lambda rows: scored.append(len(rows)) or 0.5,
    )
    assert scored == [7] and quality.reasons == ["champion scores 0.500 on the new rows (< 0.8)"]


def test_gate_promotes_only_a_better_candidate_that_keeps_its_general_knowledge() -> None:
    assert gate_decision(0.7, None, 0.5, 0.6, 0.0, 0.05, "accuracy") == (True, "no champion yet; accuracy 0.7000")
    passed, reason = gate_decision(0.7, 0.6, 0.59, 0.6, 0.0, 0.05, "accuracy")
    assert passed and "beats the champion's 0.6000" in reason
    assert gate_decision(0.6, 0.6, 0.6, 0.6, 0.0, 0.05, "accuracy")[0] is False
    assert gate_decision(0.65, 0.6, 0.6, 0.6, 0.1, 0.05, "accuracy") == (
        False,
        "accuracy 0.6500 does not beat the champion's 0.6000 by more than 0.1",
    )
    forgot, why = gate_decision(0.9, 0.6, 0.5, 0.6, 0.0, 0.05, "accuracy")
    assert not forgot and why.startswith("forgetting: everyday-question accuracy 0.500 vs the champion's 0.600")


# ---- pipeline --------------------------------------------------------------------------------------------------


def test_pipeline_tracks_skips_unchanged_stages_and_reruns_a_failed_stage_alone(tmp_path, tiny_base) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "batch1.jsonl", ticket_rows(60))
    config = pipeline_config(tiny_base, tmp_path / "out", "pipe_resume", f"pipeline.inputs=[{data}]")

    first = run_pipeline(config, show_progress=False)
    assert [(stage.name, stage.status) for stage in first.stages] == [
        ("curate", "ran"),
        ("synth", "off"),
        ("train", "ran"),
        ("eval", "ran"),
        ("gate", "ran"),
        ("register", "ran"),
    ]
    assert first.promoted and first.decision["version"] == "1"
    assert tracking.deployed_version(config.specialist_dir) == "1"
    assert json.loads((config.specialist_dir / "niche.json").read_text())["name"] == "pipe_resume"

    again = run_pipeline(config, show_progress=False)
    assert {stage.status for stage in again.stages} == {"skipped", "off"}

    # MLflow has the whole story: nested stage runs, per-step losses, config, data hashes, the specialist files.
    client = tracking.client()
    experiment = client.get_experiment_by_name("pipe_resume")
    runs = client.search_runs([experiment.experiment_id])
    kinds = Counter(run.data.tags["niche.kind"] for run in runs)
    assert kinds == {"pipeline": 2, "train": 1, "eval": 1}  # no champion yet, so the gate scored nothing more
    train_run = next(run for run in runs if run.data.tags["niche.kind"] == "train")
    assert train_run.data.tags["mlflow.parentRunId"] == first.run_id
    assert train_run.data.params["training.learning_rate"] == "0.01"
    curated_train = config.pipeline_dir / "curated" / "train.jsonl"
    assert train_run.data.tags["data.train.sha256"] == sha256_of_file(curated_train)
    losses = client.get_metric_history(train_run.info.run_id, "loss")
    assert [point.step for point in losses] == [10, 20]  # the Trainer logs every 10 of the 24 steps
    artifacts = {item.path for item in client.list_artifacts(train_run.info.run_id, "specialist")}
    assert {"specialist/niche.json", "specialist/adapter_model.safetensors"} <= artifacts

    # New data and a gate metric that does not exist: the gate fails after train and eval ran.
    write_jsonl(data / "batch2.jsonl", ticket_rows(30, offset=1000))
    broken = pipeline_config(
        tiny_base, tmp_path / "out", "pipe_resume", f"pipeline.inputs=[{data}]", "pipeline.gate.metric=bleu"
    )
    with pytest.raises(StageFailed, match=r"(?s)stage 'gate' failed: pipeline.gate.metric: 'bleu'.*--stage gate"):
        run_pipeline(broken, show_progress=False)
    state = json.loads((config.pipeline_dir / "state.json").read_text())["stages"]
    assert state["gate"]["status"] == "failed" and state["train"]["status"] == "done"

    alone = run_pipeline(config, only="gate", show_progress=False)
    assert [stage.name for stage in alone.stages if stage.status == "ran"] == ["gate"]
    resumed = run_pipeline(config, show_progress=False)
    assert [(stage.name, stage.status) for stage in resumed.stages if stage.status != "off"] == [
        ("curate", "skipped"),
        ("train", "skipped"),
        ("eval", "skipped"),
        ("gate", "skipped"),
        ("register", "ran"),
    ]
    report = (config.pipeline_dir / "report" / "pipeline.md").read_text()
    assert "| register | ran |" in report and "**Decision:**" in report


def test_runs_go_to_a_sqlite_store_in_the_working_directory_by_default(tiny_config, tmp_path, monkeypatch) -> None:
    from niche.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = train(tiny_config("name=default_store", "training.max_steps=2"), show_progress=False)
    assert (work / "mlflow.db").is_file() and (work / "mlruns").is_dir()
    client = tracking.client()
    assert client.tracking_uri == f"sqlite:///{work / 'mlflow.db'}"
    runs = client.search_runs([client.get_experiment_by_name("default_store").experiment_id])
    assert [run.info.run_id for run in runs] == [result.run_id]
    assert runs[0].data.params["training.max_steps"] == "2"
    assert any(item.path == "specialist/niche.json" for item in client.list_artifacts(result.run_id, "specialist"))


def test_pipeline_without_tracking_deploys_the_champion_to_output_dir(tmp_path, tiny_base, monkeypatch) -> None:
    monkeypatch.setenv("NICHE_TRACKING", "off")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # so that a run that tracked anyway would land in ./mlflow.db
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "rows.jsonl", ticket_rows(45))
    config = pipeline_config(tiny_base, tmp_path / "out", "pipe_local", f"pipeline.inputs=[{data}]")
    result = run_pipeline(config, show_progress=False)
    assert result.run_id is None and result.promoted and result.decision.get("version") is None
    assert (config.specialist_dir / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failed_run_leaves_the_new_data_to_the_next_check(tmp_path, tiny_base) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "rows.jsonl", ticket_rows(45))
    out = tmp_path / "out"
    broken = pipeline_config(tiny_base, out, "watch_fail", "training.max_steps=2", "pipeline.gate.metric=bleu")
    first = watch_once(broken, data, show_progress=False)
    assert first.check.fire and first.pipeline is None
    assert "stage 'gate' failed" in first.failure
    again = watch_once(broken, data, show_progress=False)  # nothing was consumed: the trigger fires again
    assert again.check.fire and again.check.new_rows == 45 and again.failure is not None
    history = json.loads((out / ".pipeline" / "watch_fail" / "watch.json").read_text())["history"]
    assert [("failure" in entry) for entry in history] == [True, True]
    fixed = watch_once(pipeline_config(tiny_base, out, "watch_fail", "training.max_steps=2"), data, show_progress=False)
    assert fixed.failure is None and fixed.pipeline is not None and fixed.pipeline.promoted


def test_pipeline_and_registry_from_the_command_line(tmp_path, tiny_base) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "rows.jsonl", ticket_rows(45))
    config_path = tmp_path / "niche.yaml"
    config_path.write_text(
        "\n".join(
            [
                f"base: {tiny_base}",
                "name: pipe_cli",
                "output_dir: out",
                "pipeline:",
                "  inputs: [data]",
                "  gate: {forgetting_questions: 8}",
                "training: {max_steps: 4, batch_size: 8, eval_every: 4}",
            ]
        )
    )
    niche = [sys.executable, "-m", "niche.cli"]
    env = os.environ | {"COLUMNS": "200"}
    first = subprocess.run([*niche, "pipeline", "run", str(config_path)], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert "promoted to champion (version 1)" in first.stdout
    second = subprocess.run([*niche, "pipeline", "run", str(config_path)], capture_output=True, text=True, env=env)
    assert second.returncode == 0 and second.stdout.count("skipped") == 5, second.stdout
    shown = subprocess.run([*niche, "registry", "show", "pipe_cli"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "champion, challenger" in shown.stdout, shown.stdout
    missing = subprocess.run([*niche, "registry", "promote", "pipe_cli", "7"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "cannot promote 'pipe_cli' version 7" in missing.stderr


# ---- the watch loop with a real MLflow server, and serve following the champion ------------------------------


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """`mlflow server` on a loopback port with its own SQLite store and artifact directory."""
    port = free_port()
    store = tmp_path / "mlflow-server"
    store.mkdir()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # The server's background job workers are not needed, and would take the CPU from the test.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, server, 90, "mlflow server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    yield url
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


def test_watch_cycles_promote_the_better_run_and_serve_switches_without_dropping_a_request(
    tmp_path, tiny_base, mlflow_server
) -> None:
    from niche.serve.app import create_app
    from niche.serve.base import SamplingParams
    from niche.serve.registry import ChampionPoller
    from niche.serve.torch_engine import TorchEngine

    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "specialists"
    name = "watched"
    write_jsonl(data / "batch1.jsonl", ticket_rows(60))

    # Cycle 1: the first run is promoted whatever it scores (there is no champion); this one learned nothing.
    first = watch_once(watched_config(tiny_base, out, name, WEAK), data, show_progress=False)
    assert first.check.reasons == ["first run: no earlier pipeline run on this data"]
    assert first.pipeline.promoted and first.pipeline.decision["version"] == "1"
    quiet = watch_once(watched_config(tiny_base, out, name), data, show_progress=False)
    assert not quiet.check.fire and quiet.pipeline is None

    engine = TorchEngine(out, max_loaded=2)
    poller = ChampionPoller(engine, interval=0.3).start()
    answered: list[str] = []
    failures: list[str] = []
    stop_client = threading.Event()
    with running(create_app(engine)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)

        def ask() -> str:
            reply = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "ticket 5000: site is down again"}],
                max_tokens=8,
                temperature=0,
            )
            return reply.system_fingerprint

        def steady_client() -> None:
            while not stop_client.is_set():
                try:
                    answered.append(ask())
                except Exception as error:  # noqa: BLE001 - every failure is collected and fails the test
                    failures.append(repr(error))

        requests = threading.Thread(target=steady_client, daemon=True)
        requests.start()
        try:
            # Cycle 2: new data arrives; the well-trained candidate beats the champion and is promoted.
            write_jsonl(data / "batch2.jsonl", ticket_rows(30, offset=1000))
            second = watch_once(watched_config(tiny_base, out, name), data, show_progress=False)
            assert second.check.reasons == ["30 new examples (trigger at 20)"]
            decision = second.pipeline.decision
            assert decision["promoted"] and decision["version"] == "2", decision
            assert decision["candidate"] > decision["champion"]
            deadline = time.monotonic() + 30
            while f"{name}@v2" not in answered[-3:] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert answered[-1] == f"{name}@v2", answered[-5:]

            # Cycle 3: a worse candidate stays a challenger, and the server keeps the champion.
            write_jsonl(data / "batch3.jsonl", ticket_rows(30, offset=2000))
            third = watch_once(watched_config(tiny_base, out, name, WEAK), data, show_progress=False)
            assert not third.pipeline.promoted and third.pipeline.decision["version"] == "3"
            assert "does not beat the champion" in third.pipeline.decision["reason"]
            assert tracking.version_with_alias(name, tracking.CHAMPION).version == "2"
            assert tracking.version_with_alias(name, tracking.CHALLENGER).version == "3"
            time.sleep(1.0)
            assert answered[-1] == f"{name}@v2"
        finally:
            stop_client.set()
            requests.join(timeout=60)
            poller.stop()
        assert not failures, failures[:3]
        assert answered.count(f"{name}@v1") >= 1 and answered.count(f"{name}@v2") >= 1
        assert all(fingerprint in (f"{name}@v1", f"{name}@v2") for fingerprint in answered)

        # Rollback through the registry, then forward again while a long request decodes on the old adapter.
        tracking.promote(name, "1")
        assert poller.check_once() == [name] and ask() == f"{name}@v1"
        # Version 1 learned nothing, so it samples text until max_tokens instead of stopping after a label.
        in_flight = engine.submit(
            name, [{"role": "user", "content": "ticket 6000"}], SamplingParams(max_tokens=440, temperature=1.0, seed=0)
        )
        pieces = in_flight.stream()
        next(pieces)
        tracking.promote(name, "2")
        assert poller.check_once() == [name]
        assert in_flight.adapter in engine.retired, "the old adapter must stay until its request is done"
        *_, completion = pieces
        assert completion.finish_reason == "length" and in_flight.revision == "v1"
        assert ask() == f"{name}@v2"
        assert in_flight.adapter not in engine.retired
    engine.close()


def test_watch_loop_wakes_on_new_files(tmp_path, tiny_base, monkeypatch) -> None:
    monkeypatch.setenv("NICHE_TRACKING", "off")
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "batch1.jsonl", ticket_rows(45))
    config = pipeline_config(
        tiny_base, tmp_path / "out", "pipe_loop", "watch.poll_seconds=300", "watch.settle_seconds=0.2"
    )
    outcomes = []
    stop = threading.Event()
    loop = threading.Thread(
        target=watch, args=(config, data), kwargs={"stop": stop, "on_outcome": outcomes.append, "show_progress": False}
    )
    loop.start()
    try:
        deadline = time.monotonic() + 120
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outcomes and outcomes[0].pipeline is not None and outcomes[0].pipeline.promoted
        write_jsonl(data / "batch2.jsonl", ticket_rows(5, offset=500))  # a file event, far before the 300 s poll
        deadline = time.monotonic() + 30
        while len(outcomes) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(outcomes) == 2 and outcomes[1].check.new_rows == 5 and outcomes[1].pipeline is None
    finally:
        stop.set()
        loop.join(timeout=60)
    assert not loop.is_alive()
