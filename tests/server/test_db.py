"""secagg.db: schema, constraints, engine set-up, nonces, interrupted rounds."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy.exc
from sqlalchemy import delete, func, inspect, select, text

from secagg.db import (
    ABORT_SERVER_RESTART,
    MAX_CLIENT_ID,
    Client,
    ClientStatus,
    Database,
    EnrolmentToken,
    ModelVersion,
    RequestNonce,
    Round,
    RoundStatus,
    Task,
    TaskPointer,
    create_schema,
    hash_token,
    make_engine,
    mark_interrupted_rounds,
    purge_nonces,
    record_nonce,
)
from secagg.registry import ModelRegistry

TABLES = {
    "clients",
    "enrolment_tokens",
    "request_nonces",
    "tasks",
    "rounds",
    "model_versions",
    "task_pointers",
}
# What a schema violation raises: a CHECK/UNIQUE/FK violation is an IntegrityError;
# PostgreSQL reports an over-long VARCHAR as a DataError before any CHECK runs.
REFUSED = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.DataError)
T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def key(i: int) -> bytes:
    """A distinct 32-byte stand-in for client ``i``'s Ed25519 public key."""
    return hashlib.sha256(i.to_bytes(8, "big", signed=True)).digest()


def add_client(db: Database, client_id: int, public_key: bytes | None = None) -> None:
    with db.session() as s:
        s.add(Client(id=client_id, name=f"c{client_id}", public_key=public_key or key(client_id)))


def add_round(db: Database, task_id: int, number: int, **fields: object) -> int:
    row: dict[str, object] = {
        "task_id": task_id,
        "number": number,
        "session_id": hashlib.sha256(f"{task_id}/{number}".encode()).digest(),
        "config": b"canonical-config",
        "participants": [1, 2, 3],
        "base_version": 1,
        **fields,
    }
    with db.session() as s:
        round_ = Round(**row)
        s.add(round_)
        s.flush()
        return round_.id


def task_with_model(db: Database, make_task: Callable[..., int]) -> int:
    task_id = make_task()
    ModelRegistry(db).create_initial(task_id, np.zeros(8, np.float32))
    return task_id


# --------------------------------------------------------------------------- schema


def test_create_schema_is_idempotent_and_keeps_data(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        create_schema(engine)
        create_schema(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
        db = Database(engine)
        add_client(db, 7)
        create_schema(engine)  # again, on a populated database
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Client)) == 1
    finally:
        engine.dispose()


