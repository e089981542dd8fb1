"""Database failures as HTTP answers: a transient one is a typed 503, never a 500.

``install_database_error_handlers(app, retry_after_s)`` registers one handler
for :class:`secagg.db.DatabaseUnavailable` (``Database.run`` gave up) and for
SQLAlchemy's errors escaping an endpoint or a dependency:

* transient (``secagg.db.is_transient``: a dropped or terminated connection,
  ``lock_timeout``, ``statement_timeout``, SQLite busy, an exhausted pool):
  ``503 {"error": "database_unavailable", ...}`` with ``Retry-After``. The
  pool replaces the dead connections, so a retry works once the database is
  back. A client re-sends a signed request signed afresh (its nonce may
  have been recorded). A write whose commit was cut may or may not have been
  applied (the database cannot say): a client re-sends only what is
  idempotent, an admin checks before repeating a write.
* anything else: a typed ``500 internal_error`` (logged with its traceback),
  like any other unexpected exception (``secagg/limits.py``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from secagg.db import DatabaseUnavailable, is_transient

__all__ = ["DATABASE_UNAVAILABLE", "database_error_response", "install_database_error_handlers"]

log = logging.getLogger("secagg.db")

DATABASE_UNAVAILABLE = "database_unavailable"
"""The ``error`` code of a 503 caused by a transient database failure."""


def database_error_response(request: Request, exc: Exception, retry_after_s: int) -> JSONResponse:
    """The answer to ``exc`` raised by the database while serving ``request``."""
    where = f"{request.method} {request.url.path}"
    if is_transient(exc):
        cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
        log.warning(
            "database unavailable on %s: %s",
            where,
            " ".join(str(getattr(cause, "orig", cause)).split())[:300],
            extra={"event": "database_unavailable", "path": request.url.path},
        )
        return JSONResponse(
            status_code=503,
            content={
                "error": DATABASE_UNAVAILABLE,
                "detail": "the database is unavailable or too slow; retry later",
            },
            headers={"Retry-After": str(retry_after_s)},
        )
    log.error("database error on %s", where, exc_info=exc)
    return JSONResponse(
        status_code=500,
        content={
            "error": "internal_error",
            "detail": "internal error; the request changed nothing",
        },
    )


def install_database_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Answer database failures escaping endpoints and dependencies (see the module)."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return database_error_response(request, exc, retry_after_s)

    for exc_type in (DatabaseUnavailable, sa_exc.DBAPIError, sa_exc.TimeoutError):
        app.add_exception_handler(exc_type, handler)
