"""The HTTP API: a thin shell that parses, authenticates, persists, then hands bytes on.

Protocol messages travel as ``application/cbor`` bodies holding the
protocol's canonical bytes; everything else is JSON. Errors are JSON
``{"error": code, "detail": text}`` with a 4xx status; nothing a client
sends can cause a 500 or change stored data it should not.
"""

import asyncio
import base64
import io
import logging
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

from protocol import ConfigError, DecodeError, Mode, RemoteProtocolError
from protocol.encoding import FixedPointEncoding, RoundEncoding
from protocol.policy import DEFAULT_MIN_PARTICIPANTS, SessionPolicy
from protocol.transport import CBOR_MEDIA_TYPE
from secagg import db as dbm
from secagg import metrics as prom
from secagg.auth import AuthError, authenticate, check_admin, create_enrolment_token, enrol
from secagg.orchestrator import TaskRunner, check_task_parameters
from secagg.registry import ModelRegistry, RegistryError, VersionNotFound
from secagg.settings import Settings

log = logging.getLogger("secagg.app")


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
        self.runners: dict[int, TaskRunner] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.admin_token = settings.admin_token or secrets.token_urlsafe(24)

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
        with self.db.session() as s:
            ids = list(
                s.scalars(select(dbm.Task.id).where(dbm.Task.status == dbm.TaskStatus.ACTIVE))
            )
        for task_id in ids:
            self.start_runner(task_id)

    async def stop(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def runner(self, task_id: int) -> TaskRunner:
        runner = self.runners.get(task_id)
        if runner is None or runner.finished:
            raise ApiError(404, "unknown_task", f"task {task_id} is not running")
        return runner

    def round_driver(self, round_id: int) -> Any:
        for runner in self.runners.values():
            driver = runner.rounds.get(round_id)
            if driver is not None:
                return driver
        raise ApiError(410, "round_over", f"round {round_id} is not running")


# -- request/response models ----------------------------------------------------


# Identifiers are 63-bit database keys; larger numbers are refused as 422, not 500.
Id = Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
Seq = Annotated[int, Path(ge=0, le=1 << 20)]


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
    ] = Field(default_factory=dict)
    strategy: dict[str, Any] = Field(default_factory=lambda: {"name": "fedavg"})
    # The client policy the task is checked against at creation (spec §4.5): a
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


def _task_json(t: dbm.Task) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "status": t.status.value,
        "vector_length": t.vector_length,
        "rounds": t.rounds,
        "current_round": t.current_round,
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
        "strategy": t.strategy,
    }


def _round_json(r: dbm.Round) -> dict[str, Any]:
    return {
        "id": r.id,
        "number": r.number,
        "session_id": r.session_id.hex(),
        "config": r.config.hex(),
        "status": r.status.value,
        "abort_reason": r.abort_reason,
        "participants": r.participants,
        "stage_stats": r.stage_stats,
        "base_version": r.base_version,
        "result_version": r.result_version,
        "metrics": r.metrics,
        "started_at": r.started_at.isoformat(),
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
    }


def create_app(settings: Settings, db: dbm.Database | None = None) -> FastAPI:
    database = db or dbm.Database.from_url(settings.database_url)
    coord = Coordinator(settings, database)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await coord.start()
        yield
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

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", str(exc.errors()))

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > settings.max_body_bytes
            except ValueError:
                return _error(400, "bad_content_length", "Content-Length is not a number")
            if too_big:
                return _error(
                    413,
                    "body_too_large",
                    f"body of {length} bytes exceeds {settings.max_body_bytes}",
                )
        try:
            response: Response = await call_next(request)
        except Exception:  # last line of defence: never leak a traceback as a 500 page
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return _error(500, "internal_error", "internal error; the request changed nothing")
        return response

    # -- dependencies ------------------------------------------------------------

    async def client_id(request: Request) -> int:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return await run_in_threadpool(
            authenticate,
            database,
            headers,
            request.method,
            path,
            body,
            clock_skew_s=settings.request_clock_skew_s,
        )

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
                    strategy=req.strategy,
                    current_round=0,
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
        runner = coord.runners.get(task_id)
        out["waiting_reason"] = runner.waiting_reason if runner is not None else None
        out["versions"] = [_version_json(v) for v in coord.registry.list_versions(task_id)]
        return out

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
    async def promote(task_id: Id, version: Id, _: Admin) -> dict[str, Any]:
        return _version_json(_registry_call(coord.registry.promote, task_id, version))

    @app.post("/v1/admin/tasks/{task_id}/rollback")
    async def rollback(task_id: Id, _: Admin) -> dict[str, Any]:
        return _version_json(_registry_call(coord.registry.rollback, task_id))

    @app.post("/v1/admin/tasks/{task_id}/versions/{version}/tags/{tag}")
    async def tag(task_id: Id, version: Id, tag: str, _: Admin) -> dict[str, Any]:
        return _version_json(_registry_call(coord.registry.tag, task_id, version, tag))

    # -- clients -----------------------------------------------------------------

    @app.get("/v1/tasks/{task_id}/models/{version}")
    async def download(task_id: Id, version: str, _: Client) -> Response:
        """The global model a client trains from (a version number or ``current``)."""
        return weights_response(task_id, version)

    @app.post(
        "/v1/tasks/{task_id}/checkin",
        responses={
            200: {"description": "Selected: the round assignment (JSON)"},
            204: {"description": "Not selected before the long-poll timed out; check in again"},
        },
    )
    async def checkin(task_id: Id, cid: Client) -> Response:
        assignment = await coord.runner(task_id).checkin(cid, settings.long_poll_s)
        if assignment is None:
            return Response(status_code=204)
        return JSONResponse(assignment.to_json())

    @app.post("/v1/rounds/{round_id}/messages", status_code=202)
    async def submit(round_id: Id, request: Request, cid: Client) -> dict[str, str]:
        if request.headers.get("content-type", "") != CBOR_MEDIA_TYPE:
            raise ApiError(
                415, "unsupported_media_type", f"protocol messages are {CBOR_MEDIA_TYPE}"
            )
        driver = coord.round_driver(round_id)
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
        driver = coord.round_driver(round_id)
        box = driver.mailboxes.get(cid)
        if box is None:
            raise ApiError(403, "not_a_participant", f"client {cid} is not in round {round_id}")
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
    try:
        return int(text)
    except ValueError as exc:
        raise ApiError(400, f"bad_{what}", f"{what} must be an integer or 'current'") from exc


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
