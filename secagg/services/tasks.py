"""Task administration: create, list, cancel, pause, resume, archive.

Status transitions (``dbm.TaskStatus``); anything else is 409:

=========  =====================================  ===========================
action     from                                   to
=========  =====================================  ===========================
cancel     active, paused, failed                 cancelled (running round
                                                  aborted: ``task_cancelled``)
pause      active                                 paused (a running round
                                                  finishes; none starts)
resume     paused, failed                         active (aborted-in-a-row
                                                  counter reset, runner
                                                  restarted)
archive    completed, failed, cancelled           archived (hidden from the
                                                  task list by default)
=========  =====================================  ===========================

A runner without ``shutdown`` (the contract's abort entry point) is stopped
instead: its running round then finishes before the runner sees the status.

Repeating an action whose target status the task already has is a no-op that
returns the task (a retried request after a lost response must not fail).
Database work runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DbIntegrityError

from protocol import ConfigError, Mode
from protocol.encoding import FixedPointEncoding, RoundEncoding
from protocol.policy import SessionPolicy
from secagg import db as dbm
from secagg.dp_tasks import DPBudget, calibrate_task
from secagg.orchestrator import TaskRunner, check_task_parameters
from secagg.registry import ModelRegistry
from secagg.task_spec import TaskCreate, TaskView

__all__ = [
    "TaskError",
    "TaskHost",
    "archive_task",
    "cancel_task",
    "create_task",
    "list_tasks",
    "pause_task",
    "resume_task",
]

log = logging.getLogger("secagg.tasks")

Status = dbm.TaskStatus
CANCELLABLE = frozenset({Status.ACTIVE, Status.PAUSED, Status.FAILED})
RESUMABLE = frozenset({Status.PAUSED, Status.FAILED})
FINISHED = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ABORT_TASK_CANCELLED = "task_cancelled"

# A restarted runner waits for the old one (finishing its round after stop())
# in a background task; strong references keep those tasks alive.
_restarts: set[asyncio.Task[None]] = set()


class TaskError(Exception):
    """A refused task operation: HTTP ``status``, machine ``code``, human ``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class TaskHost(Protocol):
    """What task administration needs from the server process (the Coordinator)."""

    db: dbm.Database
    registry: ModelRegistry
    runners: dict[int, TaskRunner]

    def start_runner(self, task_id: int) -> None: ...


# -- create -------------------------------------------------------------------------


def _initial_weights(req: TaskCreate) -> npt.NDArray[np.float32]:
    if req.initial_weights is None:
        return np.zeros(req.vector_length, np.float32)
    try:
        raw = base64.b64decode(req.initial_weights, validate=True)
        weights = np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise TaskError(400, "bad_weights", f"initial_weights is not a base64 .npy: {exc}") from exc
    if not isinstance(weights, np.ndarray) or weights.shape != (req.vector_length,):
        shape = getattr(weights, "shape", None)
        raise TaskError(
            400,
            "bad_weights",
            f"initial weights have shape {shape}, expected ({req.vector_length},)",
        )
    if not np.issubdtype(weights.dtype, np.floating):
        raise TaskError(400, "bad_weights", f"initial weights have dtype {weights.dtype}")
    with np.errstate(over="ignore"):
        out = weights.astype(np.float32)
    if not np.isfinite(out).all():
        raise TaskError(400, "bad_weights", "initial weights must be finite float32 values")
    return out


