"""The ladder's HTML report as a browser renders it: headless Chromium (Debian's `chromium`, installed by `make`)."""

import shutil
import subprocess

from PIL import Image

from niche.ladder import LadderReport, Rung, write_ladder_report

RECOMMENDED_BLUE = (0x2B, 0x6C, 0xB0)


def sample_report() -> LadderReport:
    labels = ["billing", "outage", "security"]
    references = labels * 4
    rungs = [
        Rung("base", {"accuracy": 0.33}, 0.33, 9.0, 900, 90, 280, 350, 0.03, 0.003, ["billing"] * 12),
        Rung("base+rag", {"accuracy": 0.75}, 0.75, 1.2, 800, 700, 780, 900, 0.032, 0.022, references[:-3] + ["x"] * 3),
        Rung(
            "specialist", {"accuracy": 0.92}, 0.92, 6.0, 600, 90, 320, 470, 0.045, 0.004, references[:-1] + ["outage"]
        ),
        Rung("specialist+rag", {"accuracy": 0.87}, 0.87, 0.7, 500, 700, 1100, 1500, 0.056, 0.039, references),
    ]
    log = [{"step": step, "loss": 2 / step} for step in range(10, 130, 10)] + [
        {"step": step, "eval_loss": 1.5 / step} for step in (40, 80, 120)
    ]
    forgetting = {
        "questions": 205,
        "general_text_lines": 200,
        "base": {"perplexity": 600.0, "accuracy": 0.64},
        "specialist": {"perplexity": 590.0, "accuracy": 0.58},
        "accuracy_relative_change": -0.094,
        "perplexity_relative_change": -0.017,
        "threshold": 0.05,
        "forgetting": True,
    }
    return LadderReport(
        "specialists/tickets", 12, "label", "accuracy", 0.9, 0.1, rungs, "specialist", "the cheapest rung that reaches it",
        retrieval={"chunks": 28, "recall@3": 0.9, "mrr": 0.8}, forgetting=forgetting, training_log=log, labels=labels,
        references=references,
    )  # fmt: skip


def test_report_renders_in_headless_chromium_with_every_plot(tmp_path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium package is missing: `make test` installs it (apt-get install chromium)"
    page = write_ladder_report(sample_report(), tmp_path / "report") / "ladder.html"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )
    assert dom.stdout.count("<img") == 5 and 'id="recommendation"' in dom.stdout
    assert "Uncaught" not in dom.stderr and "Failed to load resource" not in dom.stderr
    shot = tmp_path / "page.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1000,3200", "--hide-scrollbars", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 3200)
    colours = image.getcolors(maxcolors=1 << 20)
    blue = sum(count for count, colour in colours if all(abs(a - b) < 12 for a, b in zip(colour, RECOMMENDED_BLUE)))
    assert blue > 2000, "the plots (the recommended rung's bars) are drawn on the page"
    assert len(colours) > 200, "not a blank page"
