"""Round orchestration: drives ServerSessions with deadlines over per-client mailboxes.

The protocol's ServerSession never owns time; this module does. For each
stage it waits until every expected client has sent (``ready()``) or the
stage's deadline passes, then calls ``advance()``; whoever has not sent by
then has dropped out. Clients receive the server's messages by long-polling
their mailbox, so a client that disconnects or crashes is just a dropout.

One :class:`TaskRunner` per active task runs rounds one after another:
select clients among those checked in, build the session configuration
(graph and threshold derived from the task's dropout/corruption
assumptions), run the secure aggregation, decode the weighted mean update
and the evaluation sums, apply the strategy, and store the new model
version. A round that aborts stores nothing but its record: why each client
dropped or was refused, and whom the unmasking blamed (specs/secagg-v1.md
§13.1, §16). Blamed clients are quarantined from the task's later rounds
until an operator lifts it. Only completed rounds count towards the task's
``rounds``; ``max_aborted_rounds`` aborts in a row fail the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select

from protocol import (
    ClientRecord,
    GraphKind,
    Mode,
    Round,
    ServerSession,
    SessionConfig,
)
from protocol.encoding import FixedPointEncoding, RoundEncoding
from protocol.errors import AbortReason, ConfigError, ParameterError, RemoteProtocolError
from protocol.messages import ClientMessage, decode_message
from protocol.params import AdversaryClass, derive_parameters
from protocol.policy import SessionPolicy, check_parameters, smallest_threshold
from protocol.transport import session_context
from secagg import db as dbm
from secagg.registry import ModelRegistry
from secagg.strategies import ClientSelector, UniformSelector, make_strategy
from secagg.update import next_model

log = logging.getLogger("secagg.orchestrator")

AUTO_HARARY_MIN_CLIENTS = 100
DEFAULT_DEADLINES: dict[str, float] = {
    "R0": 60.0,  # includes local training
    "R1": 15.0,
    "R2": 30.0,
    "R3": 15.0,
    "R4": 15.0,
}
_STAGE_KEYS = {
    Round.R0_ADVERTISE_KEYS: "R0",
    Round.R1_SHARE_KEYS: "R1",
    Round.R2_MASKED_INPUT_COLLECTION: "R2",
    Round.R3_CONSISTENCY_CHECK: "R3",
    Round.R4_UNMASKING: "R4",
}


def round_encoding(task: dbm.Task) -> RoundEncoding:
    """The task's vector encoding (update, weight, evaluation sums)."""
    return RoundEncoding(
        FixedPointEncoding(clip=task.clip, scale=task.scale, max_weight=task.max_weight)
    )


def server_policy(mode: Mode, corrupt_rate: float) -> SessionPolicy:
    """The collusion assumption the orchestrator derives its thresholds from.

    The same rule as a client's (``protocol.policy``) with the task's
    ``corrupt_rate``; the participant floor is the clients' business (and
    :func:`check_task_parameters`'), so it is left at its minimum here.
    """
    return SessionPolicy(
        allow_semi_honest=mode is Mode.SEMI_HONEST,
        min_participants=2,
        assumed_corrupt_rate=corrupt_rate,
    )


