"""What a client checks, and books, before it adds its noised update to a DP sum (dp-v1 §8, §11)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import (
    Client,
    ClientError,
    ClientPolicy,
    PolicyViolation,
    PrivacyBudgetSpent,
)
from client_sdk.identity import Identity
from client_sdk.ledger import ContributionLedger, LedgerError
from client_sdk.models import FunctionModel
from protocol import Mode, Round
from protocol.crypto import DeterministicRandom
from protocol.dp import DPEncoding, DPParams, Mechanism
from protocol.dp.accounting import RDP_ORDERS, epsilon_from_rdp, round_rdp
from protocol.encoding import session_context
from protocol.errors import SecAggError
from protocol.policy import SessionPolicy, assumed_colluders
from protocol.simulate import make_config, simulate

SERVER = "http://127.0.0.1:9"
DIM = 4


def dp_params(**kw: object) -> DPParams:
    base: dict[str, object] = dict(
        mechanism=Mechanism.SKELLAM,
        dim=DIM,
        l2_clip=1.0,
        scale=64.0,
        beta=math.exp(-0.5),
        local_variance=4000,
        min_honest=6,
        bits=24,
        epsilon_budget=8.0,
        delta=1e-5,
    )
    base.update(kw)
    return DPParams(**base)  # type: ignore[arg-type]


def client(policy: ClientPolicy | None = None, ledger: ContributionLedger | None = None) -> Client:
    ident = Identity.generate().with_enrolment(1, SERVER)
    w = np.zeros(DIM, np.float32)
    return Client(
        SERVER,
        ident,
        FunctionModel(lambda: w, lambda v: None),
        lambda m: 1,
        task_id=1,
        policy=policy,
        ledger=ledger,
    )


def independent_epsilon(rounds: list[DPParams], delta: float) -> float:
    total = np.zeros(len(RDP_ORDERS))
    for p in rounds:
        total = total + round_rdp(p)
    return epsilon_from_rdp(total, delta)


# -- before training ---------------------------------------------------------------


def test_the_client_prices_rounds_from_its_own_ledger_and_stops_at_its_limit() -> None:
    p = dp_params()
    one = independent_epsilon([p], p.delta)
    assert 0 < one < p.epsilon_budget
    c = client(ClientPolicy(max_epsilon=100.0))
    booked = 0
    while True:
        try:
            c._check_privacy(p, DIM)
        except PrivacyBudgetSpent as exc:
            assert "over its limit" in str(exc)
            break
        c.ledger.record_spend(SERVER, 1, booked, p)
        booked += 1
        assert booked < 1000
    spent = c.ledger.epsilon_spent(SERVER, 1, p.delta)
    # It took part exactly while its epsilon stayed within the task's budget.
    assert spent == pytest.approx(independent_epsilon([p] * booked, p.delta), rel=1e-12)
    assert spent <= p.epsilon_budget < independent_epsilon([p] * (booked + 1), p.delta)
    # Another task (or another server) has its own ledger entries.
    assert c.ledger.epsilon_spent(SERVER, 2, p.delta) == 0.0


def test_a_server_announcing_a_huge_budget_does_not_raise_the_clients_limit() -> None:
    p = dp_params(epsilon_budget=1e6)
    c = client(ClientPolicy(max_epsilon=2.0))
    rounds = 0
    with pytest.raises(PrivacyBudgetSpent):
        for rounds in range(10_000):
            c._check_privacy(p, DIM)
            c.ledger.record_spend(SERVER, 1, rounds, p)
    assert c.ledger.epsilon_spent(SERVER, 1, p.delta, epsilon_cap=2.0) <= 2.0


@pytest.mark.parametrize(
    ("params", "policy", "match"),
    [
        (dp_params(delta=1e-3), ClientPolicy(), "max_delta"),
        (dp_params(local_variance=1), ClientPolicy(), "min_noise_multiplier"),
        (dp_params(dim=5), ClientPolicy(), "DP parameters are for 5 weights"),
    ],
)
def test_the_client_refuses_weak_or_foreign_parameters(
    params: DPParams, policy: ClientPolicy, match: str
) -> None:
    with pytest.raises(PolicyViolation, match=match):
        client(policy)._check_privacy(params, DIM)


def test_malformed_dp_parameters_are_a_policy_violation() -> None:
    c = client()
    assert c._dp_params({"dp": None}) is None
    with pytest.raises(PolicyViolation, match="DP parameters are invalid"):
        c._dp_params({"dp": {**dp_params().to_json(), "local_variance": 0}})


def test_policy_fields_are_validated() -> None:
    for bad in ({"max_epsilon": 0.0}, {"max_delta": 1.0}, {"min_noise_multiplier": -1.0}):
        with pytest.raises(Exception, match=next(iter(bad))):
            ClientPolicy(**bad)  # type: ignore[arg-type]


# -- the session ------------------------------------------------------------------------


def dp_config(n: int, p: DPParams, **kw: object) -> object:
    args: dict[str, object] = dict(
        num_clients=n,
        vector_length=p.vector_length,
        bit_width=p.bits,
        context=session_context(1, 3, p.context()),
        mode=Mode.ACTIVE,
        threshold=n - 3,
    )
    args.update(kw)
    return make_config(**args)  # type: ignore[arg-type]


def test_the_session_floor_is_m_plus_the_colluders_the_client_assumes() -> None:
    p = dp_params()
    c = client(ClientPolicy(min_assumed_colluders=2))
    config = dp_config(10, p)
    policy = c._check_policy(config, DPEncoding(p), 3, DIM)  # type: ignore[arg-type]
    assert policy.min_participants == p.min_honest + assumed_colluders(config, c._session_policy)  # type: ignore[arg-type]
    assert policy.min_participants == 8
    with pytest.raises(PolicyViolation, match="m \\+ c"):
        c._check_policy(dp_config(7, p, threshold=6), DPEncoding(p), 3, DIM)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"local_variance": 3999}, "another task, round or encoding"),
        ({"min_honest": 5}, "another task, round or encoding"),
    ],
)
def test_a_session_bound_to_other_dp_parameters_is_refused(
    change: dict[str, object], match: str
) -> None:
    p = dp_params()
    config = dp_config(10, dp_params(**change))
    with pytest.raises(PolicyViolation, match=match):
        client()._check_policy(config, DPEncoding(p), 3, DIM)  # type: ignore[arg-type]


def test_a_session_with_another_bit_width_is_refused() -> None:
    p = dp_params()
    with pytest.raises(PolicyViolation, match="bit width"):
        client()._check_policy(dp_config(10, p, bit_width=30), DPEncoding(p), 3, DIM)  # type: ignore[arg-type]


def test_a_dp_task_cannot_be_downgraded_to_rounds_without_noise() -> None:
    # The attacker: a server that drops the dp field from a task this client
    # already gave noised updates to, to get its next update without noise.
    c = client()
    c.ledger.record_spend(SERVER, 1, 7, dp_params())
    with pytest.raises(PolicyViolation, match="without noise"):
        c._round({"round_number": 2, "round_id": 8, "dp": None, "encoding": {}})
    # Without that history the same round is an ordinary (non-DP) assignment,
    # refused for its missing fields (a typed error), not as a downgrade.
    with pytest.raises(ClientError, match="assignment is malformed"):
        client()._round({"round_number": 2, "round_id": 8, "dp": None, "encoding": {}})


def test_require_dp_refuses_a_task_without_noise() -> None:
    c = client(ClientPolicy(require_dp=True))
    with pytest.raises(PolicyViolation, match="require_dp"):
        c._round({"round_number": 1, "round_id": 1, "dp": None, "encoding": {}})


# -- the attacker: a server that releases a sum over too few survivors ---------------------


def dp_round(dropped_in_r2: int) -> tuple[object, list[np.ndarray]]:
    p = dp_params()
    enc = DPEncoding(p)
    n = 10
    config = make_config(n, enc.vector_length, bit_width=p.bits, mode=Mode.SEMI_HONEST)
    base = SessionPolicy(
        allow_semi_honest=True,
        min_participants=2,
        min_assumed_colluders=1,
        min_threshold=1,
        require_certified_identities=False,
    )
    floor = p.min_honest + assumed_colluders(config, base)
    policy = SessionPolicy(
        allow_semi_honest=True,
        min_participants=floor,
        min_assumed_colluders=1,
        min_threshold=1,
        require_certified_identities=False,
    )
    rng = np.random.default_rng(1)  # test data only
    vectors = [
        enc.encode(rng.normal(size=DIM), config.session_id, DeterministicRandom(bytes([u])))
        for u in range(n)
    ]
    drops = {u: Round.R2_MASKED_INPUT_COLLECTION for u in range(1, dropped_in_r2 + 1)}
    return simulate(config, vectors, dropouts=drops, policy=policy, seed=b"dp-floor"), vectors


def test_no_sum_is_unmasked_with_fewer_than_m_plus_c_survivors() -> None:
    # m = 6, c' = 1: 7 survivors are enough, 6 are not.
    result, vectors = dp_round(dropped_in_r2=3)
    assert result.aggregate.tolist() == np.sum(vectors[3:], axis=0).tolist()  # type: ignore[attr-defined]
    with pytest.raises(SecAggError, match="6 survivors < min_participants 7"):
        # The first client asked to unmask refuses before producing any share
        # (every honest client does the same): the server holds only masked
        # vectors, uniformly random, and reconstructs no sum at all.
        dp_round(dropped_in_r2=4)


# -- the ledger on disk ----------------------------------------------------------------------


def test_the_privacy_ledger_survives_a_restart_and_refuses_tampering(tmp_path: Path) -> None:
    path = tmp_path / "client.key.ledger"
    p = dp_params()
    ledger = ContributionLedger(path)
    ledger.record_spend(SERVER, 1, 11, p)
    ledger.record_spend(SERVER + "/", 1, 12, p)  # the same server, spelled differently
    ledger.record_spend(SERVER, 1, 12, p)  # a retried booking of one round counts once
    again = ContributionLedger(path)
    assert again.spends(SERVER, 1) == [p, p]
    assert again.epsilon_spent(SERVER, 1, p.delta) == pytest.approx(
        independent_epsilon([p, p], p.delta), rel=1e-12
    )
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    raw = json.loads(path.read_text())
    raw["privacy"][0][3] = json.dumps({**p.to_json(), "local_variance": 0})
    path.write_text(json.dumps(raw))
    with pytest.raises(LedgerError, match="not a secagg contribution ledger"):
        ContributionLedger(path)
