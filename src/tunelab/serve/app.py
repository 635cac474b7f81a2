"""The prediction service: a FastAPI app for a classifier run, and `serve()` that runs it with uvicorn.

    POST /v1/predict   {"texts": [...]} -> label, score and every class probability per text
    GET  /v1/model     name, version, backend, labels, the run's metrics
    GET  /health       the process is up          GET /ready   the model is loaded
    GET  /metrics      Prometheus text format     GET /        the web page
"""

# No `from __future__ import annotations` here: FastAPI must see PredictRequest, a class built per
# app (its limit is a setting), as a real annotation, not as a string it cannot resolve.
import asyncio
import hmac
import importlib.resources
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.serve.backends import load_scorer, model_version, onnx_path
from tunelab.serve.batching import MicroBatcher, NotRunning, QueueFull
from tunelab.serve.docs import offline_fastapi
from tunelab.serve.holder import LoadedModel, ModelHolder, NotReady, finite
from tunelab.serve.metrics import ServiceMetrics
from tunelab.serve.settings import ServeSettings

log = logging.getLogger("tunelab.serve")

API_KEY_ENV = "TUNELAB_API_KEY"
SPEC_ENV = "TUNELAB_SERVE_SPEC"  # how `--workers N` hands the run and settings to each worker process
ROUTES = {"/", "/health", "/ready", "/metrics", "/v1/model", "/v1/predict", "/openapi.json", "/docs"}


# --- schema ------------------------------------------------------------------------------
class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="its probability")
    probabilities: dict[str, float] = Field(description="every class's probability")


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    version: str
    backend: str
    source: str
    labels: list[str]
    metrics: dict[str, Any]


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong and how to fix it, in one line")


def run_loader(run: Run | str | os.PathLike, backend: str = "torch", threads: int | None = None) -> Callable[[], LoadedModel]:
    """A function that loads a classifier run into a LoadedModel (called off the event loop)."""
    run = run if isinstance(run, Run) else Run.open(run)

    def load() -> LoadedModel:
        scorer = load_scorer(run, backend, threads)
        return LoadedModel(scorer, run.path.name, model_version(run, backend), str(run.path), finite(run.metrics))

    return load


