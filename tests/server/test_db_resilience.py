"""The database must not freeze or break the service: timeouts, transient failures, 503s.

Real failures, not mocks, wherever the backend can produce them: a table
locked by another connection (``lock_timeout``), ``pg_sleep`` past
``statement_timeout``, ``pg_terminate_backend`` on the server's own
connections (selected by the ``application_name`` each test sets), SQLite's
write lock held by another connection (busy), an exhausted pool.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from protocol import SystemRandom
from protocol.crypto import ed25519_public_key
from secagg.db import (
    Client,
    Database,
    DatabaseOptions,
    DatabaseUnavailable,
    RequestNonce,
    is_transient,
)
from secagg.settings import Settings
from secagg_http.signing import sign_request
from tests.server.conftest import POSTGRES_CONNINFO
from tests.server.helpers import ADMIN, running_server

POSTGRES_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def open_db(url: str, **options: Any) -> Database:
    """A Database on ``url`` with a unique application_name (and tables)."""
    options.setdefault("application_name", f"t-{uuid.uuid4().hex[:20]}")
    return Database.from_url(url, options=DatabaseOptions(**options))


@pytest.fixture
def pg_admin() -> Iterator[psycopg.Connection[Any]]:
    """A separate PostgreSQL session (autocommit) to lock tables and kill backends."""
    conn = psycopg.connect(POSTGRES_CONNINFO, connect_timeout=2, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def terminate(admin: psycopg.Connection[Any], application_name: str) -> int:
    """pg_terminate_backend every session named ``application_name``; how many."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    ).fetchall()
    return sum(1 for (ok,) in rows if ok)


@contextmanager
def locked_tables(url: str, *tables: str) -> Iterator[None]:
    """Hold ACCESS EXCLUSIVE locks on ``tables`` of the URL's schema until the block ends."""
    schema = url.split("search_path%3D", 1)[1]
    conn = psycopg.connect(POSTGRES_CONNINFO, connect_timeout=2)
    try:
        conn.execute(f'SET search_path TO "{schema}"')
        for table in tables:
            conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        conn.rollback()
        conn.close()


# --------------------------------------------------------------------------- engine set-up


@POSTGRES_ONLY
def test_postgres_connections_carry_the_timeouts_and_name(db_url: str) -> None:
    db = open_db(
        db_url,
        application_name="secagg-test-name",
        lock_timeout_s=1.5,
        statement_timeout_s=7,
        idle_in_transaction_timeout_s=42,
    )
    try:
        with db.session() as s:
            shown = {
                name: s.execute(text(f"SHOW {name}")).scalar_one()
                for name in (
                    "lock_timeout",
                    "statement_timeout",
                    "idle_in_transaction_session_timeout",
                    "application_name",
                    "search_path",
                )
            }
        assert shown["lock_timeout"] == "1500ms"
        assert shown["statement_timeout"] == "7s"
        assert shown["idle_in_transaction_session_timeout"] == "42s"
        assert shown["application_name"] == db.application_name == "secagg-test-name"
        # The URL's own options (the test schema's search_path) are kept.
        assert shown["search_path"] == db_url.split("search_path%3D", 1)[1]
    finally:
        db.dispose()


@POSTGRES_ONLY
def test_postgres_defaults_are_bounded(db_url: str) -> None:
    db = Database.from_url(db_url)
    try:
        with db.session() as s:
            assert s.execute(text("SHOW lock_timeout")).scalar_one() == "5s"
            assert s.execute(text("SHOW statement_timeout")).scalar_one() == "30s"
            assert s.execute(text("SHOW application_name")).scalar_one() == f"secagg-{os.getpid()}"
        assert db.engine.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        db.dispose()


def test_sqlite_busy_timeout_is_the_setting(tmp_path: Path) -> None:
    db = open_db(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_s=0.25)
    try:
        with db.session() as s:
            assert s.execute(text("PRAGMA busy_timeout")).scalar_one() == 250
    finally:
        db.dispose()


def test_options_refuse_unbounded_values() -> None:
    with pytest.raises(ValueError, match="lock_timeout_s"):
        DatabaseOptions(lock_timeout_s=0)
    with pytest.raises(ValueError, match="statement_timeout_s"):
        DatabaseOptions(statement_timeout_s=float("inf"))
    with pytest.raises(ValueError, match="retry_attempts"):
        DatabaseOptions(retry_attempts=0)


# --------------------------------------------------------------------------- classifier


def add_client(db: Database, client_id: int = 1, secret: bytes | None = None) -> bytes:
    secret = secret or SystemRandom().random_bytes(32)
    with db.session() as s:
        s.add(Client(id=client_id, name=f"c{client_id}", public_key=ed25519_public_key(secret)))
    return secret


