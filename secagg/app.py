"""The HTTP API: a thin shell that parses, authenticates, persists, then hands bytes on.

Protocol messages travel as ``application/cbor`` bodies holding the
protocol's canonical bytes; everything else is JSON. Errors are JSON
``{"error": code, "detail": text}`` with a 4xx status; nothing a client
sends can cause a 500 or change stored data it should not.
"""

import asyncio
import base64
import hmac
import io
import logging
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Header, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session

from protocol import ConfigError, DecodeError, Mode, RemoteProtocolError
from protocol.authority import CertificationError, Roster, authority_key_id
from protocol.encoding import FixedPointEncoding, RoundEncoding
from protocol.policy import DEFAULT_MIN_PARTICIPANTS, SessionPolicy
from protocol.transport import CBOR_MEDIA_TYPE
from secagg import db as dbm
from secagg import metrics as prom
from secagg.auth import (
    AuthError,
    check_admin,
    check_headers,
    create_enrolment_token,
    enrol,
    purge_stale_nonces,
    verify_body,
)
from secagg.limits import BodyLimitMiddleware, BodyTimeout, BodyTooLarge
from secagg.orchestrator import (
    SERVER_SHUTDOWN,
    LifecycleError,
    Liveness,
    LiveRound,
    TaskRunner,
    check_task_parameters,
    stored_outcome,
    task_unavailable,
)
from secagg.registry import ModelRegistry, RegistryError, VersionNotFound
from secagg.round_plan import DEFAULT_TRAINING_WINDOW_S
from secagg.round_store import RoundStore
from secagg.settings import Settings

log = logging.getLogger("secagg.app")

_MESSAGES_PATH = re.compile(r"/v1/rounds/[0-9]{1,19}/messages")


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


class Coordinator:
    """Process-wide state: database, registry, one runner per active task."""

    def __init__(self, settings: Settings, db: dbm.Database) -> None:
        self.settings, self.db = settings, db
        self.registry = ModelRegistry(db)
        self.store = RoundStore(db, self.registry)
        self.liveness = Liveness(
            settings.heartbeat_s, settings.liveness_timeout_s, hold_s=settings.heartbeat_hold_s
        )
        self.runners: dict[int, TaskRunner] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.admin_token = settings.admin_token or secrets.token_urlsafe(24)
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
        with self.db.session() as s:
            ids = list(
                s.scalars(select(dbm.Task.id).where(dbm.Task.status == dbm.TaskStatus.ACTIVE))
            )
        for task_id in ids:
            self.start_runner(task_id)

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
        runner = next((r for r in self.runners.values() if r.current is not None
                       and client_id in r.current.selected), None)  # fmt: skip
        if runner is not None:
            await runner.hold_heartbeat(client_id, receive)

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


# -- request/response models ----------------------------------------------------


# Identifiers are 63-bit database keys; larger numbers are refused as 422, not 500.
Id = Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
Seq = Annotated[int, Path(ge=0, le=1 << 20)]
# Model versions are 32-bit database integers (PostgreSQL INTEGER).
MAX_VERSION = (1 << 31) - 1
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]


class ErrorResponse(BaseModel):
    """Every error: a machine-readable code and a sentence saying what was wrong."""

    error: str
    detail: str


_ERR = {"model": ErrorResponse}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Malformed request or protocol message"},
    401: {**_ERR, "description": "Missing, invalid, stale or replayed authentication"},
    403: {**_ERR, "description": "Not allowed (bad admin credential, token, participant)"},
    404: {**_ERR, "description": "Unknown task or version"},
    409: {**_ERR, "description": "Conflicts with the protocol state or stored data"},
    410: {**_ERR, "description": "The round is over"},
    408: {**_ERR, "description": "Body not received within the configured time"},
    413: {**_ERR, "description": "Body larger than the configured limit"},
    415: {**_ERR, "description": "Wrong content type"},
    422: {**_ERR, "description": "Fields that fail validation"},
}


class EnrolRequest(BaseModel):
    token: str = Field(min_length=1, max_length=200)
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="Ed25519 public key, hex")
    name: str = Field(default="", max_length=200)


class EnrolResponse(BaseModel):
    client_id: int