def _check_admission(req: TaskCreate) -> DPBudget | None:
    """Refuse now a task whose rounds could never run (400 ``bad_task``).

    Returns:
        A DP task's calibrated parameters (None without ``dp``).
    """
    min_clients = req.min_clients or req.clients_per_round
    if min_clients > req.clients_per_round:
        raise TaskError(400, "bad_task", "min_clients exceeds clients_per_round")
    try:
        encoding = RoundEncoding(FixedPointEncoding(req.clip, req.scale, req.max_weight))
        encoding.required_bit_width(req.clients_per_round)
        check_task_parameters(  # up to ~0.5 s for wide ranges of large cohorts
            Mode(req.mode),
            req.graph,
            req.dropout_rate,
            req.corrupt_rate,
            min_clients,
            req.clients_per_round,
            SessionPolicy(
                allow_semi_honest=req.allow_semi_honest, min_participants=req.min_participants
            ),
        )
        if req.dp is None:
            return None
        # Up to about a second: the accountant is evaluated for each candidate noise.
        return calibrate_task(
            req.dp,
            dim=req.vector_length,
            min_participants=req.min_participants,
            dropout_rate=req.dropout_rate,
            min_clients=min_clients,
            corrupt_rate=req.corrupt_rate,
            clients_per_round=req.clients_per_round,
        )
    except ConfigError as exc:
        raise TaskError(400, "bad_task", str(exc)) from exc


def _create(host: TaskHost, req: TaskCreate) -> TaskView:
    weights = _initial_weights(req)
    budget = _check_admission(req)
    try:
        with host.db.session() as s:
            task = dbm.Task(
                name=req.name,
                status=Status.ACTIVE,
                vector_length=req.vector_length,
                rounds=req.rounds,
                clients_per_round=req.clients_per_round,
                min_clients=req.min_clients or req.clients_per_round,
                mode=dbm.ProtocolMode(req.mode),
                graph=dbm.GraphChoice(req.graph),
                dropout_rate=req.dropout_rate,
                corrupt_rate=req.corrupt_rate,
                clip=req.clip,
                scale=req.scale,
                max_weight=req.max_weight,
                deadlines=dict(req.deadlines),
                training_window_s=req.training_window_s,
                strategy=req.strategy.model_dump(),
                model_layout=(
                    [e.model_dump() for e in req.model_layout]
                    if req.model_layout is not None
                    else None
                ),
                current_round=0,
                max_aborted_rounds=req.max_aborted_rounds,
            )
            if budget is not None and req.dp is not None:
                task.dp = dbm.TaskDP(
                    spec=req.dp.model_dump(),
                    params=budget.params.to_json(),
                    round_epsilon=budget.round_epsilon,
                    max_participations=budget.max_participations,
                    epsilon_spent=0.0,
                )
            s.add(task)
            s.flush()
            host.registry.create_initial(task.id, weights, session=s)
            return TaskView.of(task)
    except DbIntegrityError as exc:
        raise TaskError(409, "task_exists", f"a task named {req.name!r} exists") from exc


async def create_task(host: TaskHost, req: TaskCreate) -> TaskView:
    """Validate, admit and store a task with its initial model, then start its rounds.

    Raises:
        TaskError: 400 ``bad_weights`` / ``bad_task``, 409 ``task_exists``.
    """
    view = await asyncio.to_thread(_create, host, req)
    host.start_runner(view.id)
    return view


# -- list ---------------------------------------------------------------------------


def _list(host: TaskHost, include_archived: bool) -> list[TaskView]:
    query = select(dbm.Task).order_by(dbm.Task.id)
    if not include_archived:
        query = query.where(dbm.Task.status != Status.ARCHIVED)
    with host.db.session() as s:
        return [TaskView.of(t) for t in s.scalars(query)]


async def list_tasks(host: TaskHost, include_archived: bool = False) -> list[TaskView]:
    """Every task by id; archived ones only when asked for."""
    return await asyncio.to_thread(_list, host, include_archived)


# -- status changes -----------------------------------------------------------------


