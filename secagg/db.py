"""Persistence: the server's tables, engine set-up and transaction scope.

SQLAlchemy 2 typed ORM. One schema serves SQLite (the default, a file next to
the server: ``sqlite:///secagg.db``, no set-up) and PostgreSQL
(``postgresql+psycopg://user@host/db``); nothing here is dialect-specific
except engine set-up and the nonce upsert.

Rules this module keeps:

1. The database is the only state that survives a crash. Everything a restart
   needs (clients, tasks, rounds, every model version, which one is current) is
   here, and every multi-row change happens inside one ``Database.session()``
   transaction, so a ``kill -9`` leaves either the old state or the new one.
2. Constraints live in the schema, not only in code: uniqueness of public keys,
   token hashes, (client, nonce), (task, round number), (task, version); value
   ranges and enumerations as CHECK constraints; versions, pointers and rounds
   reference existing versions through composite foreign keys. A buggy caller
   gets an ``sqlalchemy.exc.IntegrityError``, never a silently wrong row.
3. Timestamps are timezone-aware UTC on the way in and on the way out (naive
   datetimes are refused), whatever the backend stores.
4. Secrets are never stored: enrolment tokens only as their SHA-256.

JSON columns are not mutation-tracked: assign a new value (``round.stage_stats
= {**old, "r1": stats}``) instead of mutating the loaded one in place.
Sessions use ``expire_on_commit=False``, so objects stay readable after the
``session()`` block, but lazily loaded/deferred attributes (model weights) must
be read inside it.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Engine,
    Enum,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from secagg.settings import Settings

__all__ = [
    "ABORT_SERVER_RESTART",
    "DEFAULT_MAX_ABORTED_ROUNDS",
    "DEFAULT_URL",
    "MAX_CLIENT_ID",
    "MIN_CLIENT_ID",
    "Base",
    "Client",
    "ClientStatus",
    "DPParticipation",
    "Database",
    "DatabaseOptions",
    "DatabaseUnavailable",
    "EnrolmentToken",
    "GraphChoice",
    "ModelVersion",
    "ProtocolMode",
    "Quarantine",
    "RequestNonce",
    "Round",
    "RoundKind",
    "RoundStatus",
    "StageStats",
    "Task",
    "TaskDP",
    "TaskPointer",
    "TaskRoster",
    "TaskStatus",
    "UTCDateTime",
    "create_schema",
    "hash_token",
    "is_transient",
    "make_engine",
    "mark_interrupted_rounds",
    "purge_nonces",
    "record_nonce",
    "utcnow",
]

DEFAULT_URL = "sqlite:///secagg.db"

log = logging.getLogger("secagg.db")
_T = TypeVar("_T")

# Protocol client ids are Shamir x-coordinates: 1 .. 2^32-1 (specs/secagg-v1.md).
# 2^32-1 does not fit PostgreSQL's signed INTEGER, hence BIGINT for client ids.
MIN_CLIENT_ID = 1
MAX_CLIENT_ID = 2**32 - 1

ED25519_PUBLIC_KEY_BYTES = 32
SESSION_ID_BYTES = 32
SHA256_HEX_CHARS = 64
MAX_NONCE_CHARS = 128

ABORT_SERVER_RESTART = "server_restart"

DEFAULT_MAX_ABORTED_ROUNDS = 10
"""Aborted rounds in a row after which a task is marked ``failed`` (task setting)."""
"""``rounds.abort_reason`` of a round that was running when the server died."""


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def hash_token(token: str) -> str:
    """The value stored in ``enrolment_tokens.token_hash`` for ``token``.

    Args:
        token: the one-time enrolment token as handed to the operator.

    Returns:
        The lowercase hex SHA-256 of the token's UTF-8 bytes (64 characters).
        Tokens carry enough entropy (the issuer's job) that a plain hash is a
        safe lookup key; the token itself is never stored.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- types


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is
    converted to UTC and stored naive, and UTC is re-attached on load. Naive
    datetimes are refused on the way in: their meaning depends on the host.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: give a UTC-aware one")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> JSON:
    # JSONB on PostgreSQL (binary, indexable); SQL NULL (not JSON 'null') for None.
    return JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as the enum's *value* in a VARCHAR with a CHECK constraint (no native
    # PostgreSQL ENUM type: adding a value later needs no type migration).
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        validate_strings=True,
        length=max(len(m.value) for m in cls),
        values_callable=lambda members: [m.value for m in members],
    )


# Portable BIGINT primary keys: SQLite only auto-assigns rowids to INTEGER.
_BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class ClientStatus(enum.StrEnum):
    """Whether an enrolled client may still authenticate."""

    ACTIVE = "active"
    REVOKED = "revoked"


class TaskStatus(enum.StrEnum):
    """Lifecycle of a training task."""

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    # A finished (completed, failed or cancelled) task hidden from the task list.
    ARCHIVED = "archived"


