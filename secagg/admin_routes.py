"""Admin routes for task administration: create, list, cancel, pause, resume, archive.

Thin handlers over ``secagg.services.tasks``; ``install`` adds them (and the
handler turning a ``TaskError`` into the service's typed JSON error) to an app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse

from secagg.services import tasks as service
from secagg.task_spec import TaskCreate, TaskView

__all__ = ["admin_task_router", "install"]

TaskId = Annotated[int, Path(ge=1, le=(1 << 63) - 1, description="task id")]


def admin_task_router(host: service.TaskHost, admin: Callable[..., Any]) -> APIRouter:
    """The task administration routes; every one needs the admin credential (``admin``)."""
    router = APIRouter(prefix="/v1/admin/tasks", dependencies=[Depends(admin)], tags=["admin"])

    @router.post("", response_model=TaskView, summary="Create a task (strict schema)")
    async def create_task(req: TaskCreate) -> TaskView:
        """Unknown fields, strategies or strategy parameters get 422 listing the valid
        ones; a task no client with the stated policy could join gets 400 ``bad_task``."""
        return await service.create_task(host, req)

    @router.get("", response_model=list[TaskView], summary="List tasks")
    async def list_tasks(
        include_archived: Annotated[bool, Query(description="also list archived tasks")] = False,
    ) -> list[TaskView]:
        return await service.list_tasks(host, include_archived)

    @router.post(
        "/{task_id}/cancel",
        response_model=TaskView,
        summary="Cancel a task; a running round is aborted (task_cancelled)",
    )
    async def cancel(task_id: TaskId) -> TaskView:
        return await service.cancel_task(host, task_id)

    @router.post(
        "/{task_id}/pause",
        response_model=TaskView,
        summary="Pause an active task: a running round finishes, no new round starts",
    )
    async def pause(task_id: TaskId) -> TaskView:
        return await service.pause_task(host, task_id)

    @router.post(
        "/{task_id}/resume",
        response_model=TaskView,
        summary="Resume a paused or failed task (its aborted-in-a-row counter is reset)",
    )
    async def resume(task_id: TaskId) -> TaskView:
        return await service.resume_task(host, task_id)

    @router.post(
        "/{task_id}/archive",
        response_model=TaskView,
        summary="Archive a completed, failed or cancelled task (hidden from the list)",
    )
    async def archive(task_id: TaskId) -> TaskView:
        return await service.archive_task(host, task_id)

    return router


def install(app: FastAPI, host: service.TaskHost, admin: Callable[..., Any]) -> None:
    """Add the task administration routes and their error handler to ``app``."""

    async def task_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, service.TaskError)
        return JSONResponse(
            status_code=exc.status, content={"error": exc.code, "detail": exc.detail}
        )

    app.add_exception_handler(service.TaskError, task_error)
    app.include_router(admin_task_router(host, admin))
