"""Routes for the model owner (``Authorization: Bearer <admin token>``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.authority import CertificationError, Roster, authority_key_id
from secagg import db as dbm
from secagg.api.deps import Admin, Coord
from secagg.api.downloads import registry_call, weights_response
from secagg.api.errors import ApiError
from secagg.api.schemas import (
    Id,
    QuarantineEntry,
    RosterResponse,
    RoundInfo,
    TaskDetail,
    TaskInfo,
    TokenRequest,
    TokenResponse,
    Version,
    VersionOut,
)
from secagg.auth import create_enrolment_token
from secagg.downloads import RESPONSES as DOWNLOAD_RESPONSES
from secagg_http.signing import CBOR_MEDIA_TYPE

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/tokens", response_model=TokenResponse)
async def new_token(req: TokenRequest, _: Admin, coord: Coord) -> TokenResponse:
    """A one-time enrolment token for a new client."""
    token, row = await run_in_threadpool(create_enrolment_token, coord.db, req.label, req.ttl_s)
    return TokenResponse(token=token, expires_at=row.expires_at.isoformat())


@router.put("/tasks/{task_id}/roster", response_model=RosterResponse)
async def upload_roster(task_id: Id, request: Request, _: Admin, coord: Coord) -> RosterResponse:
    """Store the task authority's roster; it is relayed in every active-mode assignment.

    The body is the roster's bytes (``application/cbor``), as written by
    ``secagg authority export-roster``.

    Only the encoding is checked (authority-v1.md §6): the clients check
    the signature against the authority key they pinned.
    """
    if request.headers.get("content-type", "") != CBOR_MEDIA_TYPE:
        raise ApiError(415, "unsupported_media_type", f"a roster is {CBOR_MEDIA_TYPE}")
    body = await request.body()
    try:
        roster = await run_in_threadpool(Roster.decode, body)
    except CertificationError as exc:
        raise ApiError(400, "bad_roster", str(exc)) from exc

    def _store() -> None:
        with coord.db.session() as s:
            if s.get(dbm.Task, task_id) is None:
                raise ApiError(404, "unknown_task", f"no task {task_id}")
            row = s.get(dbm.TaskRoster, task_id)
            if row is None:
                s.add(dbm.TaskRoster(task_id=task_id, roster=body))
            else:
                row.roster, row.uploaded_at = body, dbm.utcnow()

    await run_in_threadpool(_store)
    return RosterResponse(
        task_id=task_id,
        scope=roster.scope,
        serial=roster.serial,
        entries=len(roster.entries),
        authority_key_id=authority_key_id(roster.authority_key),
        not_before=roster.not_before,
        not_after=roster.not_after,
    )


def _quarantine_rows(s: Session, task_id: int, lifted: bool) -> list[dbm.Quarantine]:
    query = select(dbm.Quarantine).where(dbm.Quarantine.task_id == task_id)
    if not lifted:
        query = query.where(dbm.Quarantine.lifted_at.is_(None))
    return list(s.scalars(query.order_by(dbm.Quarantine.client_id)))


@router.get("/tasks/{task_id}", response_model=TaskDetail)
async def task_detail(task_id: Id, _: Admin, coord: Coord) -> TaskDetail:
    """A task with its rounds, quarantined clients and model versions."""

    def _detail() -> TaskDetail:
        with coord.db.session() as s:
            task = s.get(dbm.Task, task_id)
            if task is None:
                raise ApiError(404, "unknown_task", f"no task {task_id}")
            rounds = s.scalars(
                select(dbm.Round).where(dbm.Round.task_id == task_id).order_by(dbm.Round.number)
            ).all()
            info = TaskInfo.of(task)
            rounds_detail = [RoundInfo.of(r) for r in rounds]
            quarantined = [QuarantineEntry.of(q) for q in _quarantine_rows(s, task_id, False)]
        versions = [VersionOut.of(v) for v in coord.registry.list_versions(task_id)]
        runner = coord.runners.get(task_id)
        return TaskDetail(
            **info.model_dump(),
            rounds_detail=rounds_detail,
            quarantined=quarantined,
            waiting_reason=runner.waiting_reason if runner is not None else None,
            versions=versions,
        )

    return await run_in_threadpool(_detail)


@router.get(
    "/tasks/{task_id}/quarantine",
    response_model=list[QuarantineEntry],
    summary="Clients excluded from the task's rounds after blame",
)
async def list_quarantine(
    task_id: Id, _: Admin, coord: Coord, include_lifted: bool = False
) -> list[QuarantineEntry]:
    def _list() -> list[QuarantineEntry]:
        with coord.db.session() as s:
            if s.get(dbm.Task, task_id) is None:
                raise ApiError(404, "unknown_task", f"no task {task_id}")
            return [QuarantineEntry.of(q) for q in _quarantine_rows(s, task_id, include_lifted)]

    return await run_in_threadpool(_list)


@router.delete(
    "/tasks/{task_id}/quarantine/{client_id}",
    response_model=QuarantineEntry,
    summary="Lift a client's quarantine: later rounds may select it again",
)
async def lift_quarantine(task_id: Id, client_id: Id, _: Admin, coord: Coord) -> QuarantineEntry:
    def _lift() -> QuarantineEntry:
        with coord.db.session() as s:
            if s.get(dbm.Task, task_id) is None:
                raise ApiError(404, "unknown_task", f"no task {task_id}")
            q = s.get(dbm.Quarantine, (task_id, client_id))
            if q is None or q.lifted_at is not None:
                raise ApiError(
                    404,
                    "not_quarantined",
                    f"client {client_id} is not quarantined in task {task_id}",
                )
            q.lifted_at = dbm.utcnow()
            return QuarantineEntry.of(q)

    entry = await run_in_threadpool(_lift)
    runner = coord.runners.get(task_id)
    if runner is not None:
        runner.lift_quarantine(client_id)
    coord.event("quarantine_lifted", {"task_id": task_id, "client": client_id, "by": "admin"})
    return entry


@router.get(
    "/tasks/{task_id}/versions/{ref}/weights",
    response_class=StreamingResponse,
    responses=DOWNLOAD_RESPONSES,
)
async def admin_download(task_id: Id, ref: str, _: Admin, coord: Coord) -> StreamingResponse:
    """Any stored version (``ref``: a number, ``current`` or a tag) for the model owner."""
    return await weights_response(coord, task_id, ref)


@router.post("/tasks/{task_id}/versions/{version}/promote", response_model=VersionOut)
async def promote(task_id: Id, version: Version, _: Admin, coord: Coord) -> VersionOut:
    """Make ``version`` the task's current version (the next rounds train from it)."""
    info = await run_in_threadpool(registry_call, coord.registry.promote, task_id, version)
    return VersionOut.of(info)


@router.post("/tasks/{task_id}/rollback", response_model=VersionOut)
async def rollback(task_id: Id, _: Admin, coord: Coord) -> VersionOut:
    """Make the current version's parent current again."""
    info = await run_in_threadpool(registry_call, coord.registry.rollback, task_id)
    return VersionOut.of(info)


@router.post("/tasks/{task_id}/versions/{version}/tags/{tag}", response_model=VersionOut)
async def tag(task_id: Id, version: Version, tag: str, _: Admin, coord: Coord) -> VersionOut:
    """Add ``tag`` to ``version`` (a no-op if it has it already)."""
    info = await run_in_threadpool(registry_call, coord.registry.tag, task_id, version, tag)
    return VersionOut.of(info)
