"""One writer per database: the writer lock in-process, then real `secagg serve` processes."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from sqlalchemy import select, text

from secagg.db import (
    ABORT_SERVER_RESTART,
    Database,
    DatabaseOptions,
    Round,
    RoundStatus,
    Task,
    TaskStatus,
)
from secagg.registry import ModelRegistry
from secagg.writer_lock import (
    EXIT_WRITER_LOCK_HELD,
    EXIT_WRITER_LOCK_LOST,
    PostgresWriterLock,
    SqliteWriterLock,
    WriterLock,
    WriterLockHeld,
    acquire_writer_lock,
    advisory_key,
    writer_lock_for,
)
from tests.server.conftest import POSTGRES_CONNINFO, POSTGRES_URL, TASK_DEFAULTS, PostgresServer

POSTGRES_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def options(name: str | None = None) -> DatabaseOptions:
    return DatabaseOptions(application_name=name or f"t-{uuid.uuid4().hex[:20]}")


def never_lost(exc: BaseException) -> None:
    raise AssertionError(f"lock lost unexpectedly: {exc}")


def acquire(url: str, name: str | None = None, **kw: Any) -> WriterLock | None:
    kw.setdefault("on_lost", never_lost)
    return acquire_writer_lock(url, options(name), **kw)


def terminate(application_name: str) -> int:
    with psycopg.connect(POSTGRES_CONNINFO, connect_timeout=2, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


# --------------------------------------------------------------------------- in-process


def test_second_lock_is_refused_names_the_holder_and_frees_on_release(db_url: str) -> None:
    first = acquire(db_url, "writer-one")
    assert first is not None
    try:
        with pytest.raises(WriterLockHeld) as refused:
            acquire(db_url, "writer-two")
        message = str(refused.value)
        assert "--standby" in message
        if db_url.startswith("sqlite"):
            assert isinstance(first, SqliteWriterLock)
            assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        else:
            assert isinstance(first, PostgresWriterLock)
            assert "'writer-one/writer'" in message
            assert db_url.split("search_path%3D", 1)[1] in message  # names the schema
    finally:
        first.release()
    second = acquire(db_url, "writer-two")
    assert second is not None
    second.release()


def test_locks_of_different_schemas_or_files_do_not_collide(
    postgres: PostgresServer | str, tmp_path: Path
) -> None:
    urls = [f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"]
    schemas: list[str] = []
    if isinstance(postgres, PostgresServer):
        schemas = [postgres.create_schema(with_tables=False) for _ in range(2)]
        urls += [f"{POSTGRES_URL}?options=-csearch_path%3D{s}" for s in schemas]
    locks = [acquire(url) for url in urls]
    try:
        assert all(lock is not None for lock in locks)
    finally:
        for lock in locks:
            if lock is not None:
                lock.release()
        for schema in schemas:
            assert isinstance(postgres, PostgresServer)
            postgres.drop_schema(schema)
    assert advisory_key("test", "a") != advisory_key("test", "b")
    assert advisory_key("test", "a") != advisory_key("other", "a")


def test_in_memory_sqlite_needs_no_lock() -> None:
    assert writer_lock_for("sqlite://", options(), on_lost=never_lost) is None
    assert writer_lock_for("sqlite:///:memory:", options(), on_lost=never_lost) is None


def test_standby_waits_then_takes_over(db_url: str) -> None:
    first = acquire(db_url, "writer-one")
    assert first is not None
    waiting = threading.Event()
    holders: list[str | None] = []
    taken: list[WriterLock | None] = []

    def on_wait(holder: str | None) -> None:
        holders.append(holder)
        waiting.set()

    standby = threading.Thread(
        target=lambda: taken.append(
            acquire(db_url, "writer-two", standby=True, poll_s=0.05, on_wait=on_wait)
        ),
        daemon=True,
    )
    standby.start()
    try:
        assert waiting.wait(30), "the standby never tried the lock"
        assert standby.is_alive() and not taken  # still waiting while the first holds it
        assert holders[0] is not None
    finally:
        first.release()
    standby.join(timeout=30)
    assert not standby.is_alive()
    assert taken and taken[0] is not None
    taken[0].release()


def test_standby_gives_up_when_asked(db_url: str) -> None:
    first = acquire(db_url)
    assert first is not None
    try:
        with pytest.raises(WriterLockHeld):
            acquire(db_url, standby=True, poll_s=0.05, give_up_after_s=0.2)
    finally:
        first.release()


@POSTGRES_ONLY
def test_lost_lock_connection_is_reported(db_url: str) -> None:
    lost = threading.Event()
    errors: list[BaseException] = []

    def on_lost(exc: BaseException) -> None:
        errors.append(exc)
        lost.set()

    name = f"t-{uuid.uuid4().hex[:20]}"
    lock = acquire(db_url, name, on_lost=on_lost, check_s=0.1)
    assert lock is not None
    try:
        assert not lost.wait(0.5)  # checked several times, still held
        assert terminate(f"{name}/writer") == 1
        assert lost.wait(30), "a terminated lock connection went unnoticed"
        assert len(errors) == 1
        # Gone with the session: another server can take it now.
        other = acquire(db_url)
        assert other is not None
        other.release()
    finally:
        lock.release()


# --------------------------------------------------------------------------- processes


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """One `secagg serve` process on a given database (plain HTTP on loopback)."""

    def __init__(self, work: Path, url: str, name: str, *extra: str, **env: str) -> None:
        self.port, self.name = _port(), name
        self.log = work / f"serve-{name}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "secagg.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *extra,
            ],
            env={
                **os.environ,
                "SECAGG_DATABASE_URL": url,
                "SECAGG_ADMIN_TOKEN": "writer-lock-admin",
                "SECAGG_DB_APPLICATION_NAME": name,
                "SECAGG_LOG_JSON": "false",
                "SECAGG_STANDBY_POLL_S": "0.2",
                **env,
            },
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=work,
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
        time.sleep(0.1)


def live_round(url: str) -> int:
    """A paused task with a ``running`` round, as a live server's would be; its id."""
    db = Database.from_url(url)
    try:
        with db.session() as s:
            task = Task(**{**TASK_DEFAULTS, "name": "live", "status": TaskStatus.PAUSED})
            s.add(task)
            s.flush()
            task_id = task.id
        ModelRegistry(db).create_initial(task_id, np.zeros(8, np.float32))
        with db.session() as s:
            row = Round(
                task_id=task_id,
                number=1,
                session_id=hashlib.sha256(b"live").digest(),
                config=b"config",
                participants=[1, 2, 3],
                base_version=1,
            )
            s.add(row)
            s.flush()
            return row.id
    finally:
        db.dispose()


