"""Distributed-DP tasks on the server (service-v1.md §11): the strict ``dp`` field,
calibration at creation, DP rounds decoded from the secure sum, and the budget.

Rounds run in process: a real ``TaskRunner`` on a real database, and each
client a real ``protocol.ClientSession`` fed with ``DPEncoding.encode``
output (the SDK's part), its messages handed to the round's driver as the
HTTP routes would.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from client_sdk.client import Client, TaskFinished, enrol
from client_sdk.models import FunctionModel
from protocol import ClientSession, Round, RoundAborted
from protocol.crypto import DeterministicRandom
from protocol.dp import DPEncoding, DPParams
from protocol.dp.accounting import max_participations, participation_epsilon
from protocol.encoding import from_modular, session_context, to_modular
from protocol.errors import ConfigError
from protocol.policy import SessionPolicy
from secagg import db as dbm
from secagg import metrics
from secagg.admin_status import render_task, render_tasks
from secagg.api.schemas import RoundInfo
from secagg.app import create_app
from secagg.dp_tasks import BUDGET_SPENT, DP_TOO_FEW_SURVIVORS, default_min_honest
from secagg.orchestrator import Liveness, TaskRunner
from secagg.registry import ModelRegistry
from secagg.report import render_report
from secagg.round_plan import plan_session, plan_training
from secagg.services import tasks as task_service
from secagg.settings import Settings
from secagg.strategies import FedAvg
from secagg.task_spec import DPSpec, TaskCreate, TaskView
from secagg.update import next_model_dp
from tests.server.helpers import (
    admin,
    new_token,
    running_server,
    uncertified_policy,
    wait_rounds_finished,
)

ADMIN = {"authorization": "Bearer dp-admin"}
DIM = 6
N = 3
DP: dict[str, Any] = {"epsilon": 4.0, "l2_clip": 1.0, "participations": 1}
BASE: dict[str, Any] = {
    "name": "dp",
    "vector_length": DIM,
    "rounds": 5,
    "clients_per_round": N,
    "min_clients": N,
    "min_participants": N,
    "graph": "complete",
    "mode": "semi-honest",
    "allow_semi_honest": True,
    "dropout_rate": 0.0,
    "corrupt_rate": 0.0,
    "dp": DP,
}


# -- the dp field -----------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Any:
    app = create_app(
        Settings(database_url=f"sqlite:///{tmp_path / 'a.db'}", admin_token="dp-admin")
    )
    with TestClient(app) as c:
        yield c


def _create(api: TestClient, **kw: Any) -> Any:
    return api.post("/v1/admin/tasks", json={**BASE, **kw}, headers=ADMIN)


def _refused(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    return str(r.json()["detail"])


@pytest.mark.parametrize(
    ("dp", "words"),
    [
        ({**DP, "sigma": 1.0}, ["sigma", "valid fields", "'noise_multiplier'"]),
        ({**DP, "noise_multiplier": 1.0}, ["exactly one of", "both"]),
        ({k: v for k, v in DP.items() if k != "participations"}, ["exactly one of", "neither"]),
        ({**DP, "epsilon": 0}, ["dp.epsilon"]),
        ({**DP, "delta": 1.0}, ["dp.delta"]),
        ({**DP, "l2_clip": -1}, ["dp.l2_clip"]),
        ({**DP, "bits": 63}, ["dp.bits"]),
        ({**DP, "beta": 1.0}, ["dp.beta"]),
        ({**DP, "modclip_prob": 0}, ["dp.modclip_prob"]),
        ({**DP, "participations": 0}, ["dp.participations"]),
        ({**DP, "mechanism": "laplace"}, ["dp.mechanism"]),
        ({**DP, "min_honest": 0}, ["dp.min_honest"]),
        ({"l2_clip": 1.0, "participations": 1}, ["dp.epsilon", "required"]),
    ],
)
def test_a_bad_dp_field_is_refused_by_name(
    api: TestClient, dp: dict[str, Any], words: list[str]
) -> None:
    detail = _refused(_create(api, dp=dp), 422, "invalid_request")
    for word in words:
        assert word in detail, detail
    assert api.get("/v1/admin/tasks", headers=ADMIN).json() == []


def test_the_dp_model_is_strict_without_http() -> None:
    with pytest.raises(ValidationError, match=r"unknown dp field\(s\) \['clip'\]"):
        DPSpec.model_validate({**DP, "clip": 1.0})
    with pytest.raises(ValidationError, match="exactly one of noise_multiplier and participations"):
        TaskCreate.model_validate({**BASE, "dp": {**DP, "noise_multiplier": 2.0}})
    spec = DPSpec.model_validate(DP)
    assert (spec.mechanism, spec.delta, spec.bits, spec.beta) == (
        "skellam",
        1e-5,
        20,
        math.exp(-0.5),
    )
    assert (spec.modclip_prob, spec.min_honest) == (1e-4, None)


def test_no_honest_share_left_or_an_infeasible_budget_is_a_bad_task(api: TestClient) -> None:
    # m = max(min_participants, ceil((1 - dropout_rate) * min_clients))
    #     - max(1, ceil(corrupt_rate * clients_per_round)) = max(5, 5) - 5 = 0.
    settings = {"clients_per_round": 10, "min_clients": 5, "min_participants": 5}
    assert default_min_honest(dropout_rate=0.0, corrupt_rate=0.5, **settings) == 0
    detail = _refused(_create(api, corrupt_rate=0.5, **settings), 400, "bad_task")
    assert "m = " in detail and "= 0 < 1" in detail, detail
    # Given explicitly, min_honest 1 is admitted with the same settings.
    r = _create(api, corrupt_rate=0.5, dp={**DP, "min_honest": 1}, **settings)
    assert r.status_code == 200, r.text
    assert r.json()["dp"]["params"]["min_honest"] == 1
    # A central noise multiplier far too small for the budget: the calibration says why.
    detail = _refused(
        _create(api, dp={"epsilon": 0.01, "l2_clip": 1.0, "noise_multiplier": 0.1}), 400, "bad_task"
    )
    assert "noise_multiplier" in detail and "budget" in detail, detail
    assert [t["name"] for t in api.get("/v1/admin/tasks", headers=ADMIN).json()] == ["dp"]


def test_a_dp_task_stores_its_calibrated_parameters_and_shows_its_budget(api: TestClient) -> None:
    r = _create(api)
    assert r.status_code == 200, r.text
    view = r.json()
    params = DPParams.from_json(view["dp"]["params"])
    m = default_min_honest(
        min_participants=N, dropout_rate=0.0, min_clients=N, corrupt_rate=0.0, clients_per_round=N
    )
    assert (params.dim, params.min_honest, params.bits, params.epsilon_budget) == (DIM, m, 20, 4.0)
    # Recomputed from the stored parameters with the accountant itself.
    assert view["dp"]["round_epsilon"] == participation_epsilon(params, 1) <= 4.0
    assert view["dp"]["max_participations"] == max_participations(params) == 1
    assert view["dp"]["spec"] == DPSpec.model_validate(DP).model_dump()
    assert (view["epsilon_spent"], view["epsilon_budget"]) == (0.0, 4.0)
    detail = api.get(f"/v1/admin/tasks/{view['id']}", headers=ADMIN).json()
    assert detail["dp"] == view["dp"] and detail["epsilon_spent"] == 0.0
    plain = _create(api, name="plain", dp=None).json()
    assert (plain["dp"], plain["epsilon_spent"], plain["epsilon_budget"]) == (None, None, None)


# -- plans and the decoding --------------------------------------------------------------


def _task(
    tmp_path: Path, url: str | None = None, **kw: Any
) -> tuple[dbm.Database, ModelRegistry, int]:
    db = dbm.Database.from_url(url or f"sqlite:///{tmp_path / 'r.db'}")
    registry = ModelRegistry(db)

    class Host:
        runners: ClassVar[dict[int, Any]] = {}

        def start_runner(self, task_id: int) -> None:  # the test runs its own
            pass

    host = Host()
    host.db, host.registry = db, registry  # type: ignore[attr-defined]
    view = task_service._create(host, TaskCreate.model_validate({**BASE, **kw}))  # type: ignore[arg-type]
    return db, registry, view.id


def _load(db: dbm.Database, task_id: int) -> dbm.Task:
    with db.session() as s:
        task = s.get(dbm.Task, task_id)
        assert task is not None
        return task


def test_the_plans_of_a_dp_round_carry_its_parameters(tmp_path: Path) -> None:
    db, _, task_id = _task(tmp_path)
    task = _load(db, task_id)
    assert task.dp is not None
    params = DPParams.from_json(task.dp.params)
    assignment = plan_training(task, round_id=7, number=3, base_version=1, liveness=Liveness())
    as_json = assignment.to_json()
    assert as_json["dp"] == params.to_json() and as_json["encoding"] is None
    plan = plan_session(task, [4, 2, 9], 3, nonce=bytes(32))
    config = plan.config
    assert config.vector_length == params.vector_length == DIM + 1
    assert config.bit_width == params.bits
    assert config.context == session_context(task_id, 3, params.context())
    db.dispose()


def _client_vectors(
    params: DPParams, session_id: bytes, updates: list[np.ndarray]
) -> list[np.ndarray]:
    encoding = DPEncoding(params)
    return [
        encoding.encode(u, session_id, DeterministicRandom(b"dp-client-%d" % i))
        for i, u in enumerate(updates)
    ]


def test_next_model_dp_is_the_strategy_applied_to_the_decoded_mean() -> None:
    params = DPParams.from_json(
        {
            "mechanism": "skellam",
            "dim": 5,
            "l2_clip": 1.0,
            "scale": 1000.0,
            "beta": math.exp(-0.5),
            "local_variance": 50,
            "min_honest": 2,
            "bits": 24,
            "epsilon_budget": 4.0,
            "delta": 1e-5,
        }
    )
    session_id = bytes(range(32))
    updates = [np.array([0.1, -0.2, 0.3, 0.0, 0.25]) * (i + 1) for i in range(3)]
    total = np.sum(_client_vectors(params, session_id, updates), axis=0)
    words = to_modular(total, params.bits)
    base = np.linspace(-1, 1, 5).astype(np.float32)
    # Independently: the lead's decoding of the lifted sum, then FedAvg's step.
    mean, count = DPEncoding(params).decode(from_modular(words, params.bits), session_id)
    expected = (base.astype(np.float64) + mean).astype(np.float32)
    for segment, in_place in ((2, True), (1 << 20, False)):
        update = next_model_dp(
            DPEncoding(params),
            words.copy(),
            params.bits,
            session_id,
            base,
            FedAvg(),
            None,
            segment=segment,
            in_place=in_place,
        )
        assert np.array_equal(update.weights, expected)
        assert update.total_weight == count == 3 and update.metrics is None
    # The noisy mean is near the mean of the clipped updates (the third one has
    # norm 1.35 > l2_clip 1): the noise std per coordinate is sqrt(3 * 50) / 1000 / 3
    # = 0.004 after the (orthonormal) inverse rotation (12 std = 0.05); randomised
    # rounding moves each coordinate by less than 1 unit, an error of L2 norm below
    # sqrt(5) units per client, so at most sqrt(5) / 1000 = 0.0023 on the mean.
    # An unclipped or unscaled decoding would be off by 0.1 or more.
    clipped = [u * min(1.0, 1.0 / float(np.linalg.norm(u))) for u in updates]
    assert np.max(np.abs(mean - np.mean(clipped, axis=0))) < 0.05
    # An empty or wrapped sum (count slot 0), a model of another length, a vector
    # of another length: refused by name, nothing decoded.
    fedavg = FedAvg()
    with pytest.raises(ConfigError, match="count slot"):
        next_model_dp(
            DPEncoding(params), np.zeros(6, np.uint32), 24, session_id, base, fedavg, None
        )
    with pytest.raises(ConfigError, match="weights"):
        next_model_dp(DPEncoding(params), words, 24, session_id, base[:4], fedavg, None)
    with pytest.raises(ConfigError, match="words"):
        next_model_dp(DPEncoding(params), words[:5], 24, session_id, base, fedavg, None)


# -- rounds in process ---------------------------------------------------------------------


def _enrol(db: dbm.Database, ids: list[int]) -> None:
    with db.session() as s:
        for u in ids:
            s.add(dbm.Client(id=u, name=f"c{u}", public_key=os.urandom(32)))


def _encode(params: DPParams, session_id: bytes, cid: int, update: np.ndarray) -> np.ndarray:
    """Client ``cid``'s noised vector (deterministic: the test recomputes it)."""
    return DPEncoding(params).encode(update, session_id, DeterministicRandom(b"c%d" % cid))


