"""The round rows and what a round writes, with bounded retries on transient failures.

Every method is blocking (SQLAlchemy); the orchestrator calls them through
``asyncio.to_thread``, never on the event loop. Each one is a single
transaction, retried on a dropped connection, a SQLite ``database is
locked`` or another transient ``OperationalError`` with exponential backoff
(bounded: :class:`Retry`). What is retried is safe to repeat:
:meth:`RoundStore.complete` first looks whether the round is already
completed (a commit whose acknowledgement was lost), so a retry never writes
a second version.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from protocol.dp import DPParams
from protocol.dp.accounting import participation_epsilon
from secagg import db as dbm
from secagg.dp_tasks import client_participations, exhausted_clients
from secagg.registry import ModelRegistry

log = logging.getLogger("secagg.round_store")

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """A database failure that a new attempt may not meet (connection loss, lock, timeout).

    Broader than :func:`secagg.db.is_transient` (which it includes): finishing a
    round is worth a few retries on any ``OperationalError``; a constraint
    violation (``IntegrityError``) or a bug is never retried.
    """
    if dbm.is_transient(exc):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError)


@dataclass(frozen=True)
class Retry:
    """Bounded exponential backoff: ``attempts`` tries, delays doubling up to ``max_delay_s``.

    The defaults try for about 10 s in all before a round gives up (``store_failed``).
    """

    attempts: int = 7
    first_delay_s: float = 0.1
    max_delay_s: float = 3.0

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried while it fails transiently; the last failure is raised."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if attempt == self.attempts or not is_transient(exc):
                    raise
                delay = min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))
                # Jitter spreads retries of several runners; not secret material.
                delay *= 0.5 + random.random() / 2  # noqa: S311
                log.warning(
                    "%s failed (attempt %d of %d), retrying in %.2f s: %s",
                    what,
                    attempt,
                    self.attempts,
                    delay,
                    exc.__class__.__name__,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Completed:
    """What a completed round stores (besides its stage statistics)."""

    weights: npt.NDArray[np.float32]
    strategy_state: bytes | None
    eval_metrics: dict[str, Any]  # measured on the base version
    train_metrics: dict[str, Any]  # of the new version's round
    # A DP round: the clients whose masked inputs are in the sum (R2's survivors).
    dp_survivors: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DPSpend:
    """What a DP round cost: one participation's epsilon, the task's spent after it."""

    round_epsilon: float
    epsilon_spent: float

    def to_json(self) -> dict[str, float]:
        return {"dp_round_epsilon": self.round_epsilon, "epsilon_spent": self.epsilon_spent}


def record_dp_round(
    session: Session, task_id: int, round_id: int, survivors: Iterable[int]
) -> DPSpend:
    """Charge a DP round to its survivors and update the task's epsilon spent.

    One row per survivor in ``dp_participations`` (idempotent per round), then
    ``epsilon_spent = participation_epsilon(params, max k)``: every
    participation costs the same RDP curve, so the client with the most
    participations has spent the most.

    Raises:
        LookupError: the task has no DP settings.
    """
    state = session.get(dbm.TaskDP, task_id)
    if state is None:
        raise LookupError(f"task {task_id} has no DP settings")
    known = set(
        session.scalars(
            select(dbm.DPParticipation.client_id).where(dbm.DPParticipation.round_id == round_id)
        )
    )
    for u in sorted(set(survivors) - known):
        session.add(dbm.DPParticipation(round_id=round_id, client_id=u, task_id=task_id))
    session.flush()
    most = max(client_participations(session, task_id).values(), default=0)
    params = DPParams.from_json(state.params)
    spent = participation_epsilon(params, most) if most else 0.0
    state.epsilon_spent = max(float(state.epsilon_spent or 0.0), spent)
    return DPSpend(float(state.round_epsilon), float(state.epsilon_spent))


class RoundStore:
    """Round rows and the task counters they move, one transaction per call."""

    def __init__(self, db: dbm.Database, registry: ModelRegistry, retry: Retry | None = None):
        self.db, self.registry = db, registry
        self.retry = retry or Retry()

    # -- reads -----------------------------------------------------------------------

    def load_task(self, task_id: int) -> dbm.Task | None:
        def read() -> dbm.Task | None:
            with self.db.session() as s:
                return s.get(dbm.Task, task_id)

        return self.retry.call(read, f"loading task {task_id}")

    def current_version(self, task_id: int) -> int:
        return self.retry.call(lambda: self.registry.get(task_id).version, "reading the version")

    def base_weights(self, task_id: int, version: int) -> npt.NDArray[np.float32]:
        return self.retry.call(
            lambda: self.registry.weights(task_id, version), f"reading version {version}"
        )

    def contributed(self, task_id: int, base_version: int) -> set[int]:
        def read() -> set[int]:
            with self.db.session() as s:
                return dbm.masked_input_senders(s, task_id, base_version)

        return self.retry.call(read, "reading masked-input senders")

    def dp_exhausted(self, task_id: int) -> set[int]:
        """Clients of a DP task whose budget is spent (``k >= max_participations``)."""

        def read() -> set[int]:
            with self.db.session() as s:
                state = s.get(dbm.TaskDP, task_id)
                if state is None:
                    return set()
                return exhausted_clients(s, task_id, state.max_participations)

        return self.retry.call(read, "reading the privacy budget")

    def enrolled_clients(self) -> set[int]:
        """Every enrolled client that may still authenticate."""

        def read() -> set[int]:
            with self.db.session() as s:
                return set(
                    s.scalars(
                        select(dbm.Client.id).where(dbm.Client.status == dbm.ClientStatus.ACTIVE)
                    )
                )

        return self.retry.call(read, "reading the enrolled clients")

    def fail_task(self, task_id: int, reason: str) -> bool:
        """Mark an active task failed with ``reason``; whether it was active."""

        def write() -> bool:
            with self.db.session() as s:
                t = s.get(dbm.Task, task_id)
                if t is None or t.status is not dbm.TaskStatus.ACTIVE:
                    return False
                t.status, t.failure_reason = dbm.TaskStatus.FAILED, reason[:500]
                return True

        return self.retry.call(write, f"failing task {task_id}")

    def quarantined(self, task_id: int) -> set[int]:
        def read() -> set[int]:
            with self.db.session() as s:
                return set(
                    s.scalars(
                        select(dbm.Quarantine.client_id).where(
                            dbm.Quarantine.task_id == task_id,
                            dbm.Quarantine.lifted_at.is_(None),
                        )
                    )
                )

        return self.retry.call(read, "reading the quarantine")

    def roster(self, task_id: int) -> bytes | None:
        def read() -> bytes | None:
            with self.db.session() as s:
                stored = s.get(dbm.TaskRoster, task_id)
                return stored.roster if stored is not None else None

        return self.retry.call(read, "reading the roster")

    def identity_keys(self, clients: Iterable[int]) -> tuple[bytes, ...]:
        def read() -> tuple[bytes, ...]:
            with self.db.session() as s:
                out = []
                for u in clients:
                    row = s.get(dbm.Client, u)
                    if row is None:
                        raise LookupError(f"client {u} is not enrolled")
                    out.append(row.public_key)
                return tuple(out)

        return self.retry.call(read, "reading identity keys")

    def outcome(self, round_id: int) -> tuple[list[int], dict[str, Any] | None] | None:
        """(invited clients, outcome or None while running) of a stored round; None if unknown."""

        def read() -> tuple[list[int], dict[str, Any] | None] | None:
            with self.db.session() as s:
                row = s.get(dbm.Round, round_id)
                if row is None:
                    return None
                if row.status is dbm.RoundStatus.COMPLETED:
                    return row.participants, {"status": "completed", "version": row.result_version}
                if row.status is dbm.RoundStatus.ABORTED:
                    return row.participants, {"status": "aborted", "reason": row.abort_reason}
                return row.participants, None

        return self.retry.call(read, f"reading round {round_id}")

    # -- writes ----------------------------------------------------------------------

    def begin(self, task_id: int, selected: list[int], base_version: int) -> tuple[int, int]:
        """Insert the round row at selection; (round id, round number).

        After a restart the interrupted round keeps its number (aborted), so the
        next number follows the highest one used, not the task's counter.
        """

        def write() -> tuple[int, int]:
            with self.db.session() as s:
                used = s.scalar(
                    select(func.max(dbm.Round.number)).where(dbm.Round.task_id == task_id)
                )
                task = s.get(dbm.Task, task_id)
                assert task is not None
                number = max(task.current_round, used or 0) + 1
                row = dbm.Round(
                    task_id=task_id,
                    number=number,
                    status=dbm.RoundStatus.RUNNING,
                    participants=selected,
                    base_version=base_version,
                )
                s.add(row)
                s.flush()
                return row.id, number

        return self.retry.call(write, "starting a round")

    def form_session(
        self,
        round_id: int,
        config: bytes,
        session_id: bytes,
        participants: list[int],
        training: dbm.StageStats,
    ) -> None:
        """The session is formed among ``participants`` (the ready clients)."""

        def write() -> None:
            with self.db.session() as s:
                row = s.get(dbm.Round, round_id)
                assert row is not None
                row.config, row.session_id = config, session_id
                row.participants = participants
                row.stage_stats = {"training": training}

        self.retry.call(write, f"forming round {round_id}'s session")

    def record_masked_inputs(
        self, round_id: int, task_id: int, base_version: int, senders: Iterable[int]
    ) -> None:
        def write() -> None:
            with self.db.session() as s:
                dbm.record_masked_input_senders(s, round_id, task_id, base_version, sorted(senders))

        self.retry.call(write, "recording masked-input senders")

    def complete(
        self,
        task_id: int,
        round_id: int,
        number: int,
        base_version: int,
        result: Completed,
        stats: Mapping[str, dbm.StageStats],
        statuses: dict[str, dict[str, str | None]],
        finished: datetime,
    ) -> int:
        """Commit the new version, its round and the task's counters; the new version.

        One transaction. The evaluation sums describe the base model, so they are
        stored on the base version (``metrics["eval"]``); the new version records
        its round's training figures (``metrics["train"]``).
        """

        def write() -> int:
            with self.db.session() as s:
                row = s.get(dbm.Round, round_id)
                assert row is not None
                if row.status is dbm.RoundStatus.COMPLETED and row.result_version is not None:
                    return row.result_version  # an earlier attempt committed
                if row.status is not dbm.RoundStatus.RUNNING:
                    raise RuntimeError(f"round {round_id} is {row.status.value}, not running")
                train = dict(result.train_metrics)
                if result.dp_survivors is not None:
                    train.update(
                        record_dp_round(s, task_id, round_id, result.dp_survivors).to_json()
                    )
                version = self.registry.add_version(
                    task_id,
                    result.weights,
                    parent_version=base_version,
                    round_number=number,
                    metrics={"train": train},
                    session=s,
                )
                base = s.scalar(
                    select(dbm.ModelVersion).where(
                        dbm.ModelVersion.task_id == task_id,
                        dbm.ModelVersion.version == base_version,
                    )
                )
                if base is not None:
                    base.metrics = {**(base.metrics or {}), "eval": result.eval_metrics}
                row.status = dbm.RoundStatus.COMPLETED
                row.stage_stats = {**(row.stage_stats or {}), **stats}
                row.finished_at = finished
                row.result_version = version.version
                row.metrics = {**result.eval_metrics, **train}
                row.client_status, row.blamed = statuses, []
                t = s.get(dbm.Task, task_id)
                assert t is not None
                t.current_round, t.strategy_state = number, result.strategy_state
                t.completed_rounds += 1
                t.aborted_in_a_row = 0
                return version.version

        return self.retry.call(write, f"storing round {number}'s result")

    def abort(
        self,
        task_id: int,
        round_id: int,
        number: int,
        reason: str,
        *,
        stats: Mapping[str, dbm.StageStats] | None = None,
        statuses: dict[str, dict[str, str | None]] | None = None,
        blamed: Mapping[int, str] | None = None,
        blame_detail: str = "",
        finished: datetime,
        pause_reason: str | None = None,
        dp_survivors: Iterable[int] | None = None,
    ) -> str:
        """Store an aborted round, quarantine whom it blamed, pause or fail the task.

        One transaction: the round record, the quarantine rows and the task's
        counters change together. An aborted round does not count towards the
        task's ``rounds``; ``max_aborted_rounds`` aborts in a row fail the task;
        ``pause_reason`` pauses it (a failed aggregation: retrying cannot help).
        A round already finished is left as it is (a completed round is never
        relabelled). Returns why the task stopped ("" if it goes on).

        ``dp_survivors``: a DP round whose sum was released (unmasked) before
        the round failed is charged to them all the same (:func:`record_dp_round`).
        """
        blamed = dict(blamed or {})
        charged = sorted(dp_survivors) if dp_survivors is not None else None

        def write() -> str:
            with self.db.session() as s:
                row = s.get(dbm.Round, round_id)
                assert row is not None
                if row.status is not dbm.RoundStatus.RUNNING:
                    return ""
                row.status, row.abort_reason = dbm.RoundStatus.ABORTED, reason[:200]
                row.stage_stats = {**(row.stage_stats or {}), **(stats or {})}
                row.finished_at = finished
                row.client_status, row.blamed = statuses, sorted(blamed)
                if charged is not None:
                    row.metrics = {
                        **(row.metrics or {}),
                        **record_dp_round(s, task_id, round_id, charged).to_json(),
                    }
                for u, why in sorted(blamed.items()):
                    q = s.get(dbm.Quarantine, (task_id, u))
                    if q is None:
                        q = dbm.Quarantine(task_id=task_id, client_id=u)
                        s.add(q)
                    q.round_number, q.reason, q.since, q.lifted_at = number, why, finished, None
                    q.detail = blame_detail[:2000]
                t = s.get(dbm.Task, task_id)
                assert t is not None
                t.current_round = max(t.current_round, number)
                t.aborted_in_a_row += 1
                if t.status is not dbm.TaskStatus.ACTIVE:
                    return ""
                if pause_reason is not None:
                    t.status = dbm.TaskStatus.PAUSED
                    t.failure_reason = pause_reason[:500]
                    return t.failure_reason
                if t.aborted_in_a_row >= t.max_aborted_rounds:
                    t.status = dbm.TaskStatus.FAILED
                    t.failure_reason = (
                        f"{t.aborted_in_a_row} rounds aborted in a row (limit "
                        f"{t.max_aborted_rounds}); last: {reason}"
                    )[:500]
                    return t.failure_reason
                return ""

        return self.retry.call(write, f"storing round {number}'s abort")

    def set_status(self, task_id: int, status: dbm.TaskStatus) -> None:
        def write() -> None:
            with self.db.session() as s:
                t = s.get(dbm.Task, task_id)
                if t is not None:
                    t.status = status

        self.retry.call(write, f"setting task {task_id} {status.value}")