# --- the app -----------------------------------------------------------------------------
def create_app(
    loader: Callable[[], LoadedModel] | Run | str | os.PathLike,
    settings: ServeSettings | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The service for one model. `loader` is a run directory or a function returning a LoadedModel.

    The model loads in the background once the app starts: /health answers at once, /ready and the
    prediction routes answer 503 until it is in. `app.state.holder.swap(...)` replaces it live.
    `api_key` defaults to $TUNELAB_API_KEY; empty means no key is needed.
    """
    settings = settings or ServeSettings()
    if not callable(loader):
        loader = run_loader(loader, settings.backend, settings.threads)
    api_key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
    holder = ModelHolder()
    batcher = MicroBatcher(holder.score, settings.max_batch, settings.max_wait_ms, settings.max_queue)
    metrics = ServiceMetrics(lambda: batcher.depth)
    batcher.on_batch = metrics.observe_batch

    async def load_model() -> None:
        try:
            holder.swap(await asyncio.to_thread(loader))
            metrics.ready.set(1)
            log.info("model loaded: %s", holder.current.name if holder.current else "?")
        except Exception as error:  # reported by /ready; the process stays up for inspection
            holder.error = str(error) or type(error).__name__
            log.exception("loading the model failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        loading = asyncio.create_task(load_model())
        yield
        loading.cancel()
        await batcher.stop()  # every queued request is answered first

    app = offline_fastapi(
        title="tunelab prediction service",
        version="1",
        description="Text classification with a fine-tuned tunelab run. Concurrent requests are micro-batched.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.settings = settings

    # --- authentication: X-API-Key or Authorization: Bearer (either works) ---
    # The ApiKey middleware enforces it before the body is read (so a stranger learns nothing from
    # validation messages); these dependencies only declare the schemes in the OpenAPI schema.
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description=f"the key in ${API_KEY_ENV}, if set")
    bearer = HTTPBearer(auto_error=False, description=f"the key in ${API_KEY_ENV}, if set")

    def authorize(key: str | None = Depends(key_header), token: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        return None

    max_texts = settings.max_texts

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["what a wonderful day"]}]})
        texts: list[str] = Field(min_length=1, max_length=max_texts, description=f"1 to {max_texts} texts to classify")

        @field_validator("texts")
        @classmethod
        def _clean(cls, texts: list[str]) -> list[str]:
            # JSON may carry lone surrogates (\ud800) that no tokenizer accepts; they become U+FFFD.
            return [t.encode("utf-8", "replace").decode("utf-8") if not t.isascii() else t for t in texts]

    def ready_model() -> LoadedModel:
        model = holder.current
        if model is None:
            raise StarletteHTTPException(503, holder.error and f"model failed to load: {holder.error}" or "model is loading; retry shortly",
                                         headers={"Retry-After": "1"})
        return model

    errors = {413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}
    guarded: list = []
    if api_key:  # the schema claims a key only when one is needed
        errors[401] = {"model": ErrorBody}
        guarded = [Depends(authorize)]

    @app.post("/v1/predict", response_model=PredictResponse, responses=errors, dependencies=guarded)
    async def predict(body: PredictRequest) -> PredictResponse:
        """Label, score and every class's probability for each text, in the order given."""
        from tunelab.models.classifier import softmax
        from tunelab.predict import describe

        ready_model()
        try:
            logits, model = await batcher.submit(body.texts)
        except QueueFull:
            raise StarletteHTTPException(503, f"the queue is full ({settings.max_queue} texts waiting); retry shortly",
                                         headers={"Retry-After": "1"}) from None
        except (NotRunning, NotReady):
            raise StarletteHTTPException(503, "the service is not accepting work; retry shortly", headers={"Retry-After": "1"}) from None
        return PredictResponse(
            model=ModelRef(name=model.name, version=model.version),
            predictions=[Prediction(**p) for p in describe(model.labels, softmax(logits))],
        )

    @app.get("/v1/model", response_model=ModelInfo, responses=errors, dependencies=guarded)
    async def model_info() -> ModelInfo:
        """Name, version, backend, labels and the run's evaluation metrics."""
        model = ready_model()
        return ModelInfo(name=model.name, version=model.version, backend=model.backend, source=model.source,
                         labels=model.labels, metrics=model.metrics)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (it may still be loading the model)."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorBody}})
    async def ready() -> dict[str, str]:
        """The model is loaded and predictions are served."""
        model = ready_model()
        return {"status": "ready", "name": model.name, "version": model.version}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Requests by route and status, latency and batch-size histograms, queue depth (Prometheus text format)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    # --- every error is one JSON line: {"error": "..."}; no input can reach a 500 ---
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400 and request.url.path == "/v1/predict":
            # FastAPI's 400 for a body it cannot decode (e.g. not UTF-8): malformed input, like bad JSON.
            return JSONResponse({"error": "the body is not valid UTF-8 JSON; send {\"texts\": [\"...\"]}"}, status_code=422)
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": readable(error.errors(), max_texts)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error while serving the request; see the server log"}, status_code=500)

    # Outermost last: metrics see every response, the key is checked before the body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKey, key=api_key)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def readable(errors: list[dict[str, Any]], max_texts: int) -> str:
    """pydantic's validation errors as one line a person can act on (the input itself is never echoed)."""
    parts = []
    for error in errors[:5]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON ({reason}); send {{\"texts\": [\"...\"]}}" if reason else
                         "the body is not valid JSON; send {\"texts\": [\"...\"]}")
        elif kind == "too_long" and loc == ["texts"]:
            parts.append(f"texts: at most {max_texts} texts per request; split the request")
        elif kind == "too_short" and loc == ["texts"]:
            parts.append("texts: send at least one text")
        elif not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
            parts.append("the body must be a JSON object like {\"texts\": [\"...\"]}")
        elif kind == "missing" and not loc:
            parts.append("the body is empty; send {\"texts\": [\"...\"]}")
        else:
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


# --- ASGI middleware (plain ASGI: they see every request, including ones that never reach a route) ---
class BodyLimit:
    """413 for a body over max_bytes, whether announced by Content-Length or streamed in chunks.

    The 413 goes out before the body is read. Closing then would make the kernel reset a connection
    that still has unread bytes, and a client that sends its whole body before reading (Python's
    urllib) sees "connection reset" instead of the 413. So the rest of the body is read and thrown
    away first ("lingering close"), up to DRAIN_BYTES or DRAIN_SECONDS; a client that stops sending
    on seeing the 413 (curl, httpx) disconnects and ends the drain at once.
    """

    DRAIN_BYTES = 64 * 2**20
    DRAIN_SECONDS = 10.0

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send, receive, unread=int(declared))
            return
        # Read the body up to the limit before the app sees it; it is small by construction.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, receive if message.get("more_body", False) else None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def error_body(self) -> bytes:
        return json.dumps({"error": f"request body is larger than {self.max_bytes} bytes; send fewer or shorter texts"}).encode()

    async def _too_large(self, send: Send, receive: Receive | None, unread: int = 0) -> None:
        """Send the 413; then drain what is left of the body (`receive` is None when nothing is)."""
        message = self.error_body()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(message)).encode()),
                                (b"connection", b"close")]})
        # The whole answer is on the wire, but the response stays open (more_body) while the body is
        # drained: the server closes the connection as soon as the response is complete.
        await send({"type": "http.response.body", "body": message, "more_body": True})
        if receive is not None and unread <= self.DRAIN_BYTES:
            try:
                await asyncio.wait_for(self._drain(receive), self.DRAIN_SECONDS)
            except asyncio.TimeoutError:
                pass
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drain(self, receive: Receive) -> None:
        drained = 0
        while drained <= self.DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            drained += len(message.get("body", b""))


class ApiKey:
    """401 for /v1/ routes unless the request carries the key (X-API-Key or Authorization: Bearer)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.key or scope["type"] != "http" or not scope["path"].startswith("/v1/") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        message = json.dumps({"error": "missing or wrong API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(message)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": message})

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key", b"")
        authorization = headers.get(b"authorization", b"")
        if not given and authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        return hmac.compare_digest(given, self.key)


class RequestMetrics:
    """Counts every response by route and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            # Unknown paths share one label so a scan cannot blow up the metric's cardinality.
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.observe_request(route, status, time.perf_counter() - start)


PAGE = importlib.resources.files("tunelab.serve").joinpath("static/index.html").read_text(encoding="utf-8")


# --- running it --------------------------------------------------------------------------
def check_servable(run_path: str | os.PathLike, backend: str) -> Run:
    """Fail before uvicorn starts, with one line, for anything the service could not load."""
    run = Run.open(run_path)
    run.model_dir  # noqa: B018 - raises for a scikit-learn baseline run
    if backend != "torch":
        onnx_path(run, backend)
    return run


def _is_causal_lm(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return (folder / "adapter_config.json").is_file()
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def is_causal_lm(source: str | os.PathLike) -> bool:
    """A causal-LM catalogue name, folder or sft run (served by tunelab.serve.openai), not a classifier run."""
    from tunelab.models.catalogue import CATALOGUE

    if str(source) in CATALOGUE:
        return CATALOGUE[str(source)].kind == "causal-lm"
    path = Path(source)
    return _is_causal_lm(path) or _is_causal_lm(path / "model")


def serve(run_path: str | os.PathLike, settings: ServeSettings | None = None) -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM; in-flight requests finish before exit.

    A causal-LM folder or run goes to the OpenAI-compatible server (tunelab.serve.openai) instead.
    """
    import uvicorn

    settings = settings or ServeSettings()
    if is_causal_lm(run_path):
        _serve_causal_lm(run_path, settings)
        return
    run = check_servable(run_path, settings.backend)
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                  timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_s)))
    if settings.workers == 1:
        uvicorn.run(create_app(run, settings), **common)
        return
    # Several processes need an import string: each worker rebuilds the app from the environment.
    os.environ[SPEC_ENV] = json.dumps({"run": str(run.path), "settings": settings.model_dump()})
    uvicorn.run("tunelab.serve.app:app_from_env", factory=True, workers=settings.workers, **common)


def _serve_causal_lm(source: str | os.PathLike, settings: ServeSettings) -> None:
    # serve/openai.py belongs to the causal-LM feature; it is used only through its public serve_lm().
    from tunelab.serve.openai import serve_lm

    serve_lm(str(source), host=settings.host, port=settings.port, threads=settings.threads, log_level=settings.log_level)


def app_from_env() -> FastAPI:
    spec = json.loads(os.environ[SPEC_ENV])
    return create_app(spec["run"], ServeSettings(**spec["settings"]))
