"""Round orchestration: selection, the training window, R0..R4 over mailboxes, the outcome.

The protocol's ServerSession never owns time; this module does. A round
(specs/service-v1.md §3) goes:

1. **selection**: among the clients long-polling their check-in, up to
   ``clients_per_round`` (at least ``min_clients``) get a training
   assignment; the round row is inserted with them as the invited clients.
2. **training window** (``training_window_s``, minutes to hours): each
   selected client trains, encodes, and reports ready. The window closes
   as soon as every selected client is ready or gone, or when it expires.
3. **session**: formed among the ready clients (threshold and graph derived
   from that actual cohort, :func:`secagg.round_plan.plan_session`); fewer
   than ``min_clients`` ready aborts the round ``too_few_trained``.
4. **R0..R4** with short deadlines (:func:`secagg.round_plan.stage_deadlines`):
   each stage closes as soon as every expected client has sent or is gone.
5. **outcome**: ``completed`` only once the new version is committed;
   otherwise ``aborted`` with a reason.

Liveness (§4): a participant is *gone* once it has sent no authenticated
request for ``Liveness.timeout_s``; clients send heartbeats from a thread
of their own, and every signed request counts (:meth:`TaskRunner.touch`).
A SIGKILLed client therefore costs a stage a few seconds, not a deadline.

One :class:`TaskRunner` per active task runs rounds one after another. A
round that aborts stores nothing but its record: why each client dropped or
was refused, and whom the unmasking blamed (specs/secagg-v1.md §13.1, §16).
Blamed clients are quarantined from the task's later rounds until an
operator lifts it. Only completed rounds count towards the task's
``rounds``; ``max_aborted_rounds`` aborts in a row fail the task; a failed
aggregation (strategy error, non-finite weights, undecodable sum) pauses it.
All database work runs in worker threads (:mod:`secagg.round_store`).

A distributed-DP task (service-v1.md §11, :mod:`secagg.dp_tasks`) runs the
same loop with three additions: clients whose privacy budget is spent are
never selected (and the task fails ``privacy_budget_spent`` once too few
enrolled clients have budget left); a session with fewer than ``m + c``
ready clients or masked inputs aborts ``dp_too_few_survivors`` before any
unmasking request; a released sum is charged to its survivors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from protocol import ClientRecord, Round, ServerSession, SessionConfig
from protocol.dp import DPEncoding
from protocol.encoding import RoundEncoding
from protocol.errors import AbortReason, ConfigError, RemoteProtocolError
from protocol.messages import ClientMessage, decode_message
from secagg import db as dbm
from secagg.dp_tasks import BUDGET_SPENT, DP_TOO_FEW_SURVIVORS, required_survivors
from secagg.registry import ModelRegistry
from secagg.round_plan import (
    AUTO_HARARY_MIN_CLIENTS,
    Assignment,
    Liveness,
    check_task_parameters,
    choose_graph,
    dp_params,
    plan_session,
    plan_training,
    round_encoding,
    server_policy,
    training_window,
)
from secagg.round_store import Completed, RoundStore
from secagg.strategies import ClientSelector, UniformSelector, make_strategy
from secagg.update import ModelUpdate, next_model, next_model_dp

__all__ = [
    "AUTO_HARARY_MIN_CLIENTS",
    "Assignment",
    "LifecycleError",
    "LiveRound",
    "Liveness",
    "RoundDriver",
    "TaskRunner",
    "check_task_parameters",
    "choose_graph",
    "expected_bytes",
    "load_quarantined",
    "round_encoding",
    "server_policy",
]

log = logging.getLogger("secagg.orchestrator")

T = TypeVar("T")

# Round abort reasons of the service (besides the protocol's AbortReason values).
TOO_FEW_TRAINED = "too_few_trained"
STORE_FAILED = "store_failed"
AGGREGATION_FAILED = "aggregation_failed"
SERVER_SHUTDOWN = "server_shutdown"
TASK_CANCELLED = "task_cancelled"
INTERNAL_ERROR = "internal_error"

# A finished round's state stays in memory this long for late outcome polls;
# afterwards the outcome is read from its row.
KEEP_FINISHED_S = 300.0
# How long a shutdown waits for a round whose result is being stored.
FINALISE_GRACE_S = 30.0

_STAGE_KEYS = {
    Round.R0_ADVERTISE_KEYS: "R0",
    Round.R1_SHARE_KEYS: "R1",
    Round.R2_MASKED_INPUT_COLLECTION: "R2",
    Round.R3_CONSISTENCY_CHECK: "R3",
    Round.R4_UNMASKING: "R4",
}


class LifecycleError(Exception):
    """A client request that does not fit the round's state: an HTTP status, code, detail."""

    def __init__(
        self, status: int, code: str, detail: str, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.extra = dict(extra or {})

    def to_json(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


async def task_unavailable(store: RoundStore, task_id: int) -> LifecycleError:
    """Why a check-in to ``task_id`` finds no running round loop (service-v1.md §3.1)."""
    task = await asyncio.to_thread(store.load_task, task_id)
    if task is None:
        return LifecycleError(404, "unknown_task", f"no task {task_id}")
    if task.status is dbm.TaskStatus.PAUSED:
        why = f": {task.failure_reason}" if task.failure_reason else ""
        return LifecycleError(409, "task_paused", f"task {task_id} is paused{why}")
    if task.status is dbm.TaskStatus.ACTIVE:
        return LifecycleError(
            503, "task_unavailable", f"task {task_id} is not running on this server now"
        )
    why = f": {task.failure_reason}" if task.failure_reason else ""
    return LifecycleError(
        410,
        "task_finished",
        f"task {task_id} is {task.status.value}{why}",
        {"status": task.status.value},
    )


def round_over(round_id: int, why: str = "") -> LifecycleError:
    return LifecycleError(410, "round_over", f"round {round_id} is over{why}")


class Mailbox:
    """The server's messages to one client in one round, in order (read by sequence number)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.closed = False
        self._changed = asyncio.Condition()

    async def put(self, data: bytes) -> None:
        async with self._changed:
            self.messages.append(data)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def get(self, seq: int, timeout: float) -> bytes | None:
        """Message ``seq``, waiting up to ``timeout``; None on timeout or if none will come."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: seq < len(self.messages) or self.closed),
                    timeout,
                )
            except TimeoutError:
                return None
            return self.messages[seq] if seq < len(self.messages) else None


@dataclass
class StageRecord:
    participants: int = 0
    dropouts: int = 0
    seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0


def _never_gone(_: int) -> bool:
    return False


@dataclass
class RoundDriver:
    """One secure aggregation over the network.

    A stage closes when every expected client has sent, when every client
    still expected is gone (``gone``, from liveness), or at its deadline.
    """

    round_id: int
    config: SessionConfig
    deadlines: dict[str, float]
    gone: Callable[[int], bool] = _never_gone
    tick_s: float = 0.25
    server: ServerSession = field(init=False)
    mailboxes: dict[int, Mailbox] = field(init=False)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    on_stage: Callable[[str, StageRecord], None] | None = None
    # Awaited before R2 closes with every client asked for a masked input (§10.2).
    on_masked_inputs: Callable[[frozenset[int]], Awaitable[None]] | None = None
    # A DP round (§11): R2 is not closed with fewer masked inputs than this
    # (m + c); the session aborts instead, before any unmasking request.
    min_masked_inputs: int = 0
    # The service's own abort reason when the driver aborted the session itself.
    service_abort: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self.server = ServerSession(self.config)
        self.mailboxes = {u: Mailbox() for u in self.config.participants}
        self._lock = asyncio.Lock()
        self._progress = asyncio.Event()
        self._stage_bytes_in = 0
        # SHA-256 of each message accepted, per client: an identical re-post
        # (a retry after a lost response) is answered 202 again (§6).
        self._accepted: dict[int, set[bytes]] = {u: set() for u in self.config.participants}

    @property
    def stage(self) -> str:
        return _STAGE_KEYS.get(self.server.round, self.server.round.value)

    async def submit(
        self, client_id: int, data: bytes | memoryview, sha256: bytes | None = None
    ) -> None:
        """A client's protocol message. Raises RemoteProtocolError (state unchanged).

        ``sha256``: the body's digest if it was computed as the body streamed in
        (a spooled body); otherwise it is computed here, in a worker thread.

        Only a participant's bytes are decoded, and never on the event loop:
        the message is decoded and checked for its sender in a worker thread
        without the round lock (so a slow body holds up nobody), then received
        -- a masked vector parsed and summed -- in a worker thread under the lock.
        Bytes identical to a message already accepted from the same client are
        accepted again without effect (idempotent retry).
        """
        if client_id not in self.mailboxes:
            raise RemoteProtocolError(
                AbortReason.WRONG_SENDER, f"client {client_id} is not in this round"
            )
        digest = sha256 if sha256 is not None else await asyncio.to_thread(_digest, data)
        if digest in self._accepted[client_id]:
            return
        msg = await asyncio.to_thread(_decode_from, data, client_id)
        async with self._lock:
            if digest in self._accepted[client_id]:
                return
            await asyncio.to_thread(self.server.receive, msg, authenticated_sender=client_id)
            self._accepted[client_id].add(digest)
            self._stage_bytes_in += len(data)
            self._progress.set()

    def wake(self) -> None:
        """Re-check the stage now (e.g. a client was found gone)."""
        self._progress.set()

    async def run(self) -> None:
        """Advance stage by stage until the session completes or aborts."""
        try:
            while self.server.round not in (Round.COMPLETED, Round.ABORTED):
                stage = _STAGE_KEYS[self.server.round]
                started = time.monotonic()
                waited_for = self.server.pending()
                expected = len(waited_for)
                await self._wait_stage(started + self.deadlines[stage])
                async with self._lock:
                    if self._over():
                        break  # aborted from outside (abort(): shutdown, cancel)
                    sent = expected - len(self.server.pending())
                    if stage == "R2" and self.on_masked_inputs is not None:
                        # §10.2: recorded before advance() lets any unmasking request out.
                        # Every client asked for a masked input, not only those whose
                        # input arrived: a client records its contribution before
                        # sending, and a late or lost input is one all the same.
                        await self.on_masked_inputs(waited_for)
                    if stage == "R2" and sent < self.min_masked_inputs:
                        # §11: the sum would hold fewer than m honest noise shares.
                        # (Recorded above all the same: the clients count a sent input.)
                        # Closing R2 would ask for unmasking; abort instead, so
                        # nothing is revealed (each client would refuse anyway).
                        detail = (
                            f"{sent} masked inputs arrived, a DP round releases a sum of "
                            f"at least {self.min_masked_inputs} (min_honest + colluders)"
                        )
                        self.service_abort = (DP_TOO_FEW_SURVIVORS, detail)
                        out = self.server.abort(AbortReason.CANCELLED, detail)
                        self.stages[stage] = StageRecord(
                            participants=sent,
                            dropouts=expected - sent,
                            seconds=time.monotonic() - started,
                            bytes_in=self._stage_bytes_in,
                            bytes_out=sum(len(m) for m in out.values()),
                        )
                        for u, data in out.items():
                            await self.mailboxes[u].put(data)
                        break
                    out = await asyncio.to_thread(self.server.advance)
                    if (
                        self.server.round is Round.R2_MASKED_INPUT_COLLECTION
                        and self.on_masked_inputs is not None
                    ):
                        # §10.2, durably before any request for a masked input is
                        # delivered: a server killed while R2 is open must still
                        # know, after its restart, whom it asked on this base version
                        # (clients record theirs before sending).
                        await self.on_masked_inputs(frozenset(self.server.pending()))
                    record = StageRecord(
                        participants=sent,
                        dropouts=expected - sent,
                        seconds=time.monotonic() - started,
                        bytes_in=self._stage_bytes_in,
                        bytes_out=sum(len(m) for m in out.values()),
                    )
                    self._stage_bytes_in = 0
                    self._progress.clear()
                self.stages[stage] = record
                if self.on_stage is not None:
                    self.on_stage(stage, record)
                for u, data in out.items():
                    await self.mailboxes[u].put(data)
        finally:
            for box in self.mailboxes.values():
                await box.close()

    def _over(self) -> bool:
        """Whether the session has ended (re-read: ``abort()`` may have run meanwhile)."""
        return self.server.round in (Round.COMPLETED, Round.ABORTED)

    async def abort(self, detail: str) -> None:
        """Abort from outside (shutdown, cancel): clients still expected get an Abort."""
        async with self._lock:
            if self.server.round in (Round.COMPLETED, Round.ABORTED):
                return
            out = self.server.abort(AbortReason.CANCELLED, detail)
        for u, data in out.items():
            await self.mailboxes[u].put(data)
        for box in self.mailboxes.values():
            await box.close()

    async def _wait_stage(self, deadline: float) -> None:
        """Until everyone expected has sent or is gone, or ``deadline`` (monotonic)."""
        while True:
            pending = self.server.pending()
            if not pending or all(self.gone(u) for u in pending):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(remaining, self.tick_s))


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _decode_from(data: bytes | memoryview, client_id: int) -> ClientMessage:
    """Decode a client's message (once) and check it claims its authenticated sender.

    The same checks, in the same order, as steps 2-3 of the server's receive
    pipeline (secagg-v1.md §12.1); the session then skips its own decoding.
    """
    msg = decode_message(data)
    claimed = msg.sender if isinstance(msg, ClientMessage) else None
    if not isinstance(msg, ClientMessage) or claimed != client_id:
        raise RemoteProtocolError(
            AbortReason.WRONG_SENDER,
            f"authenticated as client {client_id} but the message is from {claimed}",
        )
    return msg


