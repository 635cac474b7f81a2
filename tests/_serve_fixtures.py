"""Helpers for the serving tests: a controllable fake scorer, and an app with its lifespan running."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
from fastapi.testclient import TestClient

from tunelab.serve.holder import LoadedModel


class FakeScorer:
    """Logits from text length; records every batch; can be held inside a forward pass by a gate."""

    backend = "fake"

    def __init__(self, labels=("no", "yes"), gate: threading.Event | None = None, fail_on: str | None = None):
        self.labels = list(labels)
        self.gate = gate
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.entered = threading.Event()

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("forward pass exploded")
        lengths = np.array([len(t) for t in texts], dtype=np.float32)
        return np.stack([np.zeros_like(lengths), lengths / 10.0 - 1.0], axis=1)


def fake_model(scorer: FakeScorer | None = None, name: str = "fake", version: str = "v1") -> LoadedModel:
    return LoadedModel(scorer or FakeScorer(), name, version, source="memory", metrics={"accuracy": 0.5, "roc_auc": float("nan")})


@contextlib.contextmanager
def running(app, timeout: float = 60.0) -> Iterator[TestClient]:
    """A TestClient with the app's lifespan running, once the model is ready."""
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + timeout
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, f"not ready: {client.get('/ready').text}"
            time.sleep(0.02)
        yield client


@contextlib.asynccontextmanager
async def async_client(app):
    """An httpx AsyncClient on the app in this event loop (concurrent requests), lifespan running."""
    import asyncio

    import httpx

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for _ in range(3000):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            yield client


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, timeout: float = 60.0, ready: str = "/ready") -> Iterator[str]:
    """The app in a real uvicorn server on loopback (a thread), once `ready` answers 200; yields its base URL."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if httpx.get(url + ready).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def served_on_backend(run, texts: list[str], backend: str, monkeypatch) -> list[dict]:
    """`run`'s service on `backend`: /v1/model names it, /v1/predict answers `texts` (returned); `tunelab serve RUN --backend` starts."""
    import uvicorn
    from typer.testing import CliRunner

    from tunelab.cli import app as cli
    from tunelab.serve.app import create_app
    from tunelab.serve.settings import ServeSettings

    with running(create_app(run, ServeSettings(backend=backend), api_key="")) as client:
        assert client.get("/v1/model").json()["backend"] == backend
        answer = client.post("/v1/predict", json={"texts": texts})
        assert answer.status_code == 200, answer.text
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(app))
    result = CliRunner().invoke(cli, ["serve", str(run), "--backend", backend])
    assert result.exit_code == 0 and len(started) == 1, result.output
    return answer.json()["predictions"]
