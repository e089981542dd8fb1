"""Secure FedAvg over real HTTP on loopback: server thread, client threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import Client, ClientPolicy
from client_sdk.models import FunctionModel
from protocol import Round
from protocol.encoding import EvalSums
from tests.server.helpers import TaskAuthority, admin, running_server, wait_rounds_finished

SCALE = 2.0**10


class Box:
    """A tiny model: a weight vector that 'training' moves by a fixed step."""

    def __init__(self, step: np.ndarray, examples: int) -> None:
        self.w = np.zeros(len(step), np.float32)
        self.step, self.examples = step, examples

    def model(self) -> FunctionModel:
        def set_w(v: np.ndarray) -> None:
            self.w = np.asarray(v, np.float32).copy()

        return FunctionModel(lambda: self.w.copy(), set_w)

    def train(self, m: object) -> int:
        self.w = self.w + self.step
        return self.examples


@pytest.mark.slow
def test_secure_fedavg_rounds_with_a_dropout(tmp_path: Path, db_url: str) -> None:
    """On SQLite and on the real PostgreSQL (skipped, by name, if it does not answer)."""
    n, length, rounds = 5, 16, 2
    with running_server(tmp_path, db_url) as url:
        with admin(url) as c:
            r = c.post(
                "/v1/admin/tasks",
                json={
                    "name": "t",
                    "vector_length": length,
                    "rounds": rounds,
                    "clients_per_round": n,
                    "min_clients": n,
                    "graph": "complete",
                    "clip": 1.0,
                    "scale": SCALE,
                    "max_weight": 100,
                    # R2 waits for the dropout at most until it is seen gone
                    # (its heartbeat connection closes), far below 60 s.
                    "deadlines": {"R0": 10, "R1": 3, "R2": 60, "R3": 3, "R4": 3},
                },
            )
            assert r.status_code == 200, r.text
            task_id = r.json()["id"]
        boxes, clients = [], []
        authority = TaskAuthority()  # the default path: certified identities
        for i in range(n):
            ident = authority.enrol(url, f"c{i}")
            # Steps are multiples of 1/scale: quantisation is exact.
            box = Box(np.full(length, (i + 1) / SCALE, np.float32), examples=10 * (i + 1))
            boxes.append(box)
            # Client 5 crashes before sending its masked input in round 1.
            fault = (
                (lambda num, st: num == 1 and st is Round.R2_MASKED_INPUT_COLLECTION)
                if i == 4
                else None
            )
            clients.append(
                Client(
                    url,
                    ident,
                    box.model(),
                    box.train,
                    lambda m: EvalSums(1, 2, 0.5),
                    task_id=task_id,
                    # The default policy but for the floor: 4 survivors of 5 must do.
                    policy=ClientPolicy(min_participants=3),
                    fault=fault,
                )
            )
        authority.certify(url, task_id, [c.identity for c in clients])
        outcomes: dict[int, list[str]] = {}
        threads = [
            threading.Thread(
                target=lambda c=c, i=i: outcomes.__setitem__(
                    i, [o.state for o in c.run(rounds=rounds)]
                )
            )
            for i, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert outcomes[4][0] == "dropped"
        assert all(o == ["completed"] * rounds for i, o in outcomes.items() if i != 4)
        detail = wait_rounds_finished(url, task_id, rounds)
        assert [r["status"] for r in detail["rounds_detail"]] == ["completed", "completed"]
        first = detail["rounds_detail"][0]
        assert first["stage_stats"]["R2"]["dropouts"] == 1
        assert first["stage_stats"]["R2"]["seconds"] < 8  # not hold_s + timeout (14 s)
        # Metrics travel in the same secure sum: only survivors' are in it.
        assert first["metrics"]["eval_examples"] == 2 * 4
        assert first["metrics"]["eval_accuracy"] == 0.5
        assert first["metrics"]["train_examples"] == 10 + 20 + 30 + 40  # client 5 dropped
        versions = detail["versions"]
        assert [v["version"] for v in versions] == [1, 2, 3]
        # Round 1: weighted mean step over clients 1-4; round 2: over all five.
        w1 = sum(10 * (i + 1) * (i + 1) for i in range(4)) / 100 / SCALE
        w2 = sum(10 * (i + 1) * (i + 1) for i in range(5)) / 150 / SCALE
        current = clients[0]._download(3)  # the client's own verified download
        assert np.allclose(current, np.float32(w1 + w2), atol=1e-6)
