"""Routes anyone may call: health, metrics, enrolment with a one-time token."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from secagg import metrics as prom
from secagg.api.deps import Coord
from secagg.api.schemas import EnrolRequest, EnrolResponse, Status
from secagg.auth import enrol

router = APIRouter(tags=["public"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """Liveness: answered from the event loop alone, whatever the database does."""
    return Status(status="ok")


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus metrics of rounds, stages, client outcomes and bytes."""
    data, content_type = prom.render()
    return Response(content=data, media_type=content_type)


@router.post("/v1/enrol", response_model=EnrolResponse)
async def enrol_client(req: EnrolRequest, coord: Coord) -> EnrolResponse:
    """Register a client's identity key with a one-time enrolment token."""
    cid = await run_in_threadpool(
        enrol, coord.db, req.token, bytes.fromhex(req.public_key), req.name
    )
    return EnrolResponse(client_id=cid)
