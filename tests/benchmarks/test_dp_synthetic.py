"""Smoke test of the federated DP benchmark (benchmarks/dp_synthetic.py): a tiny run, its JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.dp_synthetic import (
    DIM,
    BenchConfig,
    SecAggGraph,
    csprng_gaussian,
    distributed_round,
    run_benchmark,
)
from benchmarks.leaf_synthetic import NUM_FEATURES, generate_synthetic
from protocol.dp import DPEncoding, DPParams, Mechanism

TINY = BenchConfig(
    num_devices=40,
    cohort=8,
    rounds=5,  # one pass: every device takes part once
    epsilons=(8.0, math.inf),
    min_survivors=7,
    colluders=1,
    average_case=False,
    ddgauss_epsilon=8.0,
    max_samples=60,
    bits=16,
)


def tiny_params(mechanism: Mechanism = Mechanism.SKELLAM, bits: int = 20) -> DPParams:
    return DPParams(
        mechanism=mechanism,
        dim=DIM,
        l2_clip=TINY.l2_clip,
        scale=300.0,
        beta=math.exp(-0.5),
        local_variance=50,
        min_honest=TINY.min_honest_worst,
        bits=bits,
        epsilon_budget=8.0,
        delta=1e-5,
    )


@pytest.mark.parametrize("mechanism", [Mechanism.SKELLAM, Mechanism.DDGAUSS])
def test_the_dp_aggregate_is_the_exact_sum_of_the_encoded_client_vectors(
    mechanism: Mechanism,
) -> None:
    n = 6
    # Test data only: updates larger than the clip, so clipping is exercised.
    updates = np.random.default_rng(7).normal(scale=0.1, size=(n, DIM))
    params = tiny_params(mechanism, bits=16)
    encoding = DPEncoding(params)
    mean, count, total, encoded, _ = distributed_round(
        encoding, updates, SecAggGraph("complete", n - 1, n - 2), b"test-seed"
    )
    assert encoded.shape == (n, params.vector_length)
    assert count == n
    # Independently: integer sum of the clients' vectors, reduced mod 2^b and
    # lifted to [-2^(b-1), 2^(b-1)) with Python integers.
    modulus = 1 << params.bits
    expected = []
    for j in range(params.vector_length):
        s = sum(int(encoded[i, j]) for i in range(n)) % modulus
        expected.append(s - modulus if s >= modulus // 2 else s)
    assert total.tolist() == expected
    assert int(total[-1]) == n  # the count slot
    assert mean.shape == (DIM,)


def test_the_data_set_is_synthetic_1_1_and_reproducible() -> None:
    a = generate_synthetic(num_devices=20, seed=3, max_samples=80)
    b = generate_synthetic(num_devices=20, seed=3, max_samples=80)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert a.train_x.shape[1] == NUM_FEATURES
    sizes = a.train_sizes + a.test_sizes
    assert sizes.min() >= 50 and sizes.max() <= 80  # 50 + lognormal, capped
    assert np.array_equal(a.train_sizes, np.floor(0.8 * sizes).astype(np.int64))
    assert set(np.unique(a.train_y)) <= set(range(10))
    part = a.devices(5, 9)
    assert np.array_equal(part.train_sizes, a.train_sizes[5:9])
    assert np.array_equal(part.test_x, a.test_x[a.test_offsets[5] : a.test_offsets[9]])


def test_the_benchmark_prints_one_json_object_with_every_arm() -> None:
    report = json.loads(json.dumps(run_benchmark(TINY)))
    config = report["config"]
    assert config["participations"] == 1
    assert config["dim"] == 610
    assert config["secagg_graph"]["kind"] in {"harary", "complete"}
    arms = report["arms"]
    assert set(arms) == {
        "plaintext",
        "clipped",
        "central",
        "skellam_worst_case",
        "ddgauss_worst_case",
    }
    for name in ("plaintext", "clipped"):
        assert 0.0 <= arms[name]["final_accuracy"] <= 1.0
        assert 0.0 <= arms[name]["unseen_devices_accuracy"] <= 1.0
        assert arms[name]["bits_per_parameter"] == 32
    assert set(arms["central"]) == {"8"}
    assert arms["central"]["8"]["noise_multiplier"] > 0
    for name in ("skellam_worst_case", "ddgauss_worst_case"):
        result = arms[name]["8"]
        assert 0.0 <= result["last5_accuracy"] <= 1.0
        assert result["exact_rounds"] == result["rounds_checked"] == TINY.rounds
        assert result["bits"] == 16
        assert result["min_honest"] == 6  # 7 survivors, 1 colluder
        # d = 610 weights and the count slot, 16 bits each
        assert result["vector_length"] == 611
        assert result["bits_per_parameter"] == pytest.approx(16 * 611 / 610, abs=1e-3)
        assert result["masked_input_bytes"] == math.ceil(16 * 611 / 8)
        assert result["bytes_sent_per_client_round"] > result["masked_input_bytes"]
    checks = report["acceptance"]["eps_8"]
    assert checks["every_sum_exact"] is True
    assert checks["bits_at_most_20"] is True
    assert isinstance(checks["within_3_points_of_plaintext"], bool)
    assert isinstance(report["acceptance"]["pass_at_some_eps_le_8"], bool)


def test_the_central_baseline_noise_is_standard_normal_from_the_csprng() -> None:
    n = 200_000
    g = csprng_gaussian(bytes(range(16)), n)
    assert np.array_equal(g, csprng_gaussian(bytes(range(16)), n))  # a function of the key
    assert not np.array_equal(g, csprng_gaussian(bytes(16), n))
    # Six standard errors: the mean's is 1/sqrt(n) = 0.0022, the variance's
    # sqrt(2/n) = 0.0032; a variance off by 10% (a wrong scale) is 30 errors out.
    assert abs(g.mean()) < 6 / math.sqrt(n)
    assert abs(g.var() - 1.0) < 6 * math.sqrt(2 / n)
