"""Task administration: cancel, pause, resume, archive (service functions and HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from secagg import db as dbm
from secagg.app import create_app
from secagg.registry import ModelRegistry
from secagg.services import tasks as service
from secagg.settings import Settings
from secagg.task_spec import TaskCreate

S = dbm.TaskStatus


class StubRunner:
    """Records what the service asked of it; ``finished`` as TaskRunner keeps it."""

    def __init__(self) -> None:
        self.finished = False
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class ShutdownRunner(StubRunner):
    def __init__(self) -> None:
        super().__init__()
        self.shutdowns: list[str] = []

    async def shutdown(self, reason: str) -> None:
        self.shutdowns.append(reason)
        self.finished = True


class Host:
    def __init__(self, db: dbm.Database) -> None:
        self.db = db
        self.registry = ModelRegistry(db)
        self.runners: dict[int, Any] = {}
        self.started: list[int] = []

    def start_runner(self, task_id: int) -> None:
        self.started.append(task_id)
        self.runners[task_id] = StubRunner()


def _spec(name: str = "t", **kw: Any) -> TaskCreate:
    fields: dict[str, Any] = {
        "name": name,
        "vector_length": 3,
        "rounds": 2,
        "clients_per_round": 5,
        "graph": "complete",
        "dropout_rate": 0.0,
        **kw,
    }
    return TaskCreate.model_validate(fields)


def _status(db: dbm.Database, task_id: int) -> tuple[S, int, str | None]:
    with db.session() as s:
        t = s.get(dbm.Task, task_id)
        assert t is not None
        return t.status, t.aborted_in_a_row, t.failure_reason


def _set(db: dbm.Database, task_id: int, **fields: Any) -> None:
    with db.session() as s:
        t = s.get(dbm.Task, task_id)
        assert t is not None
        for k, v in fields.items():
            setattr(t, k, v)


def _refused(fn: Callable[[], Any], status: int, code: str) -> str:
    with pytest.raises(service.TaskError) as info:
        asyncio.run(fn())
    assert (info.value.status, info.value.code) == (status, code)
    return info.value.detail


def test_create_stores_the_task_and_starts_its_runner(db: dbm.Database) -> None:
    host = Host(db)
    layout = [{"name": "w", "shape": [3], "dtype": "torch.float32"}]
    view = asyncio.run(
        service.create_task(host, _spec(training_window_s=90.0, model_layout=layout))
    )
    assert host.started == [view.id]
    with db.session() as s:
        t = s.get(dbm.Task, view.id)
        assert t is not None
        assert (t.status, t.training_window_s, t.model_layout) == (S.ACTIVE, 90.0, layout)
    assert host.registry.get(view.id).version == 1
    detail = _refused(lambda: service.create_task(host, _spec()), 409, "task_exists")
    assert "'t'" in detail


def test_cancel_aborts_the_running_round_through_shutdown(db: dbm.Database) -> None:
    host = Host(db)
    task_id = asyncio.run(service.create_task(host, _spec())).id
    runner = host.runners[task_id] = ShutdownRunner()
    view = asyncio.run(service.cancel_task(host, task_id))
    assert view.status == "cancelled"
    assert runner.shutdowns == ["task_cancelled"]
    assert _status(db, task_id)[0] is S.CANCELLED
    # Repeated (a retry after a lost response): the same answer, nothing more done.
    assert asyncio.run(service.cancel_task(host, task_id)).status == "cancelled"
    assert runner.shutdowns == ["task_cancelled"]


def test_cancel_without_shutdown_stops_the_runner(db: dbm.Database) -> None:
    host = Host(db)
    task_id = asyncio.run(service.create_task(host, _spec())).id
    runner = host.runners[task_id]
    asyncio.run(service.pause_task(host, task_id))
    assert runner.stopped and _status(db, task_id)[0] is S.PAUSED
    runner.stopped = False
    asyncio.run(service.cancel_task(host, task_id))  # a paused task can be cancelled
    assert runner.stopped and _status(db, task_id)[0] is S.CANCELLED


def test_finished_tasks_cannot_be_cancelled_paused_or_resumed(db: dbm.Database) -> None:
    host = Host(db)
    task_id = asyncio.run(service.create_task(host, _spec())).id
    _set(db, task_id, status=S.COMPLETED)
    detail = _refused(lambda: service.cancel_task(host, task_id), 409, "bad_task_status")
    assert "it is completed" in detail and "active, failed, paused" in detail
    _refused(lambda: service.pause_task(host, task_id), 409, "bad_task_status")
    _refused(lambda: service.resume_task(host, task_id), 409, "bad_task_status")
    assert _status(db, task_id)[0] is S.COMPLETED
    for action in (service.cancel_task, service.pause_task, service.archive_task):
        _refused(lambda action=action: action(host, 999), 404, "unknown_task")


def test_resume_of_a_failed_task_resets_the_abort_counter(db: dbm.Database) -> None:
    host = Host(db)
    task_id = asyncio.run(service.create_task(host, _spec())).id
    host.runners[task_id].finished = True  # the runner stopped when the task failed
    _set(db, task_id, status=S.FAILED, aborted_in_a_row=10, failure_reason="10 rounds aborted")
    view = asyncio.run(service.resume_task(host, task_id))
    assert (view.status, view.aborted_in_a_row, view.failure_reason) == ("active", 0, None)
    assert _status(db, task_id) == (S.ACTIVE, 0, None)
    assert host.started == [task_id, task_id]  # a fresh runner


def test_resume_waits_for_a_paused_runner_to_finish_its_round(db: dbm.Database) -> None:
    host = Host(db)
    task_id = asyncio.run(service.create_task(host, _spec())).id
    old = host.runners[task_id]

    async def scenario() -> list[int]:
        await service.pause_task(host, task_id)
        await service.resume_task(host, task_id)
        await asyncio.sleep(0.2)
        before = list(host.started)  # the old runner is still in its round
        old.finished = True
        for _ in range(200):
            if len(host.started) == 2:
                break
            await asyncio.sleep(0.05)
        return before

    before = asyncio.run(scenario())
    assert before == [task_id]
    assert host.started == [task_id, task_id]
    assert _status(db, task_id)[0] is S.ACTIVE


def test_archive_hides_finished_tasks_from_the_list(db: dbm.Database) -> None:
    host = Host(db)
    ids = [asyncio.run(service.create_task(host, _spec(f"t{i}"))).id for i in range(3)]
    detail = _refused(lambda: service.archive_task(host, ids[0]), 409, "bad_task_status")
    assert "it is active" in detail and "cancelled, completed, failed" in detail
    _set(db, ids[1], status=S.COMPLETED)
    asyncio.run(service.cancel_task(host, ids[2]))
    for task_id in ids[1:]:
        assert asyncio.run(service.archive_task(host, task_id)).status == "archived"
    assert [t.id for t in asyncio.run(service.list_tasks(host))] == [ids[0]]
    everything = asyncio.run(service.list_tasks(host, include_archived=True))
    assert [(t.id, t.status) for t in everything] == [
        (ids[0], "active"),
        (ids[1], "archived"),
        (ids[2], "archived"),
    ]
    _refused(lambda: service.resume_task(host, ids[1]), 409, "bad_task_status")


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_pause_resume_cancel_archive_over_http(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'a.db'}", admin_token="admin-x"))
    auth = {"authorization": "Bearer admin-x"}
    coord = app.state.coordinator
    body = {
        "name": "http",
        "vector_length": 3,
        "rounds": 1,
        "clients_per_round": 5,
        "graph": "complete",
        "dropout_rate": 0.0,
    }
    with TestClient(app) as c:
        assert c.post("/v1/admin/tasks/1/pause").status_code == 401  # no credential
        task_id = c.post("/v1/admin/tasks", json=body, headers=auth).json()["id"]
        runner = coord.runners[task_id]
        assert not runner.finished
        r = c.post(f"/v1/admin/tasks/{task_id}/pause", headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "paused"
        _wait(lambda: runner.finished, "the paused runner to stop")
        r = c.post(f"/v1/admin/tasks/{task_id}/resume", headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "active"
        _wait(lambda: coord.runners[task_id] is not runner, "a new runner")
        assert not coord.runners[task_id].finished
        r = c.post(f"/v1/admin/tasks/{task_id}/archive", headers=auth)
        assert r.status_code == 409 and r.json()["error"] == "bad_task_status"
        r = c.post(f"/v1/admin/tasks/{task_id}/cancel", headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        _wait(lambda: coord.runners[task_id].finished, "the cancelled runner to stop")
        r = c.post(f"/v1/admin/tasks/{task_id}/archive", headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "archived"
        assert c.get("/v1/admin/tasks", headers=auth).json() == []
        listed = c.get("/v1/admin/tasks?include_archived=true", headers=auth).json()
        assert [(t["id"], t["status"]) for t in listed] == [(task_id, "archived")]
        assert c.get(f"/v1/admin/tasks/{task_id}", headers=auth).json()["status"] == "archived"
        r = c.post("/v1/admin/tasks/77/cancel", headers=auth)
        assert r.status_code == 404 and r.json()["error"] == "unknown_task"