def raised(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def read_clients(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count(Client.id))) or 0)


@POSTGRES_ONLY
def test_postgres_lock_and_statement_timeouts_are_transient(db_url: str) -> None:
    db = open_db(db_url, lock_timeout_s=0.3, statement_timeout_s=0.5)
    try:
        with locked_tables(db_url, "clients"):
            t0 = time.monotonic()
            exc = raised(lambda: read_clients(db))
            waited = time.monotonic() - t0
        assert isinstance(exc, sqlalchemy.exc.OperationalError)
        assert type(exc.orig).__name__ == "LockNotAvailable"
        assert is_transient(exc)
        assert waited < 5  # lock_timeout, not a hang

        def sleep(s: Session) -> None:
            s.execute(text("SELECT pg_sleep(5)"))

        exc = raised(lambda: db.run(sleep, attempts=1))
        assert isinstance(exc, DatabaseUnavailable)
        assert type(exc.__cause__.orig).__name__ == "QueryCanceled"  # type: ignore[union-attr]
        # The pool is healthy afterwards.
        assert read_clients(db) == 0
    finally:
        db.dispose()


@POSTGRES_ONLY
@pytest.mark.parametrize(("budget", "runs"), [(0.1, 1), (30.0, 3)])
def test_a_slow_failure_is_not_multiplied(db_url: str, budget: float, runs: int) -> None:
    """No retry starts after retry_budget_s: a lock timeout is answered, not repeated."""
    calls: list[int] = []

    def count(s: Session) -> int:
        calls.append(1)
        return int(s.scalar(select(func.count(Client.id))) or 0)

    db = open_db(db_url, lock_timeout_s=0.3, retry_budget_s=budget)
    try:
        with locked_tables(db_url, "clients"):
            exc = raised(lambda: db.run(count, attempts=3, idempotent=True))
    finally:
        db.dispose()
    assert isinstance(exc, DatabaseUnavailable)
    assert len(calls) == runs


@POSTGRES_ONLY
def test_terminated_connection_is_transient_and_the_pool_recovers(
    db_url: str, pg_admin: psycopg.Connection[Any]
) -> None:
    db = open_db(db_url)
    try:
        assert read_clients(db) == 0  # one pooled connection now exists
        with db.session() as s:
            s.execute(text("SELECT 1"))
            assert terminate(pg_admin, db.application_name or "") >= 1
            exc = raised(lambda: s.execute(text("SELECT 1")))
            s.rollback()
        assert isinstance(exc, sqlalchemy.exc.DBAPIError)
        assert is_transient(exc)
        # Idle pooled connections killed too: pre-ping replaces them at checkout.
        terminate(pg_admin, db.application_name or "")
        assert read_clients(db) == 0
    finally:
        db.dispose()


def test_sqlite_busy_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    db = open_db(f"sqlite:///{path}", busy_timeout_s=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        exc = raised(lambda: add_client(db, 1))
        assert isinstance(exc, sqlalchemy.exc.OperationalError)
        assert "locked" in str(exc.orig)
        assert is_transient(exc)
        blocker.execute("ROLLBACK")
        add_client(db, 1)
        assert read_clients(db) == 1
    finally:
        blocker.close()
        db.dispose()


def test_exhausted_pool_is_transient(tmp_path: Path) -> None:
    db = open_db(
        f"sqlite:///{tmp_path / 'pool.db'}", pool_size=1, max_overflow=0, pool_timeout_s=0.2
    )
    try:
        with db.engine.connect():
            exc = raised(lambda: read_clients(db))
        assert isinstance(exc, sqlalchemy.exc.TimeoutError)
        assert is_transient(exc)
    finally:
        db.dispose()


def test_constraint_and_sql_errors_are_not_transient(db: Database) -> None:
    add_client(db, 1)
    duplicate = raised(lambda: add_client(db, 1))
    assert isinstance(duplicate, sqlalchemy.exc.IntegrityError)
    assert not is_transient(duplicate)

    def bad_sql() -> None:
        with db.session() as s:
            s.execute(text("SELECT no_such_column FROM clients"))

    bad = raised(bad_sql)
    assert isinstance(bad, sqlalchemy.exc.DBAPIError)
    assert not is_transient(bad)
    assert not is_transient(ValueError("database is locked"))
    assert is_transient(DatabaseUnavailable("x"))


# --------------------------------------------------------------------------- Database.run


def transient_error() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, sqlite3.OperationalError("database is locked")
    )


