"""Process-wide state of the service: the database, the registry, one runner per task.

The HTTP layer (``secagg.api``) reaches it through ``request.app.state``; it
owns no HTTP types, only :class:`ApiError` for the few lookups that answer
with a status.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from secagg import db as dbm
from secagg import metrics as prom
from secagg.admin_token import resolve_admin_token
from secagg.api.errors import ApiError
from secagg.auth import purge_stale_nonces
from secagg.orchestrator import RoundDriver, TaskRunner
from secagg.registry import ModelRegistry
from secagg.settings import Settings

log = logging.getLogger("secagg.coordinator")


class Coordinator:
    """Process-wide state: database, registry, one runner per active task."""

    def __init__(self, settings: Settings, db: dbm.Database) -> None:
        self.settings, self.db = settings, db
        self.registry = ModelRegistry(db, cache_bytes=settings.model_cache_bytes)
        self.runners: dict[int, TaskRunner] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.admin_token = resolve_admin_token(settings.admin_token, settings.admin_token_file)
        # (task, client) pairs known to have been assigned a round of the task.
        self._eligible: set[tuple[int, int]] = set()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        log.info(kind, extra={"event": kind, **data})
        prom.observe(kind, data)

    def start_runner(self, task_id: int) -> None:
        if task_id in self._tasks and not self._tasks[task_id].done():
            return
        runner = TaskRunner(self.db, self.registry, task_id, events=self.event)
        self.runners[task_id] = runner
        self._tasks[task_id] = asyncio.get_running_loop().create_task(runner.run())

    async def start(self) -> None:
        aborted = await run_in_threadpool(dbm.mark_interrupted_rounds, self.db)
        if aborted:
            log.warning("marked %d interrupted rounds aborted: %s", len(aborted), aborted)
        for task_id in await run_in_threadpool(self._active_task_ids):
            self.start_runner(task_id)

    def _active_task_ids(self) -> list[int]:
        with self.db.session() as s:
            return list(
                s.scalars(select(dbm.Task.id).where(dbm.Task.status == dbm.TaskStatus.ACTIVE))
            )

    async def stop(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def runner(self, task_id: int) -> TaskRunner:
        runner = self.runners.get(task_id)
        if runner is None or runner.finished:  # e.g. completed or failed: clients stop
            raise ApiError(404, "unknown_task", f"task {task_id} is not running")
        return runner

    def may_download(self, task_id: int, client_id: int) -> bool:
        """Whether the client has ever been assigned a round of the task (blocking: DB)."""
        if (task_id, client_id) in self._eligible:
            return True
        with self.db.session() as s:
            rounds = s.scalars(
                select(dbm.Round.participants)
                .where(dbm.Round.task_id == task_id)
                .order_by(dbm.Round.number.desc())
            )
            if not any(client_id in participants for participants in rounds):
                return False
        self._eligible.add((task_id, client_id))
        return True

    async def purge_nonces_forever(self) -> None:
        """Delete request nonces that can no longer be replayed, every interval."""
        while True:
            try:
                purged = await run_in_threadpool(
                    purge_stale_nonces, self.db, self.settings.request_clock_skew_s
                )
                if purged:
                    log.info("purged %d stale request nonces", purged)
            except Exception:  # a failed purge is retried; it must not stop the server
                log.exception("purging request nonces failed")
            await asyncio.sleep(self.settings.nonce_purge_interval_s)

    def round_driver(self, round_id: int) -> RoundDriver:
        for runner in self.runners.values():
            driver = runner.rounds.get(round_id)
            if driver is not None:
                return driver
        raise ApiError(410, "round_over", f"round {round_id} is not running")
