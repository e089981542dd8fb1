"""Model downloads, shared by the admin and client routes."""

from __future__ import annotations

from typing import Any

from fastapi.responses import StreamingResponse

from secagg import downloads
from secagg.api.errors import ApiError
from secagg.coordinator import Coordinator
from secagg.registry import RegistryError, VersionNotFound


def registry_call(fn: Any, *args: Any) -> Any:
    """Call a registry method, turning its errors into typed API errors."""
    try:
        return fn(*args)
    except VersionNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    except RegistryError as exc:
        raise ApiError(409, "registry_error", str(exc)) from exc


async def weights_response(coord: Coordinator, task_id: int, ref: str) -> StreamingResponse:
    """A stored version (``ref``: a number, ``current`` or a tag) as a streamed .npy file.

    The logic and the headers are in :mod:`secagg.downloads`; a bad reference
    is a typed ``DownloadRefused`` (400/404/409).
    """
    return await downloads.download_response(coord.registry, task_id, ref)
