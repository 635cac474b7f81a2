"""Settings of `tunelab serve` (pydantic, like every command's settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.backends import CHOICES, CHOICES_HELP
from tunelab.config import Settings


class ServeSettings(Settings):
    host: str = Field("127.0.0.1", description="address to bind; the default serves this machine only")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes, each with its own copy of the model")
    backend: Literal[CHOICES] = Field("torch", description=CHOICES_HELP)
    threads: int | None = Field(None, ge=1, description="CPU threads per forward pass; default: the cores the process may use, divided among the workers")
    max_batch: int = Field(32, ge=1, le=4096, description="texts per forward pass at most")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="how long the first request of a batch waits for company while requests come concurrently (the last batch held several); a lone request is scored at once",
    )
    max_queue: int = Field(512, ge=1, description="texts waiting at most; beyond it requests get 503 + Retry-After")
    max_texts: int = Field(64, ge=1, description="texts per request at most (more: 422)")
    max_body_bytes: int = Field(1_000_000, ge=256, description="request body size at most (more: 413)")
    graceful_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long in-flight requests may take to finish")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
