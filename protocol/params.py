"""SecAgg+ graph parameters: sparse-graph degree and Shamir threshold.

SecAgg+ (Bell, Bengtsson, Bonawitz, Gascón, Lepoint, Raykova, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020) replaces
the complete "who shares keys with whom" graph of the original SecAgg by a
random sparse graph. This module picks that graph's parameters from the threat
model: ``n`` clients, at most a fraction ``delta`` of which drop out and at most
a fraction ``gamma`` of which are corrupt (colluding with the server).

The algorithm is a port of Google's production parameter finder,
``fcp/secagg/server/graph_parameter_finder.cc`` together with its
hypergeometric helper ``fcp/secagg/server/distribution_utilities.cc``
(repository google-parfait/federated-compute). It reproduces every row of the
table in ``graph_parameter_finder_test.cc`` exactly, degree and threshold (fcp's
test itself only demands the same degree and a threshold at most theirs); see
``tests/protocol/test_params.py``. Floating-point operations are performed in
the same order as in fcp so that boundary decisions round the same way.

The graph and what ``degree`` and ``threshold`` count
----------------------------------------------------
The graph is a *Harary graph* on a uniformly randomly permuted ring: each
client is joined to the ``degree // 2`` clients immediately before it and the
``degree // 2`` immediately after it on the ring.

* ``degree`` (``k``, always even) is the number of **other** clients a client
  is joined to. It does **not** include the client itself. This is exactly the
  "degree" of fcp's table (fcp's ``number_of_neighbors``). fcp then builds its
  ``SecretSharingHararyGraph`` with degree ``k + 1`` to add a self-edge
  (``secagg_server.cc``: "We add 1 to the computed degree to account for a
  self-edge"), so each fcp client sees a neighbour list of ``k + 1`` entries
  including itself; but the client's own Shamir share is a blank that is never
  sent (``secagg_client_r1_share_keys_base_state.cc``), so only the ``k``
  other neighbours ever hold shares of its secrets.
* ``threshold`` (``t``) is the number of shares needed to reconstruct a secret
  (polynomial degree ``t - 1``), counted among those ``k`` other neighbours.
  The analysis below counts corrupt and surviving clients among the ``k``
  other neighbours only; the client itself is never counted. It always holds
  that ``2 <= t <= k <= n - 2``.

The search (fcp's ``ComputeDegreeAndThreshold``)
-------------------------------------------------
For ``k = 2, 4, 6, ...`` while ``k < n - 1`` return the first ``k`` that passes
three tests, with the threshold found for it (the smallest admissible one,
which saves work when reconstructing). The security budget ``2^-sigma`` is split
evenly over two bad events, so each gets ``2^-(sigma+1)``:

1. *Connectivity.* The graph restricted to honest survivors must stay
   connected (otherwise the server learns partial sums). A Harary ring can only
   be disconnected by removing ``k/2`` consecutive clients in two disjoint
   places; a union bound over the ``n (n - k - 1) / 2`` such pairs of gaps,
   each of which is bad with probability
   ``[B! / (B - k)!] / [n! / (n - k)!]`` where ``B = floor(gamma n) +
   floor(delta n)``, must be below ``2^-(sigma+1)``.
2. *Privacy.* The number of corrupt neighbours of a client is hypergeometric
   (population ``n``, ``floor(gamma n)`` marked, ``k`` drawn). ``t1`` is the
   smallest integer with ``Pr[corrupt neighbours > t1] <= 2^-(sigma+1) / n``
   (a union bound over the ``n`` clients); the threshold must exceed it.
   A *semi-malicious* server can tell different honest neighbours of a
   client different stories (dropped / survived) and so collect ``t`` shares
   of both of its secrets; any two sets of ``t`` shares among ``k`` overlap in
   at least ``2t - k`` neighbours, which the corrupt ones must cover, so fcp
   requires ``2t - k > t1`` by replacing ``t1`` with
   ``ceil((t1 + k - 1.25) / 2)``.
3. *Correctness.* The number of surviving neighbours is hypergeometric
   (population ``n``, ``ceil((1 - delta) n)`` marked, ``k`` drawn); ``t2`` is
   the largest threshold with ``Pr[survivors < t2] < 2^-eta / n``. The degree is
   accepted iff ``t1 < t2``; the threshold is ``max(t1 + 1, 2)`` (fcp's Shamir
   implementation requires ``t >= 2``).

The quantiles are computed exactly as fcp does: start from an inverted
Hoeffding bound and walk the probability mass function upwards, summing
tails until the terms fall below ``1e-16`` of the sum.

Complete graph
--------------
fcp's finder never returns the complete graph: when no ``k < n - 1`` works
(only small cohorts: e.g. ``n <= 29`` at 45%/45% semi-honest, ``n <= 27`` at
30%/30% semi-malicious, ``n <= 3`` at 5%/5%) it fails, and fcp's server
(``SecAggServer::Create``) then falls back
to classic full-graph SecAgg with threshold
``max(minimum_number_of_clients_to_proceed, ceil((1 - delta) n))``, validated
by ``CheckFullGraphParameters``. :func:`complete_graph_threshold` and
:func:`check_complete_graph_threshold` port that fallback. In fcp's complete
graph every client's neighbour list is all ``n`` clients including itself.

Differences from fcp
--------------------
* fcp's ``NONE`` adversary class is not offered: it is fcp's semi-honest
  computation with ``gamma = 0`` forced, which is what
  ``AdversaryClass.SEMI_HONEST`` with ``corrupt_rate=0`` gives.
* ``security_bits`` and ``correctness_bits`` are parameters (fcp hard-codes 40
  and 20, the defaults here).
* NaN rates are rejected (fcp's ``rate < 0 || rate >= 1`` lets NaN through).

Caveats inherited from fcp (kept for agreement with its table)
--------------------------------------------------------------
Found by recomputing the bounds exactly with integer arithmetic:

* The clamp ``t = max(t1 + 1, 2)`` happens after the test ``t1 < t2``. When
  ``floor(gamma n) = 0`` (so ``t1 = 0``), a degree with ``t2 = 1`` is accepted
  and the threshold 2 exceeds ``t2``: the correctness bound then fails. This
  only matters for small cohorts (seen up to ``n = 133``); fcp's own row
  ``n = 10``, 5% corrupt, 33% dropout gives ``(4, 2)``, where a client has fewer
  than 2 surviving neighbours with probability 1/30. (Also requiring
  ``t2 >= 2`` fixes it, but changes that row and two others to degree 6.)
* The neighbour counts are modelled as draws from a population of ``n``,
  whereas a client's neighbours are drawn from the ``n - 1`` others (all the
  corrupt clients among them). With population ``n - 1`` the privacy tail
  exceeds its ``2^-(sigma+1) / n`` budget by up to 1.7x on a grid of
  ``n <= 3000``, i.e. about 39.6 rather than 40 bits in the worst case seen.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from protocol.errors import ParameterError

__all__ = [
    "DEFAULT_CORRECTNESS_BITS",
    "DEFAULT_SECURITY_BITS",
    "MAX_BITS",
    "MAX_CLIENTS",
    "MAX_SEMI_HONEST_RATE_SUM",
    "MAX_SEMI_MALICIOUS_RATE_SUM",
    "AdversaryClass",
    "GraphParameters",
    "check_complete_graph_threshold",
    "complete_graph_threshold",
    "corrupt_neighbour_bound",
    "derive_parameters",
]

DEFAULT_SECURITY_BITS = 40
"""Statistical security ``sigma``: privacy fails with probability < 2^-40."""

DEFAULT_CORRECTNESS_BITS = 20
"""Correctness ``eta``: the round fails with probability < 2^-20."""

MAX_CLIENTS = 1_000_000
"""fcp's ``kMaxNumberOfClients``; its finder is only tested up to this size."""