def _transition(
    host: TaskHost,
    task_id: int,
    allowed: frozenset[Status],
    target: Status,
    action: str,
    also: Callable[[dbm.Task], None] | None = None,
) -> tuple[TaskView, bool]:
    """Move the task to ``target`` if its status is in ``allowed``; (task, changed)."""
    with host.db.session() as s:
        task = s.get(dbm.Task, task_id, with_for_update=True)
        if task is None:
            raise TaskError(404, "unknown_task", f"no task {task_id}")
        if task.status is target:
            return TaskView.of(task), False
        if task.status not in allowed:
            raise TaskError(
                409,
                "bad_task_status",
                f"cannot {action} task {task_id}: it is {task.status.value}; {action} "
                f"applies to {', '.join(sorted(a.value for a in allowed))} tasks",
            )
        task.status = target
        if also is not None:
            also(task)
        return TaskView.of(task), True


def _live_runner(host: TaskHost, task_id: int) -> TaskRunner | None:
    runner = host.runners.get(task_id)
    return runner if runner is not None and not runner.finished else None


async def cancel_task(host: TaskHost, task_id: int) -> TaskView:
    """Cancel for good: no more rounds; a running round is aborted (``task_cancelled``).

    Raises:
        TaskError: 404 ``unknown_task``; 409 ``bad_task_status`` if the task
            is completed or archived.
    """
    view, changed = await asyncio.to_thread(
        _transition, host, task_id, CANCELLABLE, Status.CANCELLED, "cancel"
    )
    runner = _live_runner(host, task_id)
    if runner is not None:
        shutdown = getattr(runner, "shutdown", None)
        if callable(shutdown):
            await shutdown(ABORT_TASK_CANCELLED)
        else:  # a runner without shutdown finishes its round, then sees the status
            runner.stop()
    if changed:
        log.info("task %d cancelled", task_id, extra={"event": "task_cancelled"})
    return view


async def pause_task(host: TaskHost, task_id: int) -> TaskView:
    """Start no new round (a running one finishes); ``resume`` restarts the task.

    Raises:
        TaskError: 404 ``unknown_task``; 409 ``bad_task_status`` unless active.
    """
    view, changed = await asyncio.to_thread(
        _transition, host, task_id, frozenset({Status.ACTIVE}), Status.PAUSED, "pause"
    )
    runner = _live_runner(host, task_id)
    if runner is not None:
        runner.stop()
    if changed:
        log.info("task %d paused", task_id, extra={"event": "task_paused"})
    return view


def _reset_failure(task: dbm.Task) -> None:
    task.aborted_in_a_row = 0
    task.failure_reason = None


async def _restart_after(host: TaskHost, task_id: int, old: TaskRunner | None) -> None:
    # A paused runner may still be finishing the round it had started; the
    # new runner starts once the old loop has returned (TaskRunner.run sets
    # ``finished`` in its last step, so the coroutine is done by then).
    while old is not None and not old.finished:
        await asyncio.sleep(0.05)
    host.start_runner(task_id)


async def resume_task(host: TaskHost, task_id: int) -> TaskView:
    """A paused or failed task becomes active again: counter of aborts reset, rounds resume.

    Raises:
        TaskError: 404 ``unknown_task``; 409 ``bad_task_status`` unless paused,
            failed or already active.
    """
    view, changed = await asyncio.to_thread(
        _transition, host, task_id, RESUMABLE, Status.ACTIVE, "resume", _reset_failure
    )
    old = host.runners.get(task_id)
    if changed or old is None or old.finished:
        if old is not None and not old.finished:
            old.stop()
        restart = asyncio.get_running_loop().create_task(_restart_after(host, task_id, old))
        _restarts.add(restart)
        restart.add_done_callback(_restarts.discard)
        if old is None or old.finished:
            await restart  # nothing to wait for: the runner is running on return
    if changed:
        log.info("task %d resumed", task_id, extra={"event": "task_resumed"})
    return view


async def archive_task(host: TaskHost, task_id: int) -> TaskView:
    """Hide a finished (completed, failed or cancelled) task from the task list.

    Raises:
        TaskError: 404 ``unknown_task``; 409 ``bad_task_status`` if the task
            is active or paused (cancel it first).
    """
    view, _ = await asyncio.to_thread(
        _transition, host, task_id, FINISHED, Status.ARCHIVED, "archive"
    )
    return view
