"""Privacy accounting of distributed-DP rounds in Rényi DP (specs/dp-v1.md §9).

Every party (the server opening a round, each client deciding whether to join
one) prices a round from the public :class:`~protocol.dp.params.DPParams`
alone, with the functions below, on the same fixed grid of Rényi orders
:data:`RDP_ORDERS`; so a client and the server compute the same epsilon, bit
for bit, from the same parameters.

- One participation of a client is one release of the noisy sum of a cohort.
  The sum is guaranteed to hold the noise of ``m = min_honest`` honest clients
  (§8); the accountant assumes no more. Its RDP curve is the closed form of
  the mechanism: Skellam [AKL21] or the sum of ``m`` discrete Gaussians
  [KLS21]. The sensitivities are those of the *rounded* update, in integer
  units (:attr:`DPParams.l2_sensitivity`, :attr:`DPParams.l1_sensitivity`).
- ``k`` participations compose additively in RDP [Mir17, Proposition 1]. No
  amplification by subsampling is claimed: the server chooses the cohorts and
  is not trusted to sample at random.
- RDP is converted to (epsilon, delta) by ``dp_accounting`` (the conversion of
  [CKS20, Proposition 12]), the only use of that package in ``protocol``; the
  central Gaussian baseline is ``dp_accounting``'s RDP accountant, on the same
  orders.

All functions are pure, take floats and return floats or float64 arrays, and
raise :class:`~protocol.errors.ConfigError` naming the bad argument.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Final

import dp_accounting  # type: ignore[import-untyped]
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]
from numpy.typing import NDArray

from protocol.dp.params import DPParams, Mechanism
from protocol.errors import ConfigError

__all__ = [
    "MAX_PARTICIPATIONS",
    "RDP_ORDERS",
    "ddgauss_rdp",
    "ddgauss_tau",
    "epsilon_from_rdp",
    "gaussian_epsilon",
    "gaussian_noise_multiplier",
    "max_participations",
    "participation_epsilon",
    "round_rdp",
    "skellam_rdp",
]

RDP_ORDERS: Final[tuple[float, ...]] = (*(float(a) for a in range(2, 129)), 256.0)
"""The Rényi orders of every RDP curve in the protocol: ``2, 3, ..., 128, 256``.

Integers only, as in google-research ``federated/distributed_dp/accounting_utils.py``
(``RDP_ORDERS = tuple(range(2, 129)) + (256,)``), which casts every order to
an integer before evaluating the Skellam bound of [AKL21]. Changing this tuple
changes every epsilon the protocol reports; it is quoted in spec §9.
"""

MAX_PARTICIPATIONS: Final = 1 << 40
"""Upper end of :func:`max_participations`' search (a budget that admits more is unlimited)."""

# The sum over k in tau (KLS21 Theorem 1) is evaluated term by term for the
# first _TAU_EXACT_TERMS terms; the rest is bounded above (see ddgauss_tau).
_TAU_EXACT_TERMS: Final = 1 << 16
_NOISE_MULTIPLIER_ITERATIONS: Final = 100


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {type(value).__name__}")
    as_float = float(value)
    if not (math.isfinite(as_float) and as_float > 0):
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")
    return as_float


