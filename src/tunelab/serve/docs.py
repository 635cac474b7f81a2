"""Interactive API docs at /docs that work with no network.

FastAPI's default /docs page loads Swagger UI from a CDN, so on an offline machine it is blank. The
`fastapi-offline` package (in the `serve` extra) ships Swagger UI 5, which reads the OpenAPI 3.1
FastAPI writes (Swagger UI 4 shows "Unable to render this definition"), and serves it from
/docs/assets. Without that package, FastAPI's default CDN page is kept.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ASSETS = "/docs/assets"


def offline_fastapi(**kwargs: Any) -> FastAPI:
    """FastAPI(**kwargs) with Swagger UI at /docs served from this process; no ReDoc page."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(redoc_url=None, **kwargs)
    return FastAPIOffline(docs_url="/docs", redoc_url=None, static_url=ASSETS, **kwargs)
