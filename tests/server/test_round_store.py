"""Round rows: bounded retries on transient failures, an idempotent commit, metrics placement."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from secagg import db as dbm
from secagg.registry import ModelRegistry
from secagg.round_store import Completed, Retry, RoundStore, is_transient

FAST = Retry(attempts=4, first_delay_s=0.001, max_delay_s=0.002)


def _flaky(failures: int, exc: Exception) -> tuple[Callable[[], str], list[int]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "done"

    return fn, calls


def test_retry_is_bounded_and_only_for_transient_failures() -> None:
    dropped = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    assert is_transient(dropped)
    fn, calls = _flaky(3, dropped)
    assert FAST.call(fn, "x") == "done" and len(calls) == 4
    fn, calls = _flaky(4, dropped)
    with pytest.raises(OperationalError):
        FAST.call(fn, "x")
    assert len(calls) == 4  # gave up after the bound
    constraint = IntegrityError("INSERT", {}, Exception("unique"))
    assert not is_transient(constraint)
    fn, calls = _flaky(1, constraint)
    with pytest.raises(IntegrityError):
        FAST.call(fn, "x")
    assert len(calls) == 1  # a bug is not retried


def _store(db: dbm.Database, make_task: Callable[..., int]) -> tuple[RoundStore, int]:
    registry = ModelRegistry(db)
    task_id = make_task(vector_length=4, training_window_s=60.0)
    registry.create_initial(task_id, np.zeros(4, np.float32))
    return RoundStore(db, registry, FAST), task_id


def _result() -> Completed:
    return Completed(
        np.full(4, 0.5, np.float32),
        None,
        {"eval_accuracy": 0.75, "eval_loss": 0.5, "eval_examples": 8, "round": 1},
        {"train_examples": 40, "survivors": 4, "dropped": 1, "round": 1},
    )


def test_complete_is_idempotent_and_stores_metrics_on_the_version_they_describe(
    db: dbm.Database, make_task: Callable[..., int]
) -> None:
    store, task_id = _store(db, make_task)
    round_id, number = store.begin(task_id, [1, 2, 3, 4, 5], 1)
    assert number == 1
    args = (task_id, round_id, number, 1, _result(), {}, {}, dbm.utcnow())
    version = store.complete(*args)
    # A retry after a commit whose acknowledgement was lost: no second version.
    assert store.complete(*args) == version == 2
    versions = store.registry.list_versions(task_id)
    assert [v.version for v in versions] == [1, 2]
    # The evaluation sums were measured on the base model (version 1).
    assert versions[0].metrics["eval"]["eval_accuracy"] == 0.75
    assert "eval" not in versions[1].metrics
    assert versions[1].metrics["train"]["train_examples"] == 40
    assert store.outcome(round_id) == ([1, 2, 3, 4, 5], {"status": "completed", "version": 2})
    # A completed round is never relabelled by a late abort.
    assert store.abort(task_id, round_id, number, "server_shutdown", finished=dbm.utcnow()) == ""
    assert store.outcome(round_id) == ([1, 2, 3, 4, 5], {"status": "completed", "version": 2})
    task = store.load_task(task_id)
    assert task is not None and (task.completed_rounds, task.current_round) == (1, 1)


def test_a_failed_aggregation_pauses_the_task_with_its_reason(
    db: dbm.Database, make_task: Callable[..., int]
) -> None:
    store, task_id = _store(db, make_task)
    round_id, number = store.begin(task_id, [1, 2, 3], 1)
    why = store.abort(
        task_id,
        round_id,
        number,
        "aggregation_failed",
        finished=dbm.utcnow(),
        pause_reason="round 1: aggregation_failed: non-finite weights",
    )
    assert why == "round 1: aggregation_failed: non-finite weights"
    task = store.load_task(task_id)
    assert task is not None and task.status is dbm.TaskStatus.PAUSED
    assert task.failure_reason == why and task.completed_rounds == 0
    assert store.outcome(round_id) == (
        [1, 2, 3],
        {"status": "aborted", "reason": "aggregation_failed"},
    )
    assert [v.version for v in store.registry.list_versions(task_id)] == [1]