class TokenRequest(BaseModel):
    label: str = Field(default="", max_length=200)
    ttl_s: float = Field(default=86400.0, ge=1.0, le=365 * 86400)


class TokenResponse(BaseModel):
    token: str
    expires_at: str


class RosterResponse(BaseModel):
    """What the server read from an uploaded roster (it does not vouch for it)."""

    task_id: int
    scope: str
    serial: int
    entries: int
    authority_key_id: str = Field(description="first 8 bytes of SHA-256 of the authority key")
    not_before: int
    not_after: int


class TaskCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    vector_length: int = Field(ge=1, le=1 << 27)
    initial_weights: str | None = Field(
        default=None, description="base64 of a .npy float32 vector; zeros if omitted"
    )
    rounds: int = Field(ge=1, le=1_000_000)
    clients_per_round: int = Field(ge=2, le=100_000)
    min_clients: int | None = Field(default=None, ge=2)
    mode: Literal["semi-honest", "active"] = "active"
    graph: Literal["complete", "harary", "auto"] = "auto"
    dropout_rate: float = Field(default=0.1, ge=0, lt=1)
    corrupt_rate: float = Field(default=0.05, ge=0, lt=1)
    clip: float = Field(default=1.0, gt=0)
    # 2^12 x 10^4 keeps one client's weighted update below 2^26, so cohorts
    # of up to ~30 clients stay within 32-bit words; raise for more precision.
    scale: float = Field(default=float(1 << 12), gt=0)
    max_weight: int = Field(default=10_000, ge=1, le=1 << 62)
    deadlines: dict[
        Literal["R0", "R1", "R2", "R3", "R4"], Annotated[float, Field(gt=0, le=86400)]
    ] = Field(
        default_factory=dict,
        description="seconds per protocol stage, overriding the formula of "
        "specs/service-v1.md §5 (which scales with the model size and the cohort)",
    )
    training_window_s: float = Field(
        default=DEFAULT_TRAINING_WINDOW_S,
        gt=0,
        le=7 * 86400,
        description="seconds selected clients have to train and report ready; the window "
        "closes earlier once every selected client is ready or gone",
    )
    strategy: dict[str, Any] = Field(default_factory=lambda: {"name": "fedavg"})
    # The client policy the task is checked against at creation (spec §4.7): a
    # task no such client would accept is refused. Lowering either is only
    # meaningful for clients that opted in the same way.
    allow_semi_honest: bool = Field(
        default=False,
        description="clients of this task opted into semi-honest sessions (the server "
        "can then substitute keys and recover inputs)",
    )
    min_participants: int = Field(
        default=DEFAULT_MIN_PARTICIPANTS,
        ge=2,
        le=100_000,
        description="the clients' floor on participants and survivors",
    )
    max_aborted_rounds: int = Field(
        default=dbm.DEFAULT_MAX_ABORTED_ROUNDS,
        ge=1,
        le=10_000,
        description="aborted rounds in a row after which the task is marked failed",
    )


class QuarantineEntry(BaseModel):
    """A client excluded from a task's rounds because a round blamed it (specs §13.1)."""

    client_id: int
    round_number: int
    reason: str
    detail: str
    since: str
    lifted_at: str | None


def _quarantine_json(q: dbm.Quarantine) -> QuarantineEntry:
    return QuarantineEntry(
        client_id=q.client_id,
        round_number=q.round_number,
        reason=q.reason,
        detail=q.detail,
        since=q.since.isoformat(),
        lifted_at=q.lifted_at.isoformat() if q.lifted_at else None,
    )


def _task_json(t: dbm.Task) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "status": t.status.value,
        "vector_length": t.vector_length,
        "rounds": t.rounds,
        "current_round": t.current_round,
        "completed_rounds": t.completed_rounds,
        "aborted_in_a_row": t.aborted_in_a_row,
        "max_aborted_rounds": t.max_aborted_rounds,
        "failure_reason": t.failure_reason,
        "clients_per_round": t.clients_per_round,
        "min_clients": t.min_clients,
        "mode": t.mode.value,
        "graph": t.graph.value,
        "dropout_rate": t.dropout_rate,
        "corrupt_rate": t.corrupt_rate,
        "clip": t.clip,
        "scale": t.scale,
        "max_weight": t.max_weight,
        "deadlines": t.deadlines,
        "training_window_s": t.training_window_s,
        "strategy": t.strategy,
    }


