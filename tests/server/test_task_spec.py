"""The strict task schema: unknown fields, strategies and parameters are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from secagg import db as dbm
from secagg.app import create_app
from secagg.settings import Settings
from secagg.strategies import FedAdam, FedAdamSpec, FedAvg, make_strategy, parse_strategy
from secagg.task_spec import TaskCreate

ADMIN = {"authorization": "Bearer spec-admin"}
BASE: dict[str, Any] = {
    "name": "t",
    "vector_length": 4,
    "rounds": 2,
    "clients_per_round": 5,
    "graph": "complete",
    "dropout_rate": 0.0,
}


@pytest.fixture
def api(tmp_path: Path) -> Any:
    app = create_app(
        Settings(database_url=f"sqlite:///{tmp_path / 's.db'}", admin_token="spec-admin")
    )
    with TestClient(app) as c:
        yield c


def _create(api: TestClient, **kw: Any) -> Any:
    return api.post("/v1/admin/tasks", json={**BASE, **kw}, headers=ADMIN)


def _refused(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code
    return str(body["detail"])


def _task_count(api: TestClient) -> int:
    return len(api.get("/v1/admin/tasks?include_archived=true", headers=ADMIN).json())


def test_a_misspelled_field_is_named_and_the_valid_ones_listed(api: TestClient) -> None:
    detail = _refused(_create(api, min_client=3), 422, "invalid_request")
    assert "min_client" in detail
    assert "valid fields" in detail and "'min_clients'" in detail and "'rounds'" in detail
    assert _task_count(api) == 0


def test_an_unknown_strategy_lists_the_valid_strategies(api: TestClient) -> None:
    detail = _refused(_create(api, strategy={"name": "fedprox"}), 422, "invalid_request")
    assert "fedprox" in detail and "'fedadam'" in detail and "'fedavg'" in detail
    assert _task_count(api) == 0


def test_an_unknown_strategy_parameter_lists_the_valid_ones(api: TestClient) -> None:
    detail = _refused(_create(api, strategy={"name": "fedavg", "lr": 0.5}), 422, "invalid_request")
    assert "['lr']" in detail and "'server_lr'" in detail and "'momentum'" in detail
    detail = _refused(
        _create(api, strategy={"name": "fedadam", "momentum": 0.5}), 422, "invalid_request"
    )
    assert "momentum" in detail and "'beta1'" in detail and "'tau'" in detail
    assert _task_count(api) == 0


def test_strategy_parameter_ranges_are_checked(api: TestClient) -> None:
    detail = _refused(
        _create(api, strategy={"name": "fedavg", "momentum": 1.0}), 422, "invalid_request"
    )
    assert "momentum" in detail
    detail = _refused(
        _create(api, strategy={"name": "fedadam", "beta2": -0.1}), 422, "invalid_request"
    )
    assert "beta2" in detail
    assert _task_count(api) == 0


def test_the_training_window_is_bounded_and_stored(api: TestClient, tmp_path: Path) -> None:
    for bad in (0, -1, 7 * 86400 + 1):
        detail = _refused(_create(api, training_window_s=bad), 422, "invalid_request")
        assert "training_window_s" in detail
    r = _create(api, training_window_s=3600.5)
    assert r.status_code == 200, r.text
    assert r.json()["training_window_s"] == 3600.5
    r = _create(api, name="default-window")
    assert r.json()["training_window_s"] == 600.0
    db = dbm.Database.from_url(f"sqlite:///{tmp_path / 's.db'}")
    with db.session() as s:
        stored = {t.name: t.training_window_s for t in s.query(dbm.Task)}
    assert stored == {"t": 3600.5, "default-window": 600.0}


def test_a_valid_strategy_is_stored_with_its_defaults_filled_in(api: TestClient) -> None:
    r = _create(api, strategy={"name": "fedadam", "server_lr": 0.05})
    assert r.status_code == 200, r.text
    assert r.json()["strategy"] == {
        "name": "fedadam",
        "server_lr": 0.05,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 0.001,
    }
    r = _create(api, name="no-strategy")
    assert r.json()["strategy"] == {"name": "fedavg", "server_lr": 1.0, "momentum": 0.0}


def test_admission_against_the_client_policy_is_still_400(api: TestClient) -> None:
    # Four clients per round: a default client refuses fewer than five participants.
    detail = _refused(_create(api, clients_per_round=4), 400, "bad_task")
    assert "min_clients 4 < 5" in detail
    detail = _refused(_create(api, min_clients=6), 400, "bad_task")
    assert "min_clients exceeds clients_per_round" in detail
    assert _task_count(api) == 0


def test_model_layout_must_add_up_to_the_vector_length(api: TestClient) -> None:
    layout = [{"name": "w", "shape": [3]}, {"name": "b", "shape": [2]}]
    detail = _refused(_create(api, model_layout=layout), 422, "invalid_request")
    assert "describes 5 weights, vector_length is 4" in detail
    dup = [{"name": "w", "shape": [2]}, {"name": "w", "shape": [2]}]
    assert "unique" in _refused(_create(api, model_layout=dup), 422, "invalid_request")
    ok = [{"name": "w", "shape": [1, 3], "dtype": "torch.float16"}, {"name": "b", "shape": [1]}]
    r = _create(api, model_layout=ok)
    assert r.status_code == 200, r.text
    assert r.json()["model_layout"] == [
        {"name": "w", "shape": [1, 3], "dtype": "torch.float16"},
        {"name": "b", "shape": [1], "dtype": "float32"},
    ]


def test_every_task_field_is_documented_in_the_openapi_document(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    schema = doc["components"]["schemas"]["TaskCreate"]
    assert schema.get("additionalProperties") is False
    assert set(schema["properties"]) == set(TaskCreate.model_fields)
    undocumented = [n for n, p in schema["properties"].items() if not p.get("description")]
    assert undocumented == []
    for name in ("FedAvgSpec", "FedAdamSpec"):
        props = doc["components"]["schemas"][name]["properties"]
        assert [n for n, p in props.items() if not p.get("description")] == []


def test_parse_strategy_and_make_strategy_agree() -> None:
    assert isinstance(make_strategy({"name": "fedavg", "momentum": 0.5}), FedAvg)
    adam = make_strategy({"name": "fedadam", "tau": 0.01})
    assert isinstance(adam, FedAdam) and adam.tau == 0.01
    assert parse_strategy({}) == parse_strategy({"name": "fedavg"})
    assert isinstance(parse_strategy({"name": "fedadam"}), FedAdamSpec)
    for bad, words in (
        ({"name": 3}, "valid strategies"),
        ({"name": "fedavg", "beta1": 0.9}, "valid parameters"),
        ({"name": "fedadam", "tau": 0}, "tau"),
    ):
        with pytest.raises(ValueError, match=words):
            make_strategy(bad)
    with pytest.raises(ValueError):
        FedAdam(beta1=1.0)


def test_task_create_model_refuses_unknown_fields_directly() -> None:
    with pytest.raises(ValidationError, match=r"unknown task field\(s\) \['min_client'\]"):
        TaskCreate.model_validate({**BASE, "min_client": 3})
