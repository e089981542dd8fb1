"""Model registry: every global model version of every task, and which is current.

A version is immutable once written: float32 little-endian weights, their
SHA-256 (the content hash), the parent version it was derived from, the round
that produced it, metrics and free-form tags. Each task has one *current*
version (``task_pointers``): ``add_version`` moves it to the new version,
``promote`` to any version, ``rollback`` to the current version's parent.

Rules this module keeps:

1. Writing a version and moving the current pointer are one transaction: a
   process killed at any point leaves either the old (versions, pointer) or the
   new one, never a pointer to a missing version or a half-written version.
2. Writes to one task are serialised: each write transaction first takes the
   task row's write lock (a no-op UPDATE: a row lock on PostgreSQL, the
   database write lock on SQLite), so concurrent writers cannot both claim the
   same version number or move the pointer from a stale view.
3. Weights are checked against their hash on every read; a mismatch raises
   ``IntegrityError`` instead of handing out a corrupted model.
4. Nothing is ever deleted: rollback moves the pointer, the versions stay.

Every method takes an optional ``session``: pass the caller's session to make
the registry change part of a larger transaction (e.g. "store the new version
and mark the round completed"); the caller then commits. Without it each call
is its own transaction.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from secagg.db import Database, ModelVersion, Task, TaskPointer, utcnow

__all__ = [
    "WEIGHTS_DTYPE",
    "IntegrityError",
    "ModelRegistry",
    "RegistryError",
    "TaskNotFound",
    "VersionInfo",
    "VersionNotFound",
    "content_hash",
]

WEIGHTS_DTYPE = np.dtype("<f4")
"""How weights are stored: float32, little-endian, raw (no header)."""

MAX_TAG_CHARS = 64
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RegistryError(Exception):
    """A registry operation was refused; the message says why. Nothing changed."""


class VersionNotFound(RegistryError, LookupError):
    """The requested model version (or any version at all) does not exist."""


class TaskNotFound(VersionNotFound):
    """The task does not exist (so neither does any version of it)."""


class IntegrityError(RegistryError):
    """Stored weights do not match their recorded content hash or shape."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """Everything about a model version except its weights.

    Attributes:
        task_id: the task.
        version: 1, 2, 3, ... within the task.
        parent_version: the version this one was derived from (None for 1).
        round_number: the round that produced it (None if not from a round).
        sha256: hex SHA-256 of the float32 little-endian weight bytes.
        metrics: JSON-compatible metrics recorded with the version.
        tags: the version's tags, sorted.
        created_at: when it was written (UTC).
        is_current: whether it is the task's current version.
    """

    task_id: int
    version: int
    parent_version: int | None
    round_number: int | None
    sha256: str
    metrics: dict[str, Any]
    tags: tuple[str, ...]
    created_at: datetime
    is_current: bool


def content_hash(raw: bytes) -> str:
    """The registry's content hash of raw float32 little-endian weight bytes."""
    return hashlib.sha256(raw).hexdigest()


