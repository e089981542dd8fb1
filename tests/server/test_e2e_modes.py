"""Active mode over HTTP (signed keys, consistency check) with a drop in round 3;
protocol-level hostile messages inside a live round."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import Client, ClientPolicy, RequestRefused
from client_sdk.models import FunctionModel
from protocol import Round
from protocol.encoding import EvalSums
from tests.server.helpers import TaskAuthority, admin, running_server, wait_rounds_finished


def _clients(url: str, task: int, n: int, fault_for: dict[int, object]) -> list[Client]:
    """``n`` clients on the default, certified path (a test-played task authority)."""
    authority = TaskAuthority()
    out = []
    for i in range(n):
        ident = authority.enrol(url, f"c{i}")
        store = {"w": np.zeros(8, np.float32)}
        model = FunctionModel(
            lambda s=store: s["w"].copy(),
            lambda v, s=store: s.__setitem__("w", np.asarray(v, np.float32)),
        )

        def train(m: object, s: dict[str, np.ndarray] = store, i: int = i) -> int:
            s["w"] = s["w"] + np.float32((i + 1) / 1024)
            return 1

        out.append(
            Client(
                url,
                ident,
                model,
                train,
                lambda m: EvalSums(1, 1, 0.0),
                task_id=task,
                # The default policy but for the floor (a drop leaves 5 of 6; 4 clients).
                policy=ClientPolicy(min_participants=3),
                fault=fault_for.get(i),
            )
        )  # type: ignore[arg-type]
    authority.certify(url, task, [c.identity for c in out])
    return out


def _one_round_each(clients: list[Client]) -> dict[int, str]:
    """Every client takes part in one round, concurrently; its outcome by index."""
    results: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda c=c, i=i: results.__setitem__(i, c.run(rounds=1)[0].state))
        for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.mark.slow
def test_active_mode_round_with_a_drop_in_the_consistency_check(tmp_path: Path) -> None:
    with running_server(tmp_path) as url:
        with admin(url) as c:
            task = c.post(
                "/v1/admin/tasks",
                json={
                    "name": "active",
                    "vector_length": 8,
                    "rounds": 1,
                    "clients_per_round": 6,
                    "mode": "active",
                    "graph": "complete",
                    "scale": 1024.0,
                    "max_weight": 10,
                    # Generous: a stage closes as soon as every client sent or is gone
                    # (liveness), so the deadline only has to hold on a loaded machine.
                    "deadlines": {"R0": 30, "R1": 30, "R2": 30, "R3": 30, "R4": 30},
                },
            ).json()["id"]
        # Client 6 goes silent instead of signing the survivor set: it is still
        # a survivor (its masked input is in), it just does not unmask.
        drop = {5: lambda number, stage: stage is Round.R3_CONSISTENCY_CHECK}
        clients = _clients(url, task, 6, drop)
        results = _one_round_each(clients)
        assert results[5] == "dropped"
        assert all(results[i] == "completed" for i in range(5))
        rnd = wait_rounds_finished(url, task, 1)["rounds_detail"][0]
        assert rnd["status"] == "completed"
        assert rnd["stage_stats"]["R3"]["dropouts"] == 1
        assert rnd["metrics"]["train_examples"] == 6  # all six inputs are in the sum


@pytest.mark.slow
def test_wrong_round_and_wrong_length_inside_a_live_round_change_nothing(tmp_path: Path) -> None:
    from protocol import decode_message
    from protocol.messages import AdvertisedKeys, AdvertiseKeys, MaskedInput
    from secagg_http.signing import CBOR_MEDIA_TYPE

    with running_server(tmp_path) as url:
        with admin(url) as c:
            task = c.post(
                "/v1/admin/tasks",
                json={
                    "name": "hostile",
                    "vector_length": 8,
                    "rounds": 1,
                    "clients_per_round": 4,
                    "graph": "complete",
                    # Four clients that lowered their floor to 3; no dropout expected.
                    "min_participants": 3,
                    "dropout_rate": 0.0,
                    "scale": 1024.0,
                    "max_weight": 10,
                    # Generous: a stage closes as soon as every client sent or is gone
                    # (liveness), so the deadline only has to hold on a loaded machine.
                    "deadlines": {"R0": 30, "R1": 30, "R2": 30, "R3": 30, "R4": 30},
                },
            ).json()["id"]
            before = c.get(f"/v1/admin/tasks/{task}").json()["versions"]
        refused: list[tuple[int, str]] = []
        clients = _clients(url, task, 4, {})
        mallory = clients[3]
        original_post = mallory._post

        first: list[bytes] = []

        def hostile_post(round_id: int, data: bytes) -> bool:
            msg = decode_message(data)
            first.append(data)
            if isinstance(msg, MaskedInput):
                wrong_length = MaskedInput(msg.session_id, msg.sender, b"\x00" * 3).encode()
                keys = AdvertisedKeys(msg.sender, bytes(31) + b"\x09", bytes(31) + b"\x0a")
                other_r0 = AdvertiseKeys(msg.session_id, keys).encode()
                # Wrong length; another round-0 message (wrong stage); the accepted
                # round-0 message again (an idempotent retry: 202); not a message.
                for bad in (wrong_length, other_r0, first[0], b"\x80"):
                    try:
                        r = mallory._request(
                            "POST", f"/v1/rounds/{round_id}/messages", bad, CBOR_MEDIA_TYPE
                        )
                        refused.append((r.status_code, "accepted"))
                    except RequestRefused as exc:
                        refused.append((exc.status, exc.code))
            return bool(original_post(round_id, data))

        mallory._post = hostile_post  # type: ignore[method-assign]
        results = _one_round_each(clients)
        assert refused == [
            (409, "wrong_vector_length"),
            (409, "wrong_round"),
            (202, "accepted"),
            (400, "malformed_message"),
        ]
        assert set(results.values()) == {"completed"}
        detail = wait_rounds_finished(url, task, 1)
        assert detail["rounds_detail"][0]["status"] == "completed"
        # Nothing stored was changed: version 1 keeps its content hash.
        assert detail["versions"][0]["sha256"] == before[0]["sha256"]
        assert [v["version"] for v in detail["versions"]] == [1, 2]
