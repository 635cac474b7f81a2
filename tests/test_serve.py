"""The prediction service: every endpoint and every error code, with the tiny trained run or a fake scorer."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import numpy as np
import pytest

from tests._serve_fixtures import FakeScorer, async_client, fake_model, running, serving
from tunelab.serve.app import create_app
from tunelab.serve.settings import ServeSettings

TEXTS = ["good great wonderful film", "awful bad terrible service", "the table and the chair", ""]


@pytest.fixture(scope="module")
def client(trained_run):
    with running(create_app(trained_run, ServeSettings(max_texts=8, max_body_bytes=4000), api_key="")) as c:
        yield c


def metric(text: str, name: str, **labels) -> float:
    """One sample's value from Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- the happy path, with the real (tiny) model ---------------------------------------------
def test_predict_matches_tunelab_predict(client, trained_run) -> None:
    from tunelab.prediction import predict

    response = client.post("/v1/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["name"] == trained_run.name and len(body["model"]["version"]) == 12
    expected = predict(trained_run, TEXTS)
    assert [p["label"] for p in body["predictions"]] == [e["label"] for e in expected]
    for got, want in zip(body["predictions"], expected):
        assert set(got["probabilities"]) == set(want["probabilities"])
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)
        assert got["score"] == max(got["probabilities"].values())


def test_trained_model_is_served_not_noise(client) -> None:
    # The tiny run learnt which word list decides the class: the service must give those answers.
    labels = [p["label"] for p in client.post("/v1/predict", json={"texts": ["good great excellent", "bad awful terrible"]}).json()["predictions"]]
    assert labels == ["positive", "negative"]


def test_health_ready_model_info(client, trained_run) -> None:
    from tunelab.run import Run

    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["name"] == trained_run.name
    info = client.get("/v1/model").json()
    assert info["labels"] == Run.open(trained_run).labels
    assert info["backend"] == "torch" and info["version"] == ready["version"]
    assert info["metrics"]["accuracy"] == pytest.approx(Run.open(trained_run).metrics["accuracy"])


def test_openapi_docs_and_page(client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/health", "/ready", "/metrics"} <= set(schema["paths"])
    predict_schema = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert predict_schema["maxItems"] == 8 and predict_schema["minItems"] == 1
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Offline docs: Swagger UI's files come from this service, not a CDN.
    assert not re.search(r"https?://", docs.text)
    assets = re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]+)['\"]", docs.text)
    assert assets and all(client.get(a).status_code == 200 for a in assets)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # No network: nothing is loaded from elsewhere.
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page.text)
    assert "/v1/predict" in page.text


def test_metrics_count_requests_batches_queue(client) -> None:
    before = client.get("/metrics").text
    client.post("/v1/predict", json={"texts": TEXTS[:2]})
    client.post("/v1/predict", content=b"{nope", headers={"content-type": "application/json"})
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    ok = ("tunelab_requests_total", {"route": "/v1/predict", "status": "200"})
    bad = ("tunelab_requests_total", {"route": "/v1/predict", "status": "422"})
    assert metric(text, ok[0], **ok[1]) == metric(before, ok[0], **ok[1]) + 1
    assert metric(text, bad[0], **bad[1]) == metric(before, bad[0], **bad[1]) + 1
    assert metric(text, "tunelab_predicted_texts_total") == metric(before, "tunelab_predicted_texts_total") + 2
    assert metric(text, "tunelab_batch_size_texts_count") >= 1
    assert metric(text, "tunelab_request_latency_seconds_count", route="/v1/predict") >= 2
    assert "tunelab_queue_depth_texts 0.0" in text
    assert "tunelab_model_ready 1.0" in text


