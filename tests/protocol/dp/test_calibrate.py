"""Tests of protocol.dp.calibrate: scale from bits, noise from budget (specs/dp-v1.md §10)."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import pytest

from protocol.dp.accounting import gaussian_noise_multiplier, participation_epsilon
from protocol.dp.calibrate import (
    DEFAULT_BETA,
    DEFAULT_BITS,
    DEFAULT_MODCLIP_PROB,
    calibrate,
    choose_bits,
    expected_error,
    modclip_probability,
    modclip_stddevs,
    scale_for_bits,
)
from protocol.dp.params import DPParams, Mechanism
from protocol.errors import ConfigError

# The benchmark's setting (issue 8): LEAF Synthetic(1, 1) logistic regression
# (60 features x 10 classes + 10 biases = 610 weights), 100 clients a round,
# epsilon 8 at delta 1e-5 over 20 participations.
SETTING: dict[str, object] = {
    "dim": 610,
    "l2_clip": 1.0,
    "epsilon": 8.0,
    "delta": 1e-5,
    "participations": 20,
    "min_honest": 100,
    "num_clients": 100,
}


def run(mechanism: Mechanism, **changes: object) -> DPParams:
    kwargs = {**SETTING, **changes}
    return calibrate(mechanism, **kwargs)  # type: ignore[arg-type]


def test_tff_defaults() -> None:
    # TFF's DistributedDpSumFactory: bits 20, modclip_prob 1e-4 ("roughly 3.9
    # standard deviations"), beta exp(-0.5) recommended by KLS21.
    assert DEFAULT_BITS == 20
    assert DEFAULT_MODCLIP_PROB == 1e-4
    assert math.exp(-0.5) == DEFAULT_BETA
    assert 3.88 < modclip_stddevs(1e-4) < 3.9
    # sqrt(2) erfcinv(p): P(|N(0,1)| >= k) = p, checked through erfc.
    for p in (1e-2, 1e-4, 1e-9):
        assert math.erfc(modclip_stddevs(p) / math.sqrt(2)) == pytest.approx(p, rel=1e-9)


@pytest.mark.parametrize("mechanism", list(Mechanism))
@pytest.mark.parametrize("bits", [16, 17, 18, 19, 20])
def test_calibrated_params_meet_the_budget_and_are_minimal(mechanism: Mechanism, bits: int) -> None:
    params = run(mechanism, bits=bits)
    assert params.mechanism is mechanism
    assert params.bits == bits
    assert params.min_honest == 100
    assert params.epsilon_budget == 8.0
    assert participation_epsilon(params, 20) <= 8.0
    # The smallest integer variance: one unit less overspends (the search is
    # a bisection on a non-increasing function of v, see calibrate.py).
    less = dataclasses.replace(params, local_variance=params.local_variance - 1)
    assert participation_epsilon(less, 20) > 8.0
    assert modclip_probability(params, 100) <= DEFAULT_MODCLIP_PROB


def test_bits_16_to_20_give_sensible_scales() -> None:
    # Each extra bit doubles the range, so gamma about doubles (the rounding
    # term n k**2 in TFF's formula is negligible against 2**(2b) here), the
    # noise in integer units about quadruples, and the error of the decoded
    # mean stays at the central Gaussian's: with m = n and a rounded
    # sensitivity barely above gamma c, the discrete mechanism needs the same
    # noise multiplier as the central Gaussian baseline, to within 0.1%.
    z = gaussian_noise_multiplier(8.0, 1e-5, 20)
    central_mse = (z * 1.0) ** 2 / 100**2  # N(0, (z c)**2) on the sum, / n
    previous: DPParams | None = None
    for bits in range(16, 21):
        params = run(Mechanism.SKELLAM, bits=bits)
        # gamma c >> sqrt(d'): rounding inflates the sensitivity by < 0.1%.
        assert params.scale * params.l2_clip > 1000
        assert params.l2_sensitivity < 1.001 * params.scale * params.l2_clip
        assert params.noise_multiplier == pytest.approx(z, rel=2e-3)
        assert expected_error(params, 100) == pytest.approx(central_mse, rel=5e-3)
        if previous is not None:
            assert 1.99 < params.scale / previous.scale < 2.01
            assert 3.9 < params.local_variance / previous.local_variance < 4.1
        previous = params


def test_scale_meets_the_modclip_target_tightly() -> None:
    # gamma is the *largest* scale for the target: the probability is at the
    # target, not far below it (a 1% smaller k would exceed it).
    params = run(Mechanism.SKELLAM, bits=18)
    prob = modclip_probability(params, 100)
    assert DEFAULT_MODCLIP_PROB / 2 < prob <= DEFAULT_MODCLIP_PROB


def test_modclip_probability_is_the_normal_tail_of_the_sum() -> None:
    # An independent evaluation of the model: std of one coordinate of the
    # sum (rotation block 512 for d = 610), then the two-sided normal tail at 2**(b-1).
    params = run(Mechanism.SKELLAM, bits=16)
    n = 100
    s = math.sqrt(
        (params.scale * params.l2_clip * n) ** 2 / 512 + n / 4 + n * params.local_variance
    )
    expected = 2 * (1 - NormalDist(0, s).cdf(2.0**15))
    assert modclip_probability(params, n) == pytest.approx(expected, rel=1e-6)
    # More clients summed, more overflow.
    assert modclip_probability(params, 200) > modclip_probability(params, 100)


def test_expected_error_by_hand() -> None:
    params = run(Mechanism.SKELLAM, bits=16)
    n = 100
    # (n v + n/4) / gamma**2 / n**2
    by_hand = (n * params.local_variance + n / 4) / params.scale**2 / n**2
    assert expected_error(params, n) == pytest.approx(by_hand, rel=1e-12)


def test_fewer_honest_shares_need_more_noise_each() -> None:
    # The sum must hold enough noise from m = 50 shares: each share carries
    # about twice the variance, and the decoded mean (all 100 clients add
    # noise) about twice the error.
    full = run(Mechanism.SKELLAM, bits=18, min_honest=100)
    half = run(Mechanism.SKELLAM, bits=18, min_honest=50)
    assert participation_epsilon(half, 20) <= 8.0
    real_full = full.local_variance / full.scale**2
    real_half = half.local_variance / half.scale**2
    assert 1.98 < real_half / real_full < 2.02
    ratio = expected_error(half, 100) / expected_error(full, 100)
    assert 1.98 < ratio < 2.02


def test_more_participations_need_more_noise() -> None:
    few = run(Mechanism.SKELLAM, bits=18, participations=5)
    many = run(Mechanism.SKELLAM, bits=18, participations=80)
    assert many.local_variance / many.scale**2 > 3 * few.local_variance / few.scale**2


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_explicit_noise_multiplier(mechanism: Mechanism) -> None:
    params = run(mechanism, bits=18, noise_multiplier=4.0)
    assert params.noise_multiplier >= 4.0
    less = dataclasses.replace(params, local_variance=params.local_variance - 1)
    assert less.noise_multiplier < 4.0
    assert participation_epsilon(params, 20) <= 8.0
    assert modclip_probability(params, 100) <= DEFAULT_MODCLIP_PROB


def test_explicit_noise_multiplier_too_small_for_the_budget() -> None:
    with pytest.raises(ConfigError, match="above the budget"):
        run(Mechanism.SKELLAM, noise_multiplier=0.5)


def test_too_few_bits_for_the_cohort() -> None:
    # 2**(2b) must exceed n k**2: with b = 4 and n = 100, 256 < 100 * 3.89**2.
    with pytest.raises(ConfigError, match="bits are too few"):
        run(Mechanism.SKELLAM, bits=4)


def test_budget_out_of_reach() -> None:
    # d' = 2**20: a rounded update has norm >= sqrt(d')/2 = 512 whatever the
    # scale, and epsilon 1e-3 over 20 rounds from one honest share needs a
    # noise multiplier in the thousands: v > z**2 512**2 > 2**40.
    with pytest.raises(ConfigError, match="no local variance"):
        run(Mechanism.SKELLAM, dim=1 << 20, min_honest=1, epsilon=1e-3)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"min_honest": 0}, "min_honest"),
        ({"num_clients": 50, "min_honest": 100}, "num_clients"),
        ({"participations": 0}, "participations"),
        ({"bits": 63}, "bits"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"l2_clip": float("inf")}, "l2_clip"),
        ({"dim": 0}, "dim"),
        ({"modclip_prob": 1.0}, "modclip_prob"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"delta": 0.0}, "delta"),
        ({"beta": 1.0}, "beta"),
    ],
)
def test_bad_arguments(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        run(Mechanism.SKELLAM, **changes)


def test_unknown_mechanism() -> None:
    with pytest.raises(ConfigError, match="mechanism"):
        calibrate("laplace", **SETTING)  # type: ignore[arg-type]


def test_scale_for_bits_is_tffs_formula() -> None:
    # _heuristic_scale_factor: sqrt(2**(2b) - n k**2) / (2 k sqrt(c**2 n**2 / n_b + n sigma**2)),
    # n_b = 512, the rotation block of d = 1000 (dp-v1 §4).
    k = modclip_stddevs(1e-4)
    gamma = scale_for_bits(
        bits=18, l2_clip=0.5, dim=1000, num_clients=30, real_stddev=0.02, modclip_prob=1e-4
    )
    by_hand = math.sqrt(2.0**36 - 30 * k * k) / (2 * k * math.sqrt(0.25 * 900 / 512 + 30 * 0.0004))
    assert gamma == pytest.approx(by_hand, rel=1e-12)


def test_choose_bits() -> None:
    params = run(Mechanism.SKELLAM, bits=20)
    assert choose_bits(params, 100) == 20  # calibrated at the edge of 20 bits
    wide = dataclasses.replace(params, bits=24)
    assert choose_bits(wide, 100) == 20
    with pytest.raises(ConfigError, match="no bit width"):
        choose_bits(params, 100, low=16, high=19)


def test_scale_is_capped_for_exact_rounding() -> None:
    # Few clients and many bits: TFF's formula asks for gamma c far above
    # 2**31 and an integer noise above MAX_LOCAL_VARIANCE; the scale is capped
    # below both, and the wider range only lowers the modular-clipping probability.
    params = calibrate(
        Mechanism.SKELLAM,
        dim=10,
        l2_clip=1.0,
        epsilon=8.0,
        delta=1e-5,
        participations=1,
        min_honest=2,
        num_clients=2,
        bits=40,
    )
    assert params.scale * params.l2_clip + math.sqrt(16) < 2.0**31
    assert params.local_variance < 2**40
    assert participation_epsilon(params, 1) <= 8.0
    assert modclip_probability(params, 2) < DEFAULT_MODCLIP_PROB


def test_scale_for_bits_respects_the_exact_rounding_bound() -> None:
    # 62 bits, two clients, almost no noise: the formula gives ~2**57; the cap
    # is the largest gamma with gamma c + sqrt(d') < 2**31 (d' = 16).
    gamma = scale_for_bits(bits=62, l2_clip=0.5, dim=10, num_clients=2, real_stddev=1e-9)
    assert gamma * 0.5 + 4 < 2.0**31
    assert gamma * 0.5 + 4 >= 2.0**31 - 1


def test_modclip_stddevs_holds_for_tiny_probabilities() -> None:
    # 1 - p/2 rounds to 1.0 below p ~ 2e-16: the lower tail must be used.
    assert modclip_stddevs(1e-4) == pytest.approx(3.8906, abs=1e-4)
    assert modclip_stddevs(1e-20) == pytest.approx(9.3360, abs=1e-3)  # erfcinv(1e-20) * sqrt(2)
    assert modclip_stddevs(1e-100) > modclip_stddevs(1e-20)
    for bad in (1e-200, 0.0, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="modclip_prob"):
            modclip_stddevs(bad)
