"""The parallel in-memory driver gives the reference driver's exact aggregate."""

from __future__ import annotations

import numpy as np

from benchmarks.parallel import simulate_parallel
from protocol import GraphKind, Round
from protocol.testing import make_config, simulate


def test_parallel_driver_matches_simulate_exactly() -> None:
    config = make_config(12, 300, bit_width=24, graph=GraphKind.HARARY, degree=8, threshold=4)
    rng = np.random.default_rng(3)  # test data
    inputs = [rng.integers(-1000, 1000, 300) for _ in config.participants]
    drops = {2: Round.R1_SHARE_KEYS, 7: Round.R2_MASKED_INPUT_COLLECTION, 9: Round.R4_UNMASKING}
    reference = simulate(config, inputs, dropouts=drops)
    aggregate, survivors, client_s, server_s = simulate_parallel(config, inputs, dropouts=drops)
    assert survivors == reference.survivors
    assert np.array_equal(aggregate, reference.aggregate)
    assert np.array_equal(aggregate, sum(inputs[u - 1] for u in survivors))
    assert client_s > 0 and server_s > 0


def test_parallel_driver_in_active_mode() -> None:
    from protocol import Mode

    config = make_config(6, 50, bit_width=20, mode=Mode.ACTIVE)
    inputs = [np.arange(50) * u for u in config.participants]
    drops = {3: Round.R3_CONSISTENCY_CHECK}
    aggregate, survivors, _, _ = simulate_parallel(config, inputs, dropouts=drops)
    assert survivors == (1, 2, 3, 4, 5, 6)
    assert np.array_equal(aggregate, sum(inputs))