def _encode_weights(weights: npt.ArrayLike, vector_length: int) -> bytes:
    """Validate a weight vector and return its stored bytes.

    Raises:
        RegistryError: not a 1-D floating vector of ``vector_length`` finite
            float32 values.
    """
    array = np.asarray(weights)
    if array.ndim != 1:
        raise RegistryError(f"weights must be a 1-D vector, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise RegistryError(f"weights must be floating point, got dtype {array.dtype}")
    if array.size != vector_length:
        raise RegistryError(
            f"weights have {array.size} elements, the task's model has {vector_length}"
        )
    with np.errstate(over="ignore"):  # out-of-range values become inf, refused below
        stored = array.astype(WEIGHTS_DTYPE, copy=False)
    if not np.isfinite(stored).all():
        bad = int(np.flatnonzero(~np.isfinite(stored))[0])
        raise RegistryError(
            f"weights must be finite float32 values; element {bad} is {array[bad]!r}"
        )
    return stored.tobytes()


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _normalise_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics as plain JSON values (numpy scalars unwrapped).

    Raises:
        RegistryError: non-string keys, non-JSON values or NaN/infinity (which
            PostgreSQL's JSON refuses and SQLite would store inconsistently).
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise RegistryError(f"metrics must be a mapping, got {type(metrics).__name__}")
    for key in metrics:
        if not isinstance(key, str):
            raise RegistryError(f"metric names must be strings, got {key!r}")
    try:
        text = json.dumps(dict(metrics), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"metrics must be finite JSON values: {exc}") from exc
    normalised: dict[str, Any] = json.loads(text)
    return normalised


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or len(tag) > MAX_TAG_CHARS or not _TAG.fullmatch(tag):
        raise RegistryError(
            f"invalid tag {tag!r}: use 1..{MAX_TAG_CHARS} characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )


class ModelRegistry:
    """Versions, content hashes and the current pointer of every task's model.

    Args:
        db: the database.
        clock: returns "now" as an aware UTC datetime (injectable for tests).
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    # ------------------------------------------------------------------ writes

    def create_initial(
        self,
        task_id: int,
        weights: npt.ArrayLike,
        metrics: Mapping[str, Any] | None = None,
        *,
        session: Session | None = None,
    ) -> VersionInfo:
        """Store a task's initial model as version 1 and make it current.

        Args:
            task_id: an existing task with no versions yet.
            weights: 1-D floating vector of the task's ``vector_length``
                (stored as float32).
            metrics: optional JSON-compatible metrics.
            session: join this transaction instead of committing on return.

        Returns:
            Version 1's info.

        Raises:
            TaskNotFound: no such task.
            RegistryError: the task already has versions, or bad weights/metrics.
        """
        with self._transaction(session) as s:
            task = self._lock_task(s, task_id)
            if self._max_version(s, task_id) is not None:
                raise RegistryError(f"task {task_id} already has model versions")
            row = self._insert(s, task, 1, None, None, weights, metrics)
            self._set_current(s, task_id, 1)
            return self._info(row, current=1)

    def add_version(
        self,
        task_id: int,
        weights: npt.ArrayLike,
        parent_version: int,
        round_number: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        *,
        session: Session | None = None,
    ) -> VersionInfo:
        """Store a new model version and make it current, in one transaction.

        The new version's number is one more than the task's highest version
        (not the current one: after a rollback numbers keep growing).

        Args:
            task_id: an existing task.
            weights: 1-D floating vector of the task's ``vector_length``.
            parent_version: an existing version of the task it derives from.
            round_number: the round that produced it, if any.
            metrics: optional JSON-compatible metrics.
            session: join this transaction instead of committing on return.

        Returns:
            The new version's info.

        Raises:
            TaskNotFound: no such task.
            VersionNotFound: ``parent_version`` does not exist.
            RegistryError: bad weights or metrics.
        """
        with self._transaction(session) as s:
            task = self._lock_task(s, task_id)
            self._row(s, task_id, parent_version)
            version = (self._max_version(s, task_id) or 0) + 1
            row = self._insert(s, task, version, parent_version, round_number, weights, metrics)
            self._set_current(s, task_id, version)
            return self._info(row, current=version)

    def tag(
        self, task_id: int, version: int, tag: str, *, session: Session | None = None
    ) -> VersionInfo:
        """Add ``tag`` to a version (no-op if it has it already).

        Raises:
            TaskNotFound, VersionNotFound: no such task or version.
            RegistryError: the tag is not 1..64 characters of ``[A-Za-z0-9._-]``
                starting with a letter or digit.
        """
        _check_tag(tag)
        with self._transaction(session) as s:
            self._lock_task(s, task_id)
            row = self._row(s, task_id, version)
            if tag not in row.tags:
                row.tags = sorted({*row.tags, tag})  # a new list: JSON is not mutation-tracked
            return self._info(row, current=self._current(s, task_id))

    def untag(
        self, task_id: int, version: int, tag: str, *, session: Session | None = None
    ) -> VersionInfo:
        """Remove ``tag`` from a version.

        Raises:
            TaskNotFound, VersionNotFound: no such task or version.
            RegistryError: the version does not carry ``tag``.
        """
        with self._transaction(session) as s:
            self._lock_task(s, task_id)
            row = self._row(s, task_id, version)
            if tag not in row.tags:
                raise RegistryError(f"version {version} of task {task_id} has no tag {tag!r}")
            row.tags = [t for t in row.tags if t != tag]
            return self._info(row, current=self._current(s, task_id))

    def promote(self, task_id: int, version: int, *, session: Session | None = None) -> VersionInfo:
        """Make ``version`` the task's current version.

        Raises:
            TaskNotFound, VersionNotFound: no such task or version.
        """
        with self._transaction(session) as s:
            self._lock_task(s, task_id)
            row = self._row(s, task_id, version)
            self._set_current(s, task_id, version)
            return self._info(row, current=version)

    def rollback(self, task_id: int, *, session: Session | None = None) -> VersionInfo:
        """Make the current version's parent current again.

        Returns:
            The new current version's info.

        Raises:
            TaskNotFound: no such task.
            VersionNotFound: the task has no versions.
            RegistryError: the current version has no parent.
        """
        with self._transaction(session) as s:
            self._lock_task(s, task_id)
            current = self._require_current(s, task_id)
            parent = self._row(s, task_id, current).parent_version
            if parent is None:
                raise RegistryError(
                    f"cannot roll back task {task_id}: current version {current} has no parent"
                )
            row = self._row(s, task_id, parent)
            self._set_current(s, task_id, parent)
            return self._info(row, current=parent)

    # ------------------------------------------------------------------ reads

    def get(
        self, task_id: int, version: int | None = None, *, session: Session | None = None
    ) -> VersionInfo:
        """A version's info; ``version=None`` means the current version.

        Raises:
            TaskNotFound: no such task.
            VersionNotFound: no such version, or (``None``) no versions yet.
        """
        with self._transaction(session) as s:
            current = self._current(s, task_id)
            if version is None:
                if current is None:
                    raise self._no_versions(s, task_id)
                version = current
            return self._info(self._row(s, task_id, version), current=current)

    def list_versions(self, task_id: int, *, session: Session | None = None) -> list[VersionInfo]:
        """Every version of a task, oldest first (empty if none yet).

        Raises:
            TaskNotFound: no such task.
        """
        with self._transaction(session) as s:
            self._require_task(s, task_id)
            current = self._current(s, task_id)
            rows = s.scalars(
                select(ModelVersion)
                .where(ModelVersion.task_id == task_id)
                .order_by(ModelVersion.version)
            )
            return [self._info(row, current=current) for row in rows]

    def weights(
        self, task_id: int, version: int | None = None, *, session: Session | None = None
    ) -> npt.NDArray[np.float32]:
        """A version's weights (``None``: current), verified against its hash.

        Returns:
            A new writable 1-D float32 array.

        Raises:
            TaskNotFound, VersionNotFound: no such task or version.
            IntegrityError: the stored bytes do not hash to the recorded
                SHA-256 or do not form a vector of the task's length.
        """
        with self._transaction(session) as s:
            if version is None:
                version = self._require_current(s, task_id)
            found = s.execute(
                select(ModelVersion.weights, ModelVersion.sha256, Task.vector_length)
                .join(Task, Task.id == ModelVersion.task_id)
                .where(ModelVersion.task_id == task_id, ModelVersion.version == version)
            ).one_or_none()
            if found is None:
                raise self._missing(s, task_id, version)
            raw, recorded, vector_length = bytes(found[0]), str(found[1]), int(found[2])
        actual = content_hash(raw)
        if actual != recorded:
            raise IntegrityError(
                f"version {version} of task {task_id} is corrupted: its weights hash to "
                f"{actual}, the registry recorded {recorded}"
            )
        if len(raw) != vector_length * WEIGHTS_DTYPE.itemsize:
            raise IntegrityError(
                f"version {version} of task {task_id} has {len(raw)} bytes of weights, "
                f"expected {vector_length} float32 values"
            )
        return np.frombuffer(raw, dtype=WEIGHTS_DTYPE).astype(np.float32, copy=True)

    def download(
        self, task_id: int, version: int | None = None, *, session: Session | None = None
    ) -> bytes:
        """A version's weights as the bytes of an ``.npy`` file (``np.load`` reads it).

        Raises:
            The same as ``weights``.
        """
        buffer = io.BytesIO()
        np.save(buffer, self.weights(task_id, version, session=session), allow_pickle=False)
        return buffer.getvalue()

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _transaction(self, session: Session | None) -> Iterator[Session]:
        if session is not None:
            yield session
        else:
            with self._db.session() as own:
                yield own

    @staticmethod
    def _lock_task(s: Session, task_id: int) -> Task:
        # A no-op UPDATE as the transaction's first write: on PostgreSQL it locks
        # the task row until commit, on SQLite it takes the database write lock
        # (waiting for it) before anything below is read. Either way the reads
        # that follow see the latest committed versions and pointer.
        s.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(current_round=Task.current_round)
            .execution_options(synchronize_session=False)
        )
        return ModelRegistry._require_task(s, task_id)

    @staticmethod
    def _require_task(s: Session, task_id: int) -> Task:
        task = s.get(Task, task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        return task

    @staticmethod
    def _max_version(s: Session, task_id: int) -> int | None:
        return s.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.task_id == task_id)
        )

    @staticmethod
    def _current(s: Session, task_id: int) -> int | None:
        return s.scalar(select(TaskPointer.current_version).where(TaskPointer.task_id == task_id))

    @staticmethod
    def _no_versions(s: Session, task_id: int) -> VersionNotFound:
        # The precise error for "nothing is current": no task, or no version yet.
        if s.get(Task, task_id) is None:
            return TaskNotFound(f"task {task_id} does not exist")
        return VersionNotFound(f"task {task_id} has no model versions yet")

    @staticmethod
    def _missing(s: Session, task_id: int, version: int) -> VersionNotFound:
        # The precise error for a missing (task, version): no task, or no such version.
        if s.get(Task, task_id) is None:
            return TaskNotFound(f"task {task_id} does not exist")
        return VersionNotFound(f"task {task_id} has no model version {version}")

    @staticmethod
    def _require_current(s: Session, task_id: int) -> int:
        current = ModelRegistry._current(s, task_id)
        if current is None:
            raise ModelRegistry._no_versions(s, task_id)
        return current

    @staticmethod
    def _row(s: Session, task_id: int, version: int) -> ModelVersion:
        row = s.scalar(
            select(ModelVersion).where(
                ModelVersion.task_id == task_id, ModelVersion.version == version
            )
        )
        if row is None:
            raise ModelRegistry._missing(s, task_id, version)
        return row

    def _insert(
        self,
        s: Session,
        task: Task,
        version: int,
        parent_version: int | None,
        round_number: int | None,
        weights: npt.ArrayLike,
        metrics: Mapping[str, Any] | None,
    ) -> ModelVersion:
        raw = _encode_weights(weights, task.vector_length)
        row = ModelVersion(
            task_id=task.id,
            version=version,
            parent_version=parent_version,
            round_number=round_number,
            weights=raw,
            sha256=content_hash(raw),
            metrics=_normalise_metrics(metrics),
            created_at=self._clock(),
            tags=[],
        )
        s.add(row)
        s.flush()  # the pointer's foreign key needs the row
        return row

    def _set_current(self, s: Session, task_id: int, version: int) -> None:
        pointer = s.get(TaskPointer, task_id)
        if pointer is None:
            s.add(TaskPointer(task_id=task_id, current_version=version, updated_at=self._clock()))
        else:
            pointer.current_version = version
            pointer.updated_at = self._clock()
        s.flush()

    @staticmethod
    def _info(row: ModelVersion, *, current: int | None) -> VersionInfo:
        return VersionInfo(
            task_id=row.task_id,
            version=row.version,
            parent_version=row.parent_version,
            round_number=row.round_number,
            sha256=row.sha256,
            metrics=dict(row.metrics),
            tags=tuple(sorted(row.tags)),
            created_at=row.created_at,
            is_current=row.version == current,
        )
