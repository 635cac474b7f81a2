"""The web page in a real headless Chromium: type a text, click Predict, see one bar per class; and
/docs on the classifier and LM services lists every operation of their OpenAPI schema.

Needs Debian's `chromium` and the `playwright` Python package (its driver only: the browser is the
system one, never a downloaded build). Saves screenshots to test-artifacts/ (serve_page.png, docs_*.png).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._serve_fixtures import serving
from tests.conftest import browser_or_skip
from tunelab.serve.app import create_app

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


def test_page_predicts_and_draws_bars(trained_run) -> None:
    sync_api = browser_or_skip(CHROMIUM)
    from tunelab.prediction import predict

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


@pytest.fixture(scope="module")
def lm_app(tmp_path_factory):
    from tests._lm_fixtures import write_tiny_llama
    from tunelab.lm.generate import Generator
    from tunelab.serve.openai import create_openai_app

    generator = Generator(write_tiny_llama(tmp_path_factory.mktemp("tiny-llama")), precision="fp32")
    return create_openai_app(generator, model_name="tiny", api_key="")


@pytest.mark.parametrize("service", ["classifier", "lm"])
def test_docs_page_lists_every_operation(service, request) -> None:
    # Swagger UI 4.x cannot read OpenAPI 3.1 and shows "Unable to render this definition" (still a 200).
    sync_api = browser_or_skip(CHROMIUM)
    import httpx

    if service == "classifier":
        app, ready = create_app(request.getfixturevalue("trained_run"), api_key=""), "/ready"
    else:
        app, ready = request.getfixturevalue("lm_app"), "/health"
    console_errors: list[str] = []
    requests: list[str] = []
    with serving(app, ready=ready) as url, sync_api.sync_playwright() as p:
        schema = httpx.get(url + "/openapi.json").json()
        expected = sorted(f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item)
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url + "/docs", wait_until="load")
            # Rendered, or the error Swagger UI shows instead (then asserted against below).
            page.wait_for_function("document.querySelector('.opblock') || document.body.innerText.includes('Unable to render')", timeout=15_000)
            listed = page.evaluate(
                """Array.from(document.querySelectorAll('.opblock')).map(b =>
                    b.querySelector('.opblock-summary-method').textContent.trim() + ' ' +
                    b.querySelector('.opblock-summary-path').getAttribute('data-path'))"""
            )
            text = page.inner_text("body")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"docs_{service}.png"), full_page=True)
            assert "Unable to render" not in text, text[:300]
            title = page.inner_text(".info .title")
        finally:
            browser.close()

    assert sorted(listed) == expected and len(expected) >= 2
    assert schema["info"]["title"] in title
    assert console_errors == []
    assert all(u.startswith(url) for u in requests), requests  # offline: nothing fetched from elsewhere
