"""secagg.registry: versions, content hashes, current pointer, durability."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, text

from secagg.db import Database, ModelVersion, Round, RoundStatus, mark_interrupted_rounds
from secagg.registry import (
    IntegrityError,
    ModelRegistry,
    RegistryError,
    TaskNotFound,
    VersionNotFound,
)

LENGTH = 8
REPO = Path(__file__).resolve().parents[2]


def vec(value: float, length: int = LENGTH) -> np.ndarray:
    return np.full(length, value, np.float32)


@pytest.fixture
def registry(db: Database) -> ModelRegistry:
    return ModelRegistry(db)


@pytest.fixture
def task_id(make_task: Callable[..., int]) -> int:
    return make_task(vector_length=LENGTH)


def version_count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(ModelVersion)) or 0


def current_of(registry: ModelRegistry, task_id: int) -> int:
    return registry.get(task_id).version


# --------------------------------------------------------------------------- writing


def test_create_initial_is_version_1_and_current(registry: ModelRegistry, task_id: int) -> None:
    weights = np.linspace(-1, 1, LENGTH, dtype=np.float32)
    info = registry.create_initial(task_id, weights, {"loss": 2.3})
    assert (info.task_id, info.version, info.parent_version, info.round_number) == (
        task_id,
        1,
        None,
        None,
    )
    assert info.is_current and info.tags == () and info.metrics == {"loss": 2.3}
    assert info.created_at.tzinfo is UTC
    # The content hash is SHA-256 of the raw float32 little-endian bytes.
    assert info.sha256 == hashlib.sha256(weights.astype("<f4").tobytes()).hexdigest()
    assert registry.get(task_id) == info
    stored = registry.weights(task_id)
    assert stored.dtype == np.float32 and stored.flags.writeable
    np.testing.assert_array_equal(stored, weights)


def test_create_initial_twice_is_refused(registry: ModelRegistry, task_id: int) -> None:
    registry.create_initial(task_id, vec(0))
    with pytest.raises(RegistryError, match="already has model versions"):
        registry.create_initial(task_id, vec(1))
    np.testing.assert_array_equal(registry.weights(task_id), vec(0))


def test_add_version_chains_and_moves_current(registry: ModelRegistry, task_id: int) -> None:
    registry.create_initial(task_id, vec(0))
    v2 = registry.add_version(task_id, vec(1), 1, round_number=1, metrics={"acc": 0.5})
    v3 = registry.add_version(task_id, vec(2), 2, round_number=2, metrics={"acc": 0.7})
    assert (v2.version, v2.parent_version, v2.round_number, v2.metrics) == (2, 1, 1, {"acc": 0.5})
    assert (v3.version, v3.parent_version, v3.is_current) == (3, 2, True)
    listed = registry.list_versions(task_id)
    assert [v.version for v in listed] == [1, 2, 3]
    assert [v.is_current for v in listed] == [False, False, True]
    assert registry.get(task_id, 2) == dataclasses.replace(v2, is_current=False)
    for version, value in [(1, 0), (2, 1), (3, 2)]:
        np.testing.assert_array_equal(registry.weights(task_id, version), vec(value))


def test_float64_weights_are_stored_as_float32(registry: ModelRegistry, task_id: int) -> None:
    weights = np.arange(LENGTH, dtype=np.float64) / 3
    info = registry.create_initial(task_id, weights)
    expected = weights.astype(np.float32)
    np.testing.assert_array_equal(registry.weights(task_id), expected)
    assert info.sha256 == hashlib.sha256(expected.tobytes()).hexdigest()


def test_versions_are_per_task(registry: ModelRegistry, make_task: Callable[..., int]) -> None:
    a, b = make_task(vector_length=LENGTH), make_task(vector_length=2)
    registry.create_initial(a, vec(0))
    registry.create_initial(b, vec(5, 2))
    registry.add_version(a, vec(1), 1)
    assert [v.version for v in registry.list_versions(b)] == [1]
    np.testing.assert_array_equal(registry.weights(b), vec(5, 2))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.zeros(LENGTH + 1, np.float32), "9 elements, the task's model has 8"),
        (np.zeros((2, 4), np.float32), "1-D vector"),
        (np.zeros(LENGTH, np.int64), "floating point"),
        (np.array([np.nan] + [0.0] * (LENGTH - 1)), "element 0 is"),
        (np.array([0.0] * (LENGTH - 1) + [1e39]), "element 7 is"),  # inf as float32
    ],
    ids=["length", "2-D", "int", "nan", "float32-overflow"],
)
def test_bad_weights_are_refused_and_nothing_is_written(
    db: Database, registry: ModelRegistry, task_id: int, weights: np.ndarray, message: str
) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.create_initial(task_id, weights)
    registry.create_initial(task_id, vec(0))
    with pytest.raises(RegistryError, match=message):
        registry.add_version(task_id, weights, 1)
    assert version_count(db) == 1 and current_of(registry, task_id) == 1


def test_metrics_must_be_finite_json(registry: ModelRegistry, task_id: int) -> None:
    info = registry.create_initial(task_id, vec(0), {"acc": np.float32(0.5), "n": np.int64(3)})
    assert info.metrics == {"acc": 0.5, "n": 3}
    assert registry.get(task_id).metrics == {"acc": 0.5, "n": 3}
    for bad in ({"loss": float("nan")}, {1: 0.5}, {"x": object()}):
        with pytest.raises(RegistryError, match="metric"):
            registry.add_version(task_id, vec(1), 1, metrics=bad)  # type: ignore[arg-type]
    assert current_of(registry, task_id) == 1


def test_unknown_parent_is_refused(db: Database, registry: ModelRegistry, task_id: int) -> None:
    registry.create_initial(task_id, vec(0))
    with pytest.raises(VersionNotFound, match=f"task {task_id} has no model version 7"):
        registry.add_version(task_id, vec(1), 7)
    assert version_count(db) == 1


# --------------------------------------------------------------------------- reading


def test_not_found_errors_say_what_is_missing(registry: ModelRegistry, task_id: int) -> None:
    with pytest.raises(VersionNotFound, match="has no model versions yet") as excinfo:
        registry.get(task_id)
    assert not isinstance(excinfo.value, TaskNotFound)
    with pytest.raises(VersionNotFound, match="no model versions yet"):
        registry.weights(task_id)
    assert registry.list_versions(task_id) == []
    registry.create_initial(task_id, vec(0))
    with pytest.raises(VersionNotFound, match="has no model version 2"):
        registry.get(task_id, 2)
    with pytest.raises(VersionNotFound, match="has no model version 2"):
        registry.download(task_id, 2)
    missing = task_id + 1000
    for call in (
        lambda: registry.get(missing),
        lambda: registry.get(missing, 1),
        lambda: registry.weights(missing, 1),
        lambda: registry.list_versions(missing),
        lambda: registry.create_initial(missing, vec(0)),
        lambda: registry.promote(missing, 1),
        lambda: registry.rollback(missing),
    ):
        with pytest.raises(TaskNotFound, match=f"task {missing} does not exist"):
            call()


def test_download_is_an_npy_file(registry: ModelRegistry, task_id: int) -> None:
    registry.create_initial(task_id, vec(0))
    registry.add_version(task_id, np.linspace(0, 1, LENGTH), 1)
    for version in (None, 1, 2):
        loaded = np.load(io.BytesIO(registry.download(task_id, version)), allow_pickle=False)
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, registry.weights(task_id, version))


# --------------------------------------------------------------------------- integrity


def test_corrupted_blob_is_detected_on_every_read(
    db: Database, registry: ModelRegistry, task_id: int
) -> None:
    registry.create_initial(task_id, vec(0))
    registry.add_version(task_id, vec(1), 1)
    corrupted = vec(1).copy()
    corrupted[3] = 1.0000001  # one flipped low bit
    with db.session() as s:
        s.execute(
            text("UPDATE model_versions SET weights = :w WHERE task_id = :t AND version = 2"),
            {"w": corrupted.tobytes(), "t": task_id},
        )
    with pytest.raises(IntegrityError, match=rf"version 2 of task {task_id} is corrupted"):
        registry.weights(task_id)
    with pytest.raises(IntegrityError, match="corrupted"):
        registry.download(task_id, 2)
    # Metadata and the other versions stay readable; rolling back is the way out.
    assert registry.get(task_id).version == 2
    np.testing.assert_array_equal(registry.weights(task_id, 1), vec(0))
    registry.rollback(task_id)
    np.testing.assert_array_equal(registry.weights(task_id), vec(0))


def test_truncated_blob_with_matching_hash_is_detected(
    db: Database, registry: ModelRegistry, task_id: int
) -> None:
    registry.create_initial(task_id, vec(0))
    short = vec(0, LENGTH - 1).tobytes()
    with db.session() as s:
        s.execute(
            text("UPDATE model_versions SET weights = :w, sha256 = :h WHERE task_id = :t"),
            {"w": short, "h": hashlib.sha256(short).hexdigest(), "t": task_id},
        )
    with pytest.raises(IntegrityError, match="28 bytes of weights, expected 8 float32"):
        registry.weights(task_id)


# --------------------------------------------------------------------------- tags


def test_tag_and_untag(registry: ModelRegistry, task_id: int) -> None:
    registry.create_initial(task_id, vec(0))
    registry.add_version(task_id, vec(1), 1)
    registry.tag(task_id, 1, "baseline")
    registry.tag(task_id, 1, "audited")
    info = registry.tag(task_id, 1, "baseline")  # idempotent
    assert info.tags == ("audited", "baseline") and not info.is_current
    assert registry.get(task_id, 1).tags == ("audited", "baseline")
    assert registry.get(task_id, 2).tags == ()
    assert registry.untag(task_id, 1, "baseline").tags == ("audited",)
    with pytest.raises(RegistryError, match="has no tag 'baseline'"):
        registry.untag(task_id, 1, "baseline")
    for bad in ("", "-x", "a b", "x" * 65):
        with pytest.raises(RegistryError, match="invalid tag"):
            registry.tag(task_id, 1, bad)
    with pytest.raises(VersionNotFound):
        registry.tag(task_id, 9, "prod")


# --------------------------------------------------------------------------- pointer


def test_promote_moves_current_and_numbers_keep_growing(
    registry: ModelRegistry, task_id: int
) -> None:
    registry.create_initial(task_id, vec(0))
    registry.add_version(task_id, vec(1), 1)
    registry.add_version(task_id, vec(2), 2)
    assert registry.promote(task_id, 1).is_current
    assert current_of(registry, task_id) == 1
    np.testing.assert_array_equal(registry.weights(task_id), vec(0))
    nxt = registry.add_version(task_id, vec(3), 1)  # a new branch from version 1
    assert (nxt.version, nxt.parent_version, current_of(registry, task_id)) == (4, 1, 4)
    with pytest.raises(VersionNotFound):
        registry.promote(task_id, 5)
    assert current_of(registry, task_id) == 4


def test_rollback_follows_parents_and_stops_at_the_root(
    registry: ModelRegistry, task_id: int
) -> None:
    registry.create_initial(task_id, vec(0))
    registry.add_version(task_id, vec(1), 1)
    registry.add_version(task_id, vec(2), 2)
    assert registry.rollback(task_id).version == 2
    assert registry.rollback(task_id).version == 1
    with pytest.raises(RegistryError, match="current version 1 has no parent"):
        registry.rollback(task_id)
    assert current_of(registry, task_id) == 1
    assert [v.version for v in registry.list_versions(task_id)] == [1, 2, 3]  # nothing deleted


def test_rollback_without_versions(registry: ModelRegistry, task_id: int) -> None:
    with pytest.raises(VersionNotFound, match="no model versions yet"):
        registry.rollback(task_id)


# --------------------------------------------------------------------------- transactions


def test_joined_transaction_is_all_or_nothing(
    db: Database, registry: ModelRegistry, task_id: int
) -> None:
    registry.create_initial(task_id, vec(0))
    with pytest.raises(RuntimeError, match="crash"), db.session() as s:
        registry.add_version(task_id, vec(1), 1, round_number=1, session=s)
        assert registry.get(task_id, session=s).version == 2  # visible inside
        raise RuntimeError("crash before commit")
    assert [v.version for v in registry.list_versions(task_id)] == [1]
    assert current_of(registry, task_id) == 1
    # And committed together when the block succeeds.
    with db.session() as s:
        registry.add_version(task_id, vec(1), 1, session=s)
        registry.tag(task_id, 2, "candidate", session=s)
    assert registry.get(task_id).tags == ("candidate",)


def test_concurrent_writers_get_distinct_versions(
    db: Database, registry: ModelRegistry, task_id: int
) -> None:
    registry.create_initial(task_id, vec(0))
    errors: list[BaseException] = []

    def writer(value: float) -> None:
        try:
            for _ in range(4):
                registry.add_version(task_id, vec(value), 1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in (1.0, 2.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    versions = registry.list_versions(task_id)
    assert [v.version for v in versions] == list(range(1, 10))
    assert current_of(registry, task_id) == 9


def test_clock_is_injectable(db: Database, task_id: int) -> None:
    when = datetime(2030, 6, 1, tzinfo=UTC)
    info = ModelRegistry(db, clock=lambda: when).create_initial(task_id, vec(0))
    assert info.created_at == when == ModelRegistry(db).get(task_id).created_at


# --------------------------------------------------------------------------- kill -9

KILLED_WRITER = """
import os, signal, sys
import numpy as np
from sqlalchemy import event, func, select
from secagg.db import Database, ModelVersion, Round, Task
from secagg.registry import ModelRegistry

