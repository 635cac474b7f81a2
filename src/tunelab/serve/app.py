"""The prediction service: a FastAPI app for a classifier run, and `serve()` that runs it with uvicorn.

POST /v1/predict   {"texts": [...]} -> label, score and every class probability per text;
                   a pair-classification run's service takes {"pairs": [{"text": ..., "text_pair": ...}, ...]};
                   a token-classification run's answers with each text's entities (serve/entities.py),
                   a multi-label run's with each text's labels over their thresholds and every label's probability (serve/label_sets.py)
GET  /v1/model     name, version, backend, labels, the run's metrics
GET  /health       the process is up          GET /ready   the model is loaded
GET  /metrics      Prometheus text format     GET /        the web page
"""

# No `from __future__ import annotations` here: FastAPI must see PredictRequest, a class built per
# app (its limit is a setting), as a real annotation, not as a string it cannot resolve.
import asyncio
import importlib.resources
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab import hardware
from tunelab.models.multilabel import TASK as MULTI_LABEL_TASK
from tunelab.run import Run
from tunelab.runtime.choice import choose_backend, load_scorer
from tunelab.runtime.scorers import model_version
from tunelab.runtime.tagger import TASK as TOKEN_TASK
from tunelab.serve.batching import MicroBatcher, NotRunning, QueueFull
from tunelab.serve.common import WRONG_KEY, ApiKey, BodyLimit, ErrorBody, configured_key, install_error_handlers, key_schemes, plain_error
from tunelab.serve.docs import offline_fastapi
from tunelab.serve.entities import check_token_servable, entities_router, tagger_loader
from tunelab.serve.holder import LoadedModel, ModelHolder, ModelRef, NotReady, finite
from tunelab.serve.label_sets import check_multilabel_servable, label_set_loader, label_sets_router
from tunelab.serve.metrics import MULTIPROC_ENV, ServiceMetrics
from tunelab.serve.settings import ServeSettings
from tunelab.textpairs import TASK as PAIR_TASK
from tunelab.textpairs import ModelInput

log = logging.getLogger("tunelab.serve")

SPEC_ENV = "TUNELAB_SERVE_SPEC"  # how `--workers N` hands the run and settings to each worker process
MAX_PROBLEMS = 5  # validation problems named in one 422 line; the rest are counted
ROUTES = {"/", "/health", "/ready", "/metrics", "/v1/model", "/v1/predict", "/openapi.json", "/docs"}


# --- schema ------------------------------------------------------------------------------
class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="its probability")
    probabilities: dict[str, float] = Field(description="every class's probability")


class TextPair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the first text: a premise, a question, a sentence")
    text_pair: str = Field(description="the second text: a hypothesis, a passage, a paraphrase candidate")


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


def task_loader(run: Run, settings: ServeSettings) -> Callable[[], LoadedModel]:
    """A function that loads `run` into a LoadedModel for its task: a tagger, a multi-label classifier or a classifier."""
    if run.task == TOKEN_TASK:
        return tagger_loader(run, settings.backend, settings.threads)
    if run.task == MULTI_LABEL_TASK:
        return label_set_loader(run, settings.backend, settings.threads)
    return run_loader(run, settings.backend, settings.threads)


def run_loader(run: Run | str | os.PathLike, backend: str = "torch", threads: int | None = None) -> Callable[[], LoadedModel]:
    """A function that loads a classifier run into a LoadedModel (called off the event loop)."""
    run = run if isinstance(run, Run) else Run.open(run)

    def load() -> LoadedModel:
        scorer = load_scorer(run, backend, threads, say=log.info)
        return LoadedModel(scorer, run.path.name, model_version(run, scorer.backend), str(run.path), finite(run.metrics), pairs=run.is_pair_classifier)

    return load


