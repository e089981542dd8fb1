"""The pure round planning of specs/service-v1.md §3 and §5: no asyncio, no database."""

from __future__ import annotations

import pytest

from protocol import GraphKind, Mode, SessionConfig
from protocol.encoding import session_context
from protocol.errors import ConfigError
from secagg import db as dbm
from secagg.round_plan import (
    BASE_S,
    MASK_S_PER_WORD,
    MIN_UPLINK_BYTES_S,
    PER_CLIENT_S,
    Liveness,
    choose_graph,
    plan_round,
    plan_session,
    round_encoding,
    stage_deadlines,
)


def _task(**kw: object) -> dbm.Task:
    fields: dict[str, object] = {
        "id": 7,
        "name": "t",
        "vector_length": 16,
        "rounds": 3,
        "clients_per_round": 8,
        "min_clients": 5,
        "mode": dbm.ProtocolMode.ACTIVE,
        "graph": dbm.GraphChoice.COMPLETE,
        "dropout_rate": 0.1,
        "corrupt_rate": 0.05,
        "clip": 1.0,
        "scale": 1024.0,
        "max_weight": 100,
        "deadlines": {},
        "training_window_s": 1200.0,
        "strategy": {"name": "fedavg"},
    }
    fields.update(kw)
    return dbm.Task(**fields)


def test_the_session_is_planned_for_the_cohort_that_trained() -> None:
    task = _task()
    cohort = [31, 4, 9, 12, 20, 6]  # six of the eight selected reported ready
    keys = [bytes([u]) * 32 for u in sorted(cohort)]
    config, assignment = plan_round(
        task, cohort, 3, round_id=11, number=2, nonce=bytes(32), identity_keys=keys
    )
    assert config.participants == (4, 6, 9, 12, 20, 31)
    kind, degree, threshold = choose_graph(6, Mode.ACTIVE, "complete", 0.1, 0.05)
    assert (config.graph, config.threshold) == (kind, threshold) == (GraphKind.COMPLETE, threshold)
    assert degree == 5
    assert config.identity_keys == tuple(keys)
    encoding = round_encoding(task)
    assert config.context == session_context(7, 2, encoding.context())
    assert config.bit_width == encoding.required_bit_width(6)
    assert SessionConfig.decode(config.encode()) == config
    # The training assignment carries no session: keys come after training.
    body = assignment.to_json()
    assert "config" not in body
    assert (body["round_id"], body["round_number"], body["base_version"]) == (11, 2, 3)
    assert body["training_deadline_s"] == 1200.0
    assert body["heartbeat_s"] == Liveness().heartbeat_s
    assert body["mode"] == "active" and body["model_length"] == 16
    # Deadlines told up front are those of the largest cohort: never shorter.
    session = plan_session(task, cohort, 2, nonce=bytes(32), identity_keys=keys)
    assert set(body["deadlines"]) == {"R0", "R1", "R2", "R3", "R4"}
    assert all(body["deadlines"][s] >= session.deadlines[s] for s in body["deadlines"])


def test_the_deadline_formula_scales_with_model_and_cohort() -> None:
    # specs/service-v1.md §5 worked example: 10 clients, 10^7 weights in 32-bit words.
    d = stage_deadlines(10, 10**7, 4 * 10**7, 9)
    assert d["R2"] == 51.6
    assert d["R0"] == pytest.approx(BASE_S + 10 * PER_CLIENT_S + 256 / MIN_UPLINK_BYTES_S, abs=0.1)
    assert d["R2"] == pytest.approx(
        BASE_S + 10 * PER_CLIENT_S + 4e7 / MIN_UPLINK_BYTES_S + MASK_S_PER_WORD * 10 * 1e7,
        abs=0.1,
    )
    small = stage_deadlines(10, 100, 400, 9)
    bigger_cohort = stage_deadlines(200, 100, 400, 40)
    assert small["R2"] < d["R2"]
    assert all(bigger_cohort[s] > small[s] for s in small)


def test_deadline_overrides_are_validated() -> None:
    d = stage_deadlines(10, 100, 400, 9, {"R2": 3.5})
    assert d["R2"] == 3.5 and d["R1"] == stage_deadlines(10, 100, 400, 9)["R1"]
    with pytest.raises(ConfigError, match="unknown stage 'R9'"):
        stage_deadlines(10, 100, 400, 9, {"R9": 1.0})
    with pytest.raises(ConfigError, match="deadline of R0"):
        stage_deadlines(10, 100, 400, 9, {"R0": 0.0})


def test_liveness_needs_two_heartbeats_per_timeout() -> None:
    assert Liveness(1.0, 2.0).timeout_s == 2.0
    with pytest.raises(ConfigError, match="at least two heartbeats"):
        Liveness(heartbeat_s=3.0, timeout_s=4.0)