def test_run_retries_a_failure_before_commit_and_commits_once(db: Database) -> None:
    calls: list[int] = []

    def body(s: Session) -> int:
        calls.append(1)
        s.add(Client(id=len(calls), name="c", public_key=ed25519_public_key(bytes(32))))
        s.flush()
        if len(calls) < 3:
            raise transient_error()
        return len(calls)

    assert db.run(body, attempts=3) == 3
    with db.session() as s:
        assert list(s.scalars(select(Client.id))) == [3]  # the failed attempts rolled back


def test_run_gives_up_after_its_attempts(db: Database) -> None:
    calls: list[int] = []

    def body(_: Session) -> None:
        calls.append(1)
        raise transient_error()

    exc = raised(lambda: db.run(body, attempts=2, what="the test transaction"))
    assert isinstance(exc, DatabaseUnavailable)
    assert "the test transaction failed 2 time(s)" in str(exc)
    assert isinstance(exc.__cause__, sqlalchemy.exc.OperationalError)
    assert len(calls) == 2


def test_run_does_not_retry_other_errors(db: Database) -> None:
    calls: list[int] = []

    def body(s: Session) -> None:
        calls.append(1)
        s.add(Client(id=5, name="c", public_key=ed25519_public_key(bytes(32))))
        s.flush()
        raise KeyError("refused")

    with pytest.raises(KeyError):
        db.run(body, attempts=5)
    assert calls == [1]
    assert read_clients(db) == 0


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_cut_commit_is_retried_only_if_idempotent(
    db: Database, monkeypatch: pytest.MonkeyPatch, idempotent: bool
) -> None:
    real_commit = Session.commit
    commits: list[int] = []

    def flaky_commit(self: Session) -> None:
        commits.append(1)
        if len(commits) == 1:
            # The outcome of a commit whose connection died is unknown: model
            # the bad case, where it was applied before the error.
            real_commit(self)
            raise transient_error()
        real_commit(self)

    monkeypatch.setattr(Session, "commit", flaky_commit)
    calls: list[int] = []

    def body(s: Session) -> int:
        calls.append(1)
        return int(s.scalar(select(func.count(Client.id))) or 0)

    if idempotent:
        assert db.run(body, idempotent=True) == 0
        assert len(calls) == 2
    else:
        exc = raised(lambda: db.run(body))
        assert isinstance(exc, DatabaseUnavailable)
        assert "outcome is unknown" in str(exc)
        assert len(calls) == 1


@POSTGRES_ONLY
def test_run_survives_its_connection_being_terminated(
    db_url: str, pg_admin: psycopg.Connection[Any]
) -> None:
    db = open_db(db_url)
    try:
        calls: list[int] = []

        def body(s: Session) -> int:
            calls.append(1)
            if len(calls) == 1:
                s.execute(text("SELECT 1"))
                terminate(pg_admin, db.application_name or "")
            s.add(Client(id=7, name="c", public_key=ed25519_public_key(bytes(32))))
            s.flush()
            return 7

        assert db.run(body, attempts=3) == 7
        assert len(calls) == 2
        with db.session() as s:
            assert list(s.scalars(select(Client.id))) == [7]
    finally:
        db.dispose()


# --------------------------------------------------------------------------- over HTTP


class Signer:
    """Signed requests of one client, each with a fresh nonce."""

    def __init__(self, url: str, client_id: int, secret: bytes) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.client_id, self.secret = client_id, secret

    def get(self, path: str) -> httpx.Response:
        headers = sign_request(
            self.secret, self.client_id, "GET", path, int(time.time()), os.urandom(16).hex(), b""
        )
        return self.http.get(path, headers=headers)


def admin_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=60)


def assert_database_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "database_unavailable"
    assert r.headers["retry-after"] == "2"


