"""Typed API errors: every refusal is ``{"error": code, "detail": text}`` with a 4xx/5xx status."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ApiError(Exception):
    """An answer other than success: HTTP ``status``, machine-readable ``code``, a sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class ErrorResponse(BaseModel):
    """Every error: a machine-readable code and a sentence saying what was wrong."""

    error: str
    detail: str


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


_ERR = {"model": ErrorResponse}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Malformed request or protocol message"},
    401: {**_ERR, "description": "Missing, invalid, stale or replayed authentication"},
    403: {**_ERR, "description": "Not allowed (bad admin credential, token, participant)"},
    404: {**_ERR, "description": "Unknown task or version"},
    409: {**_ERR, "description": "Conflicts with the protocol state or stored data"},
    410: {**_ERR, "description": "The round is over"},
    408: {**_ERR, "description": "Body not received within the configured time"},
    413: {**_ERR, "description": "Body larger than the configured limit"},
    415: {**_ERR, "description": "Wrong content type"},
    422: {**_ERR, "description": "Fields that fail validation"},
    503: {**_ERR, "description": "Database unavailable (database_unavailable); see Retry-After"},
}