class LiveRound:
    """A round in memory, from selection to its outcome: what the client routes read.

    ``stage`` is ``training``, then ``R0``..``R4`` (the driver's), then
    ``finalising`` (the result is being stored) and ``over``.
    """

    def __init__(self, assignment: Assignment, selected: frozenset[int]) -> None:
        self.assignment = assignment
        self.round_id = assignment.round_id
        self.number = assignment.round_number
        self.selected = selected
        self.ready: set[int] = set()
        self.driver: RoundDriver | None = None
        self.session: dict[str, Any] | None = None
        self.outcome: dict[str, Any] | None = None
        self.finalising = False
        self.training: dbm.StageStats | None = None
        self._changed = asyncio.Event()
        self._formed = asyncio.Event()
        self._decided = asyncio.Event()

    @property
    def stage(self) -> str:
        if self.outcome is not None:
            return "over"
        if self.finalising:
            return "finalising"
        if self.driver is None:
            return "training"
        return self.driver.stage

    def in_session(self, client_id: int) -> bool:
        return self.driver is not None and client_id in self.driver.mailboxes

    # -- client requests ---------------------------------------------------------------

    def heartbeat(self, client_id: int) -> str:
        """The stage, for a client still part of the round; LifecycleError otherwise."""
        self._require_selected(client_id)
        if self.outcome is not None:
            raise round_over(self.round_id)
        if self.session is not None and not self.in_session(client_id):
            raise round_over(self.round_id, ": the session was formed without this client")
        return self.stage

    def report_ready(self, client_id: int) -> None:
        self._require_selected(client_id)
        if self.outcome is not None:
            raise round_over(self.round_id)
        if self.session is not None:
            if self.in_session(client_id):
                return  # a retried report
            raise round_over(self.round_id, ": the session was formed without this client")
        self.ready.add(client_id)
        self._changed.set()

    async def session_for(self, client_id: int, timeout: float) -> dict[str, Any] | None:
        """The session (config, roster) once formed with this client; None if not yet."""
        self._require_selected(client_id)
        if self.session is None and self.outcome is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._formed.wait(), timeout)
        if self.session is not None and self.in_session(client_id):
            return self.session
        if self.session is not None:
            raise round_over(self.round_id, ": the session was formed without this client")
        if self.outcome is not None:
            raise round_over(self.round_id)
        return None

    async def outcome_for(self, client_id: int, timeout: float) -> dict[str, Any] | None:
        self._require_selected(client_id)
        if self.outcome is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._decided.wait(), timeout)
        return self.outcome

    def require_driver(self, client_id: int) -> RoundDriver:
        """The running session, for a participant's protocol message."""
        self._require_selected(client_id)
        if self.driver is None:
            if self.outcome is not None:
                raise round_over(self.round_id)
            raise LifecycleError(
                409, "session_not_formed", f"round {self.round_id} is still in training"
            )
        if client_id not in self.driver.mailboxes:
            raise round_over(self.round_id, ": the session was formed without this client")
        return self.driver

    def _require_selected(self, client_id: int) -> None:
        if client_id not in self.selected:
            raise LifecycleError(
                403, "not_a_participant", f"client {client_id} is not in round {self.round_id}"
            )

    # -- runner side ---------------------------------------------------------------------

    def form(self, driver: RoundDriver, session: dict[str, Any]) -> None:
        self.driver, self.session = driver, session
        self._formed.set()

    def decide(self, outcome: dict[str, Any]) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self._formed.set()
        self._decided.set()
        self._changed.set()

    def wake(self) -> None:
        """Re-check the waiting stage now (a client was found gone)."""
        self._changed.set()
        if self.driver is not None:
            self.driver.wake()

    async def changed(self, timeout: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


class _Aborted(Exception):
    """The round ends without a result: its reason (and why the task pauses, if it does)."""

    def __init__(self, reason: str, detail: str = "", pause: bool = False) -> None:
        super().__init__(detail or reason)
        self.reason, self.detail, self.pause = reason, detail, pause


class TaskRunner:
    """Runs one task's rounds, one at a time, until its target is reached."""

    def __init__(
        self,
        db: dbm.Database,
        registry: ModelRegistry,
        task_id: int,
        *,
        checkin_grace_s: float = 0.5,
        selector: ClientSelector | None = None,
        events: Callable[[str, dict[str, Any]], None] | None = None,
        liveness: Liveness | None = None,
        store: RoundStore | None = None,
    ) -> None:
        self.db, self.registry, self.task_id = db, registry, task_id
        self.store = store or RoundStore(db, registry)
        self.selector = selector or UniformSelector()
        self.grace = checkin_grace_s
        self.liveness = liveness or Liveness()
        self.waiting: dict[int, asyncio.Future[Assignment]] = {}
        # Rounds by id: the running one, and finished ones kept for late polls.
        self.rounds: dict[int, LiveRound] = {}
        self.current: LiveRound | None = None
        self._round_task: asyncio.Task[None] | None = None
        # Monotonic time of each client's last authenticated request, and how
        # many heartbeats each one has held open now (service-v1.md §4).
        self.last_seen: dict[int, float] = {}
        self.holding: dict[int, int] = {}
        self._arrival = asyncio.Event()
        self._events = events or (lambda kind, data: None)
        self._stopped = False
        self._shutdown_reason: str | None = None
        # Why no round is starting, when it is for want of eligible clients.
        self.waiting_reason: str | None = None
        # Clients excluded from selection (blamed; see specs §16.2). Loaded
        # from the database when the loop starts, then kept in step with it.
        self.quarantined: set[int] = set()
        # True once run() has returned (task completed, failed, paused or stopped).
        self.finished = False

    # -- clients --------------------------------------------------------------

    def touch(self, client_id: int) -> None:
        """An authenticated request from ``client_id`` arrived: it is alive."""
        self.last_seen[client_id] = time.monotonic()

    def gone(self, client_id: int) -> bool:
        if self.holding.get(client_id):
            return False  # a heartbeat is held open: its process is alive
        seen = self.last_seen.get(client_id)
        return seen is None or time.monotonic() - seen > self.liveness.timeout_s

    async def hold_heartbeat(
        self, client_id: int, disconnected: Callable[[], Awaitable[Any]]
    ) -> None:
        """Hold a heartbeat open up to ``Liveness.hold_s`` (service-v1.md §4).

        While it is held the client counts as alive however starved of CPU it
        is; if its connection closes meanwhile (``disconnected()`` returns:
        the client process died and the kernel closed its socket), it is gone
        at once and the waiting stage re-checks now, not after the timeout.
        """
        self.touch(client_id)
        self.holding[client_id] = self.holding.get(client_id, 0) + 1
        watcher = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({watcher}, timeout=self.liveness.hold_s)
        finally:
            watcher.cancel()
            self.holding[client_id] -= 1
            if not self.holding[client_id]:
                del self.holding[client_id]
        if done:
            self.last_seen[client_id] = -math.inf
            live = self.current
            if live is not None:
                live.wake()
        else:
            self.touch(client_id)

    async def checkin(self, client_id: int, timeout: float) -> Assignment | None:
        """Wait (long-poll) to be selected for a round; None if not selected in time.

        A client that checks in has left the round it was in (it counts itself
        dropped): it is gone from that round at once (service-v1.md §4).
        """
        live = self.current
        if live is not None and live.outcome is None and client_id in live.selected:
            self.last_seen[client_id] = -math.inf
            live.wake()
        previous = self.waiting.get(client_id)
        if previous is not None and not previous.done():
            previous.cancel()  # a newer check-in replaces an older one
        fut: asyncio.Future[Assignment] = asyncio.get_running_loop().create_future()
        self.waiting[client_id] = fut
        self._arrival.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except (TimeoutError, asyncio.CancelledError):
            return None
        finally:
            if self.waiting.get(client_id) is fut and not fut.done():
                del self.waiting[client_id]

    def live_round(self, round_id: int) -> LiveRound | None:
        return self.rounds.get(round_id)

    def stop(self) -> None:
        self._stopped = True
        self._arrival.set()

    async def shutdown(self, reason: str) -> None:
        """Abort the running round (if any) with ``reason``, record it, stop the loop.

        A round whose result is being stored is let finish (bounded by
        ``FINALISE_GRACE_S``): it is either committed and completed, or not and
        aborted, never both. Every outcome poll then gets the recorded outcome.
        """
        self._shutdown_reason = reason
        self.stop()
        task = self._round_task
        live = self.current
        if task is not None and not task.done() and live is not None:
            if live.finalising or live.outcome is not None:
                # Storing a result or recording an abort: let it end, bounded.
                await asyncio.wait({task}, timeout=FINALISE_GRACE_S)
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            if live.outcome is None:
                await self._abort_round(live, _Aborted(reason, "the server stopped the round"))

    def lift_quarantine(self, client_id: int) -> None:
        """The operator lifted ``client_id``'s quarantine (already stored): select it again."""
        self.quarantined.discard(client_id)
        self._arrival.set()

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # Check-ins to a finished task get its status instead of long-polling
            # forever, so clients waiting for a round that will not come stop.
            self.finished = True
            for fut in self.waiting.values():
                if not fut.done():
                    fut.cancel()

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def _run(self) -> None:
        pause = 1.0
        while not self._stopped:
            try:
                if not await self._round_or_finish():
                    return
                pause = 1.0
            except SQLAlchemyError:
                # The database stayed unreachable through the store's retries: the
                # loop waits and tries again rather than dying with the task active.
                log.exception(
                    "task %s: database unavailable, retrying in %.0f s", self.task_id, pause
                )
                await asyncio.sleep(pause)
                pause = min(2 * pause, 30.0)

    async def _round_or_finish(self) -> bool:
        """Select and run one round; False once the task is over (or the runner stopped)."""
        self.quarantined = await self._db(self.store.quarantined, self.task_id)
        task = await self._db(self.store.load_task, self.task_id)
        if task is None or task.status is not dbm.TaskStatus.ACTIVE:
            return False
        if task.completed_rounds >= task.rounds:
            await self._db(self.store.set_status, self.task_id, dbm.TaskStatus.COMPLETED)
            self._events("task_completed", {"task_id": self.task_id})
            return False
        base_version = await self._db(self.store.current_version, self.task_id)
        contributed = await self._db(self.store.contributed, self.task_id, base_version)
        spent: set[int] = set()
        if task.dp is not None:
            self._publish_budget(task)
            spent = await self._db(self.store.dp_exhausted, self.task_id)
            if spent and not await self._budget_left(task, spent):
                return False
        participants = await self._gather(
            task.min_clients, task.clients_per_round, contributed, base_version, spent
        )
        if participants is None or self._stopped:
            return False
        self.waiting_reason = None
        self._round_task = asyncio.get_running_loop().create_task(
            self._run_round(task, participants, base_version)
        )
        # asyncio.wait: a cancelled round (shutdown) does not cancel the loop.
        await asyncio.wait({self._round_task})
        if not self._round_task.cancelled() and self._round_task.exception() is not None:
            # _run_round records its own failures; this is a failure to record.
            log.error(
                "round of task %s could not be recorded",
                self.task_id,
                exc_info=self._round_task.exception(),
            )
            await asyncio.sleep(1.0)
        return True

    def _publish_budget(self, task: dbm.Task) -> None:
        """The task's epsilon spent and budget, for ``/metrics`` (a ``dp_budget`` event)."""
        if task.dp is not None:
            self._events(
                "dp_budget",
                {
                    "task_id": self.task_id,
                    "epsilon_spent": float(task.dp.epsilon_spent),
                    "epsilon_budget": float(task.dp.spec["epsilon"]),
                },
            )

    async def _budget_left(self, task: dbm.Task, spent: set[int]) -> bool:
        """Whether enough enrolled clients have budget left to fill a round (§11).

        If not, the task fails with ``privacy_budget_spent``: no round of it can
        open again unless more clients enrol (then ``resume`` restarts it).
        """
        enrolled = await self._db(self.store.enrolled_clients)
        fresh = enrolled - spent
        if len(fresh) >= task.min_clients:
            return True
        reason = (
            f"{BUDGET_SPENT}: {len(spent & enrolled)} enrolled clients spent their privacy "
            f"budget (epsilon {float(task.dp.spec['epsilon']) if task.dp else 0:g}); "
            f"{len(fresh)} have budget left, min_clients {task.min_clients} needed"
        )
        if await self._db(self.store.fail_task, self.task_id, reason):
            log.warning("task %s: %s", self.task_id, reason)
            self._events("task_failed", {"task_id": self.task_id, "reason": reason})
        return False

    def _available(self, excluded: frozenset[int] | set[int] = frozenset()) -> list[int]:
        return [
            u
            for u, f in self.waiting.items()
            if not f.done() and u not in excluded and u not in self.quarantined
        ]

    async def _gather(
        self,
        minimum: int,
        wanted: int,
        contributed: set[int] | None = None,
        base_version: int | None = None,
        spent: set[int] | None = None,
    ) -> list[int] | None:
        """Wait for ``minimum`` eligible clients; select up to ``wanted`` of them.

        Clients in ``contributed`` already sent a masked input on the current
        base version and are never selected again for it (§4.7); clients in
        ``spent`` have spent a DP task's privacy budget and are never selected
        again (§11). If too few others are waiting, the runner keeps waiting
        for fresh clients and says why in ``waiting_reason`` (task detail) and
        in the log.
        """
        no_budget = frozenset(spent or ())
        excluded = frozenset(contributed or ()) | no_budget
        while not self._stopped:
            eligible = self._available(excluded)
            if len(eligible) >= minimum:
                # A short grace period lets late check-ins join a round.
                deadline = time.monotonic() + self.grace
                while len(self._available(excluded)) < wanted and time.monotonic() < deadline:
                    self._arrival.clear()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), deadline - time.monotonic())
                    except TimeoutError:
                        break
                available = self._available(excluded)
                if len(available) >= minimum:
                    return self.selector.select(available, wanted)
            elif len(self._available()) > len(eligible):
                waiting = self._available()
                without_budget = len(no_budget.intersection(waiting))
                if without_budget:
                    reason = (
                        f"waiting for clients: {without_budget} of the {len(waiting)} "
                        f"checked in have spent their privacy budget, {len(eligible)} "
                        f"eligible, {minimum} needed"
                    )
                else:
                    reason = (
                        f"waiting for clients: {len(eligible)} of the {len(waiting)} "
                        f"checked in were never asked for a masked input on base version "
                        f"{base_version}, {minimum} needed (a client contributes at most "
                        "once per base version)"
                    )
                if reason != self.waiting_reason:
                    log.warning("task %s: %s", self.task_id, reason)
                    self._events("selection_waiting", {"task_id": self.task_id, "reason": reason})
                self.waiting_reason = reason
            self._arrival.clear()
            await self._arrival.wait()
        return None

    # -- one round ------------------------------------------------------------------

    async def _run_round(self, task: dbm.Task, selected: list[int], base_version: int) -> None:
        round_id, number = await self._db(self.store.begin, self.task_id, selected, base_version)
        live: LiveRound | None = None
        try:
            roster = None
            if task.mode is dbm.ProtocolMode.ACTIVE:
                roster = await self._db(self.store.roster, self.task_id)
            assignment = plan_training(
                task,
                round_id=round_id,
                number=number,
                base_version=base_version,
                liveness=self.liveness,
                roster=roster,
            )
            live = LiveRound(assignment, frozenset(selected))
            self.current = live
            self.rounds[round_id] = live
            now = time.monotonic()
            for u in selected:
                self.last_seen[u] = now  # its check-in just answered
                fut = self.waiting.pop(u, None)
                if fut is not None and not fut.done():
                    fut.set_result(assignment)
            self._events(
                "round_started",
                {"task_id": self.task_id, "round": number, "selected": selected},
            )
            driver = await self._train_and_form(task, live, roster)
            await driver.run()
            live.finalising = True
            await self._finalise(task, live, driver, base_version)
        except asyncio.CancelledError:
            raise  # shutdown() records the abort
        except _Aborted as exc:
            if live is not None:
                await self._abort_round(live, exc)
        except Exception as exc:  # a round must never take the runner down, nor stay running
            log.exception("round %d of task %s failed", number, self.task_id)
            if live is None:
                live = LiveRound(
                    Assignment(round_id, self.task_id, number, base_version, 0, {}, 0, 0, {}, ""),
                    frozenset(selected),
                )
                self.rounds[round_id] = live
            await self._abort_round(live, _Aborted(INTERNAL_ERROR, str(exc)))
        finally:
            if live is not None:
                # Keep the state for late outcome polls; the row answers afterwards.
                asyncio.get_running_loop().call_later(
                    KEEP_FINISHED_S, self.rounds.pop, round_id, None
                )

    async def _train_and_form(
        self, task: dbm.Task, live: LiveRound, roster: bytes | None
    ) -> RoundDriver:
        """The training window, then the session among the ready clients (§3.2-3.3)."""
        started = time.monotonic()
        deadline = started + training_window(task)
        while True:
            waiting = live.selected - live.ready
            if not waiting or all(self.gone(u) for u in waiting):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await live.changed(min(remaining, self.liveness.tick_s))
        cohort = sorted(live.ready)
        training = dbm.StageStats(
            participants=len(cohort),
            dropouts=len(live.selected) - len(cohort),
            seconds=time.monotonic() - started,
            bytes_in=0,
            bytes_out=0,
        )
        self._events(
            "stage",
            {"task_id": self.task_id, "round": live.number, "stage": "training", **training},
        )
        live.training = training
        if len(cohort) < task.min_clients:
            raise _Aborted(
                TOO_FEW_TRAINED,
                f"{len(cohort)} of {len(live.selected)} selected clients reported ready "
                f"within the training window; {task.min_clients} needed",
            )
        params = dp_params(task)
        floor = required_survivors(task, params) if params is not None else 0
        if len(cohort) < floor:
            raise _Aborted(
                DP_TOO_FEW_SURVIVORS,
                f"{len(cohort)} clients reported ready; a DP round releases a sum of at "
                f"least {floor} (min_honest + colluders)",
            )
        keys: tuple[bytes, ...] = ()
        if task.mode is dbm.ProtocolMode.ACTIVE:
            keys = await self._db(self.store.identity_keys, cohort)
        try:
            plan = plan_session(task, cohort, live.number, nonce=os.urandom(32), identity_keys=keys)
        except ConfigError as exc:
            raise _Aborted(TOO_FEW_TRAINED, f"no session for {len(cohort)} clients: {exc}") from exc
        config = plan.config
        await self._db(
            self.store.form_session,
            live.round_id,
            config.encode(),
            config.session_id,
            cohort,
            training,
        )
        driver = RoundDriver(
            live.round_id,
            config,
            plan.deadlines,
            gone=self.gone,
            tick_s=self.liveness.tick_s,
            min_masked_inputs=floor,
        )
        base_version = live.assignment.base_version

        async def record_masked_inputs(senders: frozenset[int]) -> None:
            await self._db(
                self.store.record_masked_inputs, live.round_id, self.task_id, base_version, senders
            )

        driver.on_masked_inputs = record_masked_inputs
        driver.on_stage = lambda stage, rec: self._events(
            "stage", {"task_id": self.task_id, "round": live.number, "stage": stage, **rec.__dict__}
        )
        live.form(
            driver,
            {"config": config.encode().hex(), "roster": roster.hex() if roster else None},
        )
        self._events(
            "session_formed",
            {
                "task_id": self.task_id,
                "round": live.number,
                "participants": cohort,
                "graph": plan.graph.value,
                "degree": plan.degree,
                "threshold": plan.threshold,
                "deadlines": plan.deadlines,
            },
        )
        return driver

    async def _finalise(
        self, task: dbm.Task, live: LiveRound, driver: RoundDriver, base_version: int
    ) -> None:
        """Decode, apply the strategy, commit the version; only then is the round completed.

        Fails closed: anything that goes wrong aborts the round (and a failed
        aggregation pauses the task); the outcome says ``completed`` only after
        the commit returned.
        """
        server = driver.server
        statuses = _status_json(server.client_status)
        self._events(
            "client_outcomes",
            {"task_id": self.task_id, "round": live.number, "outcomes": _outcome_counts(server)},
        )
        if server.round is Round.ABORTED:
            if driver.service_abort is not None:
                raise _Aborted(*driver.service_abort)
            reason = server.abort_reason.value if server.abort_reason else "unknown"
            raise _Aborted(reason, server.abort_detail)
        result = server.result
        params = dp_params(task)
        encoding: RoundEncoding | DPEncoding = (
            round_encoding(task) if params is None else DPEncoding(params)
        )
        try:
            update = await asyncio.to_thread(
                self._aggregate,
                task,
                encoding,
                result.aggregate,
                driver.config,
                base_version,
            )
        except SQLAlchemyError as exc:
            raise _Aborted(STORE_FAILED, f"reading the base model failed: {exc}") from exc
        except Exception as exc:
            raise _Aborted(AGGREGATION_FAILED, f"{type(exc).__name__}: {exc}", pause=True) from exc
        metrics = update.metrics
        eval_metrics: dict[str, Any] = {
            "eval_accuracy": metrics.accuracy if metrics is not None and metrics.count else None,
            "eval_loss": metrics.mean_loss if metrics is not None and metrics.count else None,
            "eval_examples": metrics.count if metrics is not None else None,
            "round": live.number,
        }
        train_metrics = {
            "train_examples": update.total_weight,
            "survivors": len(result.survivors),
            "dropped": len(result.dropped),
            "round": live.number,
        }
        new_weights, new_state = update.weights, update.state
        completed = Completed(
            new_weights,
            new_state,
            eval_metrics,
            train_metrics,
            dp_survivors=tuple(result.survivors) if params is not None else None,
        )
        try:
            version = await self._db(
                self.store.complete,
                self.task_id,
                live.round_id,
                live.number,
                base_version,
                completed,
                _stats(driver),
                statuses,
                dbm.utcnow(),
            )
        except Exception as exc:
            log.exception("storing round %d of task %s failed", live.number, self.task_id)
            raise _Aborted(STORE_FAILED, f"{type(exc).__name__}: {exc}") from exc
        live.decide({"status": "completed", "version": version})
        if params is not None:
            stored = await self._db(self.store.load_task, self.task_id)
            if stored is not None:
                self._publish_budget(stored)
        # Committed: the clients of the next round download it from memory.
        with contextlib.suppress(Exception):  # a cache miss only costs a database read
            info = await asyncio.to_thread(self.registry.get, self.task_id, version)
            self.registry.remember(info, new_weights)
        self._events(
            "round_completed",
            {
                "task_id": self.task_id,
                "round": live.number,
                "version": version,
                **{k: v for k, v in eval_metrics.items() if k != "round"},
                **{k: v for k, v in train_metrics.items() if k != "round"},
            },
        )

    def _aggregate(
        self,
        task: dbm.Task,
        encoding: RoundEncoding | DPEncoding,
        aggregate: Any,
        config: SessionConfig,
        base_version: int,
    ) -> ModelUpdate:
        """In a worker thread: decode the sum and apply the strategy, segment by segment.

        The new weights are written over the aggregate's buffer (``in_place``):
        nothing reads the aggregate afterwards. A DP round's sum is decoded
        with its session id (the rotation's signs, specs/dp-v1.md §4).
        """
        base = self.registry.weights_view(self.task_id, base_version)
        strategy = make_strategy(task.strategy or {"name": "fedavg"})
        if isinstance(encoding, DPEncoding):
            update = next_model_dp(
                encoding,
                aggregate,
                config.bit_width,
                config.session_id,
                base,
                strategy,
                task.strategy_state,
                in_place=True,
            )
        else:
            update = next_model(
                encoding,
                aggregate,
                config.bit_width,
                base,
                strategy,
                task.strategy_state,
                in_place=True,
            )
        if not np.all(np.isfinite(update.weights)):
            raise ValueError("the strategy produced non-finite weights")
        return update

    async def _abort_round(self, live: LiveRound, why: _Aborted) -> None:
        """Record the abort (retried), tell every outcome poll, quarantine the blamed."""
        driver = live.driver
        blamed: dict[int, str] = {}
        statuses = None
        stats: dict[str, dbm.StageStats] = {}
        detail = ""
        released: tuple[int, ...] | None = None
        if live.training is not None:
            stats["training"] = live.training
        if driver is not None:
            if (
                driver.server.round is not Round.ABORTED
                and driver.server.round is not Round.COMPLETED
            ):
                await driver.abort(why.reason)
            blamed = {u: r.value for u, r in driver.server.blame.items()}
            statuses = _status_json(driver.server.client_status)
            stats.update(_stats(driver))
            detail = driver.server.blame_detail or ""
            if driver.server.round is Round.COMPLETED and live.assignment.dp is not None:
                # The sum was unmasked before the round failed (storing, decoding):
                # it is released all the same, so its survivors pay for it.
                released = tuple(driver.server.result.survivors)
        live.decide({"status": "aborted", "reason": why.reason})
        pause = f"round {live.number}: {why.reason}: {why.detail}" if why.pause else None
        try:
            failure = await self._db(
                lambda: self.store.abort(
                    self.task_id,
                    live.round_id,
                    live.number,
                    why.reason,
                    stats=stats,
                    statuses=statuses,
                    blamed=blamed,
                    blame_detail=detail,
                    finished=dbm.utcnow(),
                    pause_reason=pause,
                    dp_survivors=released,
                )
            )
        except Exception:
            # The row stays 'running' until the next start marks it interrupted;
            # no version was written, and clients were told 'aborted'.
            log.exception("recording round %d's abort failed", live.number)
            failure = ""
        self._events(
            "round_aborted",
            {
                "task_id": self.task_id,
                "round": live.number,
                "reason": why.reason,
                "detail": why.detail,
                "blamed": sorted(blamed),
            },
        )
        self.quarantined.update(blamed)
        for u, r in sorted(blamed.items()):
            self._events(
                "client_blamed",
                {"task_id": self.task_id, "round": live.number, "client": u, "reason": r},
            )
            self._events(
                "client_quarantined", {"task_id": self.task_id, "round": live.number, "client": u}
            )
        if failure:
            kind = "task_paused" if why.pause else "task_failed"
            self._events(kind, {"task_id": self.task_id, "reason": failure})
            # run() sees the status and stops: no endless loop of aborts.
            self.stop()


