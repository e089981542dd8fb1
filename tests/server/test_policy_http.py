"""Client policy over HTTP (spec §4.7, §10.2): unsafe tasks are refused at creation,
and no client contributes twice on one base version."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client_sdk.client import Client, enrol
from client_sdk.errors import TaskFinished
from client_sdk.models import FunctionModel
from protocol import ConfigError, GraphKind, Mode, ParameterError, Round
from protocol.encoding import EvalSums
from protocol.policy import PolicyError, SessionPolicy, check_parameters
from secagg import db as dbm
from secagg.orchestrator import check_task_parameters, choose_graph
from tests.server.helpers import (
    admin,
    new_token,
    running_server,
    uncertified_policy,
    wait_rounds_finished,
)

BASE: dict[str, Any] = {
    "vector_length": 8,
    "rounds": 1,
    "graph": "complete",
    "scale": 1024.0,
    "max_weight": 10,
    "deadlines": {"R0": 10, "R1": 3, "R2": 3, "R3": 3, "R4": 3},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_server(tmp_path_factory.mktemp("policy")) as url:
        yield url


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        # The finding: the admin enrols two Sybils and selects 3 clients per round.
        ({"clients_per_round": 3}, "fewer than 5 participants"),
        ({"clients_per_round": 10, "min_clients": 4}, "min_clients 4 < 5"),
        ({"clients_per_round": 10, "mode": "semi-honest"}, "use mode active"),
        # A corrupt rate below the clients' 5% gives thresholds they refuse (n = 60:
        # c_max = 3 for the clients, 1 for the task).
        ({"clients_per_round": 60, "corrupt_rate": 0.0}, "raise corrupt_rate"),
        # n = 5 at 40% dropout: t = 3 but only 4 - 2 = 2 neighbours survive.
        ({"clients_per_round": 5, "dropout_rate": 0.4}, "lower dropout_rate"),
        ({"clients_per_round": 20, "corrupt_rate": 0.8}, "lower dropout_rate or corrupt_rate"),
    ],
)
def test_unsafe_task_is_refused_with_400(server: str, fields: dict[str, Any], detail: str) -> None:
    with admin(server) as c:
        r = c.post("/v1/admin/tasks", json={**BASE, "name": f"unsafe-{fields}", **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_task"
    assert detail in r.json()["detail"]


def test_default_task_is_active_and_accepted(server: str) -> None:
    with admin(server) as c:
        r = c.post("/v1/admin/tasks", json={**BASE, "name": "safe", "clients_per_round": 10})
        assert r.status_code == 200, r.text
        assert r.json()["mode"] == "active"
        # Semi-honest needs the opt-in on the server side too.
        r = c.post(
            "/v1/admin/tasks",
            json={
                **BASE,
                "name": "semi",
                "clients_per_round": 10,
                "mode": "semi-honest",
                "allow_semi_honest": True,
            },
        )
        assert r.status_code == 200, r.text


def _clients(url: str, task: int, count: int, faults: dict[int, Any]) -> list[Client]:
    out = []
    for i in range(count):
        ident = enrol(url, new_token(url), name=f"p{task}-{i}")
        store = {"w": np.zeros(8, np.float32)}
        out.append(
            Client(
                url,
                ident,
                FunctionModel(
                    lambda s=store: s["w"].copy(),
                    lambda v, s=store: s.__setitem__("w", np.asarray(v, np.float32)),
                ),
                lambda m: 1,
                lambda m: EvalSums(0, 0, 0.0),
                task_id=task,
                # Safe defaults except certified identities (this test is about the
                # differencing rule, not the task authority): see uncertified_policy.
                policy=uncertified_policy(),
                fault=faults.get(i),
            )
        )
    return out


def _run_all(clients: list[Client]) -> list[threading.Thread]:
    threads = [threading.Thread(target=c.run, kwargs={"rounds": 1}) for c in clients]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
def test_after_an_aborted_round_only_fresh_clients_are_selected(tmp_path: Path) -> None:
    """Round 1 aborts after every client sent its masked input; the server must not
    offer anyone of them a second session on the same base, and waits for fresh ones."""
    with running_server(tmp_path) as url:
        with admin(url) as c:
            r = c.post(
                "/v1/admin/tasks",
                json={
                    **BASE,
                    "name": "diff",
                    # One round to complete: an aborted round does not count (§13.1).
                    "rounds": 1,
                    "clients_per_round": 5,
                    "min_clients": 5,
                },
            )
            assert r.status_code == 200, r.text
            task = int(r.json()["id"])
        # Three of five stop before signing the survivor set: 2 < t = 3 signatures.
        stop_in_r3 = {i: (lambda n, st: st is Round.R3_CONSISTENCY_CHECK) for i in (0, 1, 2)}
        first = _clients(url, task, 5, stop_in_r3)
        for t in _run_all(first):
            t.join(timeout=60)
        detail = wait_rounds_finished(url, task, 1)
        assert detail["rounds_detail"][0]["status"] == "aborted"
        contributors = set(detail["rounds_detail"][0]["participants"])
        assert len(contributors) == 5
        # The five check in again (their own ledgers would refuse anyway, but the
        # server must not even offer), together with two fresh clients.
        again = [
            threading.Thread(target=c.participate) for c in first
        ]  # each returns None (not selected) after the long poll
        fresh = _clients(url, task, 2, {})
        waiting = _run_all(fresh)
        for t in again:
            t.start()
        deadline = time.monotonic() + 30
        reason = None
        while time.monotonic() < deadline and not reason:
            with admin(url) as c:
                reason = c.get(f"/v1/admin/tasks/{task}").json()["waiting_reason"]
            time.sleep(0.2)
        assert reason is not None and "never asked for a masked input on base version 1" in reason
        with admin(url) as c:
            assert len(c.get(f"/v1/admin/tasks/{task}").json()["rounds_detail"]) == 1
        # Three more fresh clients: the round runs with exactly the five fresh ones.
        more = _clients(url, task, 3, {})
        waiting += _run_all(more)
        detail = wait_rounds_finished(url, task, 2)
        second = detail["rounds_detail"][1]
        assert second["status"] == "completed"
        assert second["base_version"] == 1
        assert not set(second["participants"]) & contributors
        fresh_ids = {c.client_id for c in fresh + more}
        assert set(second["participants"]) == fresh_ids
        for t in waiting + again:
            t.join(timeout=60)
        # The task is over: check-ins are refused rather than long-polled forever.
        finished: TaskFinished | None = None
        deadline = time.monotonic() + 30
        while finished is None and time.monotonic() < deadline:
            try:
                first[0].participate()  # None: a long poll that ended before the runner did
            except TaskFinished as exc:  # 410 task_finished, typed by the SDK
                finished = exc
        assert finished is not None and finished.status == "completed"
        db = dbm.Database.from_url(f"sqlite:///{tmp_path / 'secagg.db'}")
        with db.session() as s:
            assert dbm.masked_input_senders(s, task, 1) == contributors | fresh_ids


# -- the orchestrator's own parameters (no HTTP) ---------------------------------------


@pytest.mark.parametrize("mode", [Mode.ACTIVE, Mode.SEMI_HONEST])
@pytest.mark.parametrize("graph", ["auto", "complete", "harary"])
def test_every_cohort_size_gets_parameters_a_default_client_accepts(mode: Mode, graph: str) -> None:
    client = SessionPolicy(allow_semi_honest=True)
    for n in [*range(5, 130), 250, 1000, 10_000]:
        try:
            kind, k, t = choose_graph(n, mode, graph, 0.1, 0.05)
        except ParameterError:
            assert graph == "harary" and n < 100  # no sparse graph that small
            continue
        check_parameters(n, mode, kind, k, t, client)
        assert t >= 2
        if kind is GraphKind.COMPLETE:
            assert t <= k - math.ceil(0.1 * n)  # the stated dropout tolerance
            # Smallest threshold the rule allows: one less is refused.
            with pytest.raises(PolicyError):
                check_parameters(n, mode, kind, k, t - 1, client)


def test_the_finding_cohort_now_gets_a_safe_threshold() -> None:
    assert choose_graph(10, Mode.ACTIVE, "auto", 0.1, 0.05) == (GraphKind.COMPLETE, 9, 6)


def test_dropout_the_threshold_cannot_tolerate_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="lower dropout_rate or corrupt_rate"):
        choose_graph(5, Mode.ACTIVE, "complete", 0.4, 0.05)


def test_task_admission_checks_every_cohort_size_quickly() -> None:
    started = time.monotonic()
    check_task_parameters(Mode.ACTIVE, "auto", 0.1, 0.05, 5, 100_000, SessionPolicy())
    assert time.monotonic() - started < 30  # generous: ~0.5 s on an idle machine
    with pytest.raises(ConfigError, match="a cohort of 60 clients would be refused"):
        check_task_parameters(Mode.ACTIVE, "complete", 0.1, 0.0, 60, 60, SessionPolicy())
