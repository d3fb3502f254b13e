"""niche studio in a real browser: Playwright driving Debian's chromium (`executable_path`; browser downloads
never happen here) against a real `niche studio` process on loopback, over tiny specialists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import LABELS, free_port, ticket_rows, wait_until_healthy, write_jsonl
from niche.ladder import write_ladder_report
from test_report_html import sample_report

KEY = "studio-test-key"


def chromium_path() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium package is missing: `make test` installs it (apt-get install chromium)"
    return browser


def tiny_specialists(directory: Path, tiny_base: Path, data: Path) -> None:
    """Two tiny specialists (a generative one with an eval report, and a label head) on the toy ticket task."""
    from niche.config import load_config
    from niche.eval.evaluate import evaluate, write_report
    from niche.train import train

    common = [
        f"base={tiny_base}",
        f"output_dir={directory}",
        f"data.train={data / 'train.jsonl'}",
        f"data.validation={data / 'validation.jsonl'}",
        "prompt.system_prompt=Route the ticket to one of: {labels}.",
        "training.max_steps=6",
        "training.batch_size=4",
        "training.eval_every=3",
        "training.learning_rate=0.01",
        "lora.r=4",
        "lora.alpha=8",
        "tracking.enabled=false",
    ]
    toy = train(load_config(None, [*common, "name=toy", "training.objective=generate"]), show_progress=False)
    train(load_config(None, [*common, "name=toyhead", "training.objective=classify"]), show_progress=False)
    report = evaluate(toy.specialist_dir, data / "test.jsonl", base=str(tiny_base), show_progress=False)
    write_report(report, directory / "reports" / "toy-test")


def start_studio(directory: Path, *arguments: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # Its log goes to a file, never to a pipe: one nobody reads fills up and blocks the server's next write.
    log = (directory.parent / f"studio-{port}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "niche.cli", "studio", str(directory), "--port", str(port), *arguments],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    process.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process, 180, f"niche studio (log: {process.log_path})")  # type: ignore[attr-defined]
    return process, url


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.log_path.read_text()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def studio_dir(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    data = tmp_path_factory.mktemp("studio-data")
    write_jsonl(data / "train.jsonl", ticket_rows(24))
    write_jsonl(data / "validation.jsonl", ticket_rows(6, offset=40))
    write_jsonl(data / "test.jsonl", ticket_rows(9, offset=60))
    directory = tmp_path_factory.mktemp("studio") / "specialists"
    tiny_specialists(directory, tiny_base, data)
    write_ladder_report(sample_report(), directory / "ladder-tickets")
    return directory


@pytest.fixture(scope="module")
def studio(studio_dir: Path) -> Iterator[str]:
    process, url = start_studio(studio_dir)
    try:
        yield url
    finally:
        output = stop(process)
        assert "Traceback" not in output, output[-4000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def screenshot(page: Page, path: Path) -> Path:
    """A full-page screenshot that must show something: many colours and ink over most of its rows."""
    page.screenshot(path=str(path), full_page=True)
    image = Image.open(path).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, f"{path}: a nearly blank screenshot ({len(colours)} colours)"
    background = max(colours)[1]
    rows_with_ink = sum(
        any(image.getpixel((x, y)) != background for x in range(0, image.width, 4)) for y in range(0, image.height, 8)
    )
    assert rows_with_ink > 0.2 * (image.height / 8), f"{path}: mostly empty"
    return path


def request_json(url: str, method: str = "GET", body: dict | None = None, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_the_cards_list_every_specialist_and_the_details_show_its_evaluation(studio, page, tmp_path) -> None:
    page.goto(studio)
    expect(page.locator("article.card")).to_have_count(2)
    assert {page.locator("article.card h2").nth(i).inner_text() for i in range(2)} == {"toy", "toyhead"}
    toy = page.locator('article.card[data-specialist="toy"]')
    expect(toy).to_contain_text("accuracy")
    expect(toy).to_contain_text("vs base")
    expect(page.locator('article.card[data-specialist="toyhead"]')).to_contain_text("label head")
    screenshot(page, tmp_path / "specialists.png")
    toy.get_by_role("link", name="Details").click()
    expect(page.locator("h1")).to_have_text("toy")
    expect(page.locator("table.heat")).to_be_visible()  # the confusion matrix of its eval
    for label in LABELS:
        expect(page.locator("table.heat")).to_contain_text(label)
    assert page.locator("svg.chart path").count() >= 2  # training and validation loss
    expect(page.get_by_text('"manifest_version"')).to_be_visible()
    screenshot(page, tmp_path / "specialist.png")


def test_compare_streams_two_different_answers_into_two_columns(studio, page, tmp_path) -> None:
    page.goto(f"{studio}/#/compare/toy")
    page.fill("#input", "ticket 7: invoice charged twice")
    page.fill("#max-tokens", "8")
    page.select_option("#format", "text")
    page.click("#run")
    columns = page.locator("section.column")
    expect(columns).to_have_count(2)
    for index in range(2):
        expect(columns.nth(index)).to_have_attribute("data-done", "true", timeout=60_000)
    assert sorted(columns.nth(index).get_attribute("data-model") for index in range(2)) == ["base", "toy"]
    base, toy = page.locator('section.column[data-model="base"]'), page.locator('section.column[data-model="toy"]')
    answers = [column.locator(".answer").inner_text() for column in (base, toy)]
    assert all(answers) and answers[0] != answers[1], answers
    # Streamed: the base's eight free-text tokens arrived as several chunks, not one body.
    assert int(base.get_attribute("data-chunks")) > 1
    expect(base.locator(".figures")).to_contain_text("first token")
    toy.get_by_role("button", name="Show the prompt it received").click()
    expect(toy.locator("pre")).to_contain_text("Route the ticket to one of")  # the specialist's stored template
    base.get_by_role("button", name="Show the prompt it received").click()
    expect(base.locator("pre")).to_contain_text("the base model's own template")
    screenshot(page, tmp_path / "compare.png")


def test_auto_names_the_specialist_the_router_picked(studio, page) -> None:
    page.goto(f"{studio}/#/compare")
    page.fill("#input", "ticket 3: phishing email received")
    page.fill("#max-tokens", "4")
    for box in page.locator("input[name=model]").all():
        box.set_checked(box.get_attribute("value") == "auto")
    page.click("#run")
    column = page.locator("section.column").first
    expect(column).to_have_attribute("data-done", "true", timeout=60_000)
    expect(column.locator(".route")).to_contain_text("similarity")


def test_a_malformed_upload_shows_every_problem_with_its_file_and_line(studio, page, tmp_path) -> None:
    bad = tmp_path / "bad-tickets.jsonl"
    rows = [json.dumps(row) for row in ticket_rows(6)]
    rows[1] = '{"text": "unterminated'
    rows[3] = json.dumps({"text": {"a": 1}, "label": "billing"})
    bad.write_text("\n".join(rows) + "\n")
    page.goto(f"{studio}/#/train")
    page.set_input_files("#upload", str(bad))
    report = page.locator("#data-report")
    expect(report).to_contain_text("2 problem(s)")
    expect(report).to_contain_text("bad-tickets.jsonl:2")
    expect(report).to_contain_text("bad-tickets.jsonl:4")
    expect(page.locator("#use-upload")).to_have_count(0)  # a file with problems is not offered for training
    screenshot(page, tmp_path / "data-check.png")


def start_job_from_page(
    page: Page, studio: str, name: str, train_file: Path, steps: int, test_file: Path | None = None
) -> None:
    page.goto(f"{studio}/#/train")
    page.set_input_files("#upload", str(train_file))
    page.click("#use-upload")
    page.fill("#field-name", name)
    if test_file is not None:
        page.fill("#field-data-test", str(test_file))
    page.fill("#field-training-max_steps", str(steps))
    page.fill("#field-training-batch_size", "4")
    page.fill("#field-training-learning_rate", "0.01")
    page.fill("#field-lora-r", "4")
    page.fill("#extra-yaml", "tracking:\n  enabled: false\ntraining:\n  eval_every: 2\n")
    expect(page.locator("#yaml-preview")).to_contain_text(f"name: {name}")
    page.click("#start-training")
    expect(page).to_have_url(re.compile(r"#/jobs/\d+$"))


def test_a_training_job_started_from_the_page_finishes_and_its_card_appears(studio, studio_dir, page, tmp_path) -> None:
    train_file = write_jsonl(tmp_path / "web-tickets.jsonl", ticket_rows(24))
    test_file = write_jsonl(tmp_path / "web-test.jsonl", ticket_rows(9, offset=60))
    start_job_from_page(page, studio, "fromweb", train_file, steps=4, test_file=test_file)
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=240_000)
    screenshot(page, tmp_path / "job.png")
    page.reload()  # the job's record outlives the page
    expect(page.locator("#job-state")).to_have_text("succeeded")
    page.goto(f"{studio}/#/specialists")
    card = page.locator('article.card[data-specialist="fromweb"]')
    expect(card).to_be_visible()
    expect(card).to_contain_text("vs base")  # the job scored it on data.test, as `niche demo` does
    assert (studio_dir / "fromweb" / "niche.json").is_file()
    status, models = request_json(f"{studio}/v1/models")
    assert "fromweb" in {model["id"] for model in models["data"]}  # served at once, no restart
    status, answer = request_json(
        f"{studio}/v1/chat/completions",
        "POST",
        {"model": "fromweb", "messages": [{"role": "user", "content": "ticket 2: site is down again"}]},
    )
    assert status == 200 and answer["choices"][0]["message"]["content"] in LABELS


def test_cancelling_a_job_leaves_nothing_half_written(studio, studio_dir, page, tmp_path) -> None:
    train_file = write_jsonl(tmp_path / "long-tickets.jsonl", ticket_rows(30, offset=5))
    start_job_from_page(page, studio, "cancelme", train_file, steps=100_000)
    expect(page.locator("#job-state")).to_have_text("running", timeout=60_000)
    expect(page.locator("#job")).to_contain_text("step ", timeout=120_000)  # inside the training loop
    page.click("#cancel-job")
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=60_000)
    left = sorted(path.name for path in studio_dir.iterdir() if "cancelme" in path.name)
    assert left == [], left
    page.goto(f"{studio}/#/jobs")
    expect(page.locator("tr[data-job]").first).to_contain_text("cancelled")


def test_serving_view_shows_live_counters_and_reports_render_in_the_page(studio, page, tmp_path) -> None:
    for _ in range(3):
        request_json(
            f"{studio}/v1/chat/completions",
            "POST",
            {
                "model": "toy",
                "messages": [{"role": "user", "content": "ticket 1: site is down again"}],
                "max_tokens": 4,
            },
        )
    page.goto(f"{studio}/#/serving")
    expect(page.locator("#stat-total")).not_to_have_text("0")
    expect(page.locator("#stat-p50")).not_to_have_text("–")
    expect(page.locator("#serving")).to_contain_text("toyhead")
    screenshot(page, tmp_path / "serving.png")
    page.goto(f"{studio}/#/reports")
    expect(page.locator("#reports")).to_contain_text("eval: toy")
    page.click('[data-markdown="0"]')
    expect(page.locator("#markdown-0")).to_be_visible()
    expect(page.locator("#reports")).to_contain_text("ladder: tickets")
    # The ladder's own HTML report, fetched with the page's key and rendered inside the page.
    expect(page.frame_locator("#ladder-0").locator("#recommendation")).to_be_visible()
    screenshot(page, tmp_path / "reports.png")


def test_with_a_key_the_page_asks_for_it_and_the_api_answers_401(studio_dir, browser, tmp_path) -> None:
    process, url = start_studio(studio_dir, "--api-key", KEY)
    try:
        status, body = request_json(f"{url}/studio/api/specialists")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert request_json(f"{url}/v1/models")[0] == 401
        assert request_json(f"{url}/studio/api/specialists", key=KEY)[0] == 200
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        expect(page.locator("#login")).to_be_visible()
        screenshot(page, tmp_path / "login.png")
        page.fill("#login-key", "wrong")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_contain_text("refused")
        page.fill("#login-key", KEY)
        page.click("#login-form button")
        expect(page.locator("article.card")).to_have_count(len(list(studio_dir.glob("*/niche.json"))))
        expect(page.locator("#login")).to_be_hidden()
        context.close()
    finally:
        stop(process)


def test_without_a_key_the_studio_refuses_to_listen_beyond_loopback(studio_dir) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "niche.cli", "studio", str(studio_dir), "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "without an API key" in result.stderr + result.stdout


def test_a_studio_restart_fails_the_job_it_was_running(tmp_path) -> None:
    from niche.studio.jobs import JobRunner, JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.add("orphan", tmp_path / "niche.yaml", tmp_path / "worker.log")
    store.started(job.id, pid=2**22 + 1)
    (tmp_path / ".orphan.tmp-abc").mkdir()
    (tmp_path / ".orphan.checkpoints").mkdir()
    JobRunner(store, tmp_path)
    assert store.get(job.id).state == "failed" and "stopped while this job ran" in store.get(job.id).error
    assert not (tmp_path / ".orphan.tmp-abc").exists() and not (tmp_path / ".orphan.checkpoints").exists()


def test_the_page_api_promotes_and_rolls_back_registry_versions_and_serves_the_champion(tiny_config, tmp_path) -> None:
    """Two registered versions of a specialist: the card shows which one this directory serves, "make champion"
    (the registry's own promote) redeploys the other into the directory and the engine answers with it."""
    from conftest import running
    from niche import tracking
    from niche.serve.app import create_app
    from niche.serve.torch_engine import TorchEngine
    from niche.studio.api import mount_studio
    from niche.train import train

    config = tiny_config("tracking.enabled=false", "name=regtoy")
    trained = train(config, show_progress=False)
    versions = []
    for _ in range(2):
        with tracking.tracked_run("regtoy", "train") as tracker:
            tracker.artifacts(trained.specialist_dir, "specialist")
            versions.append(tracking.register_specialist(tracker, "regtoy", "specialist", {"gate": "passed"}))
    tracking.promote("regtoy", versions[1].version)
    tracking.deploy(versions[1], trained.specialist_dir)
    engine = TorchEngine(config.output_dir, max_batch_size=2)
    app = create_app(engine)
    studio = mount_studio(app, config.output_dir, tmp_path / "state")
    try:
        with running(app) as url:
            status, registry = request_json(f"{url}/studio/api/registry/regtoy")
            assert status == 200 and registry["available"] and registry["deployed"] == versions[1].version
            aliases = {version["version"]: version["aliases"] for version in registry["versions"]}
            assert "champion" in aliases[versions[1].version] and "champion" not in aliases[versions[0].version]
            status, promoted = request_json(
                f"{url}/studio/api/registry/regtoy/promote", "POST", {"version": versions[0].version}
            )
            assert status == 200 and promoted["redeployed"] == ["regtoy"]
            assert tracking.deployed_version(trained.specialist_dir) == versions[0].version
            body = {"model": "regtoy", "messages": [{"role": "user", "content": "ticket 1"}], "max_tokens": 2}
            status, answer = request_json(f"{url}/v1/chat/completions", "POST", body)
            assert answer["system_fingerprint"] == f"regtoy@v{versions[0].version}"  # the rolled-back version
            status, cards = request_json(f"{url}/studio/api/specialists")
            assert cards[0]["registry"]["version"] == versions[0].version
    finally:
        studio.runner.stop()
        engine.close()


def test_the_catalog_reads_every_figure_from_the_artifacts(studio_dir, tmp_path) -> None:
    """What the cards and detail pages show, straight from the files: eval headline, confusion matrix (its cells
    add up to the evaluated rows), wrong rows with their inputs, exports, the ladder's or the training-time
    forgetting reading."""
    from niche.artifact import read_manifest
    from niche.studio import catalog

    detail = catalog.detail(studio_dir, "toy")
    headline, analysis = detail["headline"], detail["analysis"]
    assert headline["metric"] == "accuracy" and headline["rows"] == 9 and headline["base"] is not None
    assert sum(map(sum, analysis["confusion"]["counts"])) == 9 and analysis["confusion"]["labels"] == sorted(LABELS)
    assert len(analysis["worst"]) == analysis["wrong"] and all(
        row["input"].startswith("ticket") for row in analysis["worst"]
    )
    assert detail["curves"] and {"step", "loss"} <= set(detail["curves"][0])
    exports = studio_dir.parent / "exports-probe"
    (exports / "exports" / "toy-gguf-q4_k_m").mkdir(parents=True)
    (exports / "exports" / "toy-gguf-q4_k_m" / "model.gguf").write_bytes(b"x" * 1000)
    assert catalog.exports_of(exports, "toy") == [
        {"target": "gguf-q4_k_m", "path": "exports/toy-gguf-q4_k_m", "bytes": 1000}
    ]

    manifest = read_manifest(studio_dir / "toy")
    ladder = {"path": "ladder-toy", "forgetting": {"accuracy_relative_change": -0.094, "forgetting": True}}
    assert catalog._forgetting(manifest, ladder)["forgetting"] is True
    probed = manifest.model_copy(
        update={
            "metrics": {
                "forgetting_probe": [{"step": 4, "forgetting_probe_accuracy": 0.5, "forgetting_probe_change": -0.02}]
            }
        }
    )
    reading = catalog._forgetting(probed, None)
    assert reading["accuracy_relative_change"] == -0.02 and reading["forgetting"] is False  # threshold 0.05
    assert catalog._forgetting(manifest, None) is None


def test_the_training_form_is_described_and_checked_by_the_config_model(tmp_path) -> None:
    from niche.config import NicheConfig
    from niche.studio import forms

    fields = {field["path"]: field for field in forms.form_fields({"base": "tiny"})}
    assert fields["base"]["default"] == "tiny" and fields["training.objective"]["choices"] == [
        "auto",
        "classify",
        "tag",
        "generate",
    ]
    assert fields["training.max_seq_length"]["default"] == NicheConfig().training.max_seq_length
    assert fields["name"]["required"] and fields["data.train"]["required"]
    train_file = write_jsonl(tmp_path / "rows.jsonl", ticket_rows(6))
    values = {
        "name": "ok",
        "data.train": str(train_file),
        "training.learning_rate": "-1",
        "data.test": "/nowhere.jsonl",
    }
    config, problems, text = forms.validate(values, "lora:\n  r: 0\n", forced={"output_dir": str(tmp_path)})
    assert config is None
    assert {problem["field"] for problem in problems} == {"training.learning_rate", "lora.r", "data.test"}, problems
    assert f"output_dir: {tmp_path}" in text
    config, problems, _ = forms.validate({"name": "ok", "data.train": str(train_file)}, "", forced={"output_dir": "/x"})
    assert problems == [] and config.output_dir == Path("/x") and config.training.learning_rate is None
    _, problems, _ = forms.validate({"name": "ok", "data.train": str(train_file)}, "training: [1")
    assert problems[0]["field"] == "more settings" and "not valid YAML" in problems[0]["message"]
