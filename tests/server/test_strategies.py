"""Server update strategies and client selection."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.strategies import FedAdam, FedAvg, UniformSelector, make_strategy


def test_fedavg_applies_the_mean_delta_with_server_lr() -> None:
    w = np.array([1.0, 2.0], np.float32)
    out, state = FedAvg(server_lr=0.5).apply(w, np.array([2.0, -2.0]), None)
    assert np.array_equal(out, np.array([2.0, 1.0], np.float32)) and state is None


def test_momentum_accumulates_across_rounds_through_its_state() -> None:
    s = FedAvg(server_lr=1.0, momentum=0.5)
    w = np.zeros(2, np.float32)
    w, state = s.apply(w, np.ones(2), None)
    w, state = s.apply(w, np.ones(2), state)
    assert np.allclose(w, [1.0 + 1.5, 1.0 + 1.5])


def test_fedadam_moves_against_nothing_but_the_delta() -> None:
    s = FedAdam(server_lr=0.1)
    w, state = s.apply(np.zeros(3, np.float32), np.array([1.0, -1.0, 0.0]), None)
    assert w[0] > 0 > w[1] and w[2] == 0 and state is not None
    w2, _ = s.apply(w, np.array([1.0, -1.0, 0.0]), state)
    assert w2[0] > w[0]


def test_make_strategy_validates() -> None:
    assert isinstance(make_strategy({"name": "fedadam", "server_lr": 0.01}), FedAdam)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy({"name": "nope"})
    with pytest.raises(ValueError):
        make_strategy({"name": "fedavg", "momentum": 1.5})


def test_uniform_selector_picks_distinct_available_clients() -> None:
    sel = UniformSelector()
    picks = {tuple(sel.select([1, 2, 3, 4, 5], 3)) for _ in range(200)}
    assert all(len(set(p)) == 3 and set(p) <= {1, 2, 3, 4, 5} for p in picks)
    assert len(picks) > 5  # not always the same three
    assert sel.select([4, 2], 5) == [2, 4]