MAX_SEMI_HONEST_RATE_SUM = 0.9
"""Semi-honest feasibility limit: ``corrupt_rate + dropout_rate <= 0.9``."""

MAX_SEMI_MALICIOUS_RATE_SUM = 0.9
"""Semi-malicious feasibility limit: ``corrupt_rate + 2 * dropout_rate <= 0.9``."""

MAX_BITS = 256
"""Upper limit on ``security_bits`` and ``correctness_bits``; keeps the tail
probabilities ``2^-bits / n`` far from floating-point underflow."""

# fcp's kSmall: nudges floor/ceil of rate * n so that floating-point error in
# the product cannot round the number of bad clients in the insecure direction.
_SMALL = 1e-14
# fcp's CDFImpl stops summing a tail once a term is below 1e-16 of the sum.
_TAIL_RELATIVE_CUTOFF = 1e-16
# The semi-malicious threshold shift of fcp's CheckNumberOfNeighbors.
_SEMI_MALICIOUS_SHIFT = 1.25
# fcp's Shamir implementation needs at least two shares to reconstruct.
_MIN_THRESHOLD = 2


# (str, Enum) rather than StrEnum, like the library's other enums.
class AdversaryClass(str, Enum):  # noqa: UP042
    """Who the server may collude with and how it may deviate.

    ``SEMI_HONEST`` is fcp's ``CURIOUS_SERVER``: the server and the corrupt
    clients follow the protocol but pool what they see. ``SEMI_MALICIOUS`` is
    fcp's ``SEMI_MALICIOUS_SERVER``: the server may also lie about which
    clients dropped out (Bell et al. CCS 2020).
    """

    SEMI_HONEST = "semi-honest"
    SEMI_MALICIOUS = "semi-malicious"


