"""The service's ASGI application (kept as an import path; the code is in :mod:`secagg.api`)."""

from secagg.api import ApiError, create_app

__all__ = ["ApiError", "create_app"]