async def _client(
    runner: TaskRunner,
    cid: int,
    update: np.ndarray,
    *,
    drop_in_r2: bool = False,
    dropped: set[int] | None = None,
) -> str:
    """One client's round: check in, encode after the session forms, run the protocol."""
    assignment = None
    while assignment is None:
        assignment = await runner.checkin(cid, 5.0)
    params = DPParams.from_json(assignment.dp)
    live = runner.live_round(assignment.round_id)
    assert live is not None
    live.report_ready(cid)
    formed = await live.session_for(cid, 10.0)
    assert formed is not None and live.driver is not None
    driver = live.driver
    config = driver.config
    vector = _encode(params, config.session_id, cid, update)
    session = ClientSession(
        config,
        cid,
        vector,
        rng=DeterministicRandom(b"k%d" % cid),
        policy=SessionPolicy.protocol_only(),
    )
    await driver.submit(cid, session.start())
    seq = 0
    while session.round not in (Round.COMPLETED, Round.ABORTED):
        # Sent its shares (R1): the next message asks for its masked input.
        if drop_in_r2 and session.round is Round.R1_SHARE_KEYS:
            if dropped is not None:
                dropped.add(cid)
            return "dropped"
        data = await driver.mailboxes[cid].get(seq, 10.0)
        if data is None:
            break
        seq += 1
        try:
            reply = session.receive(data)
        except RoundAborted:
            break
        if reply is not None:
            await driver.submit(cid, reply)
    outcome = await live.outcome_for(cid, 10.0)
    assert outcome is not None
    return str(outcome["status"])


