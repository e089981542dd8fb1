"""One writer per database: the lock a server holds for its whole life.

A round's protocol state lives in the server's memory; the database only says
which rounds are ``running``. A server starting up marks every such round
interrupted (``mark_interrupted_rounds``), which is right after a crash and
wrong if another server is alive and running them. So a server takes this
lock before anything touches rounds, and holds it until it exits:

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection of its own, outside the pool, held for the process lifetime.
  The key is derived from the database name AND the schema the connection
  resolves (``current_schema()``, from ``search_path``), so servers on
  different schemas of one database (or parallel test schemas) do not
  collide. The database releases it when that session ends, whatever killed
  the process. The connection is checked every ``writer_lock_check_s``; if
  a check fails, or none succeeds for ``LEASE_S`` (a silent network cut),
  the lock may be gone and another server may soon be writing, so the
  holder fails closed: it logs and exits at once (``EXIT_WRITER_LOCK_LOST``)
  without another database write. Its rounds are then marked interrupted by
  whoever starts next. A session lock needs a real session: connect
  directly, or through a pooler in session mode (not PgBouncer's
  transaction mode).
* SQLite file: an exclusive ``flock`` on ``<database file>.lock``, released
  by the kernel when the process dies. The file keeps the holder's pid, host
  and start time, so a refused server can name it. The file is never
  deleted (deleting a lock file races with the next locker).
* SQLite in memory: nothing to share, no lock.

A second server refuses to start (:class:`WriterLockHeld`, naming the holder
when it is known), or with ``standby`` waits, polling every
``standby_poll_s``, and starts when the lock frees.

The lock is taken by ``secagg serve`` before the application is built; an
application created in-process (tests, simulations) takes none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from secagg.db import DatabaseOptions, is_transient, make_engine

__all__ = [
    "EXIT_WRITER_LOCK_HELD",
    "EXIT_WRITER_LOCK_LOST",
    "PostgresWriterLock",
    "SqliteWriterLock",
    "WriterLock",
    "WriterLockHeld",
    "acquire_writer_lock",
    "advisory_key",
    "exit_on_lost_lock",
    "writer_lock_for",
]

log = logging.getLogger("secagg.writer_lock")

EXIT_WRITER_LOCK_HELD = 3
"""``secagg serve`` exit status: another server holds the writer lock."""
EXIT_WRITER_LOCK_LOST = 4
"""``secagg serve`` exit status: the writer lock was lost while serving."""

OnLost = Callable[[BaseException], None]


class WriterLockHeld(Exception):
    """Another server holds the writer lock of this database.

    Attributes:
        database: the database (URL without password, plus schema).
        holder: who holds it, as far as the database or lock file tells, or None.
    """

    def __init__(self, database: str, holder: str | None) -> None:
        self.database, self.holder = database, holder
        who = f"held by {holder}" if holder else "holder unknown"
        super().__init__(
            f"another secagg server is the writer of {database} ({who}). Stop it first, "
            "or start this one with --standby to take over when it stops."
        )


def _holder_note() -> str:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()}, since {started}"


class WriterLock:
    """The lock interface: try, name the holder, release."""

    #: A human-readable name of the locked database (no password).
    database: str = ""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this process holds it now."""
        raise NotImplementedError

    def holder(self) -> str | None:
        """Who holds the lock (best effort), or None if unknown."""
        raise NotImplementedError

    def release(self) -> None:
        """Release the lock and everything it holds open; idempotent."""
        raise NotImplementedError