def _count(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _delta(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"delta must be a real number, got {type(value).__name__}")
    delta = float(value)
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {value!r}")
    return delta


def _orders(orders: Sequence[float]) -> NDArray[np.float64]:
    array = np.asarray(orders, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError("orders must be a non-empty 1-D sequence")
    if not (np.all(np.isfinite(array)) and np.all(array > 1)):
        raise ConfigError("every RDP order must be finite and > 1")
    return array


def skellam_rdp(
    l1: float, l2: float, variance: float, orders: Sequence[float] = RDP_ORDERS
) -> NDArray[np.float64]:
    """RDP curve of the multi-dimensional Skellam mechanism, one release [AKL21].

    The released vector is ``f(x) + Z`` with ``Z`` i.i.d. symmetric Skellam of
    total variance ``variance`` per coordinate (the sum of the honest shares:
    Skellam is closed under sums, ``Sk(m v)``). For ``f`` of L1 and L2
    sensitivity ``l1``, ``l2`` (integer units), order ``alpha``::

        eps(alpha) = alpha l2**2 / (2 var)
                     + min(((2 alpha - 1) l2**2 + 6 l1) / (4 var**2), 3 l1 / (2 var))

    This is the RDP bound of the multi-dimensional Skellam mechanism of
    [AKL21] (§3) written with the variance ``var = 2 mu`` of ``Sk(mu, mu)``, as
    implemented by google-research ``federated/distributed_dp/accounting_utils.py``
    ``_skellam_rdp`` with the scale ``s = 1`` (our sensitivities are already in
    integer units). Its first term is the Gaussian mechanism's RDP at the same
    variance; the second vanishes as ``var`` grows.

    Args:
        l1: ``Delta_1`` > 0.
        l2: ``Delta_2`` > 0.
        variance: total noise variance per coordinate, > 0.
        orders: Rényi orders (> 1).

    Returns:
        ``eps(alpha)`` for each order, float64.

    Raises:
        ConfigError: a non-positive or non-finite argument.
    """
    l1 = _positive("l1 sensitivity", l1)
    l2 = _positive("l2 sensitivity", l2)
    var = _positive("variance", variance)
    alpha = _orders(orders)
    l2_sq = l2 * l2
    gaussian_term = alpha * l2_sq / (2.0 * var)
    correction = np.minimum(
        ((2.0 * alpha - 1.0) * l2_sq + 6.0 * l1) / (4.0 * var * var),
        3.0 * l1 / (2.0 * var),
    )
    result: NDArray[np.float64] = gaussian_term + correction
    return result


def ddgauss_tau(local_variance: float, num_clients: int) -> float:
    """The ``tau`` of [KLS21, Theorem 1] for a sum of ``n`` discrete Gaussians ``N_Z(0, v)``.

    ``tau = 10 * sum_{k=1}^{n-1} exp(-2 pi**2 v k / (k + 1))``: how far the
    sum of ``n`` i.i.d. ``N_Z(0, v)`` is from ``N_Z(0, n v)`` in the privacy
    analysis. ``tau = 0`` for ``n = 1``. The terms decrease with ``k``; the
    first ``2**16`` are summed and each of the rest is bounded by the last
    one, so the result is never below the theorem's ``tau``.

    Raises:
        ConfigError: ``local_variance <= 0`` or ``num_clients < 1``.
    """
    v = _positive("local variance", local_variance)
    n = _count("num_clients", num_clients)
    exact = min(n - 1, _TAU_EXACT_TERMS)
    if exact == 0:
        return 0.0
    k = np.arange(1, exact + 1, dtype=np.float64)
    terms = np.exp(-2.0 * math.pi**2 * v * k / (k + 1.0))
    total = float(np.sum(terms))
    rest = n - 1 - exact
    if rest > 0:
        total += rest * float(terms[-1])
    return 10.0 * total


def ddgauss_rdp(
    l2: float,
    local_variance: float,
    num_clients: int,
    dim: int,
    orders: Sequence[float] = RDP_ORDERS,
    l1: float | None = None,
) -> NDArray[np.float64]:
    """RDP curve of the distributed discrete Gaussian, one release [KLS21].

    The release is ``f(x) + sum_{i<n} Z_i`` with ``Z_i`` i.i.d. ``N_Z(0, v)**dim``
    (``n`` = the honest shares the sum is guaranteed to hold). With
    ``s = sqrt(n v)``, ``a = l2 / s``, ``b = l1 / s`` and ``tau`` of
    :func:`ddgauss_tau`, [KLS21, Proposition 14] (as implemented by
    google-research ``federated/distributed_dp/accounting_utils.py``
    ``compute_rdp_dgaussian``) gives, for order ``alpha``::

        eps(alpha) = min(alpha a**2 / 2 + tau dim,
                         alpha / 2 (a**2 + 2 b tau + tau**2 dim),
                         alpha / 2 (a + sqrt(dim) tau)**2)

    The middle term needs ``l1``; without it (``l1=None``) it is dropped,
    which only loosens the bound.

    Args:
        l2: ``Delta_2`` > 0, integer units.
        local_variance: ``v`` > 0, each share's ``sigma**2``.
        num_clients: ``n`` >= 1 noise shares in the sum.
        dim: the vector's length (``d``).
        orders: Rényi orders (> 1).
        l1: ``Delta_1`` > 0 or None.

    Returns:
        ``eps(alpha)`` for each order, float64.

    Raises:
        ConfigError: an argument out of range.
    """
    l2 = _positive("l2 sensitivity", l2)
    v = _positive("local variance", local_variance)
    n = _count("num_clients", num_clients)
    d = _count("dim", dim)
    alpha = _orders(orders)
    tau = ddgauss_tau(v, n)
    stddev = math.sqrt(n * v)
    a = l2 / stddev
    term_1 = alpha * a * a / 2.0 + tau * d
    term_3 = alpha / 2.0 * (a + math.sqrt(d) * tau) ** 2
    result: NDArray[np.float64] = np.minimum(term_1, term_3)
    if l1 is not None:
        b = _positive("l1 sensitivity", l1) / stddev
        term_2 = alpha / 2.0 * (a * a + 2.0 * b * tau + tau * tau * d)
        result = np.minimum(result, term_2)
    return result


def round_rdp(params: DPParams) -> NDArray[np.float64]:
    """RDP curve (on :data:`RDP_ORDERS`) of one participation in a round with ``params``.

    Uses the rounded sensitivities of ``params`` and the noise of
    ``m = params.min_honest`` shares of variance ``params.local_variance``:
    Skellam of total variance ``m v`` (:func:`skellam_rdp`), or the sum of
    ``m`` discrete Gaussians in dimension ``d`` (:func:`ddgauss_rdp`).
    """
    if not isinstance(params, DPParams):
        raise ConfigError(f"params must be DPParams, got {type(params).__name__}")
    m = params.min_honest
    v = params.local_variance
    if params.mechanism is Mechanism.SKELLAM:
        return skellam_rdp(params.l1_sensitivity, params.l2_sensitivity, float(m * v))
    return ddgauss_rdp(params.l2_sensitivity, float(v), m, params.dim, l1=params.l1_sensitivity)


def epsilon_from_rdp(
    rdp: NDArray[np.float64], delta: float, orders: Sequence[float] = RDP_ORDERS
) -> float:
    """The (epsilon, delta) guarantee of an RDP curve, by ``dp_accounting`` [CKS20, Prop. 12].

    ``eps = min_alpha rdp(alpha) + log1p(-1/alpha) - log(delta alpha) / (alpha - 1)``
    (clamped at 0), as ``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon``.

    Returns:
        epsilon >= 0 (``inf`` if every order's RDP is infinite).

    Raises:
        ConfigError: ``delta`` not in (0, 1), or ``rdp`` not one finite-or-inf
            value >= 0 per order.
    """
    delta = _delta(delta)
    alpha = _orders(orders)
    values = np.asarray(rdp, dtype=np.float64)
    if values.shape != alpha.shape:
        raise ConfigError(
            f"rdp has shape {values.shape}, expected one value per order {alpha.shape}"
        )
    if np.any(np.isnan(values)) or np.any(values < 0):
        raise ConfigError("rdp values must be >= 0 (or inf)")
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(alpha.tolist(), values.tolist(), delta)
    return float(epsilon)


SAMPLER_DISTANCE: Final = 2.0**-100
"""Per-coordinate statistical distance of the samplers to the exact laws, at most (dp-v1 §5.5)."""


def sampler_slack(rounds: Sequence[DPParams], epsilon_cap: float | None = None) -> float:
    """What the samplers' inexactness adds to delta over ``rounds`` (dp-v1 §9.5).

    A mechanism within statistical distance ``eta`` of an (epsilon, delta)-DP
    one is (epsilon, delta + (1 + e^epsilon) eta)-DP. One round's sum holds
    ``m d`` sampled coordinates of honest noise, each within
    :data:`SAMPLER_DISTANCE`; the factor uses ``epsilon_cap`` (the most the
    caller lets epsilon reach), by default the largest ``epsilon_budget`` of
    the rounds. ``inf`` when ``e^epsilon`` overflows.
    """
    if not rounds:
        return 0.0
    eta = math.fsum(p.min_honest * p.dim * SAMPLER_DISTANCE for p in rounds)
    cap = max(p.epsilon_budget for p in rounds) if epsilon_cap is None else epsilon_cap
    return (1.0 + math.exp(cap)) * eta if cap < 700 else math.inf


def composed_epsilon(
    rounds: Sequence[DPParams], delta: float, epsilon_cap: float | None = None
) -> float:
    """Epsilon at ``delta`` of one client that took part in ``rounds`` (any parameters).

    The rounds' RDP curves add up (composition); the samplers' slack
    (:func:`sampler_slack`) is taken out of ``delta`` before the conversion.

    Raises:
        ConfigError: the slack would eat half of ``delta`` or more (a budget
            so large that ``e^epsilon`` times the samplers' 2^-100 matters).
    """
    if not rounds:
        return 0.0
    delta = _delta(delta)
    slack = sampler_slack(rounds, epsilon_cap)
    if slack >= delta / 2:
        raise ConfigError(
            f"the samplers' statistical distance adds {slack:.3g} to delta {delta:g}: "
            "the epsilon budget is too large to be meaningful"
        )
    total = np.zeros(len(RDP_ORDERS), dtype=np.float64)
    for p in rounds:
        total += round_rdp(p)
    return epsilon_from_rdp(total, delta - slack)


def participation_epsilon(params: DPParams, participations: int) -> float:
    """Epsilon at ``params.delta`` spent by one client joining ``participations`` rounds.

    Each participation costs :func:`round_rdp`; they compose additively in RDP.
    ``participations = 0`` costs nothing.

    Raises:
        ConfigError: ``participations`` not an int >= 0.
    """
    k = _count("participations", participations, low=0)
    if k == 0:
        return 0.0
    return epsilon_from_rdp(k * round_rdp(params), _effective_delta(params, k))


def _effective_delta(params: DPParams, participations: int) -> float:
    # composed_epsilon over k equal rounds, without building the list.
    slack = sampler_slack([params]) * participations
    if slack >= params.delta / 2:
        raise ConfigError(
            f"the samplers' statistical distance adds {slack:.3g} to delta {params.delta:g}: "
            "the epsilon budget is too large to be meaningful"
        )
    return params.delta - slack


def max_participations(params: DPParams) -> int:
    """Largest ``k`` with ``participation_epsilon(params, k) <= params.epsilon_budget``.

    0 if one round already exceeds the budget; at most :data:`MAX_PARTICIPATIONS`.
    ``participation_epsilon`` is non-decreasing in ``k`` (RDP adds up, and the
    conversion is increasing in the RDP), so a doubling then a bisection finds it.
    """
    budget = params.epsilon_budget
    per_round = round_rdp(params)

    def fits(k: int) -> bool:
        try:
            return epsilon_from_rdp(k * per_round, _effective_delta(params, k)) <= budget
        except ConfigError:  # so many rounds that the samplers' slack eats delta
            return False

    if not fits(1):
        return 0
    # Invariant: fits(low); high is the next candidate, or past the search range.
    low, high = 1, 2
    while high <= MAX_PARTICIPATIONS and fits(high):
        low, high = high, high * 2
    high = min(high, MAX_PARTICIPATIONS + 1)
    # Now fits(low) and (high is beyond the range or not fits(high)).
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def gaussian_epsilon(noise_multiplier: float, participations: int, delta: float) -> float:
    """Epsilon of the central Gaussian mechanism, the baseline a trusted server would give.

    ``participations`` releases of a sum of sensitivity ``c`` with Gaussian noise
    of std ``z c``, no subsampling: ``dp_accounting``'s RDP accountant on
    :data:`RDP_ORDERS` with ``SelfComposedDpEvent(GaussianDpEvent(z), k)``.

    Raises:
        ConfigError: ``noise_multiplier <= 0``, ``participations < 1`` or a bad delta.
    """
    z = _positive("noise_multiplier", noise_multiplier)
    k = _count("participations", participations)
    delta = _delta(delta)
    accountant = dp_accounting.rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), k))
    return float(accountant.get_epsilon(delta))


