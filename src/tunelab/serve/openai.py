"""An OpenAI-compatible chat service for a causal LM, so existing OpenAI clients work unchanged.

    POST /v1/chat/completions   plain JSON, or server-sent events with "stream": true
    GET  /v1/models             the one model served          GET /health

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

The router checks the key and validates its own input, answering in OpenAI's error shape
({"error": {"message", "type", "param", "code"}}, serve/common.py), so it can be mounted into
another FastAPI app. Bad input is a 4xx, never a 500: 401 wrong key, 404 unknown model, 413 body
too large, 422 invalid request or prompt too long for the context, 503 too many requests waiting.
Decoding is greedy unless the request sets a temperature above 0 (reproducible by default).
"""

# No `from __future__ import annotations` here: FastAPI must see ChatCompletionRequest, a class built
# per router (its limits are settings), as a real annotation, not as a string it cannot resolve.
import asyncio
import inspect
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.errors import TunelabError
from tunelab.lm.generate import Completion, Generator, Sampling
from tunelab.serve.common import (
    WRONG_KEY,
    BodyLimit,
    OpenAIErrorBody,
    OpenAIErrorDetail,
    configured_key,
    install_error_handlers,
    key_accepted,
    key_schemes,
    openai_error,
)
from tunelab.serve.docs import offline_fastapi

log = logging.getLogger("tunelab.serve.openai")

MAX_STOPS = 4  # stop sequences honoured per request, as in OpenAI's API; more are ignored


# --- request schema (extra fields that OpenAI clients send are accepted and ignored) ---------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Limits(BaseModel):
    max_messages: int = Field(256, ge=1)
    max_tokens: int = Field(1024, ge=1, description="max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1)
    max_waiting: int = Field(8, ge=1, description="requests waiting for the model at most (more: 503)")
    max_body_bytes: int = Field(1_000_000, ge=256)


def chat_request_model(limits: Limits) -> type[BaseModel]:
    """The request body of /v1/chat/completions; its bounds are the router's limits."""

    class ChatCompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        messages: list[ChatMessage] = Field(min_length=1, max_length=limits.max_messages)
        max_tokens: int | None = Field(None, ge=1, le=limits.max_tokens)
        max_completion_tokens: int | None = Field(None, ge=1, le=limits.max_tokens)
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, gt=0, le=1)
        n: int | None = Field(None, ge=1, le=1, description="one choice per request")
        stop: str | list[str] | None = None
        seed: int | None = None
        stream: bool | None = False
        stream_options: StreamOptions | None = None

        def sampling(self) -> Sampling:
            stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
            return Sampling(
                max_new_tokens=self.max_completion_tokens or self.max_tokens or limits.default_max_tokens,
                temperature=self.temperature or 0.0,
                top_p=self.top_p if self.top_p is not None else 1.0,
                stop=tuple(stops[:MAX_STOPS]),
                seed=self.seed,
            )

        def chat(self) -> list[dict[str, str]]:
            # "developer" is OpenAI's newer name for the system role.
            return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    return ChatCompletionRequest


# --- response schema (the JSON OpenAI's API returns, field for field) ---------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, done: Completion) -> "Usage":
        return cls(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens, total_tokens=done.prompt_tokens + done.completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = Field(description="stop: end of turn or a stop string; length: max_tokens reached")
    logprobs: None = None


class _Head(BaseModel):
    """The fields every completion object starts with, plain or streamed; each sets its own `object`."""

    id: str
    object: str
    created: int
    model: str


class ChatCompletion(_Head):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str] = Field(description='{"role": "assistant", "content": ""} first, then {"content": "..."}; {} with the finish_reason')
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(_Head):
    """One server-sent event of a streamed completion: `data: {chunk}`; the stream ends with `data: [DONE]`."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = Field(None, description="only in the last chunk, with no choices, when stream_options.include_usage is set")

    def event(self) -> str:
        data = self.model_dump()
        if self.usage is None:
            del data["usage"]  # OpenAI's chunks carry the key only when they carry the usage
        return f"data: {json.dumps(data)}\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunelab"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- reading a request -------------------------------------------------------------------
def read_body(raw: bytes, model: type[BaseModel]) -> BaseModel | JSONResponse:
    """The validated body, or the 422 that says what is wrong with it (JSON is read whatever the content type)."""
    try:
        payload = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        return openai_error(422, f"the body is not valid JSON ({error}); send a chat completion request")
    if not isinstance(payload, dict):
        return openai_error(422, 'the body must be a JSON object like {"model": "...", "messages": [...]}')
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        message, param = _validation_message(error)
        return openai_error(422, message, param=param)


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"{loc or 'body'}: {first.get('msg', 'invalid')}{more}", loc or None


def _body_model(endpoint: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model an endpoint takes as its one parameter, if it takes one."""
    parameters = list(inspect.signature(endpoint).parameters.values())
    annotation = parameters[0].annotation if len(parameters) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