@POSTGRES_ONLY
def test_a_stalled_database_gives_typed_503s_and_healthz_stays_live(
    db_url: str, tmp_path: Path
) -> None:
    """Tables locked by another session: requests get 503 within the lock timeouts,
    /healthz keeps answering, and the same requests work once the lock is gone."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    db = open_db(db_url)
    secret = add_client(db, 1)
    db.dispose()
    # A 2 s lock timeout: a handler blocking the event loop on the database
    # would freeze /healthz at least that long, well past the 1.5 s bound below.
    with running_server(
        tmp_path, database_url=db_url, db_application_name=name, db_lock_timeout_s=2.0
    ) as url:
        signer = Signer(url, 1, secret)
        admin = admin_client(url)
        path = "/v1/tasks/1/models/current"
        assert signer.get(path).json()["error"] == "not_eligible"  # authenticated, then refused
        latencies: list[float] = []
        stop = threading.Event()

        def poll_healthz() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - t0)
                    time.sleep(0.02)

        poller = threading.Thread(target=poll_healthz, daemon=True)
        with locked_tables(db_url, "clients", "enrolment_tokens"):
            poller.start()
            results: dict[str, httpx.Response] = {}
            workers = [
                threading.Thread(target=lambda: results.__setitem__("signed", signer.get(path))),
                threading.Thread(
                    target=lambda: results.__setitem__(
                        "admin", admin.post("/v1/admin/tokens", json={})
                    )
                ),
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=60)
            stop.set()
            poller.join(timeout=30)
        assert_database_unavailable(results["signed"])
        assert_database_unavailable(results["admin"])
        assert latencies and max(latencies) < 1.5, f"/healthz max {max(latencies):.3f} s"
        # The database is back: the same requests work.
        assert signer.get(path).json()["error"] == "not_eligible"
        assert admin.post("/v1/admin/tokens", json={}).status_code == 200
    db = open_db(db_url)
    try:
        with db.session() as s:
            # Two accepted requests, each nonce once; the stalled one recorded none.
            assert s.scalar(select(func.count()).select_from(RequestNonce)) == 2
    finally:
        db.dispose()


@POSTGRES_ONLY
def test_connections_terminated_during_traffic_give_no_500(
    db_url: str, tmp_path: Path, pg_admin: psycopg.Connection[Any]
) -> None:
    """pg_terminate_backend on the server's connections every 50 ms while four
    threads send signed and admin requests: only the normal answers or typed
    503s, and every kind of request works again once the killing stops."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    db = open_db(db_url)
    secret = add_client(db, 1)
    db.dispose()
    with running_server(tmp_path, database_url=db_url, db_application_name=name) as url:
        statuses: Counter[tuple[str, int]] = Counter()
        bad: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def traffic(kind: str) -> None:
            signer = Signer(url, 1, secret)
            admin = admin_client(url)
            while not stop.is_set():
                if kind == "signed":
                    r = signer.get("/v1/tasks/1/models/current")
                    ok = r.status_code == 403 and r.json()["error"] == "not_eligible"
                else:
                    r = admin.post("/v1/admin/tokens", json={})
                    ok = r.status_code == 200
                with lock:
                    statuses[(kind, r.status_code)] += 1
                if not ok:
                    if r.status_code == 503:
                        assert_database_unavailable(r)
                    else:
                        bad.append(f"{kind}: {r.status_code} {r.text[:200]}")

        threads = [
            threading.Thread(target=traffic, args=(kind,), daemon=True)
            for kind in ("signed", "signed", "admin", "admin")
        ]
        for t in threads:
            t.start()
        killed = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            killed += terminate(pg_admin, name)
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not bad, bad
        assert killed > 0
        assert sum(statuses.values()) > 8, statuses
        # Every kind of request works again at once.
        assert Signer(url, 1, secret).get("/v1/tasks/1/models/current").status_code == 403
        assert admin_client(url).post("/v1/admin/tokens", json={}).status_code == 200
        print(f"terminated {killed} backends; answers {dict(statuses)}")


def test_readme_documents_every_database_setting_with_its_default() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The database", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        name, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        documented[name.strip("`")] = default
    defaults = Settings()
    expected = {
        name
        for name in Settings.model_fields
        if name.startswith("db_") and name != "db_application_name"
    } | {"standby_poll_s", "writer_lock_check_s"}
    assert set(documented) == expected
    for name, default in documented.items():
        assert float(default) == float(getattr(defaults, name)), name
    # And the defaults are the ones the engine gets.
    assert DatabaseOptions.from_settings(defaults) == DatabaseOptions()


def test_sqlite_write_lock_held_elsewhere_gives_typed_503s(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock: writers get 503 after
    busy_timeout (readers go on, WAL), and everything works once it lets go."""
    path = tmp_path / "secagg.db"
    db = open_db(f"sqlite:///{path}")
    secret = add_client(db, 1)
    db.dispose()
    with running_server(tmp_path, database_url=f"sqlite:///{path}", db_busy_timeout_s=0.3) as url:
        signer = Signer(url, 1, secret)
        admin = admin_client(url)
        path_ = "/v1/tasks/1/models/current"
        assert signer.get(path_).json()["error"] == "not_eligible"
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            assert_database_unavailable(signer.get(path_))  # the nonce is a write
            assert_database_unavailable(admin.post("/v1/admin/tokens", json={}))
            assert admin.get("/v1/admin/tasks").status_code == 200  # a read is not blocked
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert signer.get(path_).json()["error"] == "not_eligible"
        assert admin.post("/v1/admin/tokens", json={}).status_code == 200
    db = open_db(f"sqlite:///{path}")
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(RequestNonce)) == 2
    finally:
        db.dispose()