# --- the routers -------------------------------------------------------------------------
@dataclass
class Service:
    """What the routers of one app share: the model, the batcher in front of it, the metrics, the settings."""

    holder: ModelHolder
    batcher: MicroBatcher
    metrics: ServiceMetrics
    settings: ServeSettings

    @classmethod
    def build(cls, settings: ServeSettings) -> "Service":
        holder = ModelHolder()
        batcher = MicroBatcher(holder.score, settings.max_batch, settings.max_wait_ms, settings.max_queue)
        metrics = ServiceMetrics(lambda: batcher.depth)
        batcher.on_batch = metrics.observe_batch
        return cls(holder, batcher, metrics, settings)

    def ready_model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            error = self.holder.error
            raise StarletteHTTPException(503, f"model failed to load: {error}" if error else "model is loading; retry shortly", headers={"Retry-After": "1"})
        return model

    async def submit(self, inputs: list[ModelInput]) -> tuple[Any, LoadedModel]:
        """The batcher's answer for `inputs`, texts or text pairs (the scorer's output for them, and the model), or a 503 to retry."""
        try:
            return await self.batcher.submit(inputs)
        except QueueFull:
            raise StarletteHTTPException(
                503, f"the queue is full ({self.settings.max_queue} texts waiting); retry shortly", headers={"Retry-After": "1"}
            ) from None
        except (NotRunning, NotReady):
            raise StarletteHTTPException(503, "the service is not accepting work; retry shortly", headers={"Retry-After": "1"}) from None

    def lifespan(self, loader: Callable[[], LoadedModel]):
        """The app's lifespan: the batcher runs and the model loads in the background; on exit every queued request is answered."""

        async def load_model() -> None:
            try:
                self.holder.swap(await asyncio.to_thread(loader))
                self.metrics.ready.set(1)
                log.info("model loaded: %s", self.holder.current.name if self.holder.current else "?")
            except Exception as error:  # reported by /ready; the process stays up for inspection
                self.holder.error = str(error) or type(error).__name__
                log.exception("loading the model failed")

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            await self.batcher.start()
            loading = asyncio.create_task(load_model())
            yield
            loading.cancel()
            await self.batcher.stop()  # every queued request is answered first

        return lifespan


def predict_request(max_texts: int, pairs: bool = False) -> type[BaseModel]:
    """POST /v1/predict's request: {"texts": [...]}, or {"pairs": [...]} for a pair-classification run; its size
    limit is a setting, so the model is built per app. Its `inputs()` are what the model scores."""

    if pairs:

        class PredictRequest(BaseModel):
            model_config = ConfigDict(
                extra="forbid",
                json_schema_extra={
                    "examples": [{"pairs": [{"text": "What is the capital of France?", "text_pair": "France — Government\nCapital - name: Paris"}]}]
                },
            )
            pairs: list[TextPair] = Field(min_length=1, max_length=max_texts, description=f"1 to {max_texts} text pairs to classify")

            @field_validator("pairs")
            @classmethod
            def _clean(cls, pairs: list[TextPair]) -> list[TextPair]:
                return [TextPair(text=_valid_utf8(p.text), text_pair=_valid_utf8(p.text_pair)) for p in pairs]

            def inputs(self) -> list[tuple[str, str]]:
                return [(p.text, p.text_pair) for p in self.pairs]

    else:

        class PredictRequest(BaseModel):
            model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["what a wonderful day"]}]})
            texts: list[str] = Field(min_length=1, max_length=max_texts, description=f"1 to {max_texts} texts to classify")

            @field_validator("texts")
            @classmethod
            def _clean(cls, texts: list[str]) -> list[str]:
                return [_valid_utf8(t) for t in texts]

            def inputs(self) -> list[str]:
                return self.texts

    return PredictRequest