class OpenAIRoute(APIRoute):
    """A route of the router: the key is checked first; a JSON body is read and validated here.

    FastAPI documents the body from the endpoint's signature, but its own reading would answer bad
    input as {"detail": [...]} and read JSON only under a JSON content type. An endpoint that takes
    one pydantic model gets it from `read_body` instead: OpenAI's error shape, any content type.
    """

    key = ""  # set per router by `requiring`

    @classmethod
    def requiring(cls, key: str) -> type["OpenAIRoute"]:
        return type(cls.__name__, (cls,), {"key": key})

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        model = _body_model(self.endpoint)
        handle = super().get_route_handler() if model is None else self._with_body(model)
        key = self.key

        async def checked(request: Request) -> Response:
            if not key_accepted(request.headers, key):
                return openai_error(401, WRONG_KEY, "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await handle(request)

        return checked

    def _with_body(self, model: type[BaseModel]) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            body = read_body(await request.body(), model)
            if isinstance(body, Response):
                return body
            result = await endpoint(body)
            return result if isinstance(result, Response) else JSONResponse(jsonable_encoder(result))

        return handle


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": OpenAIErrorBody} for status in statuses}


# --- the router --------------------------------------------------------------------------
def openai_router(generator: Generator, model_name: str, limits: Limits | None = None, api_key: str | None = None) -> APIRouter:
    """The /v1 routes for one loaded model. `api_key` defaults to $TUNELAB_API_KEY (empty: no key)."""
    limits = limits or Limits()
    api_key = configured_key(api_key)
    ChatCompletionRequest = chat_request_model(limits)
    created = int(time.time())
    waiting = threading.BoundedSemaphore(limits.max_waiting)
    denied = (401,) if api_key else ()
    router = APIRouter(route_class=OpenAIRoute.requiring(api_key), dependencies=key_schemes(api_key))

    def model_card() -> ModelCard:
        return ModelCard(id=model_name, created=created)

    def unknown_model(name: str) -> JSONResponse:
        return openai_error(404, f"the model '{name}' does not exist; this server serves '{model_name}'", param="model", code="model_not_found")

    @router.get("/v1/models", response_model=ModelList, responses=_errors(*denied))
    async def list_models():
        """The model this server serves (OpenAI's list format)."""
        return ModelList(data=[model_card()])

    @router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_errors(*denied, 404))
    async def get_model(model_id: str):
        """The model this server serves, by its id."""
        return model_card() if model_id == model_name else unknown_model(model_id)

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            **_errors(*denied, 404, 413, 422, 503),
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": 'a ChatCompletion; with "stream": true, server-sent events: ChatCompletionChunk objects, then [DONE]',
            },
        },
    )
    async def chat_completions(body: ChatCompletionRequest):
        """A chat completion, plain or streamed as server-sent events (OpenAI's format)."""
        if body.model != model_name:
            return unknown_model(body.model)
        if not waiting.acquire(blocking=False):
            return openai_error(
                503,
                f"{limits.max_waiting} requests are already waiting for the model; retry shortly",
                "server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        try:
            stream = generator.stream(body.chat(), sampling=body.sampling())
        except TunelabError as error:
            waiting.release()
            return openai_error(422, str(error), param="messages", code="context_length_exceeded" if "context" in error.message else None)
        except Exception:
            waiting.release()
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _events(stream, waiting, completion_id, model_name, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            text = await asyncio.to_thread(lambda: "".join(stream))
        finally:
            waiting.release()
        done = stream.completion
        return ChatCompletion(
            id=completion_id,
            created=int(time.time()),
            model=model_name,
            choices=[Choice(message=AssistantMessage(content=text), finish_reason=done.finish_reason)],
            usage=Usage.of(done),
        )

    return router


_END = object()


async def _events(stream, waiting: threading.BoundedSemaphore, completion_id: str, model_name: str, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None, usage: Usage | None = None, choices: bool = True) -> str:
        return ChatCompletionChunk(
            id=completion_id, created=created, model=model_name, usage=usage, choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else []
        ).event()

    pieces = iter(stream)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            piece = await asyncio.to_thread(next, pieces, _END)
            if piece is _END:
                break
            if piece:
                yield chunk({"content": piece})
        done = stream.completion
        yield chunk({}, done.finish_reason)
        if include_usage:
            yield chunk({}, usage=Usage.of(done), choices=False)
        yield "data: [DONE]\n\n"
    except Exception as error:  # headers are sent already: report it in the stream, as OpenAI does
        log.exception("generation failed")
        failure = OpenAIErrorBody(error=OpenAIErrorDetail(message=f"generation failed: {type(error).__name__}", type="server_error", param=None, code=None))
        yield f"data: {json.dumps(failure.model_dump())}\n\n"
    finally:
        # The client may have gone away: stop generating instead of finishing an answer nobody reads.
        await asyncio.to_thread(stream.close)
        waiting.release()


# --- the app -----------------------------------------------------------------------------
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}  # OpenAI's `code` for FastAPI's own errors


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return openai_error(status, message, "server_error" if status >= 500 else "invalid_request_error", code=_HTTP_CODES.get(status), headers=headers)


def _too_large(max_bytes: int) -> dict[str, Any]:
    detail = OpenAIErrorDetail(
        message=f"request body is larger than {max_bytes} bytes; send a shorter conversation",
        type="invalid_request_error",
        param=None,
        code="request_too_large",
    )
    return OpenAIErrorBody(error=detail).model_dump()


def create_openai_app(
    model: str | os.PathLike | Generator,
    model_name: str | None = None,
    limits: Limits | None = None,
    api_key: str | None = None,
    precision: str = "auto",
    threads: int | None = None,
) -> FastAPI:
    """The OpenAI-compatible service for one causal LM (a run, model folder, adapter, catalogue name, or a Generator)."""
    limits = limits or Limits()
    generator = model if isinstance(model, Generator) else Generator(model, precision=precision, threads=threads)
    name = model_name or generator.name
    app = offline_fastapi(
        title="tunelab chat service (OpenAI-compatible)",
        version="1",
        description="OpenAI-compatible chat completions for a causal LM fine-tuned or imported with tunelab.",
    )
    app.state.generator = generator
    app.include_router(openai_router(generator, name, limits, api_key))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    install_error_handlers(app, _error, log)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, error=_too_large)
    return app


def serve_lm(
    model: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    limits: Limits | None = None,
    precision: str = "auto",
    threads: int | None = None,
    log_level: str = "info",
) -> None:
    """Load the model, then serve it with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    app = create_openai_app(model, model_name, limits, precision=precision, threads=threads)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