def choose_graph(
    n: int, mode: Mode, graph: str, dropout_rate: float, corrupt_rate: float
) -> tuple[GraphKind, int, int]:
    """(graph kind, degree, threshold) for ``n`` participants (spec §10.2).

    ``harary`` (or ``auto`` from 100 clients) uses the fcp-compatible parameter
    finder. The complete graph (``k = n - 1``) takes the smallest threshold
    the collusion rule of ``protocol.policy`` accepts for the task's
    ``corrupt_rate``: ``2t - k > c_max`` (active) or ``t > c_max``
    (semi-honest), ``t >= 2``, with ``c_max = max(1, ceil(corrupt_rate * n))``;
    then requires ``t <= k - ceil(dropout_rate * n)``, so that every client
    keeps ``t`` surviving neighbours when ``ceil(dropout_rate * n)`` others drop.

    Raises:
        ParameterError: no threshold meets both bounds; the message says which
            parameter to change.
    """
    # SecAgg+ pays off for large cohorts; below ~100 clients the parameter
    # finder's sparse graphs are tiny (degree 2 at n=10) and the complete graph
    # costs little, so "auto" keeps the complete graph there.
    policy = server_policy(mode, corrupt_rate)
    if graph == "harary" or (graph == "auto" and n >= AUTO_HARARY_MIN_CLIENTS):
        adversary = (
            AdversaryClass.SEMI_MALICIOUS if mode is Mode.ACTIVE else AdversaryClass.SEMI_HONEST
        )
        try:
            p = derive_parameters(n, dropout_rate, corrupt_rate, adversary)
            if p.degree < n - 1:
                # fcp's parameters meet the rule by construction (§10); checked anyway.
                check_parameters(n, mode, GraphKind.HARARY, p.degree, p.threshold, policy)
                return GraphKind.HARARY, p.degree, p.threshold
        except ParameterError:
            if graph == "harary":
                raise
    k = n - 1
    t = smallest_threshold(n, mode, GraphKind.COMPLETE, k, policy)
    dropped = math.ceil(round(dropout_rate * n, 9))
    if t > k - dropped:
        rule = "2t - k > c_max" if mode is Mode.ACTIVE else "t > c_max"
        raise ParameterError(
            f"{n} clients on the complete graph: the collusion rule ({rule} at corrupt_rate "
            f"{corrupt_rate}) needs threshold {t}, but with ceil(dropout_rate * n) = {dropped} "
            f"dropouts only k - {dropped} = {k - dropped} neighbours survive; lower "
            "dropout_rate or corrupt_rate, or select more clients per round"
        )
    return GraphKind.COMPLETE, k, t


# Cohort sizes checked one by one at task creation; beyond, a sample (§10.2).
_MAX_SIZES_CHECKED = 512


def check_task_parameters(
    mode: Mode,
    graph: str,
    dropout_rate: float,
    corrupt_rate: float,
    min_clients: int,
    clients_per_round: int,
    client_policy: SessionPolicy,
) -> None:
    """Refuse a task whose rounds a client with ``client_policy`` would refuse.

    For every cohort size from ``min_clients`` to ``clients_per_round`` (a
    sample of at most 512 sizes, both ends included, when the range is
    larger): :func:`choose_graph` must succeed and its parameters must pass
    ``check_parameters`` under ``client_policy``.

    Raises:
        ConfigError: (a ``PolicyError`` or ``ParameterError``) naming the cohort
            size, the rule and what to change.
    """
    sizes = range(min_clients, clients_per_round + 1)
    if len(sizes) > _MAX_SIZES_CHECKED:
        step = len(sizes) / (_MAX_SIZES_CHECKED - 1)
        picked = {min_clients + round(i * step) for i in range(_MAX_SIZES_CHECKED - 1)}
        sizes = sorted(picked | {clients_per_round})  # type: ignore[assignment]
    for n in sizes:
        if n < client_policy.min_participants:
            raise ConfigError(
                f"min_clients {min_clients} < {client_policy.min_participants}: clients "
                f"refuse sessions with fewer than {client_policy.min_participants} "
                "participants (a small cohort lets the sum reveal one client's update); "
                f"raise min_clients and clients_per_round to at least "
                f"{client_policy.min_participants}"
            )
        try:
            kind, degree, threshold = choose_graph(n, mode, graph, dropout_rate, corrupt_rate)
        except ParameterError as exc:
            raise ParameterError(f"cohort of {n} clients: {exc}") from exc
        try:
            check_parameters(n, mode, kind, degree, threshold, client_policy)
        except ConfigError as exc:
            hint = (
                "use mode active"
                if mode is Mode.SEMI_HONEST and not client_policy.allow_semi_honest
                else f"raise corrupt_rate to at least {client_policy.assumed_corrupt_rate}"
            )
            raise ConfigError(
                f"a cohort of {n} clients would be refused by clients ({exc}); {hint}"
            ) from exc


