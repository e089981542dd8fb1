"""``secagg demo --dp``, part 1: a DP task through the service, priced by both sides."""

from __future__ import annotations

import pytest
from rich.console import Console

from protocol.dp import DPParams
from protocol.dp.accounting import participation_epsilon

pytestmark = pytest.mark.slow


def test_the_dp_demo_task_is_priced_the_same_by_the_server_and_every_client() -> None:
    from examples.dp.run import EPSILON, service_part

    result = service_part(Console(quiet=True), rounds=2)
    params = DPParams.from_json(result["dp"]["params"])
    completed = [r for r in result["rounds"] if r["status"] == "completed"]
    assert len(completed) == 2
    for r in completed:
        assert r["metrics"]["dp_round_epsilon"] == pytest.approx(
            participation_epsilon(params, 1), rel=1e-12
        )
    # 30 clients, 20 per round, 2 rounds: each client's own ledger says exactly
    # what its zero, one or two rounds cost.
    allowed = {participation_epsilon(params, k) for k in (0, 1, 2)}
    assert len(result["epsilon_spent_clients"]) == 30
    for own in result["epsilon_spent_clients"].values():
        assert min(abs(own - e) for e in allowed) < 1e-9
        assert own <= EPSILON
    assert result["epsilon_spent_server"] == pytest.approx(
        max(result["epsilon_spent_clients"].values()), rel=1e-12
    )
    assert 0.5 < result["final_accuracy"] <= 1.0
