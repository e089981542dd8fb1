"""Database fixtures: every DB test runs against SQLite and against PostgreSQL.

``db_url`` / ``db`` are parametrised with ids ``sqlite`` and ``postgresql``.
The PostgreSQL variants need a server on 127.0.0.1:5432 (trust auth, user
``postgres``, database ``test``); if it does not answer (checked once per test
session, 2 s timeout) they are skipped with the reason, never passed silently.

Each PostgreSQL test gets a fresh schema of its own (tests run in parallel
under xdist), reached through ``search_path`` in the URL's ``options``, and
dropped (CASCADE) afterwards. To keep that cheap, a ready-made ``db`` has its
tables created by the exact DDL ``create_schema`` compiles, sent in one round
trip, and schemas are dropped by a background thread;
``test_create_schema_is_idempotent_and_keeps_data`` covers ``create_schema``
itself on an empty schema.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateIndex, CreateTable

from secagg.db import Base, Database, Task, make_engine

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_CONNINFO = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user=postgres dbname=test"
POSTGRES_URL = f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"


def _schema_ddl() -> str:
    """``CREATE TABLE``/``CREATE INDEX`` for the whole schema, as PostgreSQL gets them."""
    dialect = make_url(POSTGRES_URL).get_dialect()()
    statements: list[str] = []
    for table in Base.metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        statements.extend(
            str(CreateIndex(index).compile(dialect=dialect)) for index in table.indexes
        )
    return ";\n".join(statements)


@dataclass
class PostgresServer:
    """One worker's handle on the test server: creates and drops test schemas."""

    admin: psycopg.Connection[Any]
    dropper: psycopg.Connection[Any]
    ddl: str = field(default_factory=_schema_ddl)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="drop-schema")
    )
    drops: list[Future[None]] = field(default_factory=list)

    def create_schema(self, *, with_tables: bool) -> str:
        schema = f"secagg_test_{uuid.uuid4().hex}"
        statements = f'CREATE SCHEMA "{schema}"'
        if with_tables:
            statements += f'; SET search_path TO "{schema}"; {self.ddl}; RESET search_path'
        self.admin.execute(statements.encode())
        return schema

    def drop_schema(self, schema: str) -> None:
        def drop() -> None:
            self.dropper.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())

        self.drops.append(self.executor.submit(drop))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for done in self.drops:
            done.result()  # surface a failed drop
        self.admin.close()
        self.dropper.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | str]:
    """The PostgreSQL test server, or the reason it cannot be used."""
    try:
        admin = psycopg.connect(POSTGRES_CONNINFO, connect_timeout=2, autocommit=True)
        dropper = psycopg.connect(POSTGRES_CONNINFO, connect_timeout=2, autocommit=True)
    except psycopg.Error as exc:
        detail = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
        yield f"PostgreSQL not reachable at {POSTGRES_HOST}:{POSTGRES_PORT}: {detail}"
        return
    server = PostgresServer(admin, dropper)
    try:
        yield server
    finally:
        server.close()


def _url(request: pytest.FixtureRequest, tmp_path: Path, *, with_tables: bool) -> Iterator[str]:
    if request.param == "sqlite":
        # A nested path: make_engine must create the parent directories.
        yield f"sqlite:///{tmp_path / 'data' / 'secagg.db'}"
        return
    server = request.getfixturevalue("postgres")
    if isinstance(server, str):
        pytest.skip(server)
    schema = server.create_schema(with_tables=with_tables)
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        server.drop_schema(schema)


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no tables), once per backend."""
    yield from _url(request, tmp_path, with_tables=False)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A ``Database`` with every table created, once per backend; disposed afterwards."""
    for url in _url(request, tmp_path, with_tables=True):
        database = Database(make_engine(url))
        if database.dialect == "sqlite":
            database.create_schema()
        try:
            yield database
        finally:
            database.dispose()


TASK_DEFAULTS: dict[str, Any] = {
    "vector_length": 8,
    "rounds": 5,
    "clients_per_round": 10,
    "min_clients": 3,
    "clip": 1.0,
    "scale": 65536.0,
    "max_weight": 1000,
    "deadlines": {"advertise_keys": 30.0, "share_keys": 30.0, "masked_input": 60.0},
    "strategy": {"name": "fedavg", "server_lr": 1.0, "momentum": 0.0},
}


@pytest.fixture
def make_task(db: Database) -> Callable[..., int]:
    """Factory: insert a task (defaults overridable by keyword) and return its id."""
    counter = iter(range(1, 1_000_000))

    def make(**overrides: Any) -> int:
        fields = {**TASK_DEFAULTS, "name": f"task-{next(counter)}", **overrides}
        with db.session() as session:
            task = Task(**fields)
            session.add(task)
            session.flush()
            return task.id

    return make
