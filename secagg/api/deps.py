"""Dependencies shared by the routers: the coordinator, client and admin authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool

from secagg.auth import check_admin, check_headers, verify_body
from secagg.bodies import body_sha256, drop_resident, read_body
from secagg.coordinator import Coordinator


def coordinator(request: Request) -> Coordinator:
    coord: Coordinator = request.app.state.coordinator
    return coord


Coord = Annotated[Coordinator, Depends(coordinator)]


async def client_id(request: Request, coord: Coord) -> int:
    """The authenticated client of a signed request (secagg_http/signing.py).

    Headers first: a request from nobody, stale or malformed is refused before
    a byte of its body is read; then the body (bounded by the middleware) and
    the signature, which covers the body's hash. Database work runs in threads.
    """
    headers = {k.lower(): v for k, v in request.headers.items()}
    pending = await run_in_threadpool(
        check_headers, coord.db, headers, clock_skew_s=coord.settings.request_clock_skew_s
    )
    # Large bodies (masked inputs) are spooled to disk as they arrive, not held in memory.
    body = await read_body(request, coord.settings.body_spool_bytes)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    cid = await run_in_threadpool(
        verify_body, coord.db, pending, request.method, path, body, body_sha256(request)
    )
    drop_resident(body)
    coord.client_seen(cid)  # any signed request is a sign of life (specs/service-v1.md §4)
    return cid


def admin(coord: Coord, authorization: Annotated[str | None, Header()] = None) -> None:
    """``Authorization: Bearer <admin token>``, compared in constant time."""
    check_admin(authorization, coord.admin_token)


ClientId = Annotated[int, Depends(client_id)]
Admin = Annotated[None, Depends(admin)]