def round_state(url: str, round_id: int) -> tuple[RoundStatus, str | None]:
    db = Database.from_url(url, create=False)
    try:
        with db.session() as s:
            row = s.execute(
                select(Round.status, Round.abort_reason).where(Round.id == round_id)
            ).one()
            return row[0], row[1]
    finally:
        db.dispose()


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    try:
        yield started
    finally:
        for s in started:  # only the processes this test started, by pid
            s.stop()


@pytest.mark.slow
def test_second_serve_refuses_a_standby_takes_over_after_sigkill(
    db_url: str, tmp_path: Path, servers: list[Serve]
) -> None:
    """A live server's running round survives a second `serve` (refused) and a
    standby (waiting); after the live one is SIGKILLed the standby takes over
    and only then marks the round interrupted."""
    tag = uuid.uuid4().hex[:8]
    first = Serve(tmp_path, db_url, f"first-{tag}")
    servers.append(first)
    wait_for(first.healthy, 90, "the first server")
    round_id = live_round(db_url)

    second = Serve(tmp_path, db_url, f"second-{tag}")
    servers.append(second)
    assert second.proc.wait(timeout=90) == EXIT_WRITER_LOCK_HELD, second.output()
    out = second.output()
    assert "another secagg server is the writer" in out
    if db_url.startswith("sqlite"):
        assert f"pid {first.proc.pid} " in out
    else:
        assert f"'first-{tag}/writer'" in out
    assert round_state(db_url, round_id) == (RoundStatus.RUNNING, None)
    assert first.healthy()

    standby = Serve(tmp_path, db_url, f"standby-{tag}", "--standby")
    servers.append(standby)
    wait_for(lambda: "waiting to take over" in standby.output(), 90, "the standby to wait")
    assert standby.proc.poll() is None and not standby.healthy()
    assert round_state(db_url, round_id) == (RoundStatus.RUNNING, None)

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    wait_for(standby.healthy, 90, "the standby to take over")
    assert "took over the writer lock" in standby.output()
    assert round_state(db_url, round_id) == (RoundStatus.ABORTED, ABORT_SERVER_RESTART)


