"""Swagger UI and ReDoc served from local files: ``/docs`` works on an air-gapped network.

FastAPI's own documentation pages load their JavaScript and CSS from a CDN.
Here both pages point at copies served by this server under
:data:`STATIC_PATH`, taken from the ``fastapi-offline`` package (MIT licence;
it ships the Swagger UI and ReDoc bundles, Apache-2.0 and MIT). Swagger UI's
validator badge, which would call an outside service, is turned off, and
ReDoc is served without Google fonts.

The app must be created with ``docs_url=None, redoc_url=None``; then
:func:`install_docs` adds the routes (kept out of the OpenAPI document).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "STATIC_PATH", "asset_directory", "install_docs"]

STATIC_PATH = "/static/docs"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def asset_directory() -> Path:
    """Where the bundled assets are installed (the ``fastapi_offline`` package data).

    Raises:
        RuntimeError: the package is missing or lacks an asset (install ``secagg[server]``).
    """
    try:
        directory = Path(str(files("fastapi_offline") / "static"))
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the API documentation assets are missing: pip install 'secagg[server]' "
            "(fastapi-offline)"
        ) from exc
    missing = [name for name in ASSETS if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"API documentation assets missing from {directory}: {missing}")
    return directory


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the assets under :data:`STATIC_PATH` and add ``docs_url`` and ``redoc_url``."""
    app.mount(STATIC_PATH, StaticFiles(directory=asset_directory()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PATH}/favicon.png",
            # No validator badge: it would send the document to an outside service.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get(redoc_url, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{STATIC_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_PATH}/favicon.png",
            with_google_fonts=False,
        )