def predict_router(service: Service, pairs: bool = False) -> APIRouter:
    """POST /v1/predict: label, score and every class's probability, for texts or (pairs) text pairs."""
    PredictRequest = predict_request(service.settings.max_texts, pairs)  # noqa: N806 - a class
    router = APIRouter()

    @router.post("/v1/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> PredictResponse:
        """Label, score and every class's probability for each text (or text pair), in the order given."""
        from tunelab.models.classifier import softmax
        from tunelab.prediction import describe

        if service.ready_model().pairs != pairs:  # a registry promotion swapped in a model of the other kind
            raise StarletteHTTPException(503, f"the model now served classifies {'single texts' if pairs else 'text pairs'}; restart the service")
        logits, model = await service.submit(body.inputs())
        return PredictResponse(
            model=ModelRef(name=model.name, version=model.version),
            predictions=[Prediction(**p) for p in describe(model.labels, softmax(logits))],
        )

    return router


def _valid_utf8(text: str) -> str:
    # JSON may carry lone surrogates (\ud800) that no tokenizer accepts; they become U+FFFD.
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def model_router(service: Service) -> APIRouter:
    """GET /v1/model: what is being served."""
    router = APIRouter()

    @router.get("/v1/model", response_model=ModelInfo)
    async def model_info() -> ModelInfo:
        """Name, version, backend, labels and the run's evaluation metrics."""
        model = service.ready_model()
        return ModelInfo(name=model.name, version=model.version, backend=model.backend, source=model.source, labels=model.labels, metrics=model.metrics)

    return router


def health_router(service: Service) -> APIRouter:
    """GET /health, /ready and /metrics: for probes and scrapers, which need no key."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        """The process is up (it may still be loading the model)."""
        return {"status": "ok"}

    @router.get("/ready", responses={503: {"model": ErrorBody}})
    async def ready() -> dict[str, str]:
        """The model is loaded and predictions are served."""
        model = service.ready_model()
        return {"status": "ready", "name": model.name, "version": model.version}

    @router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        """Requests by route and status, latency and batch-size histograms, queue depth (Prometheus text format)."""
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return router


def page_router() -> APIRouter:
    """GET /: the web page (not in the schema)."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return router


# --- the app -----------------------------------------------------------------------------
def create_app(
    loader: Callable[[], LoadedModel] | Run | str | os.PathLike,
    settings: ServeSettings | None = None,
    api_key: str | None = None,
    pairs: bool = False,
    task: str = "classification",
) -> FastAPI:
    """The service for one model. `loader` is a run directory or a function returning a LoadedModel.

    task: what the model learns (Run.task; read from the run when `loader` is one): it decides the routes.
    pairs: the model classifies text pairs (so does task pair-classification), so requests send `pairs`.
    A token-classification run gets the entities route (serve/entities.py), a multi-label run the label-sets
    route (serve/label_sets.py); neither gets the web page, which shows one class per text.
    The model loads in the background once the app starts: /health answers at once, /ready and the
    prediction routes answer 503 until it is in. `app.state.holder.swap(...)` replaces it live.
    `api_key` defaults to $TUNELAB_API_KEY; empty means no key is needed (the rule: serve/common.py).
    """
    settings = settings or ServeSettings()
    if not callable(loader):
        run = loader if isinstance(loader, Run) else Run.open(loader)
        task, loader = run.task, task_loader(run, settings)
    pairs = pairs or task == PAIR_TASK
    tagger = task == TOKEN_TASK  # the entities route and schema (serve/entities.py)
    multi_label = task == MULTI_LABEL_TASK  # the label-sets route and schema (serve/label_sets.py)
    api_key = configured_key(api_key)
    service = Service.build(settings)
    app = offline_fastapi(
        title="tunelab prediction service",
        version="1",
        description=(
            "Token classification (entity spans with character offsets)"
            if tagger
            else "Multi-label text classification (each label over its threshold)"
            if multi_label
            else "Text classification"
        )
        + " with a fine-tuned tunelab run. Concurrent requests are micro-batched.",
        lifespan=service.lifespan(loader),
    )
    app.state.holder = service.holder
    app.state.batcher = service.batcher
    app.state.metrics = service.metrics
    app.state.settings = settings

    # The /v1/ routes: the ApiKey middleware enforces the key before the body is read (so a stranger
    # learns nothing from validation messages); these dependencies only declare it in the schema,
    # which claims a key only when one is needed.
    errors: dict[int | str, dict[str, Any]] = {413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}
    if api_key:
        errors[401] = {"model": ErrorBody}
    guarded = key_schemes(api_key)
    if tagger:
        predict = entities_router(service, predict_request(settings.max_texts))
    elif multi_label:
        predict = label_sets_router(service, predict_request(settings.max_texts))
    else:
        predict = predict_router(service, pairs)
    app.include_router(predict, dependencies=guarded, responses=errors)
    app.include_router(model_router(service), dependencies=guarded, responses=errors)
    app.include_router(health_router(service))
    if not (tagger or multi_label):  # the web page shows one class per text
        app.include_router(page_router())

    # Every error is one JSON line, {"error": "..."}; no input can reach a 500.
    install_error_handlers(app, _error, log)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return plain_error(422, readable(error.errors(), settings.max_texts))

    # Outermost last: metrics see every response, the key is checked before the body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, error=_too_large)
    app.add_middleware(ApiKey, key=api_key, error=ErrorBody(error=WRONG_KEY).model_dump())
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    return app


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if status == 400:
        # FastAPI's 400 is for a body it cannot decode (e.g. not UTF-8), and /v1/predict is the one
        # route with a body: malformed input, a 422 like bad JSON.
        return plain_error(422, 'the body is not valid UTF-8 JSON; send {"texts": ["..."]}')
    return plain_error(status, message, headers)


def _too_large(max_bytes: int) -> dict[str, str]:
    return ErrorBody(error=f"request body is larger than {max_bytes} bytes; send fewer or shorter texts").model_dump()


def readable(errors: list[dict[str, Any]], max_texts: int) -> str:
    """pydantic's validation errors as one line a person can act on (the input itself is never echoed)."""
    parts = []
    for error in errors[:MAX_PROBLEMS]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(
                f'the body is not valid JSON ({reason}); send {{"texts": ["..."]}}' if reason else 'the body is not valid JSON; send {"texts": ["..."]}'
            )
        elif kind == "too_long" and loc == ["texts"]:
            parts.append(f"texts: at most {max_texts} texts per request; split the request")
        elif kind == "too_short" and loc == ["texts"]:
            parts.append("texts: send at least one text")
        elif kind == "extra_forbidden" and loc in (["pairs"], ["texts"]):
            # One kind of request per model: texts for a text classifier, pairs for a pair classifier.
            parts.append(
                'this model classifies text pairs: send {"pairs": [{"text": "...", "text_pair": "..."}]}'
                if loc == ["texts"]
                else 'this model classifies single texts: send {"texts": ["..."]}'
            )
        elif not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
            parts.append('the body must be a JSON object like {"texts": ["..."]}')
        elif kind == "missing" and not loc:
            parts.append('the body is empty; send {"texts": ["..."]}')
        else:
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - MAX_PROBLEMS} more)" if len(errors) > MAX_PROBLEMS else ""
    return "; ".join(parts) + more


