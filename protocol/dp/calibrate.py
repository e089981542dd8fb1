"""Choosing the scale and the noise of a distributed-DP task (specs/dp-v1.md §10).

Given the model size, the clip, the budget and the cohort, :func:`calibrate`
returns the :class:`~protocol.dp.params.DPParams` of the task:

1. the scale ``gamma``: TensorFlow Federated's rule (``_heuristic_scale_factor``
   in the removed ``tensorflow_federated/python/aggregators/distributed_dp.py``;
   [KLS21] §4.2, §4.4): the largest ``gamma`` for which ``k`` standard
   deviations of one coordinate of the cohort's noisy integer sum fit in
   ``[-2**(b-1), 2**(b-1))``, ``k`` being the two-sided normal quantile of the
   modular-clipping probability ``modclip_prob``;
2. the local variance ``v``: the smallest integer for which ``participations``
   rounds cost at most ``epsilon`` (:func:`protocol.dp.accounting.participation_epsilon`,
   with the sensitivity of the *rounded* update at that ``gamma`` and the noise
   of ``min_honest`` shares), or the smallest for which the central noise
   multiplier ``sqrt(m v) / Delta_2`` reaches an explicit ``noise_multiplier``.

The two steps depend on each other (``gamma`` needs the noise, the noise in
integer units needs ``gamma``); they are iterated until the chosen ``v`` at
the chosen ``gamma`` meets the modular-clipping bound.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Final

from protocol.dp.accounting import gaussian_noise_multiplier, participation_epsilon
from protocol.dp.params import (
    MAX_LOCAL_VARIANCE,
    DPParams,
    Mechanism,
    check_int,
    check_real,
    rotation_block,
)
from protocol.errors import ConfigError

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_BITS",
    "DEFAULT_MODCLIP_PROB",
    "calibrate",
    "choose_bits",
    "expected_error",
    "modclip_probability",
    "modclip_stddevs",
    "scale_for_bits",
]

DEFAULT_BITS: Final = 20
"""TFF's default bit width of the secure sum."""
DEFAULT_MODCLIP_PROB: Final = 1e-4
"""TFF's default modular-clipping probability per coordinate (about 3.9 standard deviations)."""
DEFAULT_BETA: Final = math.exp(-0.5)
"""Conditional-rounding parameter recommended by [KLS21] and TFF."""

# DPParams requires gamma c + sqrt(d) < 2**31 so that rounding is exact in
# 64-bit arithmetic (§6); like TFF's MAX_SCALE_FACTOR, a larger scale buys
# nothing (the rounding error is already negligible), so the scale is capped.
_SCALED_CLIP_LIMIT: Final = 2.0**31

# Each fixed-point iteration between gamma and v lowers gamma; a handful suffice
# in practice (the noise in real units moves by the rounding inflation only).
_MAX_ROUNDS: Final = 64


MIN_MODCLIP_PROB: Final = 1e-100
"""Smallest modular-clipping probability accepted (k is then about 21 standard deviations)."""


def modclip_stddevs(modclip_prob: float) -> float:
    """``k`` with ``P(|N(0, 1)| >= k) = modclip_prob``: TFF's ``sqrt(2) erfcinv(p)``.

    Raises:
        ConfigError: ``modclip_prob`` not in ``[MIN_MODCLIP_PROB, 1)``.
    """
    p = check_real("modclip_prob", modclip_prob)
    if not MIN_MODCLIP_PROB <= p < 1:
        raise ConfigError(
            f"modclip_prob must be in [{MIN_MODCLIP_PROB:g}, 1), got {modclip_prob!r}"
        )
    # The lower tail, -Phi^-1(p/2): 1 - p/2 would round to 1.0 for tiny p.
    return -NormalDist().inv_cdf(p / 2.0)


def _sum_variance(scale: float, l2_clip: float, block: int, v: float, n: int) -> float:
    # Per-coordinate second moment of the cohort's integer sum (§10):
    #   signal: after the rotation a coordinate of one update is about
    #     gamma c / sqrt(n_b) at most, n_b the rotation block (> d / 2; §4); n aligned
    #     updates give (gamma c n)**2 / n_b (TFF's worst case, not sqrt(n));
    #   rounding: stochastic rounding adds variance <= 1/4 per client;
    #   noise: every one of the n clients adds variance v.
    return (scale * l2_clip * n) ** 2 / block + n / 4.0 + n * v