class ProtocolMode(enum.StrEnum):
    """Adversary model of a task's rounds (values match ``protocol.Mode``)."""

    SEMI_HONEST = "semi-honest"
    ACTIVE = "active"


class GraphChoice(enum.StrEnum):
    """Masking graph of a task: ``protocol.GraphKind`` values plus ``auto``."""

    COMPLETE = "complete"
    HARARY = "harary"
    AUTO = "auto"


class RoundKind(enum.StrEnum):
    """What a round aggregates: a model update or evaluation metrics."""

    TRAIN = "train"
    EVAL = "eval"


class RoundStatus(enum.StrEnum):
    """Outcome of a round; ``running`` until it completes or aborts."""

    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"


class StageStats(TypedDict):
    """One protocol stage's entry in ``rounds.stage_stats`` (keyed by stage name)."""

    participants: int
    dropouts: int
    seconds: float
    bytes_in: int
    bytes_out: int


# --------------------------------------------------------------------------- tables

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` holds the whole schema."""

    metadata = MetaData(naming_convention=_NAMING)


class Client(Base):
    """An enrolled client. ``id`` is its protocol client id (Shamir x-coordinate)."""

    __tablename__ = "clients"
    __table_args__ = (
        CheckConstraint(f"id BETWEEN {MIN_CLIENT_ID} AND {MAX_CLIENT_ID}", name="id_range"),
        CheckConstraint(f"length(public_key) = {ED25519_PUBLIC_KEY_BYTES}", name="key_length"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(ED25519_PUBLIC_KEY_BYTES), unique=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[ClientStatus] = mapped_column(
        _enum(ClientStatus, "status"), default=ClientStatus.ACTIVE
    )


class EnrolmentToken(Base):
    """A one-time enrolment token, stored only as its SHA-256 (see ``hash_token``)."""

    __tablename__ = "enrolment_tokens"
    __table_args__ = (
        CheckConstraint(f"length(token_hash) = {SHA256_HEX_CHARS}", name="hash_length"),
        CheckConstraint("expires_at > created_at", name="expiry_after_creation"),
        # A token bound to a client has been used (the client may be deleted later).
        CheckConstraint("client_id IS NULL OR used_at IS NOT NULL", name="bound_means_used"),
    )

    id: Mapped[int] = mapped_column(_BigIntId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_CHARS), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    client_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("clients.id", ondelete="SET NULL")
    )


class RequestNonce(Base):
    """A request nonce already accepted from a client (replay protection)."""

    __tablename__ = "request_nonces"
    __table_args__ = (
        CheckConstraint(f"length(nonce) BETWEEN 1 AND {MAX_NONCE_CHARS}", name="nonce_length"),
        Index(None, "seen_at"),
    )

    client_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True
    )
    nonce: Mapped[str] = mapped_column(String(MAX_NONCE_CHARS), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Task(Base):
    """A federated training task and its fixed parameters.

    ``vector_length`` is the model's length (number of float32 weights).
    ``deadlines`` maps stage name to seconds; ``strategy`` is the server
    update rule, e.g. ``{"name": "fedavg", "server_lr": 1.0, "momentum": 0.0}``;
    ``strategy_state`` its opaque state (e.g. a momentum buffer as .npy bytes).
    The current model version is in ``task_pointers`` (see ``ModelRegistry``).
    """

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("vector_length >= 1", name="vector_length_positive"),
        CheckConstraint("rounds >= 1", name="rounds_positive"),
        CheckConstraint("min_clients >= 1", name="min_clients_positive"),
        CheckConstraint("clients_per_round >= min_clients", name="quorum_fits_round"),
        CheckConstraint("dropout_rate >= 0 AND dropout_rate < 1", name="dropout_rate_range"),
        CheckConstraint("corrupt_rate >= 0 AND corrupt_rate < 1", name="corrupt_rate_range"),
        CheckConstraint("clip > 0", name="clip_positive"),
        CheckConstraint("scale > 0", name="scale_positive"),
        CheckConstraint("max_weight >= 1", name="max_weight_positive"),
        CheckConstraint("current_round >= 0", name="current_round_nonnegative"),
        CheckConstraint("completed_rounds >= 0", name="completed_rounds_nonnegative"),
        CheckConstraint("aborted_in_a_row >= 0", name="aborted_in_a_row_nonnegative"),
        CheckConstraint("max_aborted_rounds >= 1", name="max_aborted_rounds_positive"),
        CheckConstraint("training_window_s > 0", name="training_window_positive"),
    )

    id: Mapped[int] = mapped_column(_BigIntId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[TaskStatus] = mapped_column(
        _enum(TaskStatus, "status"), default=TaskStatus.ACTIVE
    )
    vector_length: Mapped[int] = mapped_column(BigInteger)
    rounds: Mapped[int] = mapped_column(Integer)
    clients_per_round: Mapped[int] = mapped_column(Integer)
    min_clients: Mapped[int] = mapped_column(Integer)
    mode: Mapped[ProtocolMode] = mapped_column(
        _enum(ProtocolMode, "mode"), default=ProtocolMode.SEMI_HONEST
    )
    graph: Mapped[GraphChoice] = mapped_column(
        _enum(GraphChoice, "graph"), default=GraphChoice.AUTO
    )
    dropout_rate: Mapped[float] = mapped_column(Float, default=0.0)
    corrupt_rate: Mapped[float] = mapped_column(Float, default=0.0)
    clip: Mapped[float] = mapped_column(Float)
    scale: Mapped[float] = mapped_column(Float)
    max_weight: Mapped[int] = mapped_column(BigInteger)
    deadlines: Mapped[dict[str, float]] = mapped_column(_json())
    strategy: Mapped[dict[str, Any]] = mapped_column(_json())
    strategy_state: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Seconds a selected client has to train and report ready (service-v1.md §3).
    training_window_s: Mapped[float] = mapped_column(Float, default=600.0)
    # [{"name", "shape", "dtype"}] in flat-vector order, when the initial model
    # had named tensors (a torch state_dict, safetensors); None for a flat vector.
    model_layout: Mapped[list[dict[str, Any]] | None] = mapped_column(_json())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    # Only completed rounds count towards ``rounds``; ``aborted_in_a_row``
    # consecutive aborts reaching ``max_aborted_rounds`` fail the task, with
    # ``failure_reason`` saying why.
    completed_rounds: Mapped[int] = mapped_column(Integer, default=0)
    aborted_in_a_row: Mapped[int] = mapped_column(Integer, default=0)
    max_aborted_rounds: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_ABORTED_ROUNDS)
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    # A distributed-DP task's parameters and budget (a table of its own, so a
    # database created before DP needs no migration: ``create_schema`` adds it).
    dp: Mapped[TaskDP | None] = relationship(
        lazy="selectin", uselist=False, cascade="all, delete-orphan", passive_deletes=True
    )


class TaskDP(Base):
    """The distributed-DP settings of a task and the privacy budget it has spent.

    ``spec`` is the task's ``dp`` field as given (``secagg.task_spec.DPSpec``);
    ``params`` the calibrated ``protocol.dp.DPParams.to_json()`` every round
    of the task uses. ``round_epsilon`` is the epsilon one participation
    costs a client, ``max_participations`` how many rounds one client may
    join within the budget, ``epsilon_spent`` the largest epsilon any client
    has spent so far (service-v1.md §11).
    """

    __tablename__ = "task_dp"
    __table_args__ = (
        CheckConstraint("max_participations >= 1", name="max_participations_positive"),
        CheckConstraint("epsilon_spent >= 0", name="epsilon_spent_nonnegative"),
    )

    task_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    spec: Mapped[dict[str, Any]] = mapped_column(_json())
    params: Mapped[dict[str, Any]] = mapped_column(_json())
    round_epsilon: Mapped[float] = mapped_column(Float)
    max_participations: Mapped[int] = mapped_column(Integer)
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0)


class DPParticipation(Base):
    """A client whose masked input is in the sum of a DP task's round (its privacy cost).

    Written in the transaction that completes the round (one row per
    survivor of R2), so a client's participations in a task are the rows
    with its id: ``k`` in ``participation_epsilon(params, k)``.
    """

    __tablename__ = "dp_participations"
    __table_args__ = (Index(None, "task_id", "client_id"),)

    round_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"))


class Quarantine(Base):
    """A client excluded from a task's rounds because the server blamed it.

    One row per (task, client): blamed again after a lift, the row is reused.
    ``lifted_at`` is set when an operator lifts the quarantine; the client is
    quarantined while it is NULL. ``round_number`` is the round that blamed
    it, ``reason`` the ``protocol.BlameReason`` value.
    """

    __tablename__ = "quarantine"

    task_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    round_number: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(String(2000), default="")
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TaskRoster(Base):
    """The latest task-authority roster an admin uploaded for a task (``specs/authority-v1.md``).

    The server is not trusted to judge it: clients check it against the
    authority key they pinned. It is stored as uploaded and relayed, byte for
    byte, in every active-mode assignment of the task.
    """

    __tablename__ = "task_rosters"
    __table_args__ = (CheckConstraint("length(roster) >= 1", name="roster_nonempty"),)

    task_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    roster: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    """One immutable global model version of a task.

    ``weights`` are float32 little-endian raw bytes (deferred: not loaded by a
    plain ``select(ModelVersion)``); ``sha256`` is the hex SHA-256 of exactly
    those bytes. ``parent_version`` (same task) is the version it was derived
    from, ``round_number`` the round that produced it (None for uploads).
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("task_id", "version"),
        ForeignKeyConstraint(
            ["task_id", "parent_version"],
            ["model_versions.task_id", "model_versions.version"],
            name="fk_model_versions_parent",
        ),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("parent_version < version", name="parent_is_older"),
        CheckConstraint(f"length(sha256) = {SHA256_HEX_CHARS}", name="sha256_length"),
    )

    id: Mapped[int] = mapped_column(_BigIntId, primary_key=True)
    task_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[int | None] = mapped_column(Integer)
    round_number: Mapped[int | None] = mapped_column(Integer)
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_HEX_CHARS))
    metrics: Mapped[dict[str, Any]] = mapped_column(_json(), default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    tags: Mapped[list[str]] = mapped_column(_json(), default=list)


class TaskPointer(Base):
    """Which model version of a task is current (moved by promote/rollback).

    A separate table rather than a column on ``tasks`` so that the foreign keys
    form no cycle (tasks <- model_versions <- task_pointers).
    """

    __tablename__ = "task_pointers"
    __table_args__ = (
        ForeignKeyConstraint(
            ["task_id", "current_version"],
            ["model_versions.task_id", "model_versions.version"],
            name="fk_task_pointers_current",
        ),
    )

    task_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    current_version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Round(Base):
    """One secure aggregation round of a task, running or finished.

    ``config`` is the canonical ``SessionConfig`` encoding; ``participants``
    the invited client ids; ``stage_stats`` maps stage name to
    ``StageStats``. ``base_version`` is the model version the round started
    from (and evaluates, for eval rounds); ``result_version`` the version it
    produced. An aborted round has an ``abort_reason``; a finished one a
    ``finished_at``. ``client_status`` maps each participant (as a string) to
    ``{"status", "reason", "detail"}`` (``protocol.ClientRecord``);
    ``blamed`` lists the clients the unmasking blamed (specs §13.1).
    """

    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("task_id", "number"),
        ForeignKeyConstraint(
            ["task_id", "base_version"],
            ["model_versions.task_id", "model_versions.version"],
            name="fk_rounds_base_version",
        ),
        ForeignKeyConstraint(
            ["task_id", "result_version"],
            ["model_versions.task_id", "model_versions.version"],
            name="fk_rounds_result_version",
        ),
        CheckConstraint("number >= 0", name="number_nonnegative"),
        CheckConstraint(f"length(session_id) = {SESSION_ID_BYTES}", name="session_id_length"),
        CheckConstraint(
            "status <> 'aborted' OR abort_reason IS NOT NULL", name="aborted_has_reason"
        ),
        CheckConstraint("status = 'running' OR finished_at IS NOT NULL", name="finished_has_time"),
        Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(_BigIntId, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[RoundKind] = mapped_column(_enum(RoundKind, "kind"), default=RoundKind.TRAIN)
    status: Mapped[RoundStatus] = mapped_column(
        _enum(RoundStatus, "status"), default=RoundStatus.RUNNING
    )
    abort_reason: Mapped[str | None] = mapped_column(String(200))
    # Both NULL during the training window: the session is formed afterwards,
    # among the clients that finished training (specs/service-v1.md §3).
    session_id: Mapped[bytes | None] = mapped_column(LargeBinary(SESSION_ID_BYTES), unique=True)
    config: Mapped[bytes | None] = mapped_column(LargeBinary)
    participants: Mapped[list[int]] = mapped_column(_json())
    stage_stats: Mapped[dict[str, StageStats]] = mapped_column(_json(), default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    base_version: Mapped[int] = mapped_column(Integer)
    result_version: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(_json())
    client_status: Mapped[dict[str, dict[str, str | None]] | None] = mapped_column(_json())
    blamed: Mapped[list[int] | None] = mapped_column(_json())


class MaskedInputSender(Base):
    """A client asked for its masked input in a round (R2), i.e. one that may have sent it.

    Recorded before the server closes R2, i.e. before any unmasking request
    goes out, so no sum over an input exists without its record. It covers
    every client that received its shares in R1 (a client records its own
    contribution before sending, and cannot tell whether a late input
    counted). The orchestrator never selects such a client again for a round
    of the same task on the same ``base_version`` (spec §10.2, differencing).
    """

    __tablename__ = "masked_input_senders"
    __table_args__ = (Index(None, "task_id", "base_version"),)

    round_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"))
    base_version: Mapped[int] = mapped_column(Integer)


def record_masked_input_senders(
    session: Session, round_id: int, task_id: int, base_version: int, clients: list[int]
) -> None:
    """Record who was asked for a masked input in ``round_id`` (idempotent per client)."""
    known = set(
        session.scalars(
            select(MaskedInputSender.client_id).where(MaskedInputSender.round_id == round_id)
        )
    )
    for u in sorted(set(clients) - known):
        session.add(
            MaskedInputSender(
                round_id=round_id, client_id=u, task_id=task_id, base_version=base_version
            )
        )


def masked_input_senders(session: Session, task_id: int, base_version: int) -> set[int]:
    """Clients that may have sent a masked input for this task on ``base_version``."""
    return set(
        session.scalars(
            select(MaskedInputSender.client_id).where(
                MaskedInputSender.task_id == task_id,
                MaskedInputSender.base_version == base_version,
            )
        )
    )


# --------------------------------------------------------------------------- failures


class DatabaseUnavailable(Exception):
    """The database did not answer, or not in time; the operation may succeed later.

    Raised by :meth:`Database.run` once its attempts are spent on transient
    failures (see :func:`is_transient`); the original error is ``__cause__``.
    The HTTP API answers it with ``503 database_unavailable`` and a
    ``Retry-After`` header (``secagg/dberrors.py``).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock, lock_timeout
# (55P03), statement_timeout or cancel (57014), administrator/crash shutdown
# (57P01/57P02, e.g. pg_terminate_backend), cannot connect now (57P03, the
# server is starting), too many connections (53300). Class 08 (connection
# exceptions) is matched by prefix.
_TRANSIENT_SQLSTATES = frozenset(
    {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300"}
)
# SQLite primary result codes: SQLITE_BUSY (another connection holds the write
# lock past busy_timeout) and SQLITE_LOCKED (a conflicting lock in a shared cache).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _driver_error_is_transient(error: BaseException) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
        return "locked" in str(error) or "busy" in str(error)
    if type(error).__module__.split(".")[0] not in ("psycopg", "psycopg2"):
        return False
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    # No SQLSTATE: the driver itself lost (or never had) the connection, e.g.
    # "server closed the connection unexpectedly", "connection refused",
    # "consuming input failed". Programming errors carry other classes.
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"OperationalError", "InterfaceError"})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database failure that retrying later may cure.

    True for: a connection that was dropped, terminated or could not be made;
    PostgreSQL ``lock_timeout``, ``statement_timeout``, serialization failures
    and deadlocks; SQLite's "database is locked" after ``busy_timeout``; an
    exhausted connection pool; :class:`DatabaseUnavailable`. False for
    everything else, constraint violations (``IntegrityError``) and SQL
    errors included: those fail the same way every time.

    Args:
        exc: an exception raised by SQLAlchemy or by the database driver.
    """
    if isinstance(exc, DatabaseUnavailable | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if isinstance(exc, sa_exc.IntegrityError | sa_exc.ProgrammingError | sa_exc.DataError):
            return False
        if exc.connection_invalidated:
            return True
        return exc.orig is not None and _driver_error_is_transient(exc.orig)
    return _driver_error_is_transient(exc)


def _summary(exc: BaseException) -> str:
    """One line naming a database error, without SQL text or parameters."""
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    text = " ".join(str(cause).split())[:200]
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class DatabaseOptions:
    """How the server's connections behave when the database is slow or gone.

    The defaults are the production choice: no statement waits for a lock
    longer than ``lock_timeout_s`` nor runs longer than ``statement_timeout_s``,
    so a stalled database costs a request a bounded time and a typed 503,
    never a frozen worker. ``Settings`` carries the same fields (``db_*``).

    Attributes:
        application_name: PostgreSQL ``application_name`` of the pool's
            connections (visible in ``pg_stat_activity``); default
            ``secagg-<pid>``. A name given in the URL wins.
        lock_timeout_s: PostgreSQL ``lock_timeout``: longest wait for a row or
            table lock.
        statement_timeout_s: PostgreSQL ``statement_timeout``.
        idle_in_transaction_timeout_s: PostgreSQL
            ``idle_in_transaction_session_timeout``: a transaction left open
            (a bug, a hung thread) is ended by the server instead of holding
            its locks for ever.
        connect_timeout_s: longest wait for a new PostgreSQL connection
            (libpq ``connect_timeout``, whole seconds, at least 2).
        busy_timeout_s: SQLite: longest wait for the write lock.
        pool_size: connections kept open (not SQLite in memory).
        max_overflow: extra connections opened under load.
        pool_timeout_s: longest wait for a free connection from the pool.
        retry_attempts: default attempts of :meth:`Database.run`.
        retry_base_delay_s: first backoff of :meth:`Database.run`; doubles
            per attempt, with jitter.
        retry_budget_s: :meth:`Database.run` starts no new attempt this long
            after the first began: a failure that itself took long (a lock or
            statement timeout) is answered at once instead of multiplied.
    """

    application_name: str | None = None
    lock_timeout_s: float = 5.0
    statement_timeout_s: float = 30.0
    idle_in_transaction_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    busy_timeout_s: float = 5.0
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout_s: float = 10.0
    retry_attempts: int = 3
    retry_base_delay_s: float = 0.05
    retry_budget_s: float = 2.0

    def __post_init__(self) -> None:
        for name in (
            "lock_timeout_s",
            "statement_timeout_s",
            "idle_in_transaction_timeout_s",
            "connect_timeout_s",
            "busy_timeout_s",
            "pool_timeout_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 86400):
                raise ValueError(f"{name} must be in (0, 86400] seconds, got {value!r}")
        if self.pool_size < 1 or self.max_overflow < 0 or self.retry_attempts < 1:
            raise ValueError("pool_size and retry_attempts must be >= 1, max_overflow >= 0")
        if self.retry_base_delay_s < 0 or self.retry_budget_s < 0:
            raise ValueError("retry_base_delay_s and retry_budget_s must be >= 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseOptions:
        """The ``db_*`` fields of the server's settings."""
        return cls(
            application_name=settings.db_application_name,
            lock_timeout_s=settings.db_lock_timeout_s,
            statement_timeout_s=settings.db_statement_timeout_s,
            idle_in_transaction_timeout_s=settings.db_idle_in_transaction_timeout_s,
            connect_timeout_s=settings.db_connect_timeout_s,
            busy_timeout_s=settings.db_busy_timeout_s,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout_s=settings.db_pool_timeout_s,
            retry_attempts=settings.db_retry_attempts,
            retry_budget_s=settings.db_retry_budget_s,
        )

    def resolved_application_name(self) -> str:
        """``application_name``, or ``secagg-<pid>`` when unset."""
        return self.application_name or f"secagg-{os.getpid()}"


def _is_sqlite_memory(database: str | None) -> bool:
    return database in (None, "", ":memory:") or (
        database is not None and database.startswith("file:") and "mode=memory" in database
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _postgres_url_and_args(parsed: Any, options: DatabaseOptions) -> tuple[Any, dict[str, Any]]:
    """The URL with the timeouts in libpq ``options``, and libpq connect arguments.

    The timeouts go into the startup packet (``-c name=value``), so they hold
    from the connection's first statement with no extra round trip, and they
    are the session defaults a ``RESET ALL`` returns to. Settings already in
    the URL's ``options`` come after ours and win.
    """
    query = dict(parsed.query)
    existing = query.get("options", "")
    if isinstance(existing, tuple):
        existing = " ".join(existing)
    ours = " ".join(
        (
            f"-c lock_timeout={_ms(options.lock_timeout_s)}",
            f"-c statement_timeout={_ms(options.statement_timeout_s)}",
            f"-c idle_in_transaction_session_timeout={_ms(options.idle_in_transaction_timeout_s)}",
        )
    )
    url = parsed.update_query_dict({"options": f"{ours} {existing}".strip()})
    args: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(options.connect_timeout_s)),
        # A peer that vanished (host down, cable cut) is noticed within ~25 s
        # even on an idle connection, instead of the kernel's two hours.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "application_name": options.resolved_application_name()[:63],
    }
    # Connection parameters given in the URL win (connect_args would override them).
    return url, {k: v for k, v in args.items() if k not in query}


def make_engine(url: str, *, echo: bool = False, options: DatabaseOptions | None = None) -> Engine:
    """Create an engine for ``url``, set up for a multi-threaded server.

    SQLite: the file's parent directories are created; every connection gets
    ``PRAGMA foreign_keys=ON`` (off by default in SQLite) and the WAL journal
    (readers never block the writer; a killed process loses at most its
    uncommitted transaction); connections may cross threads; a writer waits up
    to ``options.busy_timeout_s`` for the lock. An in-memory database uses one
    shared connection, so every session sees the same data.

    PostgreSQL (psycopg): every connection starts with ``lock_timeout``,
    ``statement_timeout`` and ``idle_in_transaction_session_timeout`` set, a
    connect timeout, TCP keepalives and an ``application_name``. Every
    non-memory backend gets ``pool_pre_ping`` (a connection the database
    dropped is replaced at checkout, so the first request after an outage
    works) and a bounded wait for a pooled connection.

    Args:
        url: any SQLAlchemy URL, e.g. ``sqlite:///secagg.db`` or
            ``postgresql+psycopg://postgres@127.0.0.1:5432/secagg``.
        echo: log every SQL statement (debugging).
        options: timeouts and pool sizes (default: ``DatabaseOptions()``).

    Returns:
        The engine. Nothing is connected yet.

    Raises:
        sqlalchemy.exc.ArgumentError: ``url`` is not a valid database URL.
    """
    options = options or DatabaseOptions()
    parsed = make_url(url)
    pool: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": options.pool_size,
        "max_overflow": options.max_overflow,
        "pool_timeout": options.pool_timeout_s,
    }
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
            "psycopg",
            "psycopg2",
        ):
            parsed, connect_args = _postgres_url_and_args(parsed, options)
        return create_engine(parsed, echo=echo, connect_args=connect_args, **pool)

    kwargs: dict[str, Any] = {"echo": echo, "connect_args": {"check_same_thread": False}}
    if _is_sqlite_memory(parsed.database):
        kwargs["poolclass"] = StaticPool
    else:
        kwargs.update(pool)
        kwargs["connect_args"]["timeout"] = options.busy_timeout_s
        database = parsed.database
        assert database is not None
        if not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    return engine


def create_schema(engine: Engine) -> None:
    """Create every missing table, index and constraint; idempotent.

    Existing tables are left as they are (this is not a migration tool).
    """
    Base.metadata.create_all(engine, checkfirst=True)


class Database:
    """An engine plus a session factory: the handle the rest of the server uses.

    Usage::

        db = Database.from_url("sqlite:///secagg.db")
        with db.session() as s:
            s.add(Client(...))
        # committed here; rolled back if the block raised

        # A transaction retried on transient failures (see ``run``):
        n = db.run(lambda s: s.scalar(select(func.count(Client.id))), idempotent=True)

    Every method blocks on the database: call them from a worker thread
    (``asyncio.to_thread`` / ``run_in_threadpool``), never on the event loop.
    """

    def __init__(self, engine: Engine, options: DatabaseOptions | None = None) -> None:
        self.engine = engine
        self.options = options or DatabaseOptions()
        self.sessionmaker: sessionmaker[Session] = sessionmaker(bind=engine, expire_on_commit=False)

    @classmethod
    def from_url(
        cls, url: str = DEFAULT_URL, *, create: bool = True, options: DatabaseOptions | None = None
    ) -> Database:
        """Open the database at ``url`` (see ``make_engine``).

        Args:
            url: SQLAlchemy database URL.
            create: also create any missing tables (``create_schema``).
            options: timeouts, pool and retry defaults (default: ``DatabaseOptions()``).
        """
        options = options or DatabaseOptions()
        db = cls(make_engine(url, options=options), options)
        if create:
            db.create_schema()
        return db

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = True) -> Database:
        """Open ``settings.database_url`` with the settings' ``db_*`` options."""
        return cls.from_url(
            settings.database_url, create=create, options=DatabaseOptions.from_settings(settings)
        )

    @property
    def dialect(self) -> str:
        """The backend's name, e.g. ``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def application_name(self) -> str | None:
        """The ``application_name`` the pool's PostgreSQL connections carry, if any."""
        if self.dialect != "postgresql":
            return None
        name = self.engine.url.query.get("application_name")
        if isinstance(name, str):
            return name
        return self.options.resolved_application_name()[:63]

    def create_schema(self) -> None:
        """``create_schema(self.engine)``."""
        create_schema(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commit when the block ends, roll back if it raises.

        Yields:
            A new ``Session``; it is closed afterwards. Do not nest a writing
            session inside another one on SQLite (the inner one waits for the
            outer one's write lock); pass the outer session down instead.

        Raises:
            Whatever the block raised (after rollback), or the database's error
            if the commit fails (e.g. ``sqlalchemy.exc.IntegrityError``).
            Transient failures are raised as the driver reported them (see
            ``is_transient``); ``run`` retries them.
        """
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            _rollback_quietly(session)
            raise
        finally:
            session.close()

    def run(
        self,
        fn: Callable[[Session], _T],
        *,
        attempts: int | None = None,
        idempotent: bool = False,
        what: str = "database transaction",
    ) -> _T:
        """Run ``fn(session)`` in one transaction, retrying transient failures.

        Each attempt gets a fresh session (and so, after a dropped connection,
        a fresh pooled connection); between attempts the thread sleeps with
        exponential backoff and jitter (``options.retry_base_delay_s``,
        doubling, capped at 1 s), and none starts after
        ``options.retry_budget_s``. Blocking: call from a worker thread.

        Whether a failure may be retried depends on where it happened:

        * before the commit was sent (a statement failed: dropped connection,
          lock or statement timeout, SQLite busy), the database rolled the
          transaction back, so running ``fn`` again is always safe;
        * during the commit, the outcome is unknown (the commit may have been
          applied just before the connection died). It is retried only if
          ``idempotent`` is true, i.e. applying the transaction twice has the
          same effect and answer as once (reads; upserts to a fixed value).

        Args:
            fn: the transaction's body; it may run more than once, so it must
                not have side effects outside the session. Exceptions it
                raises that are not transient (e.g. a typed refusal) end the
                call at once, after rollback.
            attempts: at most this many runs (default ``options.retry_attempts``).
            idempotent: the whole transaction may be applied twice (see above).
            what: names the transaction in logs and in the error.

        Returns:
            What ``fn`` returned in the attempt that committed.

        Raises:
            DatabaseUnavailable: every attempt failed transiently, or a commit
                with an unknown outcome failed and ``idempotent`` is false.
            Exception: anything non-transient ``fn`` or the commit raised.
        """
        total = attempts if attempts is not None else self.options.retry_attempts
        if total < 1:
            raise ValueError("attempts must be >= 1")
        started = time.monotonic()
        for attempt in range(1, total + 1):
            session = self.sessionmaker()
            committing = False
            try:
                result = fn(session)
                committing = True
                session.commit()
                return result
            except Exception as exc:
                _rollback_quietly(session)
                if not is_transient(exc):
                    raise
                if committing and not idempotent:
                    raise DatabaseUnavailable(
                        f"{what}: the database failed during commit ({_summary(exc)}); "
                        "its outcome is unknown, so it was not retried"
                    ) from exc
                delay = min(1.0, self.options.retry_base_delay_s * 2 ** (attempt - 1))
                spent = time.monotonic() - started
                if attempt == total or spent + delay > self.options.retry_budget_s:
                    raise DatabaseUnavailable(
                        f"{what} failed {attempt} time(s) in {spent:.1f} s: {_summary(exc)}"
                    ) from exc
                log.warning(
                    "%s: transient database failure, attempt %d of %d: %s",
                    what,
                    attempt,
                    total,
                    _summary(exc),
                )
            finally:
                session.close()
            # Jitter spreads the retries of many requests that failed together
            # (one dropped pool); it is not secret material, so ``random`` is fine.
            time.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _rollback_quietly(session: Session) -> None:
    """Roll back; a connection that is already gone cannot, and that is fine."""
    try:
        session.rollback()
    except Exception as exc:  # the original error is the one worth raising
        log.debug("rollback failed: %s", _summary(exc))


# --------------------------------------------------------------------------- helpers


def record_nonce(session: Session, client_id: int, nonce: str, seen_at: datetime) -> bool:
    """Remember a request nonce; report whether it was new.

    Atomic under concurrency (``INSERT ... ON CONFLICT DO NOTHING`` on SQLite and
    PostgreSQL): of two requests racing with the same nonce, exactly one gets
    True. The row is only durable when ``session`` commits.

    Args:
        session: the request's transaction.
        client_id: the authenticated client (must exist).
        nonce: the request's nonce as text, 1..128 characters.
        seen_at: when the request was accepted (aware datetime).

    Returns:
        True if the nonce was unused by this client (now recorded); False if it
        was seen before, i.e. the request is a replay.

    Raises:
        sqlalchemy.exc.IntegrityError: unknown client or bad nonce length.
    """
    values = {"client_id": client_id, "nonce": nonce, "seen_at": seen_at}
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        stmt = (
            module.insert(RequestNonce.__table__)
            .values(values)
            .on_conflict_do_nothing()
            # SQLAlchemy reports an INSERT's rowcount only when asked to.
            .execution_options(preserve_rowcount=True)
        )
        # Core, on the session's connection (same transaction): the ORM's bulk
        # insert path would not report a rowcount at all.
        return session.connection().execute(stmt).rowcount == 1
    # Other backends: check then insert; a concurrent duplicate still fails on
    # the primary key instead of being accepted twice.
    if session.get(RequestNonce, (client_id, nonce)) is not None:
        return False
    session.execute(insert(RequestNonce).values(values))
    return True


def purge_nonces(db: Database, older_than: datetime) -> int:
    """Delete remembered nonces seen before ``older_than``; return how many.

    Safe only if requests older than ``older_than`` are refused anyway (the
    authentication layer's timestamp window), otherwise they become replayable.
    """

    def purge(session: Session) -> int:
        result = cast(
            CursorResult[Any],
            session.execute(delete(RequestNonce).where(RequestNonce.seen_at < older_than)),
        )
        return result.rowcount

    # Idempotent: a repeated delete removes nothing more (the count may then be 0).
    return db.run(purge, idempotent=True, what="nonce purge")


def mark_interrupted_rounds(db: Database, now: datetime | None = None) -> list[int]:
    """Abort every round still ``running``; call once at server start.

    A round's protocol state lives only in the server process's memory, so a
    round that was running when the server died cannot be resumed: it becomes
    ``aborted`` with reason ``ABORT_SERVER_RESTART``. Its model versions are
    untouched (a round only writes a version when it completes), so the next
    round starts from the current version. Only for a single server process per
    database: a second one would abort the first one's live rounds.

    Args:
        db: the database.
        now: the abort time (default: ``utcnow()``).

    Returns:
        The ids of the rounds aborted, ascending (after a retried commit, those
        of the last attempt).

    Raises:
        DatabaseUnavailable: the database failed transiently on every attempt.
    """
    finished_at = now or utcnow()

    def mark(session: Session) -> list[int]:
        ids = list(
            session.scalars(
                select(Round.id)
                .where(Round.status == RoundStatus.RUNNING)
                .order_by(Round.id)
                .with_for_update()
            )
        )
        if ids:
            session.execute(
                update(Round)
                .where(Round.id.in_(ids))
                .values(
                    status=RoundStatus.ABORTED,
                    abort_reason=ABORT_SERVER_RESTART,
                    finished_at=finished_at,
                )
                .execution_options(synchronize_session=False)
            )
        return ids

    # Idempotent (a repeat finds no running round), so a start-up racing a
    # database blip retries instead of failing.
    return db.run(mark, idempotent=True, what="marking interrupted rounds")
