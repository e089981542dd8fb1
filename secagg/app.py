"""The HTTP API: a thin shell that parses, authenticates, persists, then hands bytes on.

Protocol messages travel as ``application/cbor`` bodies holding the
protocol's canonical bytes; everything else is JSON. Errors are JSON
``{"error": code, "detail": text}`` with a 4xx status; nothing a client
sends can cause a 500 or change stored data it should not.
"""

import asyncio
import hmac
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol import DecodeError, RemoteProtocolError
from protocol.authority import CertificationError, Roster, authority_key_id
from protocol.transport import CBOR_MEDIA_TYPE
from secagg import admin_routes
from secagg import db as dbm
from secagg import metrics as prom
from secagg.admin_token import resolve_admin_token
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
from secagg.orchestrator import TaskRunner
from secagg.registry import ModelRegistry, RegistryError, VersionNotFound
from secagg.settings import Settings
from secagg.task_spec import TaskCreate, TaskView, describe_validation_errors  # noqa: F401

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
    return TaskView.from_row(t).model_dump(mode="json")


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
        return _error(422, "invalid_request", describe_validation_errors(exc.errors()))

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
        return await run_in_threadpool(verify_body, database, pending, request.method, path, body)

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

    # Task create / list / cancel / pause / resume / archive (secagg/admin_routes.py).
    admin_routes.install(app, coord, admin)

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
        if cid not in driver.mailboxes:  # before anything decodes the body
            raise ApiError(403, "not_a_participant", f"client {cid} is not in round {round_id}")
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
