"""Request and response models of the HTTP API (the OpenAPI document is built from them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, Field

from secagg import db as dbm
from secagg.registry import VersionInfo
from secagg.task_spec import TaskCreate as TaskCreate  # the strict task schema
from secagg.task_spec import TaskView

TaskInfo = TaskView
"""A task's settings and progress (``secagg.task_spec.TaskView``)."""

# Identifiers are 63-bit database keys; larger numbers are refused as 422, not 500.
Id = Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
Seq = Annotated[int, Path(ge=0, le=1 << 20)]
# Model versions are 32-bit database integers (PostgreSQL INTEGER).
MAX_VERSION = (1 << 31) - 1
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]


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

    @classmethod
    def of(cls, q: dbm.Quarantine) -> QuarantineEntry:
        return cls(
            client_id=q.client_id,
            round_number=q.round_number,
            reason=q.reason,
            detail=q.detail,
            since=q.since.isoformat(),
            lifted_at=q.lifted_at.isoformat() if q.lifted_at else None,
        )


class RoundInfo(BaseModel):
    """One round's record: who took part, what became of each, what it produced."""

    id: int
    number: int
    # Null during the training window: the session is formed afterwards.
    session_id: str | None
    config: str | None
    status: str
    abort_reason: str | None
    participants: list[int]
    stage_stats: dict[str, Any] | None
    base_version: int | None
    result_version: int | None
    metrics: dict[str, Any] | None
    client_status: dict[str, Any] | None
    blamed: list[int] | None
    started_at: str
    finished_at: str | None

    @classmethod
    def of(cls, r: dbm.Round) -> RoundInfo:
        return cls(
            id=r.id,
            number=r.number,
            session_id=r.session_id.hex() if r.session_id is not None else None,
            config=r.config.hex() if r.config is not None else None,
            status=r.status.value,
            abort_reason=r.abort_reason,
            participants=list(r.participants),
            stage_stats=dict(r.stage_stats) if r.stage_stats is not None else None,
            base_version=r.base_version,
            result_version=r.result_version,
            metrics=r.metrics,
            client_status=r.client_status,
            blamed=r.blamed,
            started_at=r.started_at.isoformat(),
            finished_at=r.finished_at.isoformat() if r.finished_at else None,
        )


class VersionOut(BaseModel):
    """A stored model version (its weights are downloaded separately)."""

    version: int
    parent_version: int | None
    round_number: int | None
    sha256: str = Field(description="SHA-256 of the float32 little-endian weights")
    metrics: dict[str, Any]
    tags: list[str]
    created_at: str
    is_current: bool

    @classmethod
    def of(cls, v: VersionInfo) -> VersionOut:
        return cls(
            version=v.version,
            parent_version=v.parent_version,
            round_number=v.round_number,
            sha256=v.sha256,
            metrics=v.metrics,
            tags=list(v.tags),
            created_at=v.created_at.isoformat(),
            is_current=v.is_current,
        )


class TaskDetail(TaskInfo):
    """A task with its rounds, quarantined clients and versions."""

    rounds_detail: list[RoundInfo]
    quarantined: list[QuarantineEntry]
    waiting_reason: str | None
    versions: list[VersionOut]


class Status(BaseModel):
    status: str


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"


class Stage(BaseModel):
    """Where a running round is (specs/service-v1.md §4): training, R0..R4, finalising."""

    stage: str
