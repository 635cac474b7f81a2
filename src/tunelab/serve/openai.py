"""An OpenAI-compatible chat service for a causal LM, so existing OpenAI clients work unchanged.

    POST /v1/chat/completions   plain JSON, or server-sent events with "stream": true
    GET  /v1/models             the one model served          GET /health

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")

The router validates its own input and answers in OpenAI's error shape
({"error": {"message", "type", "param", "code"}}), so it can be mounted into another FastAPI app.
Bad input is a 4xx, never a 500: 401 wrong key, 404 unknown model, 413 body too large,
422 invalid request or prompt too long for the context, 503 too many requests waiting.
Decoding is greedy unless the request sets a temperature above 0 (reproducible by default).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, Union

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import TunelabError
from tunelab.lm.generate import Generator, Sampling
from tunelab.serve.app import API_KEY_ENV, BodyLimit
from tunelab.serve.docs import offline_fastapi

log = logging.getLogger("tunelab.serve.openai")


# --- request schema (extra fields that OpenAI clients send are accepted and ignored) ---------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None

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


def _request_model(limits: Limits) -> type[BaseModel]:
    class ChatCompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        messages: list[ChatMessage] = Field(min_length=1, max_length=limits.max_messages)
        max_tokens: int | None = Field(None, ge=1, le=limits.max_tokens)
        max_completion_tokens: int | None = Field(None, ge=1, le=limits.max_tokens)
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, gt=0, le=1)
        n: int | None = Field(None, ge=1, le=1, description="one choice per request")
        stop: Union[str, list[str], None] = None
        seed: int | None = None
        stream: bool | None = False
        stream_options: StreamOptions | None = None

        def sampling(self) -> Sampling:
            stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
            return Sampling(
                max_new_tokens=self.max_completion_tokens or self.max_tokens or limits.default_max_tokens,
                temperature=self.temperature or 0.0,
                top_p=self.top_p if self.top_p is not None else 1.0,
                stop=tuple(stops[:4]),
                seed=self.seed,
            )

        def chat(self) -> list[dict[str, str]]:
            # "developer" is OpenAI's newer name for the system role.
            return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    return ChatCompletionRequest


# --- errors ------------------------------------------------------------------------------
def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status, headers=headers)


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"{loc or 'body'}: {first.get('msg', 'invalid')}{more}", loc or None


# --- the router --------------------------------------------------------------------------
def openai_router(generator: Generator, model_name: str, limits: Limits | None = None, api_key: str | None = None) -> APIRouter:
    """The /v1 routes for one loaded model. `api_key` defaults to $TUNELAB_API_KEY (empty: no key)."""
    limits = limits or Limits()
    api_key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
    Request_ = _request_model(limits)
    created = int(time.time())
    waiting = threading.BoundedSemaphore(limits.max_waiting)
    router = APIRouter()

    def unauthorized(request: Request) -> JSONResponse | None:
        if not api_key:
            return None
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if hmac.compare_digest(given.encode("utf-8", "replace"), api_key.encode("utf-8")):
            return None
        return error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "tunelab"}

    @router.get("/v1/models")
    async def list_models(request: Request):
        """The model this server serves (OpenAI's list format)."""
        return unauthorized(request) or {"object": "list", "data": [model_card()]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        if model_id != model_name:
            return error_response(404, f"the model '{model_id}' does not exist; this server serves '{model_name}'", param="model", code="model_not_found")
        return model_card()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        """A chat completion, plain or streamed as server-sent events (OpenAI's format)."""
        if (denied := unauthorized(request)) is not None:
            return denied
        raw = await request.body()
        try:
            payload = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as error:
            return error_response(422, f"the body is not valid JSON ({error}); send a chat completion request")
        if not isinstance(payload, dict):
            return error_response(422, 'the body must be a JSON object like {"model": "...", "messages": [...]}')
        try:
            body = Request_.model_validate(payload)
        except ValidationError as error:
            message, param = _validation_message(error)
            return error_response(422, message, param=param)
        if body.model != model_name:
            return error_response(404, f"the model '{body.model}' does not exist; this server serves '{model_name}'", param="model", code="model_not_found")
        if not waiting.acquire(blocking=False):
            return error_response(503, f"{limits.max_waiting} requests are already waiting for the model; retry shortly", "server_error", code="overloaded", headers={"Retry-After": "1"})
        try:
            stream = generator.stream(body.chat(), sampling=body.sampling())
        except TunelabError as error:
            waiting.release()
            return error_response(422, str(error), param="messages", code="context_length_exceeded" if "context" in error.message else None)
        except Exception:
            waiting.release()
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_events(stream, waiting, completion_id, model_name, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text = await asyncio.to_thread(lambda: "".join(stream))
        finally:
            waiting.release()
        done = stream.completion
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": done.finish_reason, "logprobs": None}],
            "usage": _usage(done),
        }

    return router


_END = object()


async def _events(stream, waiting: threading.BoundedSemaphore, completion_id: str, model_name: str, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
        data: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices else []}
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n"

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
            yield chunk({}, usage=_usage(done), choices=False)
        yield "data: [DONE]\n\n"
    except Exception as error:  # headers are sent already: report it in the stream, as OpenAI does
        log.exception("generation failed")
        yield f"data: {json.dumps({'error': {'message': f'generation failed: {type(error).__name__}', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
    finally:
        # The client may have gone away: stop generating instead of finishing an answer nobody reads.
        await asyncio.to_thread(stream.close)
        waiting.release()


def _usage(done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens, "total_tokens": done.prompt_tokens + done.completion_tokens}


# --- the app -----------------------------------------------------------------------------
class _OpenAIBodyLimit(BodyLimit):
    """The classifier service's 413 body limit, answering in OpenAI's error shape."""

    def error_body(self) -> bytes:
        return json.dumps({"error": {"message": f"request body is larger than {self.max_bytes} bytes; send a shorter conversation",
                                     "type": "invalid_request_error", "param": None, "code": "request_too_large"}}).encode()


def create_openai_app(model: str | os.PathLike | Generator, model_name: str | None = None, limits: Limits | None = None,
                      api_key: str | None = None, precision: str = "auto", threads: int | None = None) -> FastAPI:
    """The OpenAI-compatible service for one causal LM (a run, model folder, adapter, catalogue name, or a Generator)."""
    limits = limits or Limits()
    generator = model if isinstance(model, Generator) else Generator(model, precision=precision, threads=threads)
    name = model_name or generator.name
    app = offline_fastapi(title="tunelab chat service (OpenAI-compatible)", version="1",
                          description="OpenAI-compatible chat completions for a causal LM fine-tuned or imported with tunelab.")
    app.state.generator = generator
    app.include_router(openai_router(generator, name, limits, api_key))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return error_response(error.status_code, str(error.detail), code=code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error while serving the request; see the server log", "server_error")

    app.add_middleware(_OpenAIBodyLimit, max_bytes=limits.max_body_bytes)
    return app


def serve_lm(model: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
             limits: Limits | None = None, precision: str = "auto", threads: int | None = None, log_level: str = "info") -> None:
    """Load the model, then serve it with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    app = create_openai_app(model, model_name, limits, precision=precision, threads=threads)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