def _stats(driver: RoundDriver) -> dict[str, dbm.StageStats]:
    return {
        k: dbm.StageStats(
            participants=v.participants,
            dropouts=v.dropouts,
            seconds=v.seconds,
            bytes_in=v.bytes_in,
            bytes_out=v.bytes_out,
        )
        for k, v in driver.stages.items()
    }


def load_quarantined(db: dbm.Database, task_id: int) -> set[int]:
    """Clients currently quarantined from ``task_id``'s rounds."""
    return RoundStore(db, ModelRegistry(db)).quarantined(task_id)


async def stored_outcome(store: RoundStore, round_id: int, client_id: int) -> dict[str, Any] | None:
    """The outcome of a round no longer in memory, from its row (off the event loop)."""
    found = await asyncio.to_thread(store.outcome, round_id)
    if found is None:
        raise LifecycleError(404, "unknown_round", f"no round {round_id}")
    invited, outcome = found
    if client_id not in invited:
        raise LifecycleError(
            403, "not_a_participant", f"client {client_id} is not in round {round_id}"
        )
    return outcome


def _status_json(status: Mapping[int, ClientRecord]) -> dict[str, dict[str, str | None]]:
    return {
        str(u): {
            "status": r.status.value,
            "reason": r.reason.value if r.reason is not None else None,
            "detail": r.detail,
        }
        for u, r in sorted(status.items())
    }


def _outcome_counts(server: ServerSession) -> dict[str, int]:
    """How many participants ended with each label (status, refused_<r>, blamed_<r>)."""
    counts: dict[str, int] = {}
    for record in server.client_status.values():
        counts[record.label] = counts.get(record.label, 0) + 1
    return dict(sorted(counts.items()))


def expected_bytes(config: SessionConfig) -> int:
    """Upper bound on one client message of this session (for body-size limits)."""
    return config.packed_size + 4096 + 200 * config.degree