def _updates(n: int = N) -> dict[int, np.ndarray]:
    return {u: np.full(DIM, 0.1 * u) for u in range(1, n + 1)}


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_budget_of_one_round_per_client_opens_no_second_round(
    tmp_path: Path, db_url: str
) -> None:
    """Every client takes part once; the server then opens no round for anyone (attacker's view:
    clients keep checking in, the runner is asked again, no round row, no assignment).

    On SQLite and PostgreSQL (skipped, by name, if it does not answer)."""
    db, registry, task_id = _task(tmp_path, db_url)
    _enrol(db, list(range(1, N + 1)))
    params = DPParams.from_json(_load(db, task_id).dp.params)  # type: ignore[union-attr]
    assert max_participations(params) == 1
    events: list[tuple[str, dict[str, Any]]] = []

    def observe(kind: str, data: dict[str, Any]) -> None:
        events.append((kind, data))
        metrics.observe(kind, data)

    async def scenario() -> list[Any]:
        runner = TaskRunner(
            db,
            registry,
            task_id,
            checkin_grace_s=0.05,
            events=observe,
            liveness=Liveness(timeout_s=30.0, tick_s=0.05),
        )
        loop = asyncio.get_running_loop().create_task(runner.run())
        outcomes = await asyncio.gather(*(_client(runner, u, x) for u, x in _updates().items()))
        await asyncio.wait_for(loop, 10.0)  # the runner ends the task by itself
        # The same clients come back: the finished runner answers none of them.
        again = await asyncio.gather(*(runner.checkin(u, 0.2) for u in _updates()))
        return [outcomes, again, runner.finished]

    outcomes, again, finished = asyncio.run(scenario())
    assert outcomes == ["completed"] * N
    assert again == [None] * N and finished
    with db.session() as s:
        rounds = s.query(dbm.Round).filter_by(task_id=task_id).all()
        task = s.get(dbm.Task, task_id)
        assert task is not None and task.dp is not None
        assert [r.status for r in rounds] == [dbm.RoundStatus.COMPLETED]
        assert task.status is dbm.TaskStatus.FAILED
        assert task.failure_reason is not None and task.failure_reason.startswith(BUDGET_SPENT)
        assert "privacy budget" in task.failure_reason
        one = participation_epsilon(params, 1)
        assert rounds[0].metrics is not None
        assert rounds[0].metrics["dp_round_epsilon"] == one
        assert rounds[0].metrics["epsilon_spent"] == one == task.dp.epsilon_spent
        assert rounds[0].metrics["eval_examples"] is None
        assert rounds[0].metrics["train_examples"] == N
        session_id = rounds[0].session_id
        assert session_id is not None
        participations = s.query(dbm.DPParticipation).filter_by(task_id=task_id).all()
        assert sorted(p.client_id for p in participations) == [1, 2, 3]
    version = registry.get(task_id)
    assert version.version == 2 and version.metrics["train"]["epsilon_spent"] == one
    # Exactly the strategy's step over the lead's decoding of the sum of the
    # clients' vectors, recomputed here from the round's session id.
    vectors = [_encode(params, session_id, u, x) for u, x in _updates().items()]
    words = to_modular(np.sum(vectors, axis=0), params.bits)
    mean, count = DPEncoding(params).decode(from_modular(words, params.bits), session_id)
    assert count == N
    assert np.array_equal(registry.weights(task_id, 2), mean.astype(np.float32))
    assert ("task_failed", {"task_id": task_id, "reason": task.failure_reason}) in events
    text = metrics.render()[0].decode()
    assert f'secagg_dp_epsilon_spent{{task="{task_id}"}} {one!r}' in text
    assert f'secagg_dp_epsilon_budget{{task="{task_id}"}} 4.0' in text
    # What `secagg status` and `secagg report` show of it.
    with db.session() as s:
        view = TaskView.of(_load(db, task_id))
        rounds_detail = [
            RoundInfo.of(r).model_dump() for r in s.query(dbm.Round).filter_by(task_id=task_id)
        ]
    detail = {**view.model_dump(), "rounds_detail": rounds_detail, "versions": []}
    assert f"epsilon spent {one:.4g} of 4 " in render_task(detail)
    assert f"#1 completed -> v2, {N} participants, epsilon spent {one:.4g}" in render_task(detail)
    assert f"epsilon {one:.4g}/4 {BUDGET_SPENT}" in render_tasks([view])
    page = render_report(detail, tmp_path / "report")[1].read_text()
    assert f"epsilon_spent: {one}" in page and "epsilon_budget: 4.0" in page
    # Resumed by an operator, the task ends again at once: no round opens.
    with db.session() as s:
        row = s.get(dbm.Task, task_id)
        assert row is not None
        row.status, row.failure_reason = dbm.TaskStatus.ACTIVE, None

    async def resumed() -> bool:
        runner = TaskRunner(db, registry, task_id, checkin_grace_s=0.05)
        waiting = [asyncio.ensure_future(runner.checkin(u, 1.0)) for u in _updates()]
        await asyncio.wait_for(runner.run(), 5.0)
        return await asyncio.gather(*waiting) == [None] * N

    assert asyncio.run(resumed())
    with db.session() as s:
        assert s.query(dbm.Round).filter_by(task_id=task_id).count() == 1
        assert _load(db, task_id).status is dbm.TaskStatus.FAILED
    db.dispose()