@pytest.mark.slow
@POSTGRES_ONLY
def test_serve_exits_when_its_lock_connection_dies(
    db_url: str, tmp_path: Path, servers: list[Serve]
) -> None:
    name = f"lost-{uuid.uuid4().hex[:8]}"
    server = Serve(tmp_path, db_url, name, SECAGG_WRITER_LOCK_CHECK_S="0.2")
    servers.append(server)
    wait_for(server.healthy, 90, "the server")
    assert terminate(f"{name}/writer") == 1
    assert server.proc.wait(timeout=60) == EXIT_WRITER_LOCK_LOST, server.output()
    assert "lost the database writer lock" in server.output()
    # The lock went with the session: a new server starts.
    again = Serve(tmp_path, db_url, f"{name}-again")
    servers.append(again)
    wait_for(again.healthy, 90, "a new server")


@pytest.fixture
def secagg_logger() -> Iterator[None]:
    """Restore the "secagg" logger that ``serve`` configures."""
    logger = logging.getLogger("secagg")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


@pytest.mark.usefixtures("secagg_logger")
def test_serve_says_when_the_database_cannot_be_reached(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from secagg.cli import main

    # Port 1 on loopback: nothing listens, the connection is refused at once.
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    assert main(["serve", "--database-url", url, "--admin-token", "x"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the database to take its writer lock" in err


@POSTGRES_ONLY
def test_a_silent_lock_connection_is_given_up_after_the_lease(db_url: str) -> None:
    """A heartbeat that hangs (a network cut looks like this) loses the lock after
    lease_s, long before the database's own keepalives would drop the session."""
    lost = threading.Event()
    errors: list[BaseException] = []

    def on_lost(exc: BaseException) -> None:
        errors.append(exc)
        lost.set()

    lock = PostgresWriterLock(
        db_url,
        DatabaseOptions(application_name=f"t-{uuid.uuid4().hex[:20]}", statement_timeout_s=8),
        on_lost=on_lost,
        check_s=0.2,
        lease_s=2.0,
    )
    assert lock.try_acquire()
    try:
        conn = lock._conn
        assert conn is not None
        shown = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        }
        assert shown == {
            "tcp_keepalives_idle": "20",
            "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "4",
        }
        assert not lost.wait(0.6)  # heartbeats answer: still held
        lock.HEARTBEAT_SQL = "SELECT pg_sleep(6)"  # silent for longer than the lease
        assert lost.wait(30), "a silent lock connection was kept"
        assert isinstance(errors[0], TimeoutError)
        assert len(errors) == 1
    finally:
        lock.release()
    assert len(errors) == 1  # the late heartbeat failure is not reported again


@POSTGRES_ONLY
def test_an_application_name_in_the_url_names_the_pool_and_the_lock(db_url: str) -> None:
    name = f"named-{uuid.uuid4().hex[:12]}"
    url = f"{db_url}&application_name={name}"
    lock = acquire(url)
    assert isinstance(lock, PostgresWriterLock)
    db = Database.from_url(url, create=False)
    try:
        with db.session() as s:
            assert s.execute(text("SHOW application_name")).scalar_one() == name
        assert db.application_name == name
        with psycopg.connect(POSTGRES_CONNINFO, connect_timeout=2, autocommit=True) as admin:
            (holder,) = admin.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND a.application_name LIKE %s",
                (name + "%",),
            ).fetchone() or (None,)
        assert holder == f"{name}/writer" == lock.application_name
    finally:
        db.dispose()
        lock.release()