db = Database.from_url(sys.argv[1])
n = int(sys.argv[2])
with db.session() as s:
    task = Task(name="killed", vector_length=n, rounds=10, clients_per_round=3, min_clients=2,
                clip=1.0, scale=1024.0, max_weight=10, deadlines={}, strategy={"name": "fedavg"})
    s.add(task)
    s.flush()
    task_id = task.id
registry = ModelRegistry(db)
registry.create_initial(task_id, np.full(n, 1.0, np.float32))
registry.add_version(task_id, np.full(n, 2.0, np.float32), 1, round_number=1)
registry.add_version(task_id, np.full(n, 3.0, np.float32), 2, round_number=2)
with db.session() as s:  # round 3 is running when the server dies
    s.add(Round(task_id=task_id, number=3, session_id=bytes(32), config=b"cfg",
                participants=[1, 2, 3], base_version=3))

@event.listens_for(db.engine, "commit")
def die(conn):
    # Every statement of version 4 has run (row inserted, pointer moved); the
    # COMMIT has not.
    written = conn.execute(select(func.count()).select_from(ModelVersion)).scalar()
    print(f"uncommitted versions: {written}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

registry.add_version(task_id, np.full(n, 4.0, np.float32), 3, round_number=3)
print("not reached", flush=True)
"""


def test_sigkill_while_writing_a_version_leaves_the_registry_intact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server' / 'secagg.db'}"
    n = 10_000
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, url, str(n)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "uncommitted versions: 4"

    db = Database.from_url(url)
    try:
        registry = ModelRegistry(db)
        with db.session() as s:
            task_id = s.scalars(select(ModelVersion.task_id)).first()
        assert task_id is not None
        versions = registry.list_versions(task_id)
        assert [(v.version, v.parent_version) for v in versions] == [(1, None), (2, 1), (3, 2)]
        assert current_of(registry, task_id) == 3
        for version in (1, 2, 3):  # hash-verified reads
            np.testing.assert_array_equal(
                registry.weights(task_id, version), np.full(n, float(version), np.float32)
            )
        # Restart: the interrupted round is aborted, the next round continues from 3.
        (aborted,) = mark_interrupted_rounds(db)
        with db.session() as s:
            round_ = s.get(Round, aborted)
            assert round_ is not None
            assert (round_.status, round_.abort_reason) == (RoundStatus.ABORTED, "server_restart")
        nxt = registry.add_version(task_id, np.full(n, 4.0, np.float32), 3, round_number=4)
        assert (nxt.version, current_of(registry, task_id)) == (4, 4)
    finally:
        db.dispose()