def gaussian_noise_multiplier(epsilon: float, delta: float, participations: int) -> float:
    """Smallest central Gaussian noise multiplier ``z`` meeting ``epsilon`` over ``participations``.

    That is, the least ``z`` with ``gaussian_epsilon(z, participations, delta) <= epsilon``.

    Bisection on ``z`` (epsilon decreases as ``z`` grows); the returned value
    is the upper end of the final bracket, so it always meets the budget,
    within a relative ``2**-40`` of the exact root.

    Raises:
        ConfigError: bad arguments, or no ``z <= 1e6`` meets the budget.
    """
    target = _positive("epsilon", epsilon)
    delta = _delta(delta)
    k = _count("participations", participations)
    high = 1.0
    while gaussian_epsilon(high, k, delta) > target:
        high *= 2.0
        if high > 1e6:
            raise ConfigError(
                f"no Gaussian noise multiplier <= 1e6 gives epsilon {target} at delta {delta} "
                f"over {k} participations"
            )
    low = high / 2.0 if high > 1.0 else 0.0
    for _ in range(_NOISE_MULTIPLIER_ITERATIONS):
        if high - low <= high * 2.0**-40:
            break
        mid = (low + high) / 2.0
        if mid > 0 and gaussian_epsilon(mid, k, delta) <= target:
            high = mid
        else:
            low = mid
    return high