def test_clients_without_budget_are_not_selected_and_the_task_says_why(tmp_path: Path) -> None:
    db, registry, task_id = _task(tmp_path)
    _enrol(db, list(range(1, 2 * N + 1)))  # N fresh clients remain enrolled

    async def scenario() -> tuple[list[str], str | None, int | None]:
        runner = TaskRunner(
            db,
            registry,
            task_id,
            checkin_grace_s=0.05,
            liveness=Liveness(timeout_s=30.0, tick_s=0.05),
        )
        loop = asyncio.get_running_loop().create_task(runner.run())
        outcomes = await asyncio.gather(*(_client(runner, u, x) for u, x in _updates().items()))
        again = [asyncio.ensure_future(runner.checkin(u, 1.0)) for u in _updates()]
        await _until(lambda: runner.waiting_reason is not None)
        reason = runner.waiting_reason
        current = runner.current.number if runner.current else None
        assert await asyncio.gather(*again) == [None] * N
        runner.stop()
        await asyncio.wait_for(loop, 5.0)
        return outcomes, reason, current

    outcomes, reason, current = asyncio.run(scenario())
    assert outcomes == ["completed"] * N
    assert reason is not None and "privacy budget" in reason, reason
    assert current == 1
    with db.session() as s:
        assert s.query(dbm.Round).filter_by(task_id=task_id).count() == 1
        task = s.get(dbm.Task, task_id)
        assert task is not None and task.status is dbm.TaskStatus.ACTIVE
    db.dispose()


