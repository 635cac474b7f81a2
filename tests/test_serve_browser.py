"""The web page in a real headless Chromium: type a text, click Predict, see one bar per class.

Needs Debian's `chromium` and the `playwright` Python package (its driver only: the browser is the
system one, never a downloaded build). Saves a screenshot to test-artifacts/serve_page.png.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._serve_fixtures import serving
from tunelab.serve.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def test_page_predicts_and_draws_bars(trained_run) -> None:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from tunelab.predict import predict

    text = "good great excellent wonderful"
    expected = predict(trained_run, [text])[0]
    console_errors: list[str] = []
    requests: list[str] = []
    with serving(create_app(trained_run, api_key="")) as url, sync_api.sync_playwright() as p:
        # launch() gives every browser a fresh temporary profile (the --user-data-dir), removed on close.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url + "/", wait_until="load")
            page.wait_for_function("document.getElementById('model').textContent.includes('version')", timeout=15_000)
            assert page.is_hidden("#result")
            page.fill("#text", text)
            page.click("#go")
            page.wait_for_selector("#result .bar", timeout=15_000)
            bars = page.evaluate(
                """Array.from(document.querySelectorAll('#bars .bar')).map(b => ({
                    label: b.dataset.label, pct: b.querySelector('.pct').textContent,
                    width: b.querySelector('.fill').getBoundingClientRect().width,
                    track: b.querySelector('.track').getBoundingClientRect().width,
                    best: b.classList.contains('best')}))"""
            )
            verdict = page.inner_text("#verdict")
            header = page.inner_text("#model")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

            page.fill("#text", "   ")
            page.click("#go")
            empty_error = page.inner_text("#error")
        finally:
            browser.close()

    assert console_errors == []
    assert all(u.startswith(url) for u in requests), requests  # nothing fetched from elsewhere
    assert trained_run.name in header
    assert sorted(b["label"] for b in bars) == sorted(expected["probabilities"])
    assert f"Predicted: {expected['label']}" in verdict
    assert [b["label"] for b in bars if b["best"]] == [expected["label"]]
    for bar in bars:  # each bar's drawn width is its probability
        p_label = expected["probabilities"][bar["label"]]
        assert bar["pct"] == f"{100 * p_label:.1f}%"
        assert bar["width"] / bar["track"] == pytest.approx(p_label, abs=0.02)
    assert bars[0]["label"] == expected["label"]  # sorted, most probable first
    assert "Type a text first" in empty_error
    assert (ARTIFACTS / "serve_page.png").stat().st_size > 5_000