def advisory_key(database: str, schema: str) -> int:
    """The signed 64-bit advisory lock key of (database, schema).

    A hash, so it cannot collide with small hand-picked keys other
    applications use; domain-separated so another use of the same names
    does not land on it.
    """
    digest = hashlib.sha256(f"secagg-writer-v1\0{database}\0{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


LEASE_S = 15.0
"""PostgreSQL: the holder gives the lock up (exits) when its session has not
answered a heartbeat for this long. The database drops a silent session only
after its server-side TCP keepalives fail (``_lock_url``: about 40 s), so a
holder cut off from the database stops well before anyone else can take the
lock and write."""


def _lock_url(url: str, application_name: str) -> str:
    """The server's URL with the lock connection's name and keepalive settings.

    Client side (libpq), a dead peer is noticed fast: keepalives from 5 s of
    silence, and ``tcp_user_timeout`` fails a heartbeat whose bytes stay
    unacknowledged for 10 s. Server side, PostgreSQL probes the idle session
    after 20 s, 4 probes 5 s apart (``tcp_keepalives_*``, about 40 s), so the
    database releases the lock of a vanished holder within a minute, and never
    before the holder's own ``LEASE_S`` ran out.
    """
    parsed = make_url(url)
    query = dict(parsed.query)
    existing = query.get("options", "")
    if isinstance(existing, tuple):
        existing = " ".join(existing)
    server_side = "-c tcp_keepalives_idle=20 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=4"
    client_side = {
        "keepalives": "1",
        "keepalives_idle": "5",
        "keepalives_interval": "2",
        "keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }
    return parsed.update_query_dict(
        {
            **client_side,
            "application_name": application_name,
            "options": f"{server_side} {existing}".strip(),
        }
    ).render_as_string(hide_password=False)


class PostgresWriterLock(WriterLock):
    """A session advisory lock on a dedicated connection (see the module docstring).

    Args:
        url: the server's database URL (its ``search_path`` picks the schema).
        options: the server's database options; the lock's connection adds
            ``/writer`` to the server's ``application_name`` (the URL's, if it
            names one).
        on_lost: called once, from the watch thread, if the lock's connection
            fails while held.
        check_s: how often the held connection is checked.
        lease_s: give the lock up if no check succeeded for this long.
    """

    #: The heartbeat statement (a test may make it hang).
    HEARTBEAT_SQL = "SELECT 1"

    def __init__(
        self,
        url: str,
        options: DatabaseOptions,
        *,
        on_lost: OnLost,
        check_s: float = 2.0,
        lease_s: float = LEASE_S,
    ) -> None:
        if not 0 < check_s < lease_s:
            raise ValueError(f"check_s must be in (0, lease_s={lease_s}), got {check_s}")
        in_url = make_url(url).query.get("application_name")
        base = in_url if isinstance(in_url, str) else options.resolved_application_name()
        name = f"{base[:56]}/writer"
        self._engine: Engine = make_engine(
            _lock_url(url, name),
            options=replace(options, application_name=name, pool_size=1, max_overflow=0),
        )
        self.application_name = name
        self.database = make_url(url).set(query={}).render_as_string(hide_password=True)
        self._on_lost, self._check_s, self._lease_s = on_lost, check_s, lease_s
        self._conn: Connection | None = None
        self._key: int | None = None
        self._io = threading.Lock()  # the connection is used by one thread at a time
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_ok = time.monotonic()
        self._lost = False
        self._lost_guard = threading.Lock()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            row = conn.execute(
                text("SELECT current_database(), current_schema(), current_setting('search_path')")
            ).one()
            schema = row[1] if row[1] is not None else f"search_path={row[2]}"
            self._key = advisory_key(row[0], schema)
            self.database = f"{self.database} (schema {schema})"
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception as exc:  # it is being dropped because it failed
                log.debug("closing the writer lock connection: %s", exc)
            self._conn = None

    def try_acquire(self) -> bool:
        with self._io:
            try:
                conn = self._connection()
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key})
                held = bool(got.scalar_one())
            except Exception:
                self._drop_connection()
                raise
        if held:
            self._stop.clear()
            self._last_ok = time.monotonic()
            self._threads = [
                threading.Thread(target=loop, name=f"writer-lock-{what}", daemon=True)
                for loop, what in ((self._heartbeat_loop, "heartbeat"), (self._lease_loop, "lease"))
            ]
            for thread in self._threads:
                thread.start()
        return held

    def holder(self) -> str | None:
        assert self._key is not None, "try_acquire first"
        unsigned = self._key & ((1 << 64) - 1)
        with self._io:
            try:
                row = (
                    self._connection()
                    .execute(
                        text(
                            "SELECT a.pid, a.application_name, host(a.client_addr), "
                            "a.backend_start FROM pg_locks l "
                            "JOIN pg_stat_activity a ON a.pid = l.pid "
                            "JOIN pg_database d ON d.oid = l.database "
                            "WHERE l.locktype = 'advisory' AND l.granted "
                            "AND d.datname = current_database() "
                            "AND l.classid::bigint = :hi AND l.objid::bigint = :lo "
                            "AND l.objsubid = 1"
                        ),
                        {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
                    )
                    .first()
                )
            except Exception as exc:  # naming the holder is best effort
                log.debug("could not look up the writer lock holder: %s", exc)
                return None
        if row is None:
            return None
        pid, app, addr, since = row
        where = f" from {addr}" if addr else " (local socket)"
        return f"PostgreSQL backend {pid}, application_name {app!r}{where}, since {since}"

    def _lose(self, exc: BaseException) -> None:
        with self._lost_guard:
            if self._lost or self._stop.is_set():
                return
            self._lost = True
        self._on_lost(exc)

    def _heartbeat_loop(self) -> None:
        """Ask the lock's session for a sign of life every ``check_s``."""
        while not self._stop.wait(self._check_s):
            try:
                with self._io:
                    if self._stop.is_set():
                        return
                    assert self._conn is not None
                    self._conn.execute(text(self.HEARTBEAT_SQL)).scalar_one()
                self._last_ok = time.monotonic()
            except Exception as exc:
                self._lose(exc)
                return

    def _lease_loop(self) -> None:
        """Fire if no heartbeat succeeded for ``lease_s`` (a hung, not a failed, connection)."""
        while not self._stop.wait(min(self._check_s, self._lease_s / 4)):
            silent = time.monotonic() - self._last_ok
            if silent > self._lease_s:
                self._lose(
                    TimeoutError(f"the writer lock's session has not answered for {silent:.1f} s")
                )
                return

    def release(self) -> None:
        self._stop.set()
        threads, self._threads = self._threads, []
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=self._lease_s + 30)
        with self._io:
            if self._conn is not None and self._key is not None:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                except Exception as exc:  # closing the session releases it anyway
                    log.debug("pg_advisory_unlock failed: %s", exc)
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception as exc:
                    log.debug("closing the writer lock connection: %s", exc)
                self._conn = None
        self._engine.dispose()