def test_too_few_masked_inputs_abort_before_unmasking(tmp_path: Path, db_url: str) -> None:
    # Four clients, corrupt_rate 0.05: c = 1 and m = max(4, 4) - 1 = 3, so a sum
    # needs m + c = 4 masked inputs. One dropout in R2 leaves 3: the protocol
    # alone would unmask them (threshold 2), the DP round must not.
    n = 4
    db, registry, task_id = _task(
        tmp_path, db_url, clients_per_round=n, min_clients=n, min_participants=n, corrupt_rate=0.05
    )
    assert _load(db, task_id).dp.params["min_honest"] == 3  # type: ignore[union-attr]
    _enrol(db, list(range(1, n + 1)))

    async def scenario() -> list[str]:
        runner = TaskRunner(
            db,
            registry,
            task_id,
            checkin_grace_s=0.05,
            liveness=Liveness(heartbeat_s=0.1, timeout_s=0.3, tick_s=0.05),
        )
        loop = asyncio.get_running_loop().create_task(runner.run())
        updates = _updates(n)

        dropped: set[int] = set()

        async def alive(u: int) -> None:  # heartbeats, until a client drops out
            while not runner.finished and u not in dropped:
                runner.touch(u)
                await asyncio.sleep(0.05)

        beats = [asyncio.ensure_future(alive(u)) for u in updates]
        outcomes = await asyncio.gather(
            *(
                _client(runner, u, x, drop_in_r2=(u == n), dropped=dropped)
                for u, x in updates.items()
            )
        )
        runner.stop()
        await asyncio.wait_for(loop, 5.0)
        for b in beats:
            b.cancel()
        return list(outcomes)

    outcomes = asyncio.run(scenario())
    assert outcomes == ["aborted", "aborted", "aborted", "dropped"]
    with db.session() as s:
        (row,) = s.query(dbm.Round).filter_by(task_id=task_id).all()
        assert (row.status, row.abort_reason) == (dbm.RoundStatus.ABORTED, DP_TOO_FEW_SURVIVORS)
        assert row.result_version is None
        assert s.query(dbm.DPParticipation).count() == 0
        task = s.get(dbm.Task, task_id)
        assert task is not None and task.dp is not None and task.dp.epsilon_spent == 0.0
    assert registry.get(task_id).version == 1
    db.dispose()


