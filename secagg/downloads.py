"""Model downloads: a version named by number, ``current`` or a tag, streamed as ``.npy``.

Both download routes (the model owner's ``GET /v1/admin/tasks/{id}/versions/
{ref}/weights`` and a client's ``GET /v1/tasks/{id}/models/{ref}``) answer
with the same response, built here:

* the body is an ``.npy`` file of a 1-D little-endian float32 vector, streamed
  in 1 MiB pieces straight out of the registry's encoded-model cache (no copy
  of the model per request);
* ``x-secagg-version``: the version number the reference resolved to;
* ``x-secagg-sha256``: SHA-256 (hex) of the exact body bytes, so a client can
  check what it received before parsing it;
* ``x-secagg-weights-sha256``: SHA-256 of the raw little-endian float32
  values (the registry's content hash, the ``sha256`` of the version's JSON);
* ``content-length``, an ``etag`` (the body hash) and a file name.

Everything blocking (the database, hashing on a cache miss) runs in a worker
thread: :func:`download_response` is what a route awaits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from secagg.registry import (
    CURRENT,
    MAX_TAG_CHARS,
    EncodedModel,
    IntegrityError,
    ModelRegistry,
    RegistryError,
    VersionNotFound,
    tag_syntax_ok,
)

__all__ = [
    "CHUNK_BYTES",
    "MAX_VERSION",
    "RESPONSES",
    "DownloadRefused",
    "ModelRef",
    "download_response",
    "open_model",
    "parse_ref",
]

# Model versions are 32-bit database integers (PostgreSQL INTEGER).
MAX_VERSION = (1 << 31) - 1
CHUNK_BYTES = 1 << 20

ModelRef = int | str | None
"""A parsed reference: ``None`` the current version, an ``int`` a version, a ``str`` a tag."""


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The version's weights: an .npy file of a 1-D little-endian float32 "
        "vector, streamed",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "x-secagg-version": _header("the version number the reference named"),
            "x-secagg-sha256": _header("SHA-256 (hex) of the exact response body bytes"),
            "x-secagg-weights-sha256": _header(
                "SHA-256 (hex) of the raw little-endian float32 values: the registry's "
                "content hash of the version"
            ),
        },
    },
    400: {"description": "The reference is neither 'current', a version number nor a tag"},
    404: {"description": "No such task, version or tag"},
    409: {"description": "The stored weights fail their content hash (not served)"},
}
"""OpenAPI ``responses`` of the download routes."""


class DownloadRefused(Exception):
    """A download that cannot be served; ``status``/``code``/``detail`` form the 4xx answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def parse_ref(text: str) -> ModelRef:
    """``current`` -> None, decimal digits -> a version in [1, MAX_VERSION], else a tag.

    Tags cannot be ``current`` nor all digits (the registry refuses them), so
    the three readings never overlap.

    Raises:
        DownloadRefused: 400 ``bad_ref``: an out-of-range number, or text that
            cannot be a tag (checked before anything is looked up).
    """
    if text == CURRENT:
        return None
    if text.isascii() and text.isdigit():
        if len(text) > 10 or not 1 <= int(text) <= MAX_VERSION:
            raise DownloadRefused(
                400, "bad_ref", f"version must be an integer in [1, {MAX_VERSION}]"
            )
        return int(text)
    if not tag_syntax_ok(text):
        raise DownloadRefused(
            400,
            "bad_ref",
            f"a model reference is 'current', a version number in [1, {MAX_VERSION}] or a "
            f"tag (1..{MAX_TAG_CHARS} characters of A-Z a-z 0-9 . _ -, the first a letter "
            "or digit)",
        )
    return text


def open_model(registry: ModelRegistry, task_id: int, ref: ModelRef) -> EncodedModel:
    """The encoded file of the version ``ref`` names (blocking: database, hashing).

    Raises:
        DownloadRefused: 404 ``not_found`` (no such task, version or tag), or
            409 ``integrity_error`` (the stored weights fail their hash: not served).
    """
    try:
        info = registry.resolve(task_id, ref)
        return registry.encoded(task_id, info.version)
    except VersionNotFound as exc:
        raise DownloadRefused(404, "not_found", str(exc)) from exc
    except IntegrityError as exc:
        raise DownloadRefused(409, "integrity_error", str(exc)) from exc
    except RegistryError as exc:  # pragma: no cover - reads raise only the above
        raise DownloadRefused(409, "registry_error", str(exc)) from exc


def model_headers(model: EncodedModel) -> dict[str, str]:
    """The headers that describe a downloaded file (see the module docstring)."""
    return {
        "content-length": str(model.size),
        "x-secagg-version": str(model.version),
        "x-secagg-sha256": model.body_sha256,
        "x-secagg-weights-sha256": model.weights_sha256,
        "etag": f'"{model.body_sha256}"',
        "content-disposition": (f'attachment; filename="task{model.task_id}-v{model.version}.npy"'),
    }


def stream(model: EncodedModel) -> StreamingResponse:
    """A streamed response of ``model``'s file: pieces are views of the cached bytes."""

    async def body() -> AsyncIterator[bytes | memoryview]:
        # Slicing a memoryview is O(1); the server copies each piece once into
        # its socket buffer, so a download costs a chunk, not a model.
        for piece in model.chunks(CHUNK_BYTES):
            yield piece

    return StreamingResponse(
        body(), media_type="application/octet-stream", headers=model_headers(model)
    )


async def download_response(registry: ModelRegistry, task_id: int, ref: str) -> StreamingResponse:
    """The response to a download of ``ref`` of ``task_id``.

    Raises:
        DownloadRefused: see :func:`parse_ref` and :func:`open_model`.
    """
    parsed = parse_ref(ref)
    model = await run_in_threadpool(open_model, registry, task_id, parsed)
    return stream(model)
