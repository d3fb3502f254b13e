"""The README's screenshots of niche studio, taken in headless Chromium (Debian's `chromium`) from a real
`niche studio` over a specialists directory, e.g. the one `make demo` writes:

    .venv/bin/python docs/studio_screenshots.py specialists/ [--out docs/images]

Views: the cards, a specialist's details, compare (its answer beside the base's, streamed), the data check of its
training file, a training job in progress (started from the page with a few steps, then cancelled; with
`--finish-job` the form's defaults, watched until the new specialist's card appears), serving and the reports.
Everything runs on a scratch copy of DIR: the page's job, uploads and state never touch DIR or DIR.studio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

VIEWPORT = {"width": 1366, "height": 860}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"niche studio exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("niche studio did not start")


def first_input(data_file: Path) -> str:
    row = json.loads(data_file.read_text().splitlines()[0])
    return row.get("text") or row.get("input") or row.get("prompt") or json.dumps(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    parser.add_argument(
        "--finish-job", action="store_true", help="let the page's training run (form defaults) finish, not cancel it"
    )
    args = parser.parse_args()
    directory = args.directory.resolve()
    specialist = next(path for path in sorted(directory.iterdir()) if (path / "niche.json").is_file())
    manifest = json.loads((specialist / "niche.json").read_text())
    train_file = Path(manifest["data"]["train"]["path"])
    test_file = Path(manifest["data"]["test"]["path"]) if "test" in manifest["data"] else train_file
    args.out.mkdir(parents=True, exist_ok=True)
    # A scratch copy of the specialists, so the page's training job and uploads never touch DIR or DIR.studio.
    scratch = Path(tempfile.mkdtemp(prefix="niche-screenshots-"))
    shutil.copytree(directory, scratch / directory.name, symlinks=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The server's log goes to a file: a pipe nobody reads fills up and blocks the server's next write.
    server_log = open(scratch / "studio.log", "w")  # noqa: SIM115 - closed with the server below
    process = subprocess.Popen(
        [sys.executable, "-m", "niche.cli", "studio", str(scratch / directory.name), "--port", str(port)],
        stdout=server_log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(url, process, scratch / "studio.log")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)

            def shot(name: str) -> None:
                page.wait_for_timeout(400)
                page.screenshot(path=str(args.out / f"studio-{name}.png"))
                print(f"wrote {args.out / f'studio-{name}.png'}")

            page.goto(url)
            expect(page.locator("article.card").first).to_be_visible()
            shot("specialists")
            page.goto(f"{url}/#/specialist/{specialist.name}")
            expect(page.locator("svg.chart").first).to_be_visible()
            shot("details")
            page.goto(f"{url}/#/compare/{specialist.name}")
            page.fill("#input", first_input(test_file))
            page.fill("#max-tokens", "48")
            page.click("#run")
            for column in page.locator("section.column").all():
                expect(column).to_have_attribute("data-done", "true", timeout=120_000)
            page.locator("section.column").last.get_by_role("button", name="Show the prompt it received").click()
            shot("compare")
            page.goto(f"{url}/#/train")
            page.locator(f'[data-check="{train_file}"]').click()
            expect(page.locator("#data-report")).to_be_visible()
            page.locator(f'[data-use="{train_file}"]').click()
            if not args.finish_job:
                page.fill("#field-training-max_steps", "40")
            shot("train")
            page.click("#start-training")
            expect(page.locator("#job")).to_contain_text("step ", timeout=300_000)
            page.wait_for_timeout(45_000)
            shot("job")
            if args.finish_job:
                # What a new user does: the form's defaults, watched to the end; the new card then shows its eval.
                expect(page.locator("#job-state")).to_have_text("succeeded", timeout=3_600_000)
                shot("job-done")
                page.goto(url)
                expect(page.locator("article.card")).to_have_count(2)
                expect(page.locator("article.card").last).to_contain_text("vs base", timeout=30_000)
                shot("specialists-after")
            else:
                page.click("#cancel-job")
                expect(page.locator("#job-state")).to_have_text("cancelled", timeout=120_000)
            for _ in range(6):
                body = {
                    "model": "auto",
                    "messages": [{"role": "user", "content": first_input(test_file)}],
                    "max_tokens": 16,
                }
                request = urllib.request.Request(
                    f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
                )
                urllib.request.urlopen(request, timeout=120).read()
            page.goto(f"{url}/#/serving")
            page.wait_for_timeout(3000)
            shot("serving")
            page.goto(f"{url}/#/reports")
            page.wait_for_timeout(1500)
            shot("reports")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
        server_log.close()
        shutil.rmtree(scratch, ignore_errors=True)  # the studio's state went beside the copy, inside scratch


if __name__ == "__main__":
    main()