@dataclass(frozen=True)
class GraphParameters:
    """Parameters of the SecAgg+ sharing graph.

    Attributes:
        degree: Number of *other* clients each client is joined to (even;
            excludes the client itself, as in fcp's table).
        threshold: Shares needed to reconstruct a client's secret, counted among
            those ``degree`` neighbours; ``2 <= threshold <= degree``.
    """

    degree: int
    threshold: int


def derive_parameters(
    num_clients: int,
    dropout_rate: float,
    corrupt_rate: float,
    adversary: AdversaryClass,
    *,
    security_bits: int = DEFAULT_SECURITY_BITS,
    correctness_bits: int = DEFAULT_CORRECTNESS_BITS,
) -> GraphParameters:
    """Derive the SecAgg+ Harary-graph degree and Shamir threshold.

    Port of fcp's ``ComputeHararyGraphParameters`` (see the module docstring for
    the algorithm and for what ``degree`` counts). Results are cached.

    Args:
        num_clients: Number of clients ``n`` in the round, ``1 <= n <= MAX_CLIENTS``.
        dropout_rate: Largest fraction ``delta`` of clients that may drop out,
            in ``[0, 1)``.
        corrupt_rate: Largest fraction ``gamma`` of clients that may be corrupt,
            in ``[0, 1)``.
        adversary: Adversary class of the server.
        security_bits: ``sigma``, in ``[1, MAX_BITS]``; privacy is lost with
            probability < ``2^-sigma``.
        correctness_bits: ``eta``, in ``[1, MAX_BITS]``; the round fails with
            probability < ``2^-eta``.

    Returns:
        The smallest even degree that meets the bounds, with the smallest
        threshold admissible for it.

    Raises:
        ParameterError: If an input is out of range (``n`` not in
            ``[1, MAX_CLIENTS]``, a rate not in ``[0, 1)``, bits not in
            ``[1, MAX_BITS]``),
            if ``corrupt_rate + dropout_rate > 0.9`` (semi-honest) or
            ``corrupt_rate + 2 * dropout_rate > 0.9`` (semi-malicious), or if no
            degree ``k < n - 1`` meets the bounds (use the complete graph then,
            see :func:`complete_graph_threshold`). The message names the limit.
    """
    adversary = _validate_threat_model(num_clients, dropout_rate, corrupt_rate, adversary)
    # All further arithmetic is in doubles, as in fcp.
    dropout_rate, corrupt_rate = float(dropout_rate), float(corrupt_rate)
    for name, bits in (("security_bits", security_bits), ("correctness_bits", correctness_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ParameterError(f"{name} must be an integer in [1, {MAX_BITS}], got {bits!r}")
    if adversary is AdversaryClass.SEMI_HONEST:
        if corrupt_rate + dropout_rate > MAX_SEMI_HONEST_RATE_SUM:
            raise ParameterError(
                "semi-honest adversary: corrupt_rate + dropout_rate must be <= "
                f"{MAX_SEMI_HONEST_RATE_SUM}, got {corrupt_rate} + {dropout_rate}"
            )
    elif corrupt_rate + 2 * dropout_rate > MAX_SEMI_MALICIOUS_RATE_SUM:
        raise ParameterError(
            "semi-malicious adversary: corrupt_rate + 2 * dropout_rate must be <= "
            f"{MAX_SEMI_MALICIOUS_RATE_SUM}, got {corrupt_rate} + 2 * {dropout_rate}"
        )
    found = _search(
        num_clients,
        corrupt_rate,
        dropout_rate,
        adversary is AdversaryClass.SEMI_MALICIOUS,
        security_bits,
        correctness_bits,
    )
    if found is None:
        raise ParameterError(
            f"no even degree k with 2 <= k < num_clients - 1 = {num_clients - 1} gives "
            f"2^-{security_bits} security and 2^-{correctness_bits} correctness for "
            f"num_clients={num_clients}, dropout_rate={dropout_rate}, "
            f"corrupt_rate={corrupt_rate}, {adversary.value} adversary; "
            "use the complete graph (complete_graph_threshold)"
        )
    return GraphParameters(degree=found[0], threshold=found[1])


def complete_graph_threshold(
    num_clients: int,
    dropout_rate: float,
    corrupt_rate: float,
    adversary: AdversaryClass,
) -> int:
    """Threshold of classic complete-graph SecAgg, as fcp's server falls back to.

    fcp uses ``ceil((1 - dropout_rate) * n)`` (the largest threshold that still
    survives ``floor(dropout_rate * n)`` dropouts) and validates it with
    ``CheckFullGraphParameters`` (:func:`check_complete_graph_threshold`). Every
    client shares with all ``n`` clients.

    Args:
        num_clients: Number of clients ``n``, ``>= 1``.
        dropout_rate: Largest dropout fraction ``delta``, in ``[0, 1)``.
        corrupt_rate: Largest corrupt fraction ``gamma``, in ``[0, 1)``.
        adversary: Adversary class of the server.

    Returns:
        The threshold ``ceil((1 - dropout_rate) * num_clients)``.

    Raises:
        ParameterError: If an input is out of range or that threshold is not
            secure (see :func:`check_complete_graph_threshold`).
    """
    _validate_threat_model(num_clients, dropout_rate, corrupt_rate, adversary, max_clients=None)
    threshold = math.ceil((1 - float(dropout_rate)) * num_clients)
    check_complete_graph_threshold(num_clients, threshold, dropout_rate, corrupt_rate, adversary)
    return threshold


def check_complete_graph_threshold(
    num_clients: int,
    threshold: int,
    dropout_rate: float,
    corrupt_rate: float,
    adversary: AdversaryClass,
) -> None:
    """Check a complete-graph threshold, porting fcp's ``CheckFullGraphParameters``.

    The conditions are deterministic (no probabilities): ``1 < t <= n``;
    ``t >= ceil((1 - delta) n)`` so the round survives ``delta n`` dropouts;
    ``t > ceil(gamma n)`` against a semi-honest server, and
    ``t > ceil((n + gamma n) / 2)`` against a semi-malicious one (two disjoint
    views of the dropouts together with the corrupt clients must not reach ``t``).

    Args:
        num_clients: Number of clients ``n``, ``>= 1``.
        threshold: Candidate threshold ``t``.
        dropout_rate: Largest dropout fraction ``delta``, in ``[0, 1)``.
        corrupt_rate: Largest corrupt fraction ``gamma``, in ``[0, 1)``.
        adversary: Adversary class of the server.

    Raises:
        ParameterError: If an input is out of range or ``threshold`` violates a
            condition; the message names it.
    """
    adversary = _validate_threat_model(
        num_clients, dropout_rate, corrupt_rate, adversary, max_clients=None
    )
    dropout_rate, corrupt_rate = float(dropout_rate), float(corrupt_rate)
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ParameterError(f"threshold must be an integer, got {threshold!r}")
    if threshold <= 1 or threshold > num_clients:
        raise ParameterError(
            f"threshold must be > 1 and <= num_clients = {num_clients}, got {threshold}"
        )
    min_for_dropouts = math.ceil((1 - dropout_rate) * num_clients)
    if threshold < min_for_dropouts:
        raise ParameterError(
            "threshold must be >= ceil((1 - dropout_rate) * num_clients) = "
            f"{min_for_dropouts}, got {threshold}"
        )
    if adversary is AdversaryClass.SEMI_HONEST:
        corrupt = math.ceil(corrupt_rate * num_clients)
        if threshold <= corrupt:
            raise ParameterError(
                "semi-honest adversary: threshold must be > ceil(corrupt_rate * num_clients)"
                f" = {corrupt}, got {threshold}"
            )
    else:
        half = math.ceil((num_clients + corrupt_rate * num_clients) / 2)
        if threshold <= half:
            raise ParameterError(
                "semi-malicious adversary: threshold must be > "
                f"ceil((num_clients + corrupt_rate * num_clients) / 2) = {half}, got {threshold}"
            )


def _validate_threat_model(
    num_clients: int,
    dropout_rate: float,
    corrupt_rate: float,
    adversary: AdversaryClass,
    *,
    max_clients: int | None = MAX_CLIENTS,
) -> AdversaryClass:
    """Check the ranges shared by every entry point; return the adversary as an enum."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int):
        raise ParameterError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ParameterError(f"num_clients must be >= 1, got {num_clients}")
    if max_clients is not None and num_clients > max_clients:
        raise ParameterError(
            f"num_clients must be <= {max_clients} (fcp's tested limit), got {num_clients}"
        )
    _check_rate("dropout_rate", dropout_rate)
    _check_rate("corrupt_rate", corrupt_rate)
    try:
        return AdversaryClass(adversary)
    except ValueError:
        raise ParameterError(
            f"adversary must be one of {[a.value for a in AdversaryClass]}, got {adversary!r}"
        ) from None


def _check_rate(name: str, rate: object) -> None:
    # Typed ``object``: callers may pass anything at run time.
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ParameterError(f"{name} must be a real number in [0, 1), got {rate!r}")
    # Written so that NaN fails too.
    if not 0 <= float(rate) < 1:
        raise ParameterError(f"{name} must be in [0, 1), got {rate!r}")


@lru_cache(maxsize=256)
def _search(
    n: int,
    corrupt_rate: float,
    dropout_rate: float,
    semi_malicious: bool,
    security_bits: int,
    correctness_bits: int,
) -> tuple[int, int] | None:
    """fcp's ``ComputeDegreeAndThreshold``: first even ``k < n - 1`` that passes."""
    # The security budget is split evenly over the two bad events
    # (disconnection, too many corrupt neighbours): 2^-(sigma+1) each.
    bits_per_event = security_bits + 1.0
    log_event_bound = -bits_per_event * math.log(2)
    privacy_quantile = math.pow(2, -bits_per_event) / n
    correctness_quantile = math.pow(2, -float(correctness_bits)) / n

    max_corrupt = math.floor((corrupt_rate + _SMALL) * n)
    max_dropped = math.floor((dropout_rate + _SMALL) * n)
    max_bad = max_corrupt + max_dropped
    min_surviving = math.ceil((1 - dropout_rate - _SMALL) * n)
    lgamma_n1 = math.lgamma(n + 1)
    lgamma_bad1 = math.lgamma(max_bad + 1)
    log_n = math.log(n)
    log_2 = math.log(2)

    for k in range(2, n - 1, 2):
        # (1) Union bound on the Harary ring being disconnected by two runs of
        # k/2 consecutive bad (corrupt or dropped) clients: fcp's
        # LogProbOfDisconnectedRandomHarary. If k exceeds the bad clients, the
        # probability is 0.
        if k <= max_bad:
            log_pairs = log_n + math.log(n - k - 1) - log_2
            log_disconnected = (
                log_pairs
                + lgamma_bad1
                + math.lgamma(n - k + 1)
                - lgamma_n1
                - math.lgamma(max_bad - k + 1)
            )
            if log_disconnected >= log_event_bound:
                continue

        # (2) t1: Pr[corrupt neighbours > t1] <= 2^-(sigma+1) / n.
        corrupt_neighbours = _Hypergeometric(n, max_corrupt, k)
        t1 = corrupt_neighbours.find_quantile(privacy_quantile, complement=True)
        # (3) t2: Pr[surviving neighbours <= t2 - 1] < 2^-eta / n (rounded
        # outwards by the quantile, then corrected as fcp does).
        surviving_neighbours = _Hypergeometric(n, min_surviving, k)
        t2 = surviving_neighbours.find_quantile(correctness_quantile)
        if surviving_neighbours.cdf(t2) < correctness_quantile:
            t2 += 1

        if semi_malicious:
            # Two inconsistent views of the dropouts overlap in >= 2t - k
            # neighbours, which the corrupt ones must cover: need 2t - k > t1.
            t1 = math.ceil((t1 + k - _SEMI_MALICIOUS_SHIFT) / 2)
        if t2 <= t1:
            continue
        return k, int(max(t1 + 1, _MIN_THRESHOLD))
    return None


class _Hypergeometric:
    """fcp's ``HypergeometricDistribution``: ``sampled`` draws without replacement
    from ``total`` items of which ``marked`` are marked; counts marked draws.

    The ``*_impl`` methods take ``counted`` so that the upper tail of the marked
    count can be computed as the lower tail of the unmarked count, avoiding the
    cancellation of ``1 - cdf`` in the extreme upper tail.
    """

    __slots__ = ("_log_const", "_marked", "_sampled", "_total")

    def __init__(self, total: int, marked: int, sampled: int) -> None:
        if not (0 <= marked <= total and 0 <= sampled <= total):
            raise ValueError(f"invalid hypergeometric({total}, {marked}, {sampled})")
        self._total = total
        self._marked = marked
        self._sampled = sampled
        self._log_const: dict[int, float] = {}

    def _log_pmf_const(self, counted: int) -> float:
        # The x-independent part of fcp's log-pmf, summed in fcp's order.
        const = self._log_const.get(counted)
        if const is None:
            const = (
                _lgamma_int(self._sampled + 1)
                + _lgamma_int(counted + 1)
                + _lgamma_int(self._total - counted + 1)
                + _lgamma_int(self._total - self._sampled + 1)
            )
            self._log_const[counted] = const
        return const

    def _pmf_impl(self, x: float, counted: int) -> float:
        total, sampled = self._total, self._sampled
        if x < 0 or x > sampled or x > counted:
            return 0.0
        if total + x < counted + sampled:
            return 0.0
        lpmf = (
            self._log_pmf_const(counted)
            - math.lgamma(x + 1)
            - math.lgamma(sampled - x + 1)
            - math.lgamma(counted - x + 1)
            - _lgamma_int(total + 1)
            - math.lgamma(total - sampled - counted + x + 1)
        )
        return math.exp(lpmf)

    def cdf(self, x: float) -> float:
        """Pr[X <= x], summing whichever tail is shorter."""
        x = math.floor(x)
        mean = self._marked * float(self._sampled) / self._total
        if x > mean:
            return 1 - self._cdf_impl(self._sampled - x - 1, self._total - self._marked)
        return self._cdf_impl(x, self._marked)

    def _cdf_impl(self, x: float, counted: int) -> float:
        # Sum pmf(x), pmf(x-1), ... by the pmf recurrence until the terms are
        # negligible relative to the sum.
        current = self._pmf_impl(x, counted)
        result = 0.0
        rest = self._total - counted - self._sampled
        sampled = self._sampled
        while current > result * _TAIL_RELATIVE_CUTOFF:
            result += current
            current *= x
            current *= rest + x
            current /= counted - x + 1
            current /= sampled - x + 1
            x -= 1
        return result

    def find_quantile(self, quantile: float, complement: bool = False) -> float:
        """The value whose cdf is ``quantile``, rounded outwards (away from the median).

        ``complement=True`` means ``1 - quantile`` without its rounding error.
        """
        if quantile > 0.5:
            quantile = 1 - quantile
            complement = not complement
        if complement:
            unmarked = self._total - self._marked
            return self._sampled - self._find_quantile_impl(quantile, unmarked) - 1
        return self._find_quantile_impl(quantile, self._marked)

    def _find_quantile_impl(self, quantile: float, counted: int) -> float:
        total, sampled = self._total, self._sampled
        basic_bound = float(counted + sampled - total - 1)
        # Inverting Hoeffding's tail bound gives a lower bound on the quantile,
        # so the walk below starts close to the answer.
        fancy_bound = sampled * (counted / total - math.sqrt(-math.log(quantile) / (2 * sampled)))
        result = -1.0
        if basic_bound > result:
            result = basic_bound
        if fancy_bound > result:
            result = fancy_bound
        result = float(math.floor(result))

        current_cdf = self._cdf_impl(result, counted)
        current_pmf = self._pmf_impl(result, counted)
        rest = total - counted - sampled
        while current_cdf < quantile and result < sampled:
            if current_pmf > 0:
                current_pmf /= result + 1
                current_pmf /= rest + result + 1
                current_pmf *= counted - result
                current_pmf *= sampled - result
            else:
                current_pmf = self._pmf_impl(result + 1, counted)
            current_cdf += current_pmf
            result += 1
        return result - 1


@lru_cache(maxsize=4096)
def _lgamma_int(m: int) -> float:
    return math.lgamma(m)


def corrupt_neighbour_bound(
    num_clients: int,
    degree: int,
    corrupt_rate: float,
    *,
    security_bits: int = DEFAULT_SECURITY_BITS,
) -> int:
    """``t1`` of the privacy test: a high-probability bound on corrupt neighbours.

    The smallest integer ``t1`` with ``Pr[corrupt neighbours > t1] <=
    2^-(sigma+1) / n``, the number of corrupt neighbours of a client being
    hypergeometric (population ``n``, ``floor(gamma n)`` marked, ``degree``
    drawn): exactly the ``t1`` that :func:`derive_parameters` computes before
    its semi-malicious adjustment. ``protocol.policy`` uses it so that a
    client and the orchestrator bound the colluders the same way.

    Raises:
        ParameterError: an input is out of range.
    """
    _validate_threat_model(num_clients, 0.0, corrupt_rate, AdversaryClass.SEMI_HONEST)
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree < num_clients:
        raise ParameterError(f"degree must be an integer in [1, {num_clients - 1}], got {degree!r}")
    if isinstance(security_bits, bool) or not isinstance(security_bits, int):
        raise ParameterError(f"security_bits must be an integer, got {security_bits!r}")
    if not 1 <= security_bits <= MAX_BITS:
        raise ParameterError(f"security_bits must be in [1, {MAX_BITS}], got {security_bits}")
    return _corrupt_neighbour_bound(num_clients, degree, float(corrupt_rate), security_bits)


@lru_cache(maxsize=4096)
def _corrupt_neighbour_bound(n: int, k: int, corrupt_rate: float, security_bits: int) -> int:
    # The same expressions, in the same order, as in _search.
    privacy_quantile = math.pow(2, -(security_bits + 1.0)) / n
    max_corrupt = math.floor((corrupt_rate + _SMALL) * n)
    t1 = _Hypergeometric(n, max_corrupt, k).find_quantile(privacy_quantile, complement=True)
    return int(t1)
