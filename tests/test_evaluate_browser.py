"""report.html in a real headless Chromium: it renders, every image loads, no console errors, no network.

Needs Debian's `chromium` and the `playwright` Python package (its driver only: the browser is the
system one, never a downloaded build). Saves a full-page screenshot to test-artifacts/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._evaluate_fixtures import run_copy
from tests.conftest import browser_or_skip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from tunelab.evaluation import evaluate_run

    run = run_copy(tmp_path_factory, tmp_path_factory.mktemp("browser"), ["business", "sport", "tech"])
    evaluate_run(run, bias=True, progress=False)
    return run / "report.html"


def test_report_renders_in_chromium(report: Path) -> None:
    sync_api = browser_or_skip(CHROMIUM)

    console_errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        # launch() gives every browser a fresh temporary profile (the --user-data-dir), removed on close.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("requestfailed", lambda r: console_errors.append(f"failed request {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))")
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent.trim())")
            body = page.inner_text("body")
            title = page.title()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "evaluate_report.png"), full_page=True)
        finally:
            browser.close()

    assert console_errors == []
    # Self-contained: the page itself is the only thing fetched; images are data: URIs.
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert "run" in title
    assert {
        "Run summary",
        "Generalisation check",
        "Metrics per class",
        "Confusion matrix",
        "Plots",
        "Most confident mistakes",
        "Bias probe",
        "Data profile",
    } <= set(headings)
    alts = {i["alt"] for i in images}
    assert {
        "Training and eval loss",
        "Training and eval accuracy",
        "Confusion matrix",
        "ROC curves (one vs rest)",
        "Precision-recall curves",
        "Reliability diagram",
    } <= alts
    broken = [i for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert broken == []
    assert "Possible over-fitting" in body  # the fixture's eval loss rises after epoch 2
    assert "texts also appear in train" in body  # a data-profile warning
    assert (ARTIFACTS / "evaluate_report.png").stat().st_size > 10_000
