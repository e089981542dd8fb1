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
from secagg.orchestrator import (
    SERVER_SHUTDOWN,
    Liveness,
    LiveRound,
    TaskRunner,
    task_unavailable,
)
from secagg.registry import ModelRegistry
from secagg.round_store import RoundStore
from secagg.settings import Settings

log = logging.getLogger("secagg.coordinator")


class Coordinator:
    """Process-wide state: database, registry, one runner per active task."""

    def __init__(self, settings: Settings, db: dbm.Database) -> None:
        self.settings, self.db = settings, db
        self.registry = ModelRegistry(db, cache_bytes=settings.model_cache_bytes)
        self.store = RoundStore(db, self.registry)
        self.liveness = Liveness(
            settings.heartbeat_s, settings.liveness_timeout_s, hold_s=settings.heartbeat_hold_s
        )
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
        runner = TaskRunner(
            self.db,
            self.registry,
            task_id,
            events=self.event,
            liveness=self.liveness,
            store=self.store,
        )
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
        # Running rounds are closed (server_shutdown) and recorded before exit.
        await asyncio.gather(
            *(r.shutdown(SERVER_SHUTDOWN) for r in self.runners.values()),
            return_exceptions=True,
        )
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def runner(self, task_id: int) -> TaskRunner:
        """The task's running round loop, or why there is none (404, 409, 410, 503)."""
        runner = self.runners.get(task_id)
        if runner is None or runner.finished:  # e.g. completed, failed or paused
            raise await task_unavailable(self.store, task_id)
        return runner

    def client_seen(self, client_id: int) -> None:
        """An authenticated request: the client is alive (round liveness, service-v1 §4)."""
        for runner in self.runners.values():
            runner.touch(client_id)

    async def hold_heartbeat(self, client_id: int, receive: Any) -> None:
        """Hold a selected client's heartbeat open (service-v1 §4)."""
        for runner in self.runners.values():
            if runner.current is not None and client_id in runner.current.selected:
                await runner.hold_heartbeat(client_id, receive)
                return

    def live_round(self, round_id: int) -> LiveRound | None:
        for runner in self.runners.values():
            live = runner.live_round(round_id)
            if live is not None:
                return live
        return None

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

    def running_round(self, round_id: int) -> LiveRound:
        live = self.live_round(round_id)
        if live is None:
            raise ApiError(410, "round_over", f"round {round_id} is not running")
        return live