# -- over HTTP, with the SDK's DP clients ---------------------------------------------------


@pytest.mark.slow
def test_sdk_clients_spend_the_budget_over_http_and_the_task_ends(tmp_path: Path) -> None:
    """Five SDK clients, a budget of two participations each: two rounds complete, the
    server then fails the task (privacy_budget_spent) and answers check-ins 410."""
    n, length = 5, 16
    with running_server(tmp_path) as url:
        spec = {
            "name": "dp-http",
            "vector_length": length,
            "rounds": 5,
            "clients_per_round": n,
            "min_clients": n,
            "graph": "complete",
            "dropout_rate": 0.0,
            "dp": {"epsilon": 8.0, "l2_clip": 1.0, "participations": 2},
        }
        with admin(url) as c:
            r = c.post("/v1/admin/tasks", json=spec)
            assert r.status_code == 200, r.text
            task_id = int(r.json()["id"])
            params = DPParams.from_json(r.json()["dp"]["params"])
        assert max_participations(params) == 2
        clients = []
        for i in range(n):
            ident = enrol(url, new_token(url), name=f"c{i}")
            w = {"w": np.zeros(length, np.float32)}
            model = FunctionModel(
                lambda w=w: w["w"].copy(),
                lambda v, w=w: w.__setitem__("w", np.asarray(v, np.float32)),
            )

            def train(m: object, w: dict[str, np.ndarray] = w, i: int = i) -> int:
                w["w"] = w["w"] + np.float32(0.01 * (i + 1))
                return 1

            clients.append(
                Client(url, ident, model, train, task_id=task_id, policy=uncertified_policy())
            )
        outcomes: dict[int, list[str]] = {}
        threads = [
            threading.Thread(
                target=lambda c=c, i=i: outcomes.__setitem__(i, [o.state for o in c.run()])
            )
            for i, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert outcomes == {i: ["completed", "completed"] for i in range(n)}
        detail = wait_rounds_finished(url, task_id, 2)
        assert detail["status"] == "failed"
        assert detail["failure_reason"].startswith(BUDGET_SPENT)
        spent = [participation_epsilon(params, k) for k in (1, 2)]
        assert [r["metrics"]["epsilon_spent"] for r in detail["rounds_detail"]] == spent
        assert [v["metrics"].get("train", {}).get("epsilon_spent") for v in detail["versions"]] == [
            None,
            *spent,
        ]
        assert detail["epsilon_spent"] == spent[1] <= 8.0
        with pytest.raises(TaskFinished):
            clients[0].participate()
        with admin(url) as c:
            text = c.get("/metrics").text
        assert f'secagg_dp_epsilon_spent{{task="{task_id}"}} {spent[1]!r}' in text
