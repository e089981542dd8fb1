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
5. A tag names at most one version of a task: tagging a version moves the
   tag there. Tags are never ``current`` nor all digits, so a reference
   (``current``, a version number or a tag) is never ambiguous.

Downloads are served from an in-memory, byte-bounded LRU cache of each
version's encoded ``.npy`` file (:class:`EncodedModel`: the ``.npy`` header
plus the stored bytes themselves, no copy), filled on first use and checked
against the content hash once when it is filled. Versions are immutable, so
an entry never goes stale; the bound (``cache_bytes``) only limits memory.

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
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from secagg.db import Database, ModelVersion, Task, TaskPointer, utcnow

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "WEIGHTS_DTYPE",
    "EncodedModel",
    "EncodedModelCache",
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
CURRENT = "current"
"""The reference that names a task's current version."""

_READ_CHUNK = 4 * 1024 * 1024

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
"""Default bound of the encoded-model cache (a few versions of a 10^7-weight model)."""


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


def content_hash(raw: bytes | bytearray | memoryview) -> str:
    """The registry's content hash of raw float32 little-endian weight bytes."""
    return hashlib.sha256(raw).hexdigest()


def _encode_weights(weights: npt.ArrayLike, vector_length: int) -> bytes | memoryview:
    """Validate a weight vector and return its stored bytes (a view of a float32
    little-endian input, not a copy: the database driver copies them once).

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
    if stored.flags.c_contiguous:
        return memoryview(stored.data).cast("B")
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


def tag_syntax_ok(text: str) -> bool:
    """Whether ``text`` is spelled like a tag (1..64 of ``[A-Za-z0-9._-]``, first alphanumeric)."""
    return isinstance(text, str) and len(text) <= MAX_TAG_CHARS and bool(_TAG.fullmatch(text))


def _check_tag(tag: str) -> None:
    if not tag_syntax_ok(tag):
        raise RegistryError(
            f"invalid tag {tag!r}: use 1..{MAX_TAG_CHARS} characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    if tag == CURRENT or tag.isdigit():
        # A download names a version by number, by tag or as "current": a tag
        # that looked like either would be ambiguous.
        raise RegistryError(
            f"invalid tag {tag!r}: a tag may not be {CURRENT!r} nor all digits "
            "(those name versions)"
        )


def npy_header(length: int) -> bytes:
    """The ``.npy`` (format 1.0) header of a 1-D little-endian float32 vector of ``length``.

    ``npy_header(n) + raw`` is byte for byte what ``np.save`` writes for that vector.
    """
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": WEIGHTS_DTYPE.str, "fortran_order": False, "shape": (length,)}
    )
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class EncodedModel:
    """A version's ``.npy`` file as it is sent: ``header + raw``, never concatenated.

    Attributes:
        task_id, version: which version.
        header: the ``.npy`` header (:func:`npy_header`).
        raw: the stored float32 little-endian weight bytes (shared, not copied).
        body_sha256: hex SHA-256 of the whole file, ``header + raw`` (what is sent).
        weights_sha256: hex SHA-256 of ``raw``, the registry's content hash.
    """

    task_id: int
    version: int
    header: bytes
    raw: bytes | bytearray | memoryview
    body_sha256: str
    weights_sha256: str

    @property
    def size(self) -> int:
        """Bytes of the ``.npy`` file."""
        return len(self.header) + len(self.raw)

    def chunks(self, chunk_bytes: int = 1 << 20) -> Iterator[memoryview | bytes]:
        """The file in pieces of at most ``chunk_bytes``: views of ``raw``, no copies."""
        yield self.header
        view = memoryview(self.raw)
        for start in range(0, len(view), chunk_bytes):
            yield view[start : start + chunk_bytes]

    def weights(self) -> npt.NDArray[np.float32]:
        """The weights as a read-only float32 view of ``raw`` (no copy)."""
        view = np.frombuffer(self.raw, dtype=WEIGHTS_DTYPE)
        view.flags.writeable = False
        return view

    def to_bytes(self) -> bytes:
        """The whole ``.npy`` file in one ``bytes`` (a copy: for small models and tests)."""
        return b"".join((self.header, self.raw))

    @classmethod
    def build(cls, task_id: int, version: int, raw: bytes | bytearray | memoryview) -> EncodedModel:
        """Encode stored bytes (their length must be a multiple of 4) as an ``.npy`` file."""
        header = npy_header(len(raw) // WEIGHTS_DTYPE.itemsize)
        body = hashlib.sha256(header)
        body.update(raw)
        return cls(task_id, version, header, raw, body.hexdigest(), content_hash(raw))


@dataclass
class EncodedModelCache:
    """Byte-bounded LRU of :class:`EncodedModel` by (task, version); thread-safe.

    Loads are single-flight per key: concurrent first requests for one version
    read the database once, the others wait and share the result. An entry
    larger than the bound is returned but not kept. ``max_bytes = 0`` keeps
    nothing (every download reads the database).
    """

    max_bytes: int = DEFAULT_CACHE_BYTES
    _entries: OrderedDict[tuple[int, int], EncodedModel] = field(default_factory=OrderedDict)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loading: dict[tuple[int, int], threading.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"cache bound must be >= 0 bytes, got {self.max_bytes}")

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def keys(self) -> list[tuple[int, int]]:
        """Cached (task, version) keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _lookup(self, key: tuple[int, int]) -> EncodedModel | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def get_or_load(self, key: tuple[int, int], load: Callable[[], EncodedModel]) -> EncodedModel:
        """The cached entry for ``key``, else ``load()``'s (kept if it fits)."""
        entry = self._lookup(key)
        if entry is not None:
            return entry
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            try:
                entry = self._lookup(key)  # loaded while this thread waited
                if entry is not None:
                    return entry
                entry = load()
                self._put(key, entry)
                return entry
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def discard_task(self, task_id: int) -> None:
        """Drop every cached version of ``task_id`` (they are reloaded on demand)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == task_id]:
                self._bytes -= self._entries.pop(key).size

    def _put(self, key: tuple[int, int], entry: EncodedModel) -> None:
        if entry.size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            while self._entries and self._bytes + entry.size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size
            self._entries[key] = entry
            self._bytes += entry.size


class ModelRegistry:
    """Versions, content hashes and the current pointer of every task's model.

    Args:
        db: the database.
        clock: returns "now" as an aware UTC datetime (injectable for tests).
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._db = db
        self._clock = clock
        self.cache = EncodedModelCache(cache_bytes)

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
        # Clients download the current version: once it moves, the older ones
        # are rarely read again. Dropping them now also frees their memory
        # before the new weights are copied into the database.
        self.cache.discard_task(task_id)
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
        """Put ``tag`` on a version, moving it from any other version of the task.

        Raises:
            TaskNotFound, VersionNotFound: no such task or version.
            RegistryError: the tag is not 1..64 characters of ``[A-Za-z0-9._-]``
                starting with a letter or digit, or is ``current`` or all digits.
        """
        _check_tag(tag)
        with self._transaction(session) as s:
            self._lock_task(s, task_id)
            row = self._row(s, task_id, version)
            for other in self._tagged(s, task_id, tag):
                if other.version != version:
                    other.tags = [t for t in other.tags if t != tag]
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

    def resolve(
        self, task_id: int, ref: int | str | None, *, session: Session | None = None
    ) -> VersionInfo:
        """The version a reference names: ``None`` (or ``"current"``) the current
        version, an ``int`` that version, any other ``str`` the version carrying that tag.

        Raises:
            TaskNotFound: no such task.
            VersionNotFound: no such version, no version yet, or no version has the tag.
        """
        if ref is None or ref == CURRENT:
            return self.get(task_id, None, session=session)
        if isinstance(ref, int):
            return self.get(task_id, ref, session=session)
        with self._transaction(session) as s:
            tagged = self._tagged(s, task_id, ref)
            if not tagged:
                self._require_task(s, task_id)
                raise VersionNotFound(f"task {task_id} has no version tagged {ref!r}")
            # One version by rule 5; the newest should older data hold several.
            row = max(tagged, key=lambda r: r.version)
            return self._info(row, current=self._current(s, task_id))

    def encoded(self, task_id: int, version: int) -> EncodedModel:
        """A version's ``.npy`` file from the cache, read and checked on first use.

        Raises:
            The same as ``weights``.
        """
        return self.cache.get_or_load(
            (task_id, version),
            lambda: EncodedModel.build(task_id, version, self._raw(task_id, version)),
        )

    def remember(self, info: VersionInfo, weights: npt.NDArray[np.float32]) -> bool:
        """Cache a version the caller has just stored and committed, from its weights.

        Saves reading the version back from the database for its first
        download; ``weights`` is kept, not copied, so the caller must not
        change it afterwards. Nothing is cached unless ``weights`` hash to the
        version's recorded content hash.

        Returns:
            Whether the version was cached.
        """
        array = np.asarray(weights)
        if array.ndim != 1 or array.dtype != WEIGHTS_DTYPE or not array.flags.c_contiguous:
            return False
        model = EncodedModel.build(info.task_id, info.version, memoryview(array.data).cast("B"))
        if model.weights_sha256 != info.sha256:
            return False
        self.cache.get_or_load((info.task_id, info.version), lambda: model)
        return True

    def weights_view(self, task_id: int, version: int) -> npt.NDArray[np.float32]:
        """A version's weights as a read-only view of its cached encoded file (no copy).

        Raises:
            The same as ``weights``.
        """
        return self.encoded(task_id, version).weights()

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
        raw = self._raw(task_id, version, session=session)
        return np.frombuffer(raw, dtype=WEIGHTS_DTYPE).astype(np.float32, copy=True)

    def _raw(
        self, task_id: int, version: int | None, *, session: Session | None = None
    ) -> bytearray:
        """A version's stored bytes, checked against its hash and the task's length.

        Read in pieces of ``_READ_CHUNK`` bytes into one buffer: a driver that
        fetches a whole value at once may hold it several times over (hex text,
        then bytes: five model sizes on PostgreSQL), a piece at a time it holds
        a piece.
        """
        with self._transaction(session) as s:
            if version is None:
                version = self._require_current(s, task_id)
            where = (ModelVersion.task_id == task_id, ModelVersion.version == version)
            found = s.execute(
                select(func.length(ModelVersion.weights), ModelVersion.sha256, Task.vector_length)
                .join(Task, Task.id == ModelVersion.task_id)
                .where(*where)
            ).one_or_none()
            if found is None:
                raise self._missing(s, task_id, version)
            size, recorded, vector_length = int(found[0] or 0), str(found[1]), int(found[2])
            raw = bytearray(size)
            for start in range(0, size, _READ_CHUNK):
                piece = s.scalar(
                    select(func.substr(ModelVersion.weights, start + 1, _READ_CHUNK)).where(*where)
                )
                end = start + len(piece or b"")
                if piece is None or end > size or (end != size and len(piece) != _READ_CHUNK):
                    raise IntegrityError(
                        f"version {version} of task {task_id}: its stored weights changed length "
                        "while being read"
                    )
                raw[start:end] = piece
                del piece
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
        return raw

    def download(
        self, task_id: int, version: int | None = None, *, session: Session | None = None
    ) -> bytes:
        """A version's weights as the bytes of an ``.npy`` file (``np.load`` reads it).

        Raises:
            The same as ``weights``.
        """
        if version is None:
            version = self.get(task_id, session=session).version
        return self.encoded(task_id, version).to_bytes()

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
    def _tagged(s: Session, task_id: int, tag: str) -> list[ModelVersion]:
        # Tags are a JSON list per row; a task has few versions next to its
        # rounds, so the rows are filtered here (weights stay deferred, unread).
        rows = s.scalars(select(ModelVersion).where(ModelVersion.task_id == task_id))
        return [row for row in rows if tag in row.tags]

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