@dataclass
class Assignment:
    """What a selected client is told: everything it needs to take part."""

    round_id: int
    task_id: int
    round_number: int
    config: bytes
    base_version: int
    model_length: int
    encoding: dict[str, Any]
    deadlines: dict[str, float]
    # Active mode: the task authority's roster as uploaded (authority-v1.md §6).
    roster: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "task_id": self.task_id,
            "round_number": self.round_number,
            "config": self.config.hex(),
            "base_version": self.base_version,
            "model_length": self.model_length,
            "encoding": self.encoding,
            "deadlines": self.deadlines,
            "roster": self.roster.hex() if self.roster is not None else None,
        }


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


@dataclass
class RoundDriver:
    """One secure aggregation over the network."""

    round_id: int
    config: SessionConfig
    deadlines: dict[str, float]
    server: ServerSession = field(init=False)
    mailboxes: dict[int, Mailbox] = field(init=False)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    on_stage: Callable[[str, StageRecord], None] | None = None
    # Called before R2 closes with every client asked for a masked input (§10.2).
    on_masked_inputs: Callable[[frozenset[int]], None] | None = None

    def __post_init__(self) -> None:
        self.server = ServerSession(self.config)
        self.mailboxes = {u: Mailbox() for u in self.config.participants}
        self._lock = asyncio.Lock()
        self._progress = asyncio.Event()
        self._stage_bytes_in = 0

    async def submit(self, client_id: int, data: bytes | memoryview) -> None:
        """A client's protocol message. Raises RemoteProtocolError (state unchanged).

        Only a participant's bytes are decoded, and never on the event loop:
        the message is decoded and checked for its sender in a worker thread
        without the round lock (so a slow body holds up nobody), then received
        -- a masked vector parsed and summed -- in a worker thread under the lock.
        """
        if client_id not in self.mailboxes:
            raise RemoteProtocolError(
                AbortReason.WRONG_SENDER, f"client {client_id} is not in this round"
            )
        msg = await asyncio.to_thread(_decode_from, data, client_id)
        async with self._lock:
            await asyncio.to_thread(self.server.receive, msg, authenticated_sender=client_id)
            self._stage_bytes_in += len(data)
            if self.server.ready():
                self._progress.set()

    async def run(self) -> None:
        """Advance stage by stage until the session completes or aborts."""
        while self.server.round not in (Round.COMPLETED, Round.ABORTED):
            stage = _STAGE_KEYS[self.server.round]
            started = time.monotonic()
            waited_for = self.server.pending()
            expected = len(waited_for)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_ready(), self.deadlines[stage])
            async with self._lock:
                sent = expected - len(self.server.pending())
                if stage == "R2" and self.on_masked_inputs is not None:
                    # §10.2: recorded before advance() lets any unmasking request out.
                    # Every client asked for a masked input, not only those whose
                    # input arrived: a client records its contribution before
                    # sending, and a late or lost input is one all the same.
                    self.on_masked_inputs(waited_for)
                out = await asyncio.to_thread(self.server.advance)
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
        for box in self.mailboxes.values():
            await box.close()

    async def _wait_ready(self) -> None:
        while not self.server.ready():
            await self._progress.wait()
            self._progress.clear()


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
    ) -> None:
        self.db, self.registry, self.task_id = db, registry, task_id
        self.selector = selector or UniformSelector()
        self.grace = checkin_grace_s
        self.waiting: dict[int, asyncio.Future[Assignment]] = {}
        self.rounds: dict[int, RoundDriver] = {}
        self._arrival = asyncio.Event()
        self._events = events or (lambda kind, data: None)
        self._stopped = False
        # Why no round is starting, when it is for want of eligible clients.
        self.waiting_reason: str | None = None
        # Clients excluded from selection (blamed; see specs §16.2). Loaded
        # from the database when the loop starts, then kept in step with it.
        self.quarantined: set[int] = set()
        # True once run() has returned (task completed, failed, paused or stopped).
        self.finished = False

    # -- clients --------------------------------------------------------------

    async def checkin(self, client_id: int, timeout: float) -> Assignment | None:
        """Wait (long-poll) to be selected for a round; None if not selected in time."""
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

    def stop(self) -> None:
        self._stopped = True
        self._arrival.set()

    # -- the loop ---------------------------------------------------------------

    def lift_quarantine(self, client_id: int) -> None:
        """The operator lifted ``client_id``'s quarantine (already stored): select it again."""
        self.quarantined.discard(client_id)
        self._arrival.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # Check-ins to a finished task are refused (404) instead of long-polling
            # forever, so clients waiting for a round that will not come stop.
            self.finished = True
            for fut in self.waiting.values():
                if not fut.done():
                    fut.cancel()

    async def _run(self) -> None:
        self.quarantined = await asyncio.to_thread(load_quarantined, self.db, self.task_id)
        while not self._stopped:
            task = self._load_task()
            if task is None or task.status is not dbm.TaskStatus.ACTIVE:
                return
            if task.completed_rounds >= task.rounds:
                self._set_status(dbm.TaskStatus.COMPLETED)
                self._events("task_completed", {"task_id": self.task_id})
                return
            base_version = self.registry.get(self.task_id).version
            with self.db.session() as s:
                contributed = dbm.masked_input_senders(s, self.task_id, base_version)
            participants = await self._gather(
                task.min_clients, task.clients_per_round, contributed, base_version
            )
            if participants is None:
                return
            self.waiting_reason = None
            try:
                await self._run_round(task, participants)
            except Exception:  # a round must never take the runner down
                log.exception("round of task %s failed", self.task_id)
                await asyncio.sleep(0.5)

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
    ) -> list[int] | None:
        """Wait for ``minimum`` eligible clients; select up to ``wanted`` of them.

        Clients in ``contributed`` already sent a masked input on the current
        base version and are never selected again for it (§4.7): if too few
        others are waiting, the runner keeps waiting for fresh clients and
        says why in ``waiting_reason`` (task detail) and in the log.
        """
        excluded = frozenset(contributed or ())
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
                reason = (
                    f"waiting for clients: {len(eligible)} of the {len(self._available())} "
                    f"checked in were never asked for a masked input on base version "
                    f"{base_version}, {minimum} needed (a client contributes at most once "
                    "per base version)"
                )
                if reason != self.waiting_reason:
                    log.warning("task %s: %s", self.task_id, reason)
                    self._events("selection_waiting", {"task_id": self.task_id, "reason": reason})
                self.waiting_reason = reason
            self._arrival.clear()
            await self._arrival.wait()
        return None

    async def _run_round(self, task: dbm.Task, participants: list[int]) -> None:
        # After a restart the interrupted round keeps its number (aborted), so the
        # next number follows the highest one used, not the task's counter.
        with self.db.session() as s:
            used = (
                s.scalar(
                    select(func.max(dbm.Round.number)).where(dbm.Round.task_id == self.task_id)
                )
                or 0
            )
        number = max(task.current_round, used) + 1
        encoding = round_encoding(task)
        mode = Mode(task.mode.value)
        kind, degree, threshold = choose_graph(
            len(participants), mode, task.graph.value, task.dropout_rate, task.corrupt_rate
        )
        keys: tuple[bytes, ...] = ()
        roster: bytes | None = None
        if mode is Mode.ACTIVE:
            with self.db.session() as s:
                keys = tuple(s.get(dbm.Client, u).public_key for u in participants)  # type: ignore[union-attr]
                stored = s.get(dbm.TaskRoster, self.task_id)
                roster = stored.roster if stored is not None else None
        config = SessionConfig(
            participants=tuple(participants),
            threshold=threshold,
            vector_length=encoding.vector_length(task.vector_length),
            bit_width=encoding.required_bit_width(len(participants)),
            nonce=os.urandom(32),
            mode=mode,
            graph=kind,
            degree=degree if kind is GraphKind.HARARY else 0,
            identity_keys=keys,
            context=session_context(self.task_id, number, encoding.context()),
        )
        base = self.registry.get(self.task_id)
        deadlines = {**DEFAULT_DEADLINES, **(task.deadlines or {})}
        with self.db.session() as s:
            row = dbm.Round(
                task_id=self.task_id,
                number=number,
                status=dbm.RoundStatus.RUNNING,
                session_id=config.session_id,
                config=config.encode(),
                participants=participants,
                base_version=base.version,
            )
            s.add(row)
            s.flush()
            round_id = row.id
        driver = RoundDriver(round_id, config, deadlines)
        driver.on_masked_inputs = lambda senders: self._record_masked_inputs(
            round_id, base.version, senders
        )
        driver.on_stage = lambda stage, rec: self._events(
            "stage", {"task_id": self.task_id, "round": number, "stage": stage, **rec.__dict__}
        )
        self.rounds[round_id] = driver
        assignment = Assignment(
            roster=roster,
            round_id=round_id,
            task_id=self.task_id,
            round_number=number,
            config=config.encode(),
            base_version=base.version,
            model_length=task.vector_length,
            encoding={
                "clip": task.clip,
                "scale": task.scale,
                "max_weight": task.max_weight,
                "max_eval_examples": encoding.max_eval_examples,
                "max_example_loss": encoding.max_example_loss,
                "loss_scale": encoding.loss_scale,
            },
            deadlines=deadlines,
        )
        for u in participants:
            fut = self.waiting.pop(u, None)
            if fut is not None and not fut.done():
                fut.set_result(assignment)
        self._events(
            "round_started",
            {
                "task_id": self.task_id,
                "round": number,
                "participants": participants,
                "graph": kind.value,
                "degree": degree,
                "threshold": threshold,
            },
        )
        try:
            await driver.run()
            self._finish(task, driver, encoding, number, base.version)
        finally:
            # Keep the driver briefly so late readers still get their last message.
            asyncio.get_running_loop().call_later(30, self.rounds.pop, round_id, None)

    def _finish(
        self,
        task: dbm.Task,
        driver: RoundDriver,
        encoding: RoundEncoding,
        number: int,
        base_version: int,
    ) -> None:
        server = driver.server
        stats: dict[str, dbm.StageStats] = {
            k: dbm.StageStats(
                participants=v.participants,
                dropouts=v.dropouts,
                seconds=v.seconds,
                bytes_in=v.bytes_in,
                bytes_out=v.bytes_out,
            )
            for k, v in driver.stages.items()
        }
        finished = dbm.utcnow()
        statuses = _status_json(server.client_status)
        self._events(
            "client_outcomes",
            {"task_id": self.task_id, "round": number, "outcomes": _outcome_counts(server)},
        )
        if server.round is Round.ABORTED:
            reason = server.abort_reason.value if server.abort_reason else "unknown"
            blamed = {u: why.value for u, why in server.blame.items()}
            self._record_abort(driver, number, reason, stats, finished, statuses, blamed)
            self._events(
                "round_aborted",
                {
                    "task_id": self.task_id,
                    "round": number,
                    "reason": reason,
                    "detail": server.abort_detail,
                    "blamed": sorted(blamed),
                },
            )
            for u, why in sorted(blamed.items()):
                self._events(
                    "client_blamed",
                    {"task_id": self.task_id, "round": number, "client": u, "reason": why},
                )
            return
        result = server.result
        try:
            # Segment by segment, no int64 or float64 copy of the whole model,
            # and the new weights written over the aggregate (not read after this).
            update = next_model(
                encoding,
                result.aggregate,
                driver.config.bit_width,
                self.registry.weights_view(self.task_id, base_version),
                make_strategy(task.strategy or {"name": "fedavg"}),
                task.strategy_state,
                in_place=True,
            )
        except ConfigError as exc:  # e.g. every survivor had zero weight
            reason = f"undecodable: {exc}"
            self._record_abort(driver, number, reason, stats, finished, statuses, {})
            self._events(
                "round_aborted",
                {"task_id": self.task_id, "round": number, "reason": reason, "blamed": []},
            )
            return
        metrics = update.metrics
        eval_metrics = {
            "eval_accuracy": metrics.accuracy if metrics.count else None,
            "eval_loss": metrics.mean_loss if metrics.count else None,
            "eval_examples": metrics.count,
            "train_examples": update.total_weight,
            "survivors": len(result.survivors),
            "dropped": len(result.dropped),
        }
        new_weights, new_state = update.weights, update.state
        if not np.all(np.isfinite(new_weights)):
            raise ValueError("strategy produced non-finite weights")
        with self.db.session() as s:
            version = self.registry.add_version(
                self.task_id,
                new_weights,
                parent_version=base_version,
                round_number=number,
                metrics={"base_eval": eval_metrics},
                session=s,
            )
            row = s.get(dbm.Round, driver.round_id)
            assert row is not None
            row.status = dbm.RoundStatus.COMPLETED
            row.stage_stats, row.finished_at = stats, finished
            row.result_version, row.metrics = version.version, eval_metrics
            row.client_status, row.blamed = statuses, []
            t = s.get(dbm.Task, self.task_id)
            assert t is not None
            t.current_round, t.strategy_state = number, new_state
            t.completed_rounds += 1
            t.aborted_in_a_row = 0
        # Committed: the clients of the next round download it from memory.
        self.registry.remember(version, new_weights)
        self._events(
            "round_completed",
            {"task_id": self.task_id, "round": number, "version": version.version, **eval_metrics},
        )

    def _record_abort(
        self,
        driver: RoundDriver,
        number: int,
        reason: str,
        stats: dict[str, dbm.StageStats],
        finished: datetime,
        statuses: dict[str, dict[str, str | None]],
        blamed: dict[int, str],
    ) -> None:
        """Store an aborted round, quarantine whom it blamed, fail the task after too many.

        One transaction: the round record, the quarantine rows and the task's
        counters change together. An aborted round does not count towards the
        task's ``rounds``.
        """
        failure = ""
        with self.db.session() as s:
            row = s.get(dbm.Round, driver.round_id)
            assert row is not None
            row.status, row.abort_reason = dbm.RoundStatus.ABORTED, reason
            row.stage_stats, row.finished_at = stats, finished
            row.client_status, row.blamed = statuses, sorted(blamed)
            for u, why in sorted(blamed.items()):
                q = s.get(dbm.Quarantine, (self.task_id, u))
                if q is None:
                    q = dbm.Quarantine(task_id=self.task_id, client_id=u)
                    s.add(q)
                q.round_number, q.reason, q.since, q.lifted_at = number, why, finished, None
                q.detail = (driver.server.blame_detail or "")[:2000]
            t = s.get(dbm.Task, self.task_id)
            assert t is not None
            t.current_round = number
            t.aborted_in_a_row += 1
            if t.aborted_in_a_row >= t.max_aborted_rounds and t.status is dbm.TaskStatus.ACTIVE:
                t.status = dbm.TaskStatus.FAILED
                t.failure_reason = (
                    f"{t.aborted_in_a_row} rounds aborted in a row (limit "
                    f"{t.max_aborted_rounds}); last: {reason}"
                )[:500]
                failure = t.failure_reason
        self.quarantined.update(blamed)
        for u in sorted(blamed):
            self._events(
                "client_quarantined", {"task_id": self.task_id, "round": number, "client": u}
            )
        if failure:
            # run() sees the status and stops: no endless loop of aborts.
            self._events("task_failed", {"task_id": self.task_id, "reason": failure})

    def _record_masked_inputs(
        self, round_id: int, base_version: int, senders: frozenset[int]
    ) -> None:
        with self.db.session() as s:
            dbm.record_masked_input_senders(
                s, round_id, self.task_id, base_version, sorted(senders)
            )

    def _load_task(self) -> dbm.Task | None:
        with self.db.session() as s:
            return s.get(dbm.Task, self.task_id)

    def _set_status(self, status: dbm.TaskStatus) -> None:
        with self.db.session() as s:
            t = s.get(dbm.Task, self.task_id)
            if t is not None:
                t.status = status


def load_quarantined(db: dbm.Database, task_id: int) -> set[int]:
    """Clients currently quarantined from ``task_id``'s rounds."""
    with db.session() as s:
        return set(
            s.scalars(
                select(dbm.Quarantine.client_id).where(
                    dbm.Quarantine.task_id == task_id, dbm.Quarantine.lifted_at.is_(None)
                )
            )
        )


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