# --- ASGI middleware (the body limit and the key check are serve/common.py's) -------------
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
def check_servable(run_path: str | os.PathLike, backend: str, threads: int | None = None) -> Run:
    """Fail before uvicorn starts, with one line, for anything the service could not load.

    An ONNX backend's first use (export, parity gate, auto's timing) happens here, once, not in each worker.
    """
    run = Run.open(run_path)
    if run.task == TOKEN_TASK:
        check_token_servable(run, backend, threads)
        return run
    if run.task == MULTI_LABEL_TASK:
        check_multilabel_servable(run, backend, threads)
        return run
    run.require_classification("tunelab serve")
    run.model_dir  # noqa: B018 - raises for a scikit-learn baseline run
    choose_backend(run, backend, threads)
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
    run = check_servable(run_path, settings.backend, settings.threads)
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_s)))
    if settings.workers == 1:
        uvicorn.run(create_app(run, settings), **common)
        return
    # Several processes need an import string: each worker rebuilds the app from the environment, with its
    # share of the cores, and writes its metrics where every worker's /metrics reads them all.
    worker_settings = settings.model_copy(update={"threads": worker_threads(settings)})
    with tempfile.TemporaryDirectory(prefix="tunelab-metrics-") as metrics_dir:
        os.environ[SPEC_ENV] = json.dumps({"run": str(run.path), "settings": worker_settings.model_dump()})
        os.environ[MULTIPROC_ENV] = metrics_dir
        try:
            from tunelab.serve.workers import run_workers  # uvicorn's supervisor, marking each departed worker's metric files dead

            run_workers("tunelab.serve.app:app_from_env", settings.workers, **common)
        finally:
            os.environ.pop(MULTIPROC_ENV, None)


def worker_threads(settings: ServeSettings) -> int:
    """Threads per forward pass in each of `workers` processes: the cores shared out (at least 1), unless --threads says."""
    return settings.threads or max(1, hardware.thread_count() // settings.workers)


def _serve_causal_lm(source: str | os.PathLike, settings: ServeSettings) -> None:
    # serve/openai.py belongs to the causal-LM feature; it is used only through its public serve_lm().
    from tunelab.serve.openai import serve_lm

    serve_lm(str(source), host=settings.host, port=settings.port, threads=settings.threads, log_level=settings.log_level)


def app_from_env() -> FastAPI:
    spec = json.loads(os.environ[SPEC_ENV])
    return create_app(spec["run"], ServeSettings(**spec["settings"]))