# --- every error code ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"texts": [1, 2]}', "texts.0: Input should be a valid string"),
        ('{"texts": "one text"}', "texts: Input should be a valid list"),
        ("{not json", "not valid JSON"),
        ("", "the body is empty"),
        ("[]", "must be a JSON object"),
        ('{"texts": []}', "at least one text"),
        ('{"text": ["a"]}', "texts: Field required"),
        (json.dumps({"texts": ["a"] * 9}), "at most 8 texts per request"),
    ],
)
def test_bad_requests_get_422_with_a_readable_line(client, body, message) -> None:
    response = client.post("/v1/predict", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert message in response.json()["error"]
    assert "\n" not in response.json()["error"]


def test_body_over_the_limit_is_413_declared_or_streamed(client) -> None:
    big = json.dumps({"texts": ["word " * 1000]}).encode()
    assert client.post("/v1/predict", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the limit must count the streamed bytes
        for _ in range(10):
            yield b" " * 1000

    response = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "4000 bytes" in response.json()["error"]


def urllib_post(url: str, body, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST with the standard library's urllib: it sends the whole body before it reads the answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_20_mib_body_gets_its_413_with_urllib(trained_run) -> None:
    # The service answers before reading the body; closing at once would reset the connection while
    # urllib is still sending, and urllib would never see the 413. The body is drained first.
    big = b'{"texts": ["' + b"x" * (20 * 2**20) + b'"]}'

    def chunks():  # no Content-Length: the limit is found while streaming
        for _ in range(20):
            yield b" " * 2**20

    with serving(create_app(trained_run, ServeSettings(max_body_bytes=4000), api_key="")) as url:
        status, body = urllib_post(url + "/v1/predict", big)
        assert status == 413 and body == {"error": "request body is larger than 4000 bytes; send fewer or shorter texts"}
        status, body = urllib_post(url + "/v1/predict", chunks(), {"Transfer-Encoding": "chunked"})
        assert status == 413 and "4000 bytes" in body["error"]
        # The service goes on serving on new connections.
        status, body = urllib_post(url + "/v1/predict", json.dumps({"texts": ["good great excellent"]}).encode())
        assert status == 200 and body["predictions"][0]["label"] == "positive"


def test_unknown_route_and_method_are_clean(client) -> None:
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.delete("/v1/predict").status_code == 405


def test_api_key_required_when_set(monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_API_KEY", "s3cret")
    with running(create_app(lambda: fake_model())) as c:
        assert c.post("/v1/predict", json={"texts": ["x"]}).status_code == 401
        wrong = c.post("/v1/predict", json={"texts": ["x"]}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        assert wrong.headers["www-authenticate"] == "Bearer"
        # The key is checked before the body is read: a stranger learns nothing from validation.
        assert c.post("/v1/predict", content=b"{bad", headers={"content-type": "application/json"}).status_code == 401
        assert c.get("/v1/model").status_code == 401
        assert c.post("/v1/predict", json={"texts": ["x"]}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/predict", json={"texts": ["x"]}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # Probes and scrapers need no key.
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        assert c.get("/metrics").status_code == 200 and c.get("/").status_code == 200


def test_not_ready_until_loaded_then_ready() -> None:
    release = threading.Event()

    def slow_loader():
        assert release.wait(10)
        return fake_model()

    from fastapi.testclient import TestClient

    with TestClient(create_app(slow_loader, api_key="")) as c:
        assert c.get("/health").status_code == 200
        for path, method in (("/ready", "get"), ("/v1/model", "get"), ("/v1/predict", "post")):
            response = getattr(c, method)(path, **({"json": {"texts": ["x"]}} if method == "post" else {}))
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert "loading" in response.json()["error"]
        release.set()
        deadline = time.monotonic() + 10
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.post("/v1/predict", json={"texts": ["x"]}).status_code == 200


def test_failed_load_is_reported_by_ready() -> None:
    from fastapi.testclient import TestClient

    def broken():
        raise OSError("model.safetensors is truncated")

    with TestClient(create_app(broken, api_key="")) as c:
        deadline = time.monotonic() + 10
        while "failed" not in c.get("/ready").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        response = c.get("/ready")
        assert response.status_code == 503 and "truncated" in response.json()["error"]
        assert c.get("/health").status_code == 200


def test_full_queue_gets_503_with_retry_after() -> None:
    gate = threading.Event()
    scorer = FakeScorer(gate=gate)
    app = create_app(lambda: fake_model(scorer), ServeSettings(max_batch=2, max_wait_ms=0, max_queue=4), api_key="")

    async def scenario():
        async with async_client(app) as client:
            first = asyncio.create_task(client.post("/v1/predict", json={"texts": ["held"]}))
            while not scorer.entered.is_set():  # the first request is inside the forward pass
                await asyncio.sleep(0.005)
            waiting = [asyncio.create_task(client.post("/v1/predict", json={"texts": ["a", "b"]})) for _ in range(2)]
            while app.state.batcher.depth < 4:
                await asyncio.sleep(0.005)
            rejected = await client.post("/v1/predict", json={"texts": ["c"]})
            metrics = (await client.get("/metrics")).text
            gate.set()
            done = await asyncio.gather(first, *waiting)
            return rejected, metrics, done

    rejected, metrics, done = asyncio.run(scenario())
    assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
    assert "queue is full" in rejected.json()["error"]
    assert "tunelab_queue_depth_texts 4.0" in metrics
    assert [r.status_code for r in done] == [200, 200, 200]


def test_concurrent_requests_share_forward_passes() -> None:
    scorer = FakeScorer()
    app = create_app(lambda: fake_model(scorer), ServeSettings(max_batch=64, max_wait_ms=200), api_key="")
    texts = [f"text number {i}" + "!" * i for i in range(12)]

    async def scenario():
        async with async_client(app) as client:
            scorer.batches.clear()
            return await asyncio.gather(*(client.post("/v1/predict", json={"texts": [t]}) for t in texts))

    responses = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses)
    assert len(scorer.batches) < len(texts)  # grouped
    assert sorted(t for b in scorer.batches for t in b) == sorted(texts)
    # Each response holds its own text's answer, not a neighbour's.
    for text, response in zip(texts, responses):
        p_yes = response.json()["predictions"][0]["probabilities"]["yes"]
        logit = len(text) / 10 - 1
        assert p_yes == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)


def test_swap_keeps_in_flight_batch_on_the_old_model() -> None:
    gate = threading.Event()
    old = FakeScorer(gate=gate)
    app = create_app(lambda: fake_model(old, version="old"), ServeSettings(max_wait_ms=0), api_key="")

    async def scenario():
        async with async_client(app) as client:
            in_flight = asyncio.create_task(client.post("/v1/predict", json={"texts": ["x"]}))
            while not old.entered.is_set():
                await asyncio.sleep(0.005)
            previous = app.state.holder.swap(fake_model(FakeScorer(labels=("a", "b")), name="next", version="new"))
            gate.set()
            first = await in_flight
            second = await client.post("/v1/predict", json={"texts": ["x"]})
            info = await client.get("/v1/model")
            return previous, first, second, info

    previous, first, second, info = asyncio.run(scenario())
    assert previous.version == "old"
    assert first.json()["model"]["version"] == "old" and set(first.json()["predictions"][0]["probabilities"]) == {"no", "yes"}
    assert second.json()["model"] == {"name": "next", "version": "new"}
    assert set(second.json()["predictions"][0]["probabilities"]) == {"a", "b"}
    assert info.json()["labels"] == ["a", "b"]


def test_forward_failure_is_a_clean_json_error_and_the_service_survives() -> None:
    scorer = FakeScorer(fail_on="boom")
    with running(create_app(lambda: fake_model(scorer), api_key="")) as c:
        broken = c.post("/v1/predict", json={"texts": ["boom"]})
        assert broken.status_code == 500 and broken.json() == {"error": "internal error while serving the request; see the server log"}
        assert c.post("/v1/predict", json={"texts": ["fine"]}).status_code == 200


def test_nan_metrics_and_odd_unicode_are_served() -> None:
    with running(create_app(lambda: fake_model(), api_key="")) as c:
        assert c.get("/v1/model").json()["metrics"]["roc_auc"] is None
        # A lone surrogate is valid JSON but no valid text; it is replaced, not a crash.
        response = c.post("/v1/predict", content=b'{"texts": ["\\ud800 x", "\\u0000"]}', headers={"content-type": "application/json"})
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2


def test_undecodable_body_is_422_not_400(client) -> None:
    response = client.post("/v1/predict", content=b'{"texts": ["\xff\xfe"]}', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "UTF-8" in response.json()["error"]