def scale_for_bits(
    *,
    bits: int,
    l2_clip: float,
    dim: int,
    num_clients: int,
    real_stddev: float,
    modclip_prob: float = DEFAULT_MODCLIP_PROB,
) -> float:
    """TFF's ``_heuristic_scale_factor``: the ``gamma`` that puts ``k`` stddevs at ``2**(b-1)``.

    Solves ``2**b = 2 k sqrt(c**2 n**2 / n_b + n (1/(4 gamma**2) + sigma**2)) * gamma``
    for ``gamma``, where ``sigma`` is the local noise std in *real* units::

        gamma = sqrt(2**(2b) - n k**2) / (2 k sqrt(c**2 n**2 / n_b + n sigma**2))

    capped at ``(2**31 - 1 - sqrt(d)) / c``, the largest scale :class:`DPParams`
    accepts (exact rounding in 64 bits).

    Raises:
        ConfigError: ``2**(2b) <= n k**2``: the cohort's rounding noise alone
            overflows ``b`` bits at this ``modclip_prob``.
    """
    k = modclip_stddevs(modclip_prob)
    n = num_clients
    block = rotation_block(dim)
    headroom = 2.0 ** (2 * bits) - n * k * k
    if headroom <= 0:
        raise ConfigError(
            f"{bits} bits are too few for a cohort of {n} clients at modclip_prob "
            f"{modclip_prob}: need 2**(2b) > n k**2 = {n * k * k:.4g}; raise bits, "
            "shrink the cohort or raise modclip_prob"
        )
    denominator = 2.0 * k * math.sqrt(l2_clip**2 * n * n / block + n * real_stddev**2)
    # Capped so that gamma c + sqrt(d) < 2**31 (DPParams' exact-rounding bound).
    cap = (_SCALED_CLIP_LIMIT - 1.0 - math.sqrt(dim)) / l2_clip
    return min(math.sqrt(headroom) / denominator, cap)


def modclip_probability(params: DPParams, num_clients: int) -> float:
    """The modular-clipping probability of one coordinate of a cohort's sum (TFF's model).

    Models a coordinate of the sum of ``n = num_clients`` noisy rounded updates
    as centred with variance ``(gamma c n)**2 / n_b + n / 4 + n v`` (see
    :func:`scale_for_bits`) and Gaussian tails, and returns
    ``P(|N(0, s**2)| >= 2**(b-1)) = erfc(2**(b-1) / (s sqrt 2))``. This is the
    heuristic TFF bounds, not a proof: the signal term is a worst case over
    aligned updates; Skellam's tails are sub-exponential, not Gaussian.

    Raises:
        ConfigError: ``num_clients`` not an int >= 1.
    """
    n = check_int("num_clients", num_clients, 1, 1 << 32)
    s = math.sqrt(
        _sum_variance(params.scale, params.l2_clip, params.rotation_block, params.local_variance, n)
    )
    return math.erfc(2.0 ** (params.bits - 1) / (s * math.sqrt(2.0)))


def expected_error(params: DPParams, num_clients: int) -> float:
    """Predicted per-coordinate mean squared error of the decoded mean, in real units.

    The server decodes ``(sum of n noisy rounded rotated updates) / gamma``,
    rotates back and divides by the count ``n``. Per coordinate of the
    integer sum: the noise of all ``n`` clients (variance ``n v``) plus the
    stochastic rounding (variance ``<= n / 4``); the rotation is orthonormal,
    so it keeps the per-coordinate variance of i.i.d. errors. Hence::

        MSE = (n v + n / 4) / (gamma**2 n**2) = (v + 1/4) / (n gamma**2)

    Ignored: modular clipping (probability :func:`modclip_probability`) and
    the small bias of conditional rounding.

    Raises:
        ConfigError: ``num_clients`` not an int >= 1.
    """
    n = check_int("num_clients", num_clients, 1, 1 << 32)
    return (params.local_variance + 0.25) / (n * params.scale**2)


