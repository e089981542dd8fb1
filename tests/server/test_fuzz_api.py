"""Fuzzing the HTTP API: whatever arrives, the answer is a typed 4xx JSON error, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.app import create_app
from secagg.settings import Settings

ADMIN = {"authorization": "Bearer fuzz-admin"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    app = create_app(
        Settings(
            database_url=f"sqlite:///{db}",
            admin_token="fuzz-admin",
            long_poll_s=0.1,
            max_body_bytes=65536,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        assert (
            c.post(
                "/v1/admin/tasks",
                headers=ADMIN,
                json={
                    "name": "target",
                    "vector_length": 4,
                    "rounds": 1,
                    "clients_per_round": 5,
                },
            ).status_code
            == 200
        )
        yield c


def _typed_4xx(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:200])
    payload = json.loads(body)
    assert isinstance(payload.get("error"), str) and payload["error"]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
TASK_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=300),
        "vector_length": st.integers(-5, 1 << 30),
        "rounds": st.integers(-2, 10),
        "clients_per_round": st.integers(-2, 10),
        "min_clients": st.integers(-2, 12),
        "mode": st.text(max_size=12),
        "graph": st.sampled_from(["complete", "harary", "auto", "ring"]),
        "dropout_rate": st.floats(-1, 2),
        "corrupt_rate": st.floats(-1, 2),
        "clip": st.floats(-1, 1e6),
        "scale": st.floats(-1, 1e20),
        "max_weight": st.integers(-1, 1 << 62),
        "initial_weights": st.text(max_size=40),
        "deadlines": JSON,
        "strategy": JSON,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=TASK_FIELDS)
def test_task_creation_never_fails_with_a_5xx(client: TestClient, body: dict[str, object]) -> None:
    body = {**body, "name": f"fuzz-{abs(hash(json.dumps(body, sort_keys=True, default=str)))}"}
    r = client.post("/v1/admin/tasks", headers=ADMIN, json=body)
    if r.status_code != 200:
        _typed_4xx(r.status_code, r.content)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=JSON)
def test_enrolment_with_any_json(client: TestClient, body: object) -> None:
    r = client.post("/v1/enrol", json=body)
    _typed_4xx(r.status_code, r.content)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(
        [
            "/v1/tasks/1/checkin",
            "/v1/rounds/1/messages",
            "/v1/rounds/1/messages/0",
            "/v1/tasks/1/models/current",
            "/v1/tasks/x/models/1",
            "/v1/enrol",
            "/v1/admin/tokens",
        ]
    ),
    method=st.sampled_from(["GET", "POST"]),
    body=st.binary(max_size=200),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "x-secagg-client",
                "x-secagg-timestamp",
                "x-secagg-nonce",
                "x-secagg-signature",
                "content-type",
                "authorization",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=70),
        max_size=6,
    ),
)
def test_any_request_gets_a_typed_client_error(
    client: TestClient, path: str, method: str, body: bytes, headers: dict[str, str]
) -> None:
    r = client.request(method, path, content=body, headers=headers)
    if r.status_code == 405:  # method not allowed, answered by the framework
        return
    _typed_4xx(r.status_code, r.content)


def test_oversized_body_is_refused_before_it_is_read(client: TestClient) -> None:
    r = client.post("/v1/enrol", content=b"x" * 70000, headers={"content-type": "application/json"})
    _typed_4xx(r.status_code, r.content)
    assert r.status_code == 413
    _ = Path