class SqliteWriterLock(WriterLock):
    """An exclusive ``flock`` on ``<database file>.lock`` (see the module docstring).

    ``flock`` locks belong to the open file, not to the process, so a second
    lock in the same process conflicts too (unlike ``fcntl``/``lockf``
    record locks, which a process shares with itself).
    """

    def __init__(self, database_file: Path) -> None:
        self.path = Path(f"{database_file}.lock")
        self.database = str(database_file)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_note() + "\n").encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str | None:
        try:
            note = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None
        return note[:300] or None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def writer_lock_for(
    url: str, options: DatabaseOptions, *, on_lost: OnLost, check_s: float = 2.0
) -> WriterLock | None:
    """The writer lock for the database at ``url``; None when none is needed or possible.

    None for an in-memory SQLite database (nothing to share) and for
    backends other than SQLite and PostgreSQL (logged: run one server only).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            return None
        if database.startswith("file:"):
            database = database[len("file:") :].split("?", 1)[0]
        return SqliteWriterLock(Path(database).resolve())
    if backend == "postgresql":
        return PostgresWriterLock(url, options, on_lost=on_lost, check_s=check_s)
    log.warning(
        "no writer lock for %s databases: run exactly one server on %s",
        backend,
        parsed.render_as_string(hide_password=True),
    )
    return None


def acquire_writer_lock(
    url: str,
    options: DatabaseOptions,
    *,
    standby: bool = False,
    poll_s: float = 1.0,
    check_s: float = 2.0,
    on_lost: OnLost | None = None,
    give_up_after_s: float | None = None,
    on_wait: Callable[[str | None], None] | None = None,
) -> WriterLock | None:
    """Take the writer lock of ``url``, or refuse, or (``standby``) wait for it.

    Blocking: call before the event loop starts (``secagg serve`` does).

    Args:
        url: the database URL.
        options: the server's database options.
        standby: wait until the lock frees instead of refusing. A database that
            cannot be reached meanwhile is waited for too.
        poll_s: standby: how often to try.
        check_s: PostgreSQL: how often the held lock's connection is checked.
        on_lost: called if the held lock is lost (default
            :func:`exit_on_lost_lock`: log and exit the process at once).
        give_up_after_s: standby: raise ``WriterLockHeld`` after this long
            (None: wait for ever).
        on_wait: standby: called with the holder (or None) after each failed
            try, before sleeping (progress reports, tests).

    Returns:
        The held lock (release it after the server stopped), or None if the
        database needs none (in-memory SQLite, other backends).

    Raises:
        WriterLockHeld: another server holds it (and not ``standby``, or
            ``give_up_after_s`` passed).
        sqlalchemy.exc.SQLAlchemyError: the database could not be reached
            (not ``standby``).
    """
    lock = writer_lock_for(url, options, on_lost=on_lost or exit_on_lost_lock, check_s=check_s)
    if lock is None:
        return None
    started = time.monotonic()
    announced = False
    while True:
        try:
            if lock.try_acquire():
                if announced:
                    log.warning("standby: took over the writer lock of %s", lock.database)
                else:
                    log.info("holding the writer lock of %s", lock.database)
                return lock
            holder = lock.holder()
        except Exception as exc:
            if not (standby and is_transient(exc)):
                lock.release()
                raise
            holder = f"unknown, the database is unreachable: {exc}"
        if not standby or (
            give_up_after_s is not None and time.monotonic() - started >= give_up_after_s
        ):
            lock.release()
            raise WriterLockHeld(lock.database, holder)
        if not announced:
            log.warning(
                "standby: the writer lock of %s is held by %s; waiting to take over",
                lock.database,
                holder or "an unknown holder",
            )
            announced = True
        if on_wait is not None:
            on_wait(holder)
        time.sleep(poll_s)


def exit_on_lost_lock(exc: BaseException) -> None:
    """Fail closed: log and end the process now, with ``EXIT_WRITER_LOCK_LOST``.

    No clean shutdown: closing rounds or storing results would be database
    writes by a server that may no longer be the only writer. ``os._exit``
    skips them; the next server marks this one's rounds interrupted.
    """
    log.critical(
        "lost the database writer lock (%s: %s); another server may take over, "
        "so this one stops now without further writes",
        type(exc).__name__,
        " ".join(str(exc).split())[:300],
    )
    for handler in [*logging.getLogger().handlers, *logging.getLogger("secagg").handlers]:
        with contextlib.suppress(Exception):  # exiting anyway
            handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_WRITER_LOCK_LOST)