def _round_json(r: dbm.Round) -> dict[str, Any]:
    return {
        "id": r.id,
        "number": r.number,
        "session_id": r.session_id.hex() if r.session_id is not None else None,
        "config": r.config.hex() if r.config is not None else None,
        "status": r.status.value,
        "abort_reason": r.abort_reason,
        "participants": r.participants,
        "stage_stats": r.stage_stats,
        "base_version": r.base_version,
        "result_version": r.result_version,
        "metrics": r.metrics,
        "client_status": r.client_status,
        "blamed": r.blamed,
        "started_at": r.started_at.isoformat(),
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
    }


def create_app(settings: Settings, db: dbm.Database | None = None) -> FastAPI:
    database = db or dbm.Database.from_url(settings.database_url)
    coord = Coordinator(settings, database)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await coord.start()
        purger = asyncio.get_running_loop().create_task(coord.purge_nonces_forever())
        yield
        purger.cancel()
        await asyncio.gather(purger, return_exceptions=True)
        await coord.stop()

    app = FastAPI(
        responses=ERROR_RESPONSES,
        title="secagg",
        version="0.1.0",
        lifespan=lifespan,
        description="Secure aggregation for federated learning.",
    )
    app.state.coordinator = coord

    # -- errors ------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(LifecycleError)
    async def _lifecycle_error(_: Request, exc: LifecycleError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=exc.to_json())

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(BodyTimeout)
    async def _body_timeout(_: Request, exc: BodyTimeout) -> JSONResponse:
        return _error(408, "body_timeout", str(exc.detail))

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, "body_too_large", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", str(exc.errors()))

    def body_limit(scope: Any) -> int:
        """Large bodies only where the sender is checked before its body is read:
        protocol messages (signed headers, checked first by ``client_id``) and
        admin requests carrying the admin credential. Anything an anonymous peer
        can send is small."""
        if scope["method"] == "POST" and _MESSAGES_PATH.fullmatch(scope["path"]):
            return settings.max_body_bytes
        if scope["path"].startswith("/v1/admin/"):
            for name, value in scope["headers"]:
                if name == b"authorization" and hmac.compare_digest(
                    value, b"Bearer " + coord.admin_token.encode()
                ):
                    return settings.max_body_bytes
        return settings.max_public_body_bytes

    # Body bytes are counted as they stream, chunked bodies included; also turns
    # an escaping exception into a typed 500 (secagg/limits.py).
    app.add_middleware(
        BodyLimitMiddleware, limit_for=body_limit, body_timeout_s=settings.body_timeout_s
    )

    # -- dependencies ------------------------------------------------------------

    async def client_id(request: Request) -> int:
        # Headers first: a request from nobody, stale or malformed is refused
        # before a byte of its body is read; then the body (bounded by the
        # middleware) and the signature, which covers the body's hash.
        headers = {k.lower(): v for k, v in request.headers.items()}
        pending = await run_in_threadpool(
            check_headers, database, headers, clock_skew_s=settings.request_clock_skew_s
        )
        body = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        cid = await run_in_threadpool(verify_body, database, pending, request.method, path, body)
        coord.client_seen(cid)
        return cid

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        check_admin(authorization, coord.admin_token)

    Client = Annotated[int, Depends(client_id)]  # noqa: N806 - a type alias
    Admin = Annotated[None, Depends(admin)]  # noqa: N806 - a type alias

    # -- public ------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        data, content_type = prom.render()
        return Response(content=data, media_type=content_type)

    @app.post("/v1/enrol", response_model=EnrolResponse)
    async def enrol_client(req: EnrolRequest) -> EnrolResponse:
        cid = await run_in_threadpool(
            enrol, database, req.token, bytes.fromhex(req.public_key), req.name
        )
        return EnrolResponse(client_id=cid)

    # -- admin -------------------------------------------------------------------

    @app.post("/v1/admin/tokens", response_model=TokenResponse)
    async def new_token(req: TokenRequest, _: Admin) -> TokenResponse:
        token, row = await run_in_threadpool(create_enrolment_token, database, req.label, req.ttl_s)
        return TokenResponse(token=token, expires_at=row.expires_at.isoformat())

    @app.post("/v1/admin/tasks")
    async def create_task(req: TaskCreate, _: Admin) -> dict[str, Any]:
        if req.initial_weights is not None:
            try:
                weights = np.load(
                    io.BytesIO(base64.b64decode(req.initial_weights, validate=True)),
                    allow_pickle=False,
                )
            except Exception as exc:
                raise ApiError(
                    400, "bad_weights", f"initial_weights is not a base64 .npy: {exc}"
                ) from exc
            if weights.shape != (req.vector_length,):
                raise ApiError(
                    400,
                    "bad_weights",
                    f"initial weights have shape {weights.shape}, expected ({req.vector_length},)",
                )
        else:
            weights = np.zeros(req.vector_length, np.float32)
        if req.min_clients is not None and req.min_clients > req.clients_per_round:
            raise ApiError(400, "bad_task", "min_clients exceeds clients_per_round")
        try:  # a task whose rounds could never run is refused now, not at round time
            encoding = RoundEncoding(FixedPointEncoding(req.clip, req.scale, req.max_weight))
            encoding.required_bit_width(req.clients_per_round)
            # Up to ~0.5 s for wide ranges of large cohorts: off the event loop.
            await run_in_threadpool(
                check_task_parameters,
                Mode(req.mode),
                req.graph,
                req.dropout_rate,
                req.corrupt_rate,
                req.min_clients or req.clients_per_round,
                req.clients_per_round,
                SessionPolicy(
                    allow_semi_honest=req.allow_semi_honest,
                    min_participants=req.min_participants,
                ),
            )
        except ConfigError as exc:
            raise ApiError(400, "bad_task", str(exc)) from exc

        def _create() -> dbm.Task:
            with database.session() as s:
                task = dbm.Task(
                    name=req.name,
                    status=dbm.TaskStatus.ACTIVE,
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
                    strategy=req.strategy,
                    current_round=0,
                    max_aborted_rounds=req.max_aborted_rounds,
                )
                s.add(task)
                s.flush()
                coord.registry.create_initial(task.id, weights.astype(np.float32), session=s)
                return task

        try:
            task = await run_in_threadpool(_create)
        except DbIntegrityError as exc:
            raise ApiError(409, "task_exists", f"a task named {req.name!r} exists") from exc
        coord.start_runner(task.id)
        return _task_json(task)

    @app.put("/v1/admin/tasks/{task_id}/roster", response_model=RosterResponse)
    async def upload_roster(task_id: Id, request: Request, _: Admin) -> RosterResponse:
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
            roster = Roster.decode(body)
        except CertificationError as exc:
            raise ApiError(400, "bad_roster", str(exc)) from exc

        def _store() -> None:
            with database.session() as s:
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

    @app.get("/v1/admin/tasks")
    async def list_tasks(_: Admin) -> list[dict[str, Any]]:
        with database.session() as s:
            return [_task_json(t) for t in s.scalars(select(dbm.Task).order_by(dbm.Task.id))]

    @app.get("/v1/admin/tasks/{task_id}")
    async def task_detail(task_id: Id, _: Admin) -> dict[str, Any]:
        with database.session() as s:
            task = s.get(dbm.Task, task_id)
            if task is None:
                raise ApiError(404, "unknown_task", f"no task {task_id}")
            rounds = s.scalars(
                select(dbm.Round).where(dbm.Round.task_id == task_id).order_by(dbm.Round.number)
            ).all()
            out = _task_json(task)
            out["rounds_detail"] = [_round_json(r) for r in rounds]
            out["quarantined"] = [
                _quarantine_json(q).model_dump() for q in _quarantine_rows(s, task_id, False)
            ]
        runner = coord.runners.get(task_id)
        out["waiting_reason"] = runner.waiting_reason if runner is not None else None
        out["versions"] = [_version_json(v) for v in coord.registry.list_versions(task_id)]
        return out

    def _quarantine_rows(s: Session, task_id: int, lifted: bool) -> list[dbm.Quarantine]:
        query = select(dbm.Quarantine).where(dbm.Quarantine.task_id == task_id)
        if not lifted:
            query = query.where(dbm.Quarantine.lifted_at.is_(None))
        return list(s.scalars(query.order_by(dbm.Quarantine.client_id)))

    @app.get(
        "/v1/admin/tasks/{task_id}/quarantine",
        response_model=list[QuarantineEntry],
        summary="Clients excluded from the task's rounds after blame",
    )
    async def list_quarantine(
        task_id: Id, _: Admin, include_lifted: bool = False
    ) -> list[QuarantineEntry]:
        with database.session() as s:
            if s.get(dbm.Task, task_id) is None:
                raise ApiError(404, "unknown_task", f"no task {task_id}")
            return [_quarantine_json(q) for q in _quarantine_rows(s, task_id, include_lifted)]

    @app.delete(
        "/v1/admin/tasks/{task_id}/quarantine/{client_id}",
        response_model=QuarantineEntry,
        summary="Lift a client's quarantine: later rounds may select it again",
    )
    async def lift_quarantine(task_id: Id, client_id: Id, _: Admin) -> QuarantineEntry:
        with database.session() as s:
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
            entry = _quarantine_json(q)
        runner = coord.runners.get(task_id)
        if runner is not None:
            runner.lift_quarantine(client_id)
        coord.event("quarantine_lifted", {"task_id": task_id, "client": client_id, "by": "admin"})
        return entry

    def weights_response(task_id: int, version: str) -> Response:
        """A stored version (or ``current``) as a .npy file with its content hash."""
        v = None if version == "current" else _int(version, "version")
        info = _registry_call(coord.registry.get, task_id, v)
        data = _registry_call(coord.registry.download, task_id, info.version)
        return Response(
            content=data,
            media_type="application/octet-stream",
            headers={
                "x-secagg-version": str(info.version),
                "x-secagg-sha256": info.sha256,
                "content-disposition": f'attachment; filename="task{task_id}-v{info.version}.npy"',
            },
        )

    @app.get("/v1/admin/tasks/{task_id}/versions/{version}/weights")
    async def admin_download(task_id: Id, version: str, _: Admin) -> Response:
        """Any stored version (or ``current``) for the model owner."""
        return weights_response(task_id, version)

    @app.post("/v1/admin/tasks/{task_id}/versions/{version}/promote")
    async def promote(task_id: Id, version: Version, _: Admin) -> dict[str, Any]:
        return _version_json(_registry_call(coord.registry.promote, task_id, version))

    @app.post("/v1/admin/tasks/{task_id}/rollback")
    async def rollback(task_id: Id, _: Admin) -> dict[str, Any]:
        return _version_json(_registry_call(coord.registry.rollback, task_id))

    @app.post("/v1/admin/tasks/{task_id}/versions/{version}/tags/{tag}")
    async def tag(task_id: Id, version: Version, tag: str, _: Admin) -> dict[str, Any]:
        return _version_json(_registry_call(coord.registry.tag, task_id, version, tag))

    # -- clients -----------------------------------------------------------------

    @app.get("/v1/tasks/{task_id}/models/{version}")
    async def download(task_id: Id, version: str, cid: Client) -> Response:
        """The global model a client trains from (a version number or ``current``).

        Only for clients that have been assigned a round of the task.
        """
        if not await run_in_threadpool(coord.may_download, task_id, cid):
            raise ApiError(
                403, "not_eligible", f"client {cid} has not been assigned a round of task {task_id}"
            )
        return weights_response(task_id, version)

    @app.post(
        "/v1/tasks/{task_id}/checkin",
        responses={
            200: {"description": "Selected: the training assignment (JSON)"},
            204: {"description": "Not selected before the long-poll timed out; check in again"},
        },
    )
    async def checkin(task_id: Id, cid: Client) -> Response:
        """Long-poll to be selected (specs/service-v1.md §3.1): 409 paused, 410 finished."""
        runner = await coord.runner(task_id)
        assignment = await runner.checkin(cid, settings.long_poll_s)
        if assignment is None:
            return Response(status_code=204)
        return JSONResponse(assignment.to_json())

    @app.post("/v1/rounds/{round_id}/heartbeat")
    async def heartbeat(round_id: Id, request: Request, cid: Client) -> dict[str, str]:
        """A selected client is alive; held open a while, the round's stage (service-v1 §4)."""
        coord.running_round(round_id).heartbeat(cid)
        await coord.hold_heartbeat(cid, request.receive)
        return {"stage": coord.running_round(round_id).heartbeat(cid)}

    @app.post("/v1/rounds/{round_id}/ready", status_code=202)
    async def ready(round_id: Id, cid: Client) -> dict[str, str]:
        """Local training and encoding are done: put this client in the session."""
        coord.running_round(round_id).report_ready(cid)
        return {"status": "accepted"}

    @app.get(
        "/v1/rounds/{round_id}/session",
        responses={204: {"description": "Not formed yet; poll again"}},
    )
    async def session(round_id: Id, cid: Client) -> Response:
        """Long-poll for the session formed among the ready clients (config, roster)."""
        formed = await coord.running_round(round_id).session_for(cid, settings.long_poll_s)
        if formed is None:
            return Response(status_code=204)
        return JSONResponse(formed)

    @app.get(
        "/v1/rounds/{round_id}/outcome",
        responses={204: {"description": "Not decided yet; poll again"}},
    )
    async def outcome(round_id: Id, cid: Client) -> Response:
        """Long-poll: ``completed`` (with the committed version) or ``aborted`` (reason)."""
        live = coord.live_round(round_id)
        if live is not None:
            decided = await live.outcome_for(cid, settings.long_poll_s)
        else:
            decided = await stored_outcome(coord.store, round_id, cid)
        if decided is None:
            return Response(status_code=204)
        return JSONResponse(decided)

    @app.post("/v1/rounds/{round_id}/messages", status_code=202)
    async def submit(round_id: Id, request: Request, cid: Client) -> dict[str, str]:
        if request.headers.get("content-type", "") != CBOR_MEDIA_TYPE:
            raise ApiError(
                415, "unsupported_media_type", f"protocol messages are {CBOR_MEDIA_TYPE}"
            )
        # Before anything decodes the body: a participant of the formed session.
        driver = coord.running_round(round_id).require_driver(cid)
        body = await request.body()
        try:
            await driver.submit(cid, body)
        except DecodeError as exc:
            raise ApiError(400, exc.reason.value, exc.detail) from exc
        except RemoteProtocolError as exc:
            raise ApiError(409, exc.reason.value, exc.detail) from exc
        return {"status": "accepted"}

    @app.get(
        "/v1/rounds/{round_id}/messages/{seq}",
        response_class=Response,
        responses={
            200: {
                "description": "The server's protocol message number seq",
                "content": {CBOR_MEDIA_TYPE: {}},
            },
            204: {"description": "Not yet available; poll again"},
        },
    )
    async def receive(round_id: Id, seq: Seq, cid: Client) -> Response:
        driver = coord.running_round(round_id).require_driver(cid)
        box = driver.mailboxes[cid]
        if seq < 0:
            raise ApiError(400, "bad_sequence", "sequence numbers start at 0")
        data = await box.get(seq, settings.long_poll_s)
        if data is None:
            if box.closed:
                raise ApiError(410, "round_over", f"round {round_id} has no message {seq}")
            return Response(status_code=204)
        return Response(content=data, media_type=CBOR_MEDIA_TYPE)

    return app


def _int(text: str, what: str) -> int:
    """A path integer in [1, MAX_VERSION]: plain decimal digits, range-checked before use."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not (
        1 <= int(text) <= MAX_VERSION
    ):
        raise ApiError(
            400, f"bad_{what}", f"{what} must be an integer in [1, {MAX_VERSION}] or 'current'"
        )
    return int(text)


def _registry_call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except VersionNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    except RegistryError as exc:
        raise ApiError(409, "registry_error", str(exc)) from exc


def _version_json(v: Any) -> dict[str, Any]:
    return {
        "version": v.version,
        "parent_version": v.parent_version,
        "round_number": v.round_number,
        "sha256": v.sha256,
        "metrics": v.metrics,
        "tags": list(v.tags),
        "created_at": v.created_at.isoformat(),
        "is_current": v.is_current,
    }
