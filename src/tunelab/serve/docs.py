"""Interactive API docs at /docs that work with no network.

FastAPI's default /docs page loads Swagger UI from a CDN, so on an offline machine it is blank. The
`swagger-ui-bundle` package (in the `serve` extra) ships the same files; we serve them from
/docs/assets. Without that package, the default CDN page is kept.
"""

from __future__ import annotations

from fastapi import FastAPI

ASSETS = "/docs/assets"


def local_swagger_ui() -> str | None:
    """Folder holding swagger-ui-bundle.js and swagger-ui.css, if the package is installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


def docs_urls() -> dict[str, str | None]:
    """FastAPI(...) keyword arguments: no built-in CDN pages when we serve the docs ourselves."""
    return {"docs_url": None, "redoc_url": None} if local_swagger_ui() else {"redoc_url": None}


def add_offline_docs(app: FastAPI) -> None:
    folder = local_swagger_ui()
    if folder is None:
        return
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount(ASSETS, StaticFiles(directory=folder), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )
