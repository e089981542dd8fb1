"""Task administration routes: create, list, cancel, pause, resume, archive.

Thin handlers over :mod:`secagg.services.tasks`, which holds the logic (status
transitions, admission against the client policy, runner control) and raises
``TaskError``; :func:`task_error` turns it into the service's typed JSON error.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from secagg.api.deps import Admin, Coord
from secagg.api.errors import error_response
from secagg.api.schemas import Id
from secagg.services import tasks as service
from secagg.task_spec import TaskCreate, TaskView

__all__ = ["router", "task_error"]

router = APIRouter(prefix="/v1/admin/tasks", tags=["admin"])


async def task_error(_: Request, exc: Exception) -> JSONResponse:
    """The exception handler for :class:`secagg.services.tasks.TaskError`."""
    assert isinstance(exc, service.TaskError)
    return error_response(exc.status, exc.code, exc.detail)


@router.post("", response_model=TaskView, summary="Create a task (strict schema)")
async def create_task(req: TaskCreate, _: Admin, coord: Coord) -> TaskView:
    """Unknown fields, strategies or strategy parameters get 422 listing the valid
    ones; a task no client with the stated policy could join gets 400 ``bad_task``."""
    return await service.create_task(coord, req)


@router.get("", response_model=list[TaskView], summary="List tasks")
async def list_tasks(
    _: Admin,
    coord: Coord,
    include_archived: Annotated[bool, Query(description="also list archived tasks")] = False,
) -> list[TaskView]:
    """Every task by id; archived tasks only with ``include_archived=true``."""
    return await service.list_tasks(coord, include_archived)


@router.post(
    "/{task_id}/cancel",
    response_model=TaskView,
    summary="Cancel a task; a running round is aborted (task_cancelled)",
)
async def cancel(task_id: Id, _: Admin, coord: Coord) -> TaskView:
    return await service.cancel_task(coord, task_id)


@router.post(
    "/{task_id}/pause",
    response_model=TaskView,
    summary="Pause an active task: a running round finishes, no new round starts",
)
async def pause(task_id: Id, _: Admin, coord: Coord) -> TaskView:
    return await service.pause_task(coord, task_id)


@router.post(
    "/{task_id}/resume",
    response_model=TaskView,
    summary="Resume a paused or failed task (its aborted-in-a-row counter is reset)",
)
async def resume(task_id: Id, _: Admin, coord: Coord) -> TaskView:
    return await service.resume_task(coord, task_id)


@router.post(
    "/{task_id}/archive",
    response_model=TaskView,
    summary="Archive a completed, failed or cancelled task (hidden from the list)",
)
async def archive(task_id: Id, _: Admin, coord: Coord) -> TaskView:
    return await service.archive_task(coord, task_id)
