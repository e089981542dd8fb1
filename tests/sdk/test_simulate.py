"""secagg_sim: in-process clients and server, the deployment's code paths."""

from __future__ import annotations

import numpy as np
import pytest

from client_sdk.models import NumpyModel
from protocol import Round
from protocol.encoding import EvalSums
from secagg_sim import simulate


@pytest.mark.slow
def test_simulate_runs_secure_fedavg_with_a_dropout() -> None:
    scale = 2.0**10
    weights = [np.zeros(8, np.float32) for _ in range(6)]
    steps = [np.full(8, (i + 1) / scale, np.float32) for i in range(6)]

    def trainer(i: int):  # type: ignore[no-untyped-def]
        def train(model: object) -> int:
            weights[i] += steps[i]
            return 10

        return train

    report = simulate(
        [NumpyModel([w]) for w in weights],
        [trainer(i) for i in range(6)],
        [lambda m: EvalSums(1, 1, 0.0)] * 6,
        rounds=2,
        graph="complete",
        scale=scale,
        max_weight=100,
        deadlines={"R0": 10, "R1": 3, "R2": 3, "R3": 3, "R4": 3},
        faults={5: lambda number, stage: number == 1 and stage is Round.R2_MASKED_INPUT_COLLECTION},
    )
    assert [r["status"] for r in report.rounds] == ["completed", "completed"]
    assert report.rounds[0]["stage_stats"]["R2"]["dropouts"] == 1
    # Round 1: mean step of clients 1-5; round 2: of all six (equal weights).
    expected = (1 + 2 + 3 + 4 + 5) / 5 / scale + (1 + 2 + 3 + 4 + 5 + 6) / 6 / scale
    assert np.allclose(report.final_weights, expected, atol=1e-6)
    assert report.outcomes[5][0].state == "dropped"