def test_sqlite_engine_setup(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secagg.db"
    db = Database.from_url(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        with db.session() as s:
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        db.dispose()


def test_sqlite_in_memory_is_one_database_across_threads() -> None:
    db = Database.from_url("sqlite://")
    add_client(db, 1)
    counts: list[int | None] = []

    def count() -> None:
        with db.session() as s:
            counts.append(s.scalar(select(func.count()).select_from(Client)))

    worker = threading.Thread(target=count)
    worker.start()
    worker.join()
    assert counts == [1]


def test_session_rolls_back_when_the_block_raises(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        s.add(Client(id=1, name="c", public_key=key(1)))
        s.flush()
        raise RuntimeError("boom")
    with db.session() as s:
        assert s.get(Client, 1) is None


# --------------------------------------------------------------------------- clients


def test_client_public_key_is_unique(db: Database) -> None:
    add_client(db, 1, key(9))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_client(db, 2, key(9))


def test_client_id_is_unique(db: Database) -> None:
    add_client(db, 1)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_client(db, 1, key(2))


@pytest.mark.parametrize("client_id", [0, -1, MAX_CLIENT_ID + 1])
def test_client_id_outside_protocol_range_is_refused(db: Database, client_id: int) -> None:
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_client(db, client_id, key(1))


def test_client_id_range_edges_and_defaults(db: Database) -> None:
    add_client(db, 1)
    add_client(db, MAX_CLIENT_ID)  # needs BIGINT on PostgreSQL
    with db.session() as s:
        client = s.get(Client, MAX_CLIENT_ID)
        assert client is not None
        assert client.status is ClientStatus.ACTIVE
        assert client.enrolled_at.tzinfo is UTC
        assert client.last_seen_at is None


def test_client_public_key_must_be_32_bytes(db: Database) -> None:
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_client(db, 1, b"\x01" * 31)


def test_client_status_outside_enum_is_refused(db: Database) -> None:
    add_client(db, 1)
    with pytest.raises(sqlalchemy.exc.StatementError), db.session() as s:
        client = s.get(Client, 1)
        assert client is not None
        client.status = "suspended"  # type: ignore[assignment]
    # Raw SQL bypasses the ORM: the schema still refuses it (CHECK constraint, or
    # on PostgreSQL already the VARCHAR length).
    with pytest.raises(REFUSED), db.session() as s:
        s.execute(text("UPDATE clients SET status = 'suspended' WHERE id = 1"))
    with db.session() as s:
        s.execute(text("UPDATE clients SET status = 'revoked' WHERE id = 1"))
    with db.session() as s:
        client = s.get(Client, 1)
        assert client is not None and client.status is ClientStatus.REVOKED


# --------------------------------------------------------------------------- timestamps


def test_timestamps_round_trip_as_aware_utc(db: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    with db.session() as s:
        s.add(
            Client(
                id=1,
                name="c",
                public_key=key(1),
                enrolled_at=T0,
                last_seen_at=T0.astimezone(plus_two),
            )
        )
    with db.session() as s:
        client = s.get(Client, 1)
        assert client is not None
        assert client.enrolled_at == T0 and client.enrolled_at.tzinfo is UTC
        assert client.last_seen_at == T0 and client.last_seen_at.tzinfo is UTC


def test_naive_timestamps_are_refused(db: Database) -> None:
    with pytest.raises(sqlalchemy.exc.StatementError, match="naive datetime"), db.session() as s:
        s.add(Client(id=1, name="c", public_key=key(1), enrolled_at=datetime(2025, 1, 1)))
        s.flush()


# --------------------------------------------------------------------------- tokens


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("tok") == hashlib.sha256(b"tok").hexdigest()
    assert len(hash_token("tok")) == 64


def test_token_hash_is_unique_and_token_binds_to_client(db: Database) -> None:
    add_client(db, 5)
    with db.session() as s:
        s.add(
            EnrolmentToken(
                token_hash=hash_token("a"),
                label="ward 3",
                expires_at=T0,
                created_at=T0 - timedelta(hours=1),
            )
        )
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.session() as s:
        s.add(
            EnrolmentToken(
                token_hash=hash_token("a"), expires_at=T0, created_at=T0 - timedelta(hours=1)
            )
        )
    with db.session() as s:
        token = s.scalars(select(EnrolmentToken)).one()
        token.used_at, token.client_id = T0, 5
    with db.session() as s:
        token = s.scalars(select(EnrolmentToken)).one()
        assert (token.client_id, token.used_at, token.label) == (5, T0, "ward 3")


@pytest.mark.parametrize(
    "fields",
    [
        {"token_hash": "ab" * 16},  # not a sha256 hex digest
        {"expires_at": T0 - timedelta(hours=2)},  # expires before it was created
        {"client_id": 5},  # bound to a client but never used
    ],
    ids=["short-hash", "expired-at-birth", "bound-unused"],
)
def test_token_constraints(db: Database, fields: dict[str, object]) -> None:
    add_client(db, 5)
    row = {
        "token_hash": hash_token("a"),
        "created_at": T0 - timedelta(hours=1),
        "expires_at": T0,
        **fields,
    }
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.session() as s:
        s.add(EnrolmentToken(**row))


def test_token_for_unknown_client_is_refused(db: Database) -> None:
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.session() as s:
        s.add(
            EnrolmentToken(
                token_hash=hash_token("a"),
                created_at=T0 - timedelta(hours=1),
                expires_at=T0,
                used_at=T0,
                client_id=404,
            )
        )


# --------------------------------------------------------------------------- nonces


def test_record_nonce_refuses_replays_per_client(db: Database) -> None:
    add_client(db, 1)
    add_client(db, 2)
    with db.session() as s:
        assert record_nonce(s, 1, "n-1", T0)
        assert not record_nonce(s, 1, "n-1", T0)  # same transaction
    with db.session() as s:
        assert not record_nonce(s, 1, "n-1", T0 + timedelta(seconds=5))  # later one
        assert record_nonce(s, 2, "n-1", T0)  # another client's nonce space
        assert record_nonce(s, 1, "n-2", T0)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(RequestNonce)) == 3


def test_nonce_primary_key_holds_without_the_helper(db: Database) -> None:
    add_client(db, 1)
    with db.session() as s:
        s.add(RequestNonce(client_id=1, nonce="n", seen_at=T0))
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.session() as s:
        s.add(RequestNonce(client_id=1, nonce="n", seen_at=T0))


def test_nonce_of_unknown_client_is_refused(db: Database) -> None:
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.session() as s:
        record_nonce(s, 404, "n", T0)


def test_nonce_length_is_checked(db: Database) -> None:
    add_client(db, 1)
    for bad in ("", "x" * 129):
        with pytest.raises(REFUSED), db.session() as s:
            record_nonce(s, 1, bad, T0)


def test_purge_nonces_deletes_only_older_ones(db: Database) -> None:
    add_client(db, 1)
    with db.session() as s:
        for i in range(5):
            record_nonce(s, 1, f"n{i}", T0 + timedelta(minutes=i))
    assert purge_nonces(db, T0 + timedelta(minutes=2)) == 2
    assert purge_nonces(db, T0 + timedelta(minutes=2)) == 0
    with db.session() as s:
        assert sorted(s.scalars(select(RequestNonce.nonce))) == ["n2", "n3", "n4"]


# --------------------------------------------------------------------------- tasks, rounds


def test_task_name_is_unique(db: Database, make_task: Callable[..., int]) -> None:
    make_task(name="digits")
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        make_task(name="digits")


@pytest.mark.parametrize(
    "fields",
    [
        {"min_clients": 11, "clients_per_round": 10},
        {"vector_length": 0},
        {"dropout_rate": 1.0},
        {"clip": 0.0},
    ],
    ids=["quorum>round", "empty-model", "dropout-1", "clip-0"],
)
def test_task_constraints(
    db: Database, make_task: Callable[..., int], fields: dict[str, object]
) -> None:
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        make_task(**fields)


def test_task_json_columns_round_trip(db: Database, make_task: Callable[..., int]) -> None:
    strategy = {"name": "fedadam", "server_lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-8}
    task_id = make_task(strategy=strategy, strategy_state=b"\x93NUMPY...")
    with db.session() as s:
        task = s.get(Task, task_id)
        assert task is not None
        assert task.strategy == strategy
        assert task.strategy_state == b"\x93NUMPY..."
        assert task.current_round == 0 and task.created_at.tzinfo is UTC


def test_round_number_is_unique_per_task(db: Database, make_task: Callable[..., int]) -> None:
    first, second = task_with_model(db, make_task), task_with_model(db, make_task)
    add_round(db, first, 1)
    add_round(db, second, 1)  # same number, other task
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_round(db, first, 1)


def test_round_must_start_from_an_existing_version(
    db: Database, make_task: Callable[..., int]
) -> None:
    task_id = task_with_model(db, make_task)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_round(db, task_id, 1, base_version=2)


def test_aborted_round_needs_a_reason(db: Database, make_task: Callable[..., int]) -> None:
    task_id = task_with_model(db, make_task)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        add_round(db, task_id, 1, status=RoundStatus.ABORTED, finished_at=T0)


def test_round_json_and_null_metrics(db: Database, make_task: Callable[..., int]) -> None:
    task_id = task_with_model(db, make_task)
    stats = {
        "r0": {"participants": 3, "dropouts": 0, "seconds": 0.5, "bytes_in": 10, "bytes_out": 20}
    }
    round_id = add_round(db, task_id, 1, stage_stats=stats)
    with db.session() as s:
        round_ = s.get(Round, round_id)
        assert round_ is not None
        assert round_.stage_stats == stats and round_.participants == [1, 2, 3]
        assert round_.metrics is None
        # None is SQL NULL, not JSON 'null': queryable with IS NULL.
        assert s.scalar(select(func.count()).where(Round.metrics.is_(None))) == 1


def test_mark_interrupted_rounds(db: Database, make_task: Callable[..., int]) -> None:
    task_id = task_with_model(db, make_task)
    done = add_round(db, task_id, 1, status=RoundStatus.COMPLETED, finished_at=T0)
    failed = add_round(
        db, task_id, 2, status=RoundStatus.ABORTED, abort_reason="quorum", finished_at=T0
    )
    other = task_with_model(db, make_task)
    running = [add_round(db, task_id, 3), add_round(db, other, 1)]

    restart = T0 + timedelta(hours=1)
    assert mark_interrupted_rounds(db, now=restart) == sorted(running)
    assert mark_interrupted_rounds(db) == []  # idempotent
    with db.session() as s:
        by_id = {r.id: r for r in s.scalars(select(Round))}
    for round_id in running:
        assert by_id[round_id].status is RoundStatus.ABORTED
        assert by_id[round_id].abort_reason == ABORT_SERVER_RESTART
        assert by_id[round_id].finished_at == restart
    assert by_id[done].status is RoundStatus.COMPLETED and by_id[done].abort_reason is None
    assert by_id[failed].abort_reason == "quorum" and by_id[failed].finished_at == T0


def test_deleting_a_task_removes_its_rounds_versions_and_pointer(
    db: Database, make_task: Callable[..., int]
) -> None:
    task_id, kept = task_with_model(db, make_task), task_with_model(db, make_task)
    registry = ModelRegistry(db)
    registry.add_version(task_id, np.ones(8, np.float32), 1, round_number=1)
    add_round(db, task_id, 1, status=RoundStatus.COMPLETED, finished_at=T0, result_version=2)
    add_round(db, kept, 1)
    with db.session() as s:
        s.execute(delete(Task).where(Task.id == task_id))
    with db.session() as s:
        assert s.scalars(select(Round.task_id)).all() == [kept]
        assert s.scalars(select(ModelVersion.task_id)).all() == [kept]
        assert s.scalars(select(TaskPointer.task_id)).all() == [kept]
