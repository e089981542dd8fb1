"""secagg.bodies: large request bodies spooled to disk, read through a read-only map."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from client_sdk.client import Client, ClientPolicy
from client_sdk.models import FunctionModel
from protocol.encoding import EvalSums
from secagg.bodies import body_sha256, drop_resident, read_body
from tests.server.helpers import TaskAuthority, admin, running_server, wait_rounds_finished

SPOOL = 4096


async def echo(request: Request) -> JSONResponse:
    body = await read_body(request, SPOOL)
    again = await request.body()  # Starlette's own accessor: the same object
    digest = hashlib.sha256(body).hexdigest()
    drop_resident(body)
    return JSONResponse(
        {
            "spooled": isinstance(body, memoryview),
            "readonly": isinstance(body, memoryview) and body.readonly,
            "same": again is body,
            "length": len(body),
            "sha256": digest,
            "streamed_sha256": (body_sha256(request) or b"").hex(),
            # Still readable after its pages were dropped.
            "sha256_after_drop": hashlib.sha256(body).hexdigest(),
        }
    )


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(Starlette(routes=[Route("/", echo, methods=["POST"])])) as c:
        yield c


@pytest.mark.parametrize("size", [0, 1, SPOOL, SPOOL + 1, 3 << 20])
def test_bodies_are_spooled_above_the_threshold_and_read_alike(
    client: TestClient, size: int
) -> None:
    data = np.random.default_rng(size).bytes(size)  # test data, not secrets
    got = client.post("/", content=data).json()
    digest = hashlib.sha256(data).hexdigest()
    assert got["length"] == size and got["sha256"] == got["sha256_after_drop"] == digest
    assert got["same"]
    assert got["spooled"] == (size > SPOOL) and got["readonly"] == (size > SPOOL)
    assert got["streamed_sha256"] == (digest if size > SPOOL else "")


def test_chunked_bodies_without_a_length_are_spooled_too(client: TestClient) -> None:
    parts = [bytes([i]) * 100_000 for i in range(30)]
    got = client.post("/", content=iter(parts)).json()
    assert got["spooled"] and got["length"] == 3_000_000
    assert got["sha256"] == got["streamed_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


SCALE = 1024.0


@pytest.mark.slow
def test_a_round_with_spooled_masked_inputs_is_exact(tmp_path: Path) -> None:
    length, n = 20_000, 5
    with running_server(tmp_path, body_spool_bytes=SPOOL) as url:
        with admin(url) as c:
            r = c.post(
                "/v1/admin/tasks",
                json={
                    "name": "spooled",
                    "vector_length": length,
                    "rounds": 1,
                    "clients_per_round": n,
                    "graph": "complete",
                    "dropout_rate": 0.0,
                    "scale": SCALE,
                    "max_weight": 100,
                    "deadlines": {"R0": 60, "R1": 30, "R2": 30, "R3": 30, "R4": 30},
                },
            )
            assert r.status_code == 200, r.text
            task = int(r.json()["id"])
        authority = TaskAuthority()
        clients = []
        for i in range(n):
            w = {"w": np.zeros(length, np.float32)}
            step = np.float32((i + 1) / SCALE)  # a multiple of 1/scale: quantised exactly

            def train(_: object, w: dict[str, np.ndarray] = w, step: np.float32 = step) -> int:
                w["w"] = w["w"] + step
                return 10 * (int(step * SCALE))

            clients.append(
                Client(
                    url,
                    authority.enrol(url, f"s{i}"),
                    FunctionModel(lambda w=w: w["w"].copy(), lambda v, w=w: w.update(w=v)),
                    train,
                    lambda m: EvalSums(0, 0, 0.0),
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
        rnd = detail["rounds_detail"][0]
        assert rnd["status"] == "completed", rnd
        # The masked inputs were over the spool threshold (b bits x 20 004 slots).
        assert rnd["stage_stats"]["R2"]["bytes_in"] > n * SPOOL
        with admin(url) as c:
            got = c.get(f"/v1/admin/tasks/{task}/versions/current/weights")
        weights = np.load(io.BytesIO(got.content))
    mean = sum(10 * k * k for k in range(1, n + 1)) / sum(10 * k for k in range(1, n + 1))
    assert np.array_equal(weights, np.full(length, np.float32(mean / SCALE)))