def _params(
    mechanism: Mechanism,
    dim: int,
    l2_clip: float,
    scale: float,
    beta: float,
    local_variance: int,
    min_honest: int,
    bits: int,
    epsilon: float,
    delta: float,
) -> DPParams:
    return DPParams(
        mechanism=mechanism, dim=dim, l2_clip=l2_clip, scale=scale, beta=beta,
        local_variance=local_variance, min_honest=min_honest, bits=bits,
        epsilon_budget=epsilon, delta=delta,
    )  # fmt: skip


def _smallest_variance(template: DPParams, participations: int, epsilon: float) -> int:
    # participation_epsilon is non-increasing in v for both mechanisms: every
    # term of skellam_rdp and ddgauss_rdp (and KLS21's tau) decreases as the
    # variance grows, and the RDP -> (eps, delta) conversion is increasing in
    # the RDP. So the feasible v form an interval [v*, MAX] found by bisection.
    def fits(v: int) -> bool:
        params = _replace_variance(template, v)
        return participation_epsilon(params, participations) <= epsilon

    if not fits(MAX_LOCAL_VARIANCE):
        raise ConfigError(
            f"no local variance <= {MAX_LOCAL_VARIANCE} reaches epsilon {epsilon} over "
            f"{participations} participations at scale {template.scale:.6g}; raise epsilon "
            "or min_honest, or lower participations or dim"
        )
    low, high = 0, MAX_LOCAL_VARIANCE  # not fits(low) (v = 0 is no noise), fits(high)
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high


def _replace_variance(params: DPParams, local_variance: int) -> DPParams:
    return _params(
        params.mechanism, params.dim, params.l2_clip, params.scale, params.beta,
        local_variance, params.min_honest, params.bits, params.epsilon_budget, params.delta,
    )  # fmt: skip


