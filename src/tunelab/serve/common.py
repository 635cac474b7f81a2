"""What both services share: the API-key rule, the request-body limit and the error bodies.

    classifier service (serve/app.py)    {"error": "what went wrong and how to fix it, in one line"}
    chat service (serve/openai.py)       {"error": {"message", "type", "param", "code"}}, OpenAI's shape

The API key. When one is set ($TUNELAB_API_KEY, or `api_key=`; empty means none), a request
presents it as `Authorization: Bearer KEY` or as `X-API-Key: KEY`. When a request sends both, the
Bearer credential wins and X-API-Key is not read: Authorization is HTTP's own credential header
and the one every OpenAI client sends. Keys are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_KEY_ENV = "TUNELAB_API_KEY"
WRONG_KEY = "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
INTERNAL_ERROR = "internal error while serving the request; see the server log"
_BEARER = "bearer "


# --- the API key -------------------------------------------------------------------------
def configured_key(api_key: str | None) -> str:
    """The key a service requires: `api_key` if given, else $TUNELAB_API_KEY; empty means none."""
    return os.environ.get(API_KEY_ENV, "") if api_key is None else api_key


def presented_key(headers: Headers) -> str:
    """The key a request carries, by the rule above: a Bearer credential wins over X-API-Key."""
    authorization = headers.get("authorization", "")
    if authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip()
    return headers.get("x-api-key", "")


def key_accepted(headers: Headers, key: str) -> bool:
    """True when no key is required or the request presents this one."""
    if not key:
        return True
    # Starlette decodes header bytes as latin-1; encoding back gives the bytes the client sent.
    return hmac.compare_digest(presented_key(headers).encode("latin-1"), key.encode("utf-8"))


_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description=f"the key in ${API_KEY_ENV}, if set")
_bearer = HTTPBearer(auto_error=False, description=f"the key in ${API_KEY_ENV}, if set; wins over X-API-Key")


def _declare_key(key: str | None = Depends(_key_header), token: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Only declares both ways of sending the key in the OpenAPI schema; each service checks it itself."""


def key_schemes(key: str) -> list:
    """Route dependencies that make the schema claim a key, when one is needed."""
    return [Depends(_declare_key)] if key else []


# --- error bodies --------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """The classifier service's error body."""

    error: str = Field(description="what went wrong and how to fix it, in one line")


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and how to fix it")
    type: Literal["invalid_request_error", "authentication_error", "server_error"]
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="a machine-readable reason, e.g. model_not_found, context_length_exceeded")


class OpenAIErrorBody(BaseModel):
    """The chat service's error body, as OpenAI's API writes it."""

    error: OpenAIErrorDetail


def plain_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message).model_dump(), status_code=status, headers=headers)


def openai_error(
    status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = OpenAIErrorBody(error=OpenAIErrorDetail(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


Respond = Callable[[int, str, Mapping[str, str] | None], JSONResponse]  # (status, message, headers) -> the error response


def install_error_handlers(app: FastAPI, respond: Respond, log: logging.Logger) -> None:
    """Every HTTP error as one JSON body in the service's shape; anything unexpected is a logged 500."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return respond(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return respond(500, INTERNAL_ERROR, None)


# --- ASGI middleware (plain ASGI: they see every request, including ones that never reach a route) ---
async def _send_json(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = (), more_body: bool = False) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": more_body})


class BodyLimit:
    """413 for a body over max_bytes, whether announced by Content-Length or streamed in chunks.

    `error(max_bytes)` is the service's error body. The 413 goes out before the body is read.
    Closing then would make the kernel reset a connection that still has unread bytes, and a client
    that sends its whole body before reading (Python's urllib) sees "connection reset" instead of
    the 413. So the rest of the body is read and thrown away first ("lingering close"), up to
    DRAIN_BYTES or DRAIN_SECONDS; a client that stops sending on seeing the 413 (curl, httpx)
    disconnects and ends the drain at once.
    """

    DRAIN_BYTES = 64 * 2**20
    DRAIN_SECONDS = 10.0

    def __init__(self, app: ASGIApp, max_bytes: int, error: Callable[[int], dict[str, Any]]):
        self.app = app
        self.max_bytes = max_bytes
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
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

    async def _too_large(self, send: Send, receive: Receive | None, unread: int = 0) -> None:
        """Send the 413; then drain what is left of the body (`receive` is None when nothing is)."""
        # The whole answer is on the wire, but the response stays open (more_body) while the body is
        # drained: the server closes the connection as soon as the response is complete.
        await _send_json(send, 413, self.error(self.max_bytes), [(b"connection", b"close")], more_body=True)
        if receive is not None and unread <= self.DRAIN_BYTES:
            try:
                await asyncio.wait_for(self._drain(receive), self.DRAIN_SECONDS)
            except TimeoutError:
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
    """401 for paths under `prefix` unless the request presents the key; checked before the body is read."""

    def __init__(self, app: ASGIApp, key: str, error: dict[str, Any], prefix: str = "/v1/"):
        self.app = app
        self.key = key
        self.error = error
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix) or key_accepted(Headers(scope=scope), self.key):
            await self.app(scope, receive, send)
            return
        await _send_json(send, 401, self.error, [(b"www-authenticate", b"Bearer")])
