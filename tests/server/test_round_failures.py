"""No lost rounds (specs/service-v1.md §6): what clients are told when finishing a round fails."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from client_sdk.client import Client, ClientPolicy, RequestRefused, RoundOutcome, enrol
from client_sdk.models import FunctionModel
from protocol.encoding import EvalSums
from secagg import orchestrator
from secagg.registry import ModelRegistry
from secagg.strategies import FedAvg
from tests.server.helpers import admin, new_token, running_server, wait_rounds_finished

N = 3


def _task(url: str, **kw: Any) -> int:
    body = {
        "name": "failures",
        "vector_length": 8,
        "rounds": 1,
        "clients_per_round": N,
        "graph": "complete",
        "scale": 1024.0,
        "max_weight": 10,
        "min_participants": N,
        "dropout_rate": 0.0,
        **kw,
    }
    with admin(url) as c:
        r = c.post("/v1/admin/tasks", json=body)
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


def _clients(url: str, task: int) -> list[Client]:
    out = []
    for i in range(N):
        ident = enrol(url, new_token(url), name=f"c{i}")
        store = {"w": np.zeros(8, np.float32)}
        model = FunctionModel(
            lambda s=store: s["w"].copy(),
            lambda v, s=store: s.__setitem__("w", np.asarray(v, np.float32)),
        )

        def train(m: object, s: dict[str, np.ndarray] = store) -> int:
            s["w"] = s["w"] + np.float32(1 / 1024)
            return 1

        policy = ClientPolicy(min_participants=N, require_certified_identities=False)
        out.append(
            Client(
                url, ident, model, train, lambda m: EvalSums(1, 1, 0.0), task_id=task, policy=policy
            )
        )
    return out


def _run(clients: list[Client], rounds: int) -> dict[int, list[RoundOutcome]]:
    results: dict[int, list[RoundOutcome]] = {}
    threads = [
        threading.Thread(target=lambda c=c, i=i: results.__setitem__(i, c.run(rounds=rounds)))
        for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


class NaNStrategy(FedAvg):
    """A strategy gone wrong: its new weights are not finite (whole or segment by segment)."""

    def apply(self, weights: Any, mean: Any, state: bytes | None) -> tuple[Any, bytes | None]:
        return np.full_like(weights, np.nan), state

    def step(self, weights: Any, mean_delta: Any, arrays: Any) -> Any:
        return np.full_like(weights, np.nan)


@pytest.mark.slow
def test_a_failed_aggregation_aborts_the_round_and_pauses_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orchestrator, "make_strategy", lambda spec: NaNStrategy())
    with running_server(tmp_path) as url:
        task = _task(url)
        clients = _clients(url, task)
        results = _run(clients, 1)
        for outcomes in results.values():
            assert [(o.state, o.abort_reason, o.version) for o in outcomes] == [
                ("aborted", "aggregation_failed", None)
            ]
        detail = wait_rounds_finished(url, task, 1)
        assert detail["status"] == "paused"
        assert "aggregation_failed" in detail["failure_reason"]
        assert "non-finite" in detail["failure_reason"]
        assert [(r["status"], r["abort_reason"]) for r in detail["rounds_detail"]] == [
            ("aborted", "aggregation_failed")
        ]
        assert [v["version"] for v in detail["versions"]] == [1]
        with pytest.raises(RequestRefused) as refused:
            clients[0].participate()
        assert (refused.value.status, refused.value.code) == (409, "task_paused")


@pytest.mark.slow
def test_storage_is_retried_and_a_store_that_keeps_failing_aborts_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ModelRegistry.add_version
    calls: list[int] = []

    def failing_add_version(self: ModelRegistry, task_id: int, *a: Any, **kw: Any) -> Any:
        calls.append(kw.get("round_number") or 0)
        # Round 1: the connection drops twice, then the commit goes through.
        # Round 2: it never comes back (7 attempts, then store_failed).
        if kw.get("round_number") == 2 or calls.count(1) <= 2:
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(self, task_id, *a, **kw)

    monkeypatch.setattr(ModelRegistry, "add_version", failing_add_version)
    with running_server(tmp_path) as url:
        task = _task(url, rounds=2)
        results = _run(_clients(url, task), 2)
        for outcomes in results.values():
            assert [(o.state, o.abort_reason, o.version) for o in outcomes] == [
                ("completed", None, 2),
                ("aborted", "store_failed", None),
            ]
        detail = wait_rounds_finished(url, task, 2)
    assert calls.count(1) == 3 and calls.count(2) == 7
    assert [(r["status"], r["abort_reason"]) for r in detail["rounds_detail"]] == [
        ("completed", None),
        ("aborted", "store_failed"),
    ]
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert detail["completed_rounds"] == 1 and detail["status"] == "active"
