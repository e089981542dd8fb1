"""/metrics: by task, current round, rounds by outcome and reason, last round's figures."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client_sdk.client import Client, ClientPolicy
from client_sdk.models import FunctionModel
from protocol.encoding import EvalSums
from secagg import metrics
from tests.server.helpers import TaskAuthority, admin, running_server, wait_rounds_finished


def samples(text: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition as {(name, sorted labels): value}."""
    if text is None:
        text = metrics.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(all_: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return float(all_[(name, tuple(sorted(labels.items())))])


def stage(task: int, number: int, name: str, dropouts: int, b_in: int, b_out: int) -> None:
    metrics.observe(
        "stage",
        {
            "task_id": task,
            "round": number,
            "stage": name,
            "participants": 5,
            "dropouts": dropouts,
            "seconds": 0.2,
            "bytes_in": b_in,
            "bytes_out": b_out,
        },
    )


def test_a_round_sets_the_task_gauges_and_counters() -> None:
    task = 9001
    metrics.observe("round_started", {"task_id": task, "round": 3, "participants": [1, 2, 3]})
    s = samples()
    assert value(s, "secagg_current_round", task="9001") == 3
    assert value(s, "secagg_round_running", task="9001") == 1
    stage(task, 3, "R0", 0, 100, 10)
    stage(task, 3, "R2", 1, 1000, 20)
    metrics.observe(
        "round_completed",
        {
            "task_id": task,
            "round": 3,
            "version": 4,
            "eval_accuracy": 0.75,
            "eval_loss": 0.5,
            "eval_examples": 40,
            "train_examples": 120,
            "survivors": 4,
            "dropped": 1,
        },
    )
    s = samples()
    assert value(s, "secagg_round_running", task="9001") == 0
    assert value(s, "secagg_rounds_total", task="9001", outcome="completed") == 1
    assert value(s, "secagg_model_version", task="9001") == 4
    assert value(s, "secagg_last_round_accuracy", task="9001") == 0.75
    assert value(s, "secagg_last_round_loss", task="9001") == 0.5
    assert value(s, "secagg_last_round_survivors", task="9001") == 4
    assert value(s, "secagg_last_round_dropouts", task="9001") == 1
    assert value(s, "secagg_last_round_bytes", task="9001", direction="in") == 1100
    assert value(s, "secagg_last_round_bytes", task="9001", direction="out") == 30
    assert value(s, "secagg_dropouts_total", task="9001", stage="R2") == 1
    assert value(s, "secagg_stage_seconds_count", task="9001", stage="R0") == 1

    # The next round aborts: its own tally, no accuracy of its own.
    metrics.observe("round_started", {"task_id": task, "round": 4})
    stage(task, 4, "R0", 3, 50, 5)
    metrics.observe("round_aborted", {"task_id": task, "round": 4, "reason": "below_threshold"})
    s = samples()
    assert value(s, "secagg_current_round", task="9001") == 4
    assert value(s, "secagg_rounds_total", task="9001", outcome="aborted") == 1
    assert value(s, "secagg_rounds_aborted_total", task="9001", reason="below_threshold") == 1
    assert value(s, "secagg_last_round_dropouts", task="9001") == 3
    assert value(s, "secagg_last_round_bytes", task="9001", direction="in") == 50
    assert value(s, "secagg_last_round_accuracy", task="9001") == 0.75  # of the last completed


def test_labels_stay_bounded() -> None:
    task = 9002
    metrics.observe(
        "round_aborted",
        {"task_id": task, "round": 1, "reason": "undecodable: total weight is 0, client 17 ..."},
    )
    metrics.observe("round_aborted", {"task_id": task, "round": 2, "reason": "Client 17 said NO"})
    metrics.observe(
        "client_outcomes", {"task_id": task, "round": 2, "outcomes": {"dropped_in_R2": 2}}
    )
    metrics.observe("client_quarantined", {"task_id": task, "round": 2, "client": 17})
    s = samples()
    assert value(s, "secagg_rounds_aborted_total", task="9002", reason="undecodable") == 1
    assert value(s, "secagg_rounds_aborted_total", task="9002", reason="other") == 1
    assert value(s, "secagg_client_outcomes_total", task="9002", outcome="dropped_in_R2") == 2
    assert value(s, "secagg_clients_quarantined_total", task="9002") == 1
    # No label anywhere carries a client id.
    for (_, labels), _v in s.items():
        assert all(
            k in ("task", "outcome", "reason", "stage", "direction", "le") for k, _ in labels
        )
        assert "17" not in dict(labels).values()


def test_no_evaluation_examples_is_nan_not_zero() -> None:
    metrics.observe(
        "round_completed",
        {"task_id": 9003, "round": 1, "version": 2, "eval_accuracy": None, "eval_loss": None},
    )
    s = samples()
    assert math.isnan(value(s, "secagg_last_round_accuracy", task="9003"))
    assert math.isnan(value(s, "secagg_last_round_loss", task="9003"))


def test_forget_task_drops_its_series_only() -> None:
    for task in (9004, 9005):
        metrics.observe("round_started", {"task_id": task, "round": 1})
        stage(task, 1, "R0", 0, 1, 1)
        metrics.observe("round_aborted", {"task_id": task, "round": 1, "reason": "timeout"})
    metrics.forget_task(9004)
    names = {labels for (_, labels) in samples()}
    assert not any(("task", "9004") in labels for labels in names)
    assert any(("task", "9005") in labels for labels in names)


@pytest.mark.slow
def test_metrics_of_a_real_round(tmp_path: Path) -> None:
    """Accuracy and loss on /metrics are those of the securely aggregated sums."""
    # The registry is process-wide and task ids restart with each test database:
    # counters are compared before and after, gauges are set by this round.
    completed_before = samples().get(
        ("secagg_rounds_total", (("outcome", "completed"), ("task", "1"))), 0.0
    )
    with running_server(tmp_path) as url:
        with admin(url) as c:
            r = c.post(
                "/v1/admin/tasks",
                json={
                    "name": "metrics",
                    "vector_length": 4,
                    "rounds": 1,
                    "clients_per_round": 5,
                    "graph": "complete",
                    "dropout_rate": 0.0,
                    "deadlines": {"R0": 60, "R1": 30, "R2": 30, "R3": 30, "R4": 30},
                },
            )
            assert r.status_code == 200, r.text
            task = int(r.json()["id"])
        authority = TaskAuthority()
        clients = []
        for i in range(5):
            ident = authority.enrol(url, f"m{i}")
            w = {"w": np.zeros(4, np.float32)}
            clients.append(
                Client(
                    url,
                    ident,
                    FunctionModel(lambda w=w: w["w"].copy(), lambda v, w=w: w.update(w=v)),
                    lambda m: 10,
                    # Client i: i of 4 evaluation examples right, loss 1.0 each.
                    lambda m, i=i: EvalSums(i, 4, 4.0),
                    task_id=task,
                    policy=ClientPolicy(),
                )
            )
        authority.certify(url, task, [c.identity for c in clients])
        threads = [threading.Thread(target=c.run, kwargs={"rounds": 1}) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        detail = wait_rounds_finished(url, task, 1)
        assert detail["rounds_detail"][0]["status"] == "completed"
        s = samples(httpx.get(f"{url}/metrics", timeout=30).text)
    label = str(task)
    assert label == "1"  # the first task of a fresh database
    assert value(s, "secagg_rounds_total", task=label, outcome="completed") == completed_before + 1
    assert value(s, "secagg_current_round", task=label) == 1
    assert value(s, "secagg_round_running", task=label) == 0
    assert value(s, "secagg_last_round_accuracy", task=label) == (0 + 1 + 2 + 3 + 4) / 20
    assert value(s, "secagg_last_round_loss", task=label) == pytest.approx(1.0, abs=1e-3)
    assert value(s, "secagg_last_round_survivors", task=label) == 5
    assert value(s, "secagg_last_round_dropouts", task=label) == 0
    assert value(s, "secagg_last_round_bytes", task=label, direction="in") > 0
    assert value(s, "secagg_model_version", task=label) == 2