def calibrate(
    mechanism: Mechanism | str,
    *,
    dim: int,
    l2_clip: float,
    epsilon: float,
    delta: float,
    participations: int,
    min_honest: int,
    num_clients: int,
    bits: int = DEFAULT_BITS,
    beta: float = DEFAULT_BETA,
    modclip_prob: float = DEFAULT_MODCLIP_PROB,
    noise_multiplier: float | None = None,
) -> DPParams:
    """The parameters of a DP task: scale from the bits, then the least noise for the budget.

    Args:
        mechanism: Skellam or distributed discrete Gaussian.
        dim: ``d``, model weights.
        l2_clip: ``c`` > 0.
        epsilon: the per-client budget (at ``delta``).
        delta: in (0, 1).
        participations: rounds one client may join within the budget; the noise
            is calibrated so that this many rounds spend at most ``epsilon``.
        min_honest: ``m``, honest noise shares the sum is guaranteed to hold (§8).
        num_clients: ``n`` >= ``min_honest``, the largest cohort summed (every
            one of them adds noise, so it sets the range of the sum).
        bits: ``b``, modulus exponent of the secure sum.
        beta: conditional-rounding parameter in [0, 1).
        modclip_prob: target modular-clipping probability per coordinate.
        noise_multiplier: if given, the central noise multiplier ``z`` to reach
            instead of calibrating from ``epsilon``: ``v`` is the smallest int
            with ``sqrt(m v) / Delta_2 >= z``; ``participations`` rounds must
            still fit in ``epsilon``.

    Returns:
        :class:`DPParams` with ``participation_epsilon(params, participations) <= epsilon``
        and ``modclip_probability(params, num_clients) <= modclip_prob``.

    Raises:
        ConfigError: an argument out of range, or infeasible: too few bits for
            the cohort, a budget no variance up to ``MAX_LOCAL_VARIANCE``
            meets, a noise multiplier too small for the budget, or a scale
            that cannot hold the noise and the signal in ``b`` bits.
    """
    try:
        mech = Mechanism(mechanism)
    except ValueError as exc:
        raise ConfigError(f"unknown DP mechanism {mechanism!r}") from exc
    rotation_block(dim)  # validates dim
    c = check_real("l2_clip", l2_clip)
    eps = check_real("epsilon", epsilon)
    if c <= 0 or eps <= 0:
        raise ConfigError(f"l2_clip and epsilon must be > 0, got {l2_clip!r}, {epsilon!r}")
    k_rounds = check_int("participations", participations, 1, 1 << 40)
    m = check_int("min_honest", min_honest, 1, 1 << 32)
    n = check_int("num_clients", num_clients, m, 1 << 32)
    b = check_int("bits", bits, 2, 62)
    modclip_stddevs(modclip_prob)  # validates it
    z_target: float | None = None
    if noise_multiplier is not None:
        z_target = check_real("noise_multiplier", noise_multiplier)
        if z_target <= 0:
            raise ConfigError(f"noise_multiplier must be > 0, got {noise_multiplier!r}")
        z_start = z_target
    else:
        # Start from the central Gaussian that meets the budget; rounding
        # inflates the sensitivity, so the discrete mechanism needs a little more.
        z_start = gaussian_noise_multiplier(eps, check_real("delta", delta), k_rounds)
    real_variance = (z_start * c) ** 2 / m  # local variance in real units

    for _ in range(_MAX_ROUNDS):
        scale = scale_for_bits(
            bits=b, l2_clip=c, dim=dim, num_clients=n,
            real_stddev=math.sqrt(real_variance), modclip_prob=modclip_prob,
        )  # fmt: skip
        # Many bits and a small cohort ask for a scale whose integer noise
        # (gamma sigma)**2 would pass MAX_LOCAL_VARIANCE: keep it at half of
        # that (headroom for the rounding inflation); a smaller scale only
        # lowers the modular-clipping probability.
        scale = min(scale, math.sqrt(MAX_LOCAL_VARIANCE / 2 / real_variance))
        template = _params(mech, dim, c, scale, beta, 1, m, b, eps, delta)
        if z_target is not None:
            # sqrt(m v) / Delta_2 >= z  <=>  v >= z**2 Delta_2**2 / m.
            v = max(1, math.ceil(z_target**2 * template.l2_sensitivity**2 / m))
            if v > MAX_LOCAL_VARIANCE:
                raise ConfigError(
                    f"noise_multiplier {z_target} needs a local variance above "
                    f"{MAX_LOCAL_VARIANCE}; lower bits or raise min_honest"
                )
            params = _replace_variance(template, v)
            spent = participation_epsilon(params, k_rounds)
            if spent > eps:
                raise ConfigError(
                    f"noise_multiplier {z_target} spends epsilon {spent:.4g} over "
                    f"{k_rounds} participations, above the budget {eps}; raise "
                    "noise_multiplier or epsilon, or lower participations"
                )
        else:
            v = _smallest_variance(template, k_rounds, eps)
            params = _replace_variance(template, v)
        if modclip_probability(params, n) <= modclip_prob:
            return params
        # The integer noise exceeds what gamma was sized for (the rounded
        # sensitivity is larger than gamma c): size gamma for this noise.
        real_variance = max(real_variance * (1.0 + 1e-9), v / scale**2)
    raise ConfigError(
        f"no scale found whose noise fits {b} bits at modclip_prob {modclip_prob} for "
        f"{n} clients; raise bits or modclip_prob"
    )


def choose_bits(
    params: DPParams,
    num_clients: int,
    modclip_prob: float = DEFAULT_MODCLIP_PROB,
    low: int = 16,
    high: int = 32,
) -> int:
    """Smallest bit width in ``[low, high]`` keeping the modular clipping of ``params`` in bounds.

    The modular-clipping probability (:func:`modclip_probability`'s model) of
    ``num_clients`` clients at ``params``' scale and noise must be ``<= modclip_prob``.

    Raises:
        ConfigError: no ``b`` in the range suffices, or bad arguments.
    """
    check_int("low", low, 2, 62)
    check_int("high", high, low, 62)
    modclip_stddevs(modclip_prob)
    n = check_int("num_clients", num_clients, 1, 1 << 32)
    s = math.sqrt(
        _sum_variance(params.scale, params.l2_clip, params.rotation_block, params.local_variance, n)
    )
    for b in range(low, high + 1):
        if math.erfc(2.0 ** (b - 1) / (s * math.sqrt(2.0))) <= modclip_prob:
            return b
    raise ConfigError(
        f"no bit width in [{low}, {high}] keeps the modular-clipping probability of "
        f"{n} clients <= {modclip_prob}"
    )
