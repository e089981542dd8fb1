"""The HTTP API: a thin shell that parses, authenticates, persists, then hands bytes on.

Laid out as FastAPI's "bigger applications": one router per audience
(:mod:`~secagg.api.public`, :mod:`~secagg.api.client` for signed client
requests, :mod:`~secagg.api.admin` for the model owner), shared dependencies in
:mod:`~secagg.api.deps`, request and response models in
:mod:`~secagg.api.schemas`. Process-wide state lives in
:class:`secagg.coordinator.Coordinator`; database work runs in worker threads,
never on the event loop.

Protocol messages travel as ``application/cbor`` bodies holding the
protocol's canonical bytes; everything else is JSON. Errors are JSON
``{"error": code, "detail": text}`` with a 4xx status; nothing a client
sends can cause a 500 or change stored data it should not.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from secagg import db as dbm
from secagg.api import admin, client, public, tasks
from secagg.api.errors import ERROR_RESPONSES, ApiError, error_response
from secagg.auth import AuthError
from secagg.coordinator import Coordinator
from secagg.dberrors import install_database_error_handlers
from secagg.docs_assets import install_docs
from secagg.downloads import DownloadRefused
from secagg.limits import BodyLimitMiddleware, BodyTimeout, BodyTooLarge
from secagg.orchestrator import LifecycleError
from secagg.services.tasks import TaskError
from secagg.settings import Settings
from secagg.task_spec import describe_validation_errors

__all__ = ["ApiError", "create_app"]

_MESSAGES_PATH = re.compile(r"/v1/rounds/[0-9]{1,19}/messages")


def create_app(settings: Settings, db: dbm.Database | None = None) -> FastAPI:
    """The service's ASGI application over ``db`` (default: ``settings.database_url``)."""
    database = db or dbm.Database.from_settings(settings)
    coord = Coordinator(settings, database)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await coord.start()
        purger = asyncio.get_running_loop().create_task(coord.purge_nonces_forever())
        yield
        purger.cancel()
        await asyncio.gather(purger, return_exceptions=True)
        await coord.stop()

    app = FastAPI(
        responses=ERROR_RESPONSES,
        title="secagg",
        version="0.1.0",
        lifespan=lifespan,
        description="Secure aggregation for federated learning.",
        docs_url=None,  # served from local assets instead of a CDN (secagg/docs_assets.py)
        redoc_url=None,
    )
    install_docs(app)
    app.state.coordinator = coord

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(LifecycleError)
    async def _lifecycle_error(_: Request, exc: LifecycleError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=exc.to_json())

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(DownloadRefused)
    async def _download_refused(_: Request, exc: DownloadRefused) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(BodyTimeout)
    async def _body_timeout(_: Request, exc: BodyTimeout) -> JSONResponse:
        return error_response(408, "body_timeout", str(exc.detail))

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "body_too_large", str(exc.detail))

    # Transient database failures: 503 database_unavailable + Retry-After, never a 500.
    install_database_error_handlers(app, settings.db_retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation_errors(exc.errors()))

    app.add_exception_handler(TaskError, tasks.task_error)

    def body_limit(scope: Any) -> int:
        """Large bodies only where the sender is checked before its body is read:
        protocol messages (signed headers, checked first by ``client_id``) and
        admin requests carrying the admin credential. Anything an anonymous peer
        can send is small."""
        if scope["method"] == "POST" and _MESSAGES_PATH.fullmatch(scope["path"]):
            return settings.max_body_bytes
        if scope["path"].startswith("/v1/admin/"):
            for name, value in scope["headers"]:
                if name == b"authorization" and hmac.compare_digest(
                    value, b"Bearer " + coord.admin_token.encode()
                ):
                    return settings.max_body_bytes
        return settings.max_public_body_bytes

    # Body bytes are counted as they stream, chunked bodies included; also turns
    # an escaping exception into a typed 500 (secagg/limits.py).
    app.add_middleware(
        BodyLimitMiddleware, limit_for=body_limit, body_timeout_s=settings.body_timeout_s
    )
    app.include_router(public.router)
    app.include_router(client.router)
    app.include_router(admin.router)
    app.include_router(tasks.router)
    return app
