"""Request bodies: small ones in memory, large ones spooled to an unlinked temporary file.

A masked input is as large as the model. Buffering each one in memory while it
arrives costs the server one model per client sending at the same moment (two
while Starlette joins the chunks), the largest item of its memory use in R2.
:func:`read_body` instead writes a body that grows past ``spool_over`` bytes to
an anonymous temporary file (``tempfile.TemporaryFile``: unlinked at once, so
nothing is left behind even if the process is killed) as it streams, and
returns a read-only ``memoryview`` of a read-only ``mmap`` of it. Downstream
code reads it like ``bytes`` (hashing, decoding; the protocol decoder takes the
masked vector as a view of it, no copy). Pages it has touched are resident
only while mapped: :func:`drop_resident` gives them back once a pass is done
(the data stays in the file), and the mapping goes when the request ends.

Writing masked inputs to the server's disk reveals nothing the server does not
already hold: it is the same ciphertext-like vector it receives and sums. The
files live in the system temporary directory (``TMPDIR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
import tempfile
from typing import IO

from starlette.requests import Request

__all__ = ["DEFAULT_SPOOL_BYTES", "body_sha256", "drop_resident", "read_body"]

DEFAULT_SPOOL_BYTES = 1 << 20
_WRITE_BATCH = 1 << 20


def _write(spool: IO[bytes], digest: hashlib._Hash, data: bytearray) -> None:
    spool.write(data)
    digest.update(data)


async def read_body(request: Request, spool_over: int = DEFAULT_SPOOL_BYTES) -> bytes | memoryview:
    """The request's body, read once (``request.body()`` returns the same object after).

    Returns:
        ``bytes`` up to ``spool_over`` bytes; beyond, a read-only ``memoryview``
        of a temporary file's mapping.
    """
    cached: bytes | memoryview | None = getattr(request, "_body", None)
    if cached is not None:
        return cached
    pending = bytearray()
    spool = None
    size = 0
    digest = hashlib.sha256()
    try:
        async for chunk in request.stream():
            pending += chunk
            if spool is None and len(pending) <= spool_over:
                continue
            if len(pending) >= _WRITE_BATCH:
                if spool is None:
                    spool = tempfile.TemporaryFile(prefix="secagg-body-")  # noqa: SIM115
                await asyncio.to_thread(_write, spool, digest, pending)
                size += len(pending)
                pending = bytearray()
        if spool is None and len(pending) <= spool_over:
            body: bytes | memoryview = bytes(pending)
        else:
            if spool is None:
                spool = tempfile.TemporaryFile(prefix="secagg-body-")  # noqa: SIM115
            if pending:
                await asyncio.to_thread(_write, spool, digest, pending)
                size += len(pending)
            await asyncio.to_thread(spool.flush)
            body = memoryview(mmap.mmap(spool.fileno(), size, access=mmap.ACCESS_READ))
            # Hashed as it was written: checking the signature need not read it back.
            request.state.body_sha256 = digest.digest()
    finally:
        if spool is not None:
            spool.close()  # the mapping outlives the file object
    # Starlette's Request.body() returns this attribute when it is set.
    request._body = body  # type: ignore[assignment]
    return body


def body_sha256(request: Request) -> bytes | None:
    """The SHA-256 of a body :func:`read_body` spooled (computed as it arrived), else None."""
    value = getattr(request.state, "body_sha256", None)
    return value if isinstance(value, bytes) else None


def drop_resident(body: bytes | memoryview) -> None:
    """Let the kernel drop the resident pages of a spooled body (a no-op for ``bytes``).

    The body stays readable: a later access reads the file again.
    """
    if isinstance(body, memoryview) and isinstance(body.obj, mmap.mmap):
        with contextlib.suppress(OSError, ValueError):  # e.g. already unmapped
            body.obj.madvise(mmap.MADV_DONTNEED)
