"""Model downloads, shared by the admin and client routes."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from fastapi.concurrency import run_in_threadpool

from secagg.api.errors import ApiError
from secagg.api.schemas import MAX_VERSION
from secagg.coordinator import Coordinator
from secagg.registry import RegistryError, VersionNotFound


def parse_version(text: str, what: str = "version") -> int:
    """A path integer in [1, MAX_VERSION]: plain decimal digits, range-checked before use."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not (
        1 <= int(text) <= MAX_VERSION
    ):
        raise ApiError(
            400, f"bad_{what}", f"{what} must be an integer in [1, {MAX_VERSION}] or 'current'"
        )
    return int(text)


def registry_call(fn: Any, *args: Any) -> Any:
    """Call a registry method, turning its errors into typed API errors."""
    try:
        return fn(*args)
    except VersionNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    except RegistryError as exc:
        raise ApiError(409, "registry_error", str(exc)) from exc


async def weights_response(coord: Coordinator, task_id: int, version: str) -> Response:
    """A stored version (or ``current``) as a .npy file with its content hash."""
    v = None if version == "current" else parse_version(version)

    def load() -> tuple[Any, bytes]:
        info = registry_call(coord.registry.get, task_id, v)
        return info, registry_call(coord.registry.download, task_id, info.version)

    info, data = await run_in_threadpool(load)
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={
            "x-secagg-version": str(info.version),
            "x-secagg-sha256": info.sha256,
            "content-disposition": f'attachment; filename="task{task_id}-v{info.version}.npy"',
        },
    )
