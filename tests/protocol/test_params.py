"""Tests of protocol.params against fcp's published table and exact recomputation.

The reference is google-parfait/federated-compute,
``fcp/secagg/server/graph_parameter_finder_test.cc``: every row of its
``HararyGraphParameterFinderTest_Feasible`` and
``HararyGraphParameterFinderTest_InvalidOrUnfeasible`` suites and both of its
``FullGraphCeckParamsTest`` cases are mirrored here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ConfigError, ParameterError
from protocol.params import (
    MAX_CLIENTS,
    AdversaryClass,
    GraphParameters,
    check_complete_graph_threshold,
    complete_graph_threshold,
    derive_parameters,
)

SH = AdversaryClass.SEMI_HONEST
SM = AdversaryClass.SEMI_MALICIOUS
SECURITY_BITS = 40
CORRECTNESS_BITS = 20
# fcp's kSmall, used to turn rates into client counts exactly as the finder does.
SMALL = 1e-14


class Row(NamedTuple):
    fcp_class: str  # CURIOUS_SERVER, SEMI_MALICIOUS_SERVER or NONE
    n: int
    corrupt_rate: float  # fcp's adversarial_rate
    dropout_rate: float
    degree: int
    threshold: int

    @property
    def adversary(self) -> AdversaryClass:
        # fcp's NONE class runs the semi-honest computation with the adversarial
        # rate forced to 0; our API expresses it as SEMI_HONEST with rate 0.
        return SM if self.fcp_class == "SEMI_MALICIOUS_SERVER" else SH

    @property
    def id(self) -> str:
        return f"{self.n}-g{self.corrupt_rate}-d{self.dropout_rate}-{self.fcp_class}"


_CS, _SMS, _NONE = "CURIOUS_SERVER", "SEMI_MALICIOUS_SERVER", "NONE"

# Row(fcp class, n, adversarial rate, dropout rate, expected degree, expected
# threshold), transcribed in the order of fcp's INSTANTIATE_TEST_SUITE_P list.
FCP_FEASIBLE: list[Row] = [
    # adversarial_rate = 0.45, dropout_rate = 0.45, CURIOUS_SERVER
    Row(_CS, 100, 0.45, 0.45, 92, 46),
    Row(_CS, 1000, 0.45, 0.45, 822, 417),
    Row(_CS, 10000, 0.45, 0.45, 3494, 1771),
    Row(_CS, 100000, 0.45, 0.45, 5508, 2788),
    Row(_CS, 1000000, 0.45, 0.45, 6240, 3156),
    # adversarial_rate = 0.33, dropout_rate = 0.33, CURIOUS_SERVER
    Row(_CS, 10, 0.33, 0.33, 8, 4),
    Row(_CS, 100, 0.33, 0.33, 68, 34),
    Row(_CS, 1000, 0.33, 0.33, 286, 150),
    Row(_CS, 10000, 0.33, 0.33, 422, 221),
    Row(_CS, 100000, 0.33, 0.33, 480, 251),
    Row(_CS, 1000000, 0.33, 0.33, 518, 270),
    # adversarial_rate = 0.3, dropout_rate = 0.3, SEMI_MALICIOUS_SERVER
    Row(_SMS, 100, 0.3, 0.3, 92, 62),
    Row(_SMS, 1000, 0.3, 0.3, 872, 584),
    Row(_SMS, 10000, 0.3, 0.3, 4822, 3230),
    Row(_SMS, 100000, 0.3, 0.3, 9388, 6286),
    Row(_SMS, 1000000, 0.3, 0.3, 11136, 7454),
    # adversarial_rate = 0.05, dropout_rate = 0.33, CURIOUS_SERVER
    Row(_CS, 10, 0.05, 0.33, 4, 2),
    Row(_CS, 100, 0.05, 0.33, 28, 6),
    Row(_CS, 1000, 0.05, 0.33, 72, 24),
    Row(_CS, 10000, 0.05, 0.33, 86, 29),
    Row(_CS, 100000, 0.05, 0.33, 96, 32),
    Row(_CS, 1000000, 0.05, 0.33, 102, 34),
    # adversarial_rate = 0.05, dropout_rate = 0.33, SEMI_MALICIOUS_SERVER
    Row(_SMS, 10, 0.05, 0.33, 8, 5),
    Row(_SMS, 100, 0.05, 0.33, 72, 39),
    Row(_SMS, 1000, 0.05, 0.33, 398, 223),
    Row(_SMS, 10000, 0.05, 0.33, 746, 420),
    Row(_SMS, 100000, 0.05, 0.33, 882, 496),
    Row(_SMS, 1000000, 0.05, 0.33, 970, 545),
    # adversarial_rate = 0.33, dropout_rate = 0.05, CURIOUS_SERVER
    Row(_CS, 10, 0.33, 0.05, 4, 4),
    Row(_CS, 100, 0.33, 0.05, 34, 29),
    Row(_CS, 1000, 0.33, 0.05, 78, 60),
    Row(_CS, 10000, 0.33, 0.05, 92, 70),
    Row(_CS, 100000, 0.33, 0.05, 102, 77),
    Row(_CS, 1000000, 0.33, 0.05, 110, 83),
    # adversarial_rate = 0.33, dropout_rate = 0.05, SEMI_MALICIOUS_SERVER
    Row(_SMS, 10, 0.33, 0.05, 4, 4),
    Row(_SMS, 100, 0.33, 0.05, 42, 37),
    Row(_SMS, 1000, 0.33, 0.05, 132, 109),
    Row(_SMS, 10000, 0.33, 0.05, 178, 146),
    Row(_SMS, 100000, 0.33, 0.05, 196, 160),
    Row(_SMS, 1000000, 0.33, 0.05, 212, 173),
    # adversarial_rate = 0.05, dropout_rate = 0.05, CURIOUS_SERVER
    Row(_CS, 10, 0.05, 0.05, 2, 2),
    Row(_CS, 100, 0.05, 0.05, 12, 6),
    Row(_CS, 1000, 0.05, 0.05, 30, 17),
    Row(_CS, 10000, 0.05, 0.05, 34, 20),
    Row(_CS, 100000, 0.05, 0.05, 36, 21),
    Row(_CS, 1000000, 0.05, 0.05, 38, 22),
    # adversarial_rate = 0.05, dropout_rate = 0.05, SEMI_MALICIOUS_SERVER
    Row(_SMS, 10, 0.05, 0.05, 2, 2),
    Row(_SMS, 100, 0.05, 0.05, 16, 11),
    Row(_SMS, 1000, 0.05, 0.05, 52, 37),
    Row(_SMS, 10000, 0.05, 0.05, 62, 44),
    Row(_SMS, 100000, 0.05, 0.05, 68, 48),
    Row(_SMS, 1000000, 0.05, 0.05, 74, 52),
    # adversarial_rate = 0.33, dropout_rate = 0.0, CURIOUS_SERVER
    Row(_CS, 10, 0.33, 0.0, 4, 4),
    Row(_CS, 100, 0.33, 0.0, 26, 25),
    Row(_CS, 1000, 0.33, 0.0, 38, 36),
    Row(_CS, 10000, 0.33, 0.0, 42, 40),
    Row(_CS, 100000, 0.33, 0.0, 46, 44),
    Row(_CS, 1000000, 0.33, 0.0, 50, 47),
    # adversarial_rate = 0.33, dropout_rate = 0.0, SEMI_MALICIOUS_SERVER
    Row(_SMS, 10, 0.33, 0.0, 4, 4),
    Row(_SMS, 100, 0.33, 0.0, 26, 26),
    Row(_SMS, 1000, 0.33, 0.0, 38, 37),
    Row(_SMS, 10000, 0.33, 0.0, 42, 41),
    Row(_SMS, 100000, 0.33, 0.0, 46, 45),
    Row(_SMS, 1000000, 0.33, 0.0, 50, 49),
    # adversarial_rate = 0.0, dropout_rate = 0.33, CURIOUS_SERVER
    Row(_CS, 10, 0.0, 0.33, 4, 2),
    Row(_CS, 100, 0.0, 0.33, 26, 2),
    Row(_CS, 1000, 0.0, 0.33, 38, 2),
    Row(_CS, 10000, 0.0, 0.33, 42, 2),
    Row(_CS, 100000, 0.0, 0.33, 46, 2),
    Row(_CS, 1000000, 0.0, 0.33, 50, 2),
    # adversarial_rate = 0.0, dropout_rate = 0.33, NONE
    Row(_NONE, 10, 0.0, 0.33, 4, 2),
    Row(_NONE, 100, 0.0, 0.33, 26, 2),
    Row(_NONE, 1000, 0.0, 0.33, 38, 2),
    Row(_NONE, 10000, 0.0, 0.33, 42, 2),
    Row(_NONE, 100000, 0.0, 0.33, 46, 2),
    Row(_NONE, 1000000, 0.0, 0.33, 50, 2),
    # adversarial_rate = 0.0, dropout_rate = 0.33, SEMI_MALICIOUS_SERVER
    Row(_SMS, 10, 0.0, 0.33, 8, 5),
    Row(_SMS, 100, 0.0, 0.33, 68, 35),
    Row(_SMS, 1000, 0.0, 0.33, 228, 115),
    Row(_SMS, 10000, 0.0, 0.33, 326, 164),
    Row(_SMS, 100000, 0.0, 0.33, 372, 187),
    Row(_SMS, 1000000, 0.0, 0.33, 410, 206),
    # adversarial_rate = 0.0, dropout_rate = 0.0, CURIOUS_SERVER
    Row(_CS, 10, 0.0, 0.0, 2, 2),
    Row(_CS, 100, 0.0, 0.0, 2, 2),
    Row(_CS, 1000, 0.0, 0.0, 2, 2),
    Row(_CS, 10000, 0.0, 0.0, 2, 2),
    Row(_CS, 100000, 0.0, 0.0, 2, 2),
    Row(_CS, 1000000, 0.0, 0.0, 2, 2),
    # adversarial_rate = 0.0, dropout_rate = 0.0, NONE
    Row(_NONE, 1000, 0.0, 0.0, 2, 2),
    Row(_NONE, 10000, 0.0, 0.0, 2, 2),
    Row(_NONE, 100000, 0.0, 0.0, 2, 2),
    Row(_NONE, 1000000, 0.0, 0.0, 2, 2),
    # adversarial_rate = 0.0, dropout_rate = 0.0, SEMI_MALICIOUS_SERVER
    Row(_SMS, 10, 0.0, 0.0, 2, 2),
    Row(_SMS, 100, 0.0, 0.0, 2, 2),
    Row(_SMS, 1000, 0.0, 0.0, 2, 2),
    Row(_SMS, 10000, 0.0, 0.0, 2, 2),
    Row(_SMS, 100000, 0.0, 0.0, 2, 2),
    Row(_SMS, 1000000, 0.0, 0.0, 2, 2),
]

# fcp's HararyGraphParameterFinderTest_InvalidOrUnfeasible rows, with the part
# of our error message that names the violated limit.
FCP_INFEASIBLE: list[tuple[Row, str]] = [
    (Row(_CS, 0, 0.1, 0.1, 0, 0), r"num_clients must be >= 1"),
    (Row(_CS, 1000, 0.1, 1.0, 0, 0), r"dropout_rate must be in \[0, 1\)"),
    (Row(_CS, 1000, 0.1, -1.0, 0, 0), r"dropout_rate must be in \[0, 1\)"),
    (Row(_CS, 1000, 0.5, 0.5, 0, 0), r"corrupt_rate \+ dropout_rate must be <= 0\.9"),
    (Row(_SMS, 1000, 0.5, 0.5, 0, 0), r"corrupt_rate \+ 2 \* dropout_rate must be <= 0\.9"),
    (Row(_SMS, 1000, 0.33, 0.33, 0, 0), r"corrupt_rate \+ 2 \* dropout_rate must be <= 0\.9"),
    # NONE with adversarial rate 0.5 (fcp refuses the rate for NONE; as
    # SEMI_HONEST it fails the rate-sum limit).
    (Row(_NONE, 1000, 0.5, 0.5, 0, 0), r"corrupt_rate \+ dropout_rate must be <= 0\.9"),
]


def test_table_is_complete() -> None:
    # 17 groups in fcp's list: 14 of 6 sizes, two (0.45/0.45, 0.3/0.3) of 5, one of 4.
    assert len(FCP_FEASIBLE) == 98
    assert len({row.id for row in FCP_FEASIBLE}) == 98
    assert len(FCP_INFEASIBLE) == 7


@pytest.mark.parametrize("row", FCP_FEASIBLE, ids=lambda row: row.id)
def test_matches_fcp_table(row: Row) -> None:
    """fcp's ComputesParametersThatMatchPrecomputedValues."""
    params = derive_parameters(row.n, row.dropout_rate, row.corrupt_rate, row.adversary)
    assert params.degree == row.degree
    assert params.threshold <= row.threshold


@pytest.mark.parametrize("row", FCP_FEASIBLE, ids=lambda row: row.id)
def test_threshold_equals_fcp_table(row: Row) -> None:
    # Stronger than fcp's own check: this port reproduces their thresholds exactly.
    params = derive_parameters(row.n, row.dropout_rate, row.corrupt_rate, row.adversary)
    assert params == GraphParameters(degree=row.degree, threshold=row.threshold)


def _div(a: float, b: float) -> float:
    # C++ double division: x / 0 is +inf (the numerators here are positive).
    return a / b if b != 0 else math.inf


@pytest.mark.parametrize("row", FCP_FEASIBLE, ids=lambda row: row.id)
def test_within_fcp_expected_range(row: Row) -> None:
    """fcp's ComputesParametersWithinExpectedRange, transcribed bound by bound."""
    params = derive_parameters(row.n, row.dropout_rate, row.corrupt_rate, row.adversary)
    degree, threshold = params.degree, params.threshold
    gamma, delta, n = row.corrupt_rate, row.dropout_rate, row.n

    unconstrained = gamma == 0 and delta == 0
    small = n < 20
    lower = 1.0 if unconstrained or small else math.log(n) + SECURITY_BITS * math.log(2) / 5.0
    beta = threshold / degree
    alpha = n // (n - 1)  # an integer division in fcp's test
    a = math.log(n) + CORRECTNESS_BITS * math.log(2)
    b = 2 * (alpha * (1 - delta) - beta) ** 2
    if unconstrained:
        upper = 3.0
    else:
        c = min(2 * (beta - alpha * gamma) ** 2, -math.log(gamma + delta))
        upper = max(_div(lower, c) + 1, _div(a, b))
    if row.adversary is SM:
        upper += upper * 1.0 / 5
    assert degree > lower
    assert degree < upper
    assert degree >= threshold
    assert threshold > 0


@pytest.mark.parametrize(
    ("row", "message"), FCP_INFEASIBLE, ids=[row.id for row, _ in FCP_INFEASIBLE]
)
def test_fcp_infeasible_rows_refused(row: Row, message: str) -> None:
    """fcp's FailsOnIncorrectParameters."""
    with pytest.raises(ParameterError, match=message):
        derive_parameters(row.n, row.dropout_rate, row.corrupt_rate, row.adversary)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": -3}, r"num_clients must be >= 1, got -3"),
        ({"num_clients": MAX_CLIENTS + 1}, r"num_clients must be <= 1000000"),
        ({"num_clients": 100.0}, r"num_clients must be an integer"),
        ({"num_clients": True}, r"num_clients must be an integer"),
        ({"corrupt_rate": 1.0}, r"corrupt_rate must be in \[0, 1\), got 1\.0"),
        ({"corrupt_rate": -0.01}, r"corrupt_rate must be in \[0, 1\)"),
        ({"corrupt_rate": math.nan}, r"corrupt_rate must be in \[0, 1\), got nan"),
        ({"dropout_rate": math.nan}, r"dropout_rate must be in \[0, 1\), got nan"),
        ({"dropout_rate": math.inf}, r"dropout_rate must be in \[0, 1\)"),
        ({"adversary": "malicious"}, r"adversary must be one of"),
        ({"security_bits": 0}, r"security_bits must be an integer in \[1, 256\], got 0"),
        ({"security_bits": 257}, r"security_bits must be an integer in \[1, 256\]"),
        ({"correctness_bits": -1}, r"correctness_bits must be an integer in \[1, 256\]"),
        ({"correctness_bits": 20.0}, r"correctness_bits must be an integer"),
        ({"dropout_rate": "0.1"}, r"dropout_rate must be a real number in \[0, 1\)"),
        ({"corrupt_rate": 0.5, "dropout_rate": 0.41}, r"corrupt_rate \+ dropout_rate"),
        (
            {"adversary": SM, "corrupt_rate": 0.2, "dropout_rate": 0.36},
            r"corrupt_rate \+ 2 \* dropout_rate must be <= 0\.9",
        ),
        # Too few clients for any sparse graph: fcp errors and falls back to
        # the complete graph, so the message points there.
        ({"num_clients": 3}, r"no even degree k with 2 <= k < num_clients - 1 = 2"),
        (
            {"num_clients": 20, "corrupt_rate": 0.45, "dropout_rate": 0.45},
            r"no even degree .*complete_graph_threshold",
        ),
    ],
)
def test_refuses_invalid_or_infeasible(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "num_clients": 1000,
        "dropout_rate": 0.05,
        "corrupt_rate": 0.05,
        "adversary": SH,
    }
    args.update(kwargs)
    with pytest.raises(ParameterError, match=message):
        derive_parameters(**args)  # type: ignore[arg-type]


def test_parameter_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        derive_parameters(0, 0.1, 0.1, SH)
    with pytest.raises(ValueError, match="num_clients"):
        derive_parameters(0, 0.1, 0.1, SH)


def test_exact_rate_sum_limits_are_accepted() -> None:
    # 0.45 + 0.45 and 0.3 + 2 * 0.3 are at the 0.9 limits (both appear in fcp's table).
    assert derive_parameters(1000, 0.45, 0.45, SH).degree == 822
    assert derive_parameters(1000, 0.3, 0.3, SM).degree == 872


def test_adversary_accepts_enum_values() -> None:
    by_value = derive_parameters(1000, 0.05, 0.05, "semi-malicious")  # type: ignore[arg-type]
    assert by_value == GraphParameters(degree=52, threshold=37)


# --- complete graph (fcp's CheckFullGraphParameters) -------------------------


def test_full_graph_valid_thresholds() -> None:
    """fcp's FullGraphCeckParamsTest.ReturnsTrueOnValidThresholds (plus t = n)."""
    for t in range(42, 61):
        check_complete_graph_threshold(60, t, 0.3, 0.05, SH)


def test_full_graph_invalid_thresholds() -> None:
    """fcp's FullGraphCeckParamsTest.ReturnsFalseOnInvalidThresholds."""
    for t in range(42):
        with pytest.raises(ParameterError, match="threshold must be"):
            check_complete_graph_threshold(60, t, 0.3, 0.05, SH)


@pytest.mark.parametrize(
    ("n", "threshold", "dropout", "corrupt", "adversary", "message"),
    [
        (60, 1, 0.3, 0.05, SH, r"threshold must be > 1 and <= num_clients = 60, got 1"),
        (60, 61, 0.3, 0.05, SH, r"threshold must be > 1 and <= num_clients = 60, got 61"),
        (60, 41, 0.3, 0.05, SH, r"ceil\(\(1 - dropout_rate\) \* num_clients\) = 42, got 41"),
        (10, 5, 0.5, 0.5, SH, r"> ceil\(corrupt_rate \* num_clients\) = 5, got 5"),
        (10, 6, 0.4, 0.3, SM, r"ceil\(\(num_clients \+ corrupt_rate \* num_clients\) / 2\) = 7"),
        (0, 2, 0.3, 0.05, SH, r"num_clients must be >= 1"),
        (60, 50, 1.0, 0.05, SH, r"dropout_rate must be in \[0, 1\)"),
    ],
)
def test_full_graph_check_names_the_limit(
    n: int, threshold: int, dropout: float, corrupt: float, adversary: AdversaryClass, message: str
) -> None:
    with pytest.raises(ParameterError, match=message):
        check_complete_graph_threshold(n, threshold, dropout, corrupt, adversary)


def test_complete_graph_threshold() -> None:
    assert complete_graph_threshold(60, 0.3, 0.05, SH) == 42
    assert complete_graph_threshold(10, 0.0, 0.0, SH) == 10
    # ceil(0.8 * 10) = 8 > ceil((10 + 0.3 * 10) / 2) = 7.
    assert complete_graph_threshold(10, 0.2, 0.3, SM) == 8
    # ceil(0.7 * 10) = 7 is not > 7: a semi-malicious server could split the survivors.
    with pytest.raises(ParameterError, match="semi-malicious adversary"):
        complete_graph_threshold(10, 0.3, 0.3, SM)
    # No MAX_CLIENTS cap for the complete graph (fcp's check has none).
    assert complete_graph_threshold(2 * MAX_CLIENTS, 0.5, 0.1, SH) == MAX_CLIENTS


def test_small_cohorts_need_the_complete_graph() -> None:
    # fcp's server falls back to the complete graph exactly when the finder fails.
    with pytest.raises(ParameterError, match="no even degree"):
        derive_parameters(20, 0.45, 0.45, SH)
    assert complete_graph_threshold(20, 0.45, 0.45, SH) == 11


# --- properties --------------------------------------------------------------

_rates = st.floats(min_value=0.0, max_value=0.45, allow_nan=False)
_adversaries = st.sampled_from(list(AdversaryClass))
_PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _derive_or_none(
    n: int, dropout: float, corrupt: float, adversary: AdversaryClass
) -> GraphParameters | None:
    try:
        return derive_parameters(n, dropout, corrupt, adversary)
    except ParameterError:
        return None


@_PROPERTY_SETTINGS
@given(n=st.integers(1, 3000), dropout=_rates, corrupt=_rates, adversary=_adversaries)
def test_shape_invariant(n: int, dropout: float, corrupt: float, adversary: AdversaryClass) -> None:
    """Any answer is an even degree of a proper sparse graph and a usable threshold."""
    params = _derive_or_none(n, dropout, corrupt, adversary)
    if params is None:
        return
    assert params.degree % 2 == 0
    assert 2 <= params.threshold <= params.degree <= n - 2


def _hyper_weight(total: int, marked: int, drawn: int, lo: int, hi: int) -> int:
    """Sum of C(marked, x) C(total - marked, drawn - x) over lo <= x <= hi (exact)."""
    return sum(
        math.comb(marked, x) * math.comb(total - marked, drawn - x)
        for x in range(max(lo, 0), min(hi, marked, drawn) + 1)
    )


@_PROPERTY_SETTINGS
@given(n=st.integers(4, 400), dropout=_rates, corrupt=_rates, adversary=_adversaries)
def test_bounds_hold_in_exact_arithmetic(
    n: int, dropout: float, corrupt: float, adversary: AdversaryClass
) -> None:
    """Recompute fcp's three bounds with integers (math.comb) for the answer.

    This is independent of the floating-point quantile search. Each bad event
    is checked against its own budget, in fcp's model: hypergeometric counts
    over a population of ``n`` with ``floor(gamma n)`` corrupt and
    ``ceil((1 - delta) n)`` surviving clients.
    """
    params = _derive_or_none(n, dropout, corrupt, adversary)
    if params is None:
        return
    k, t = params.degree, params.threshold
    n_corrupt = math.floor((corrupt + SMALL) * n)
    n_bad = n_corrupt + math.floor((dropout + SMALL) * n)
    n_surviving = math.ceil((1 - dropout - SMALL) * n)
    all_draws = math.comb(n, k)
    per_event = 2 ** (SECURITY_BITS + 1)

    # Connectivity: (n (n - k - 1) / 2) * B!/(B-k)! / (n!/(n-k)!) < 2^-41.
    assert n * (n - k - 1) * math.perm(n_bad, k) * per_event < 2 * math.perm(n, k)

    # Privacy: Pr[corrupt neighbours >= t] <= 2^-41 / n; against a
    # semi-malicious server, Pr[corrupt neighbours >= 2t - k] <= 2^-41 / n.
    reach = 2 * t - k if adversary is SM else t
    assert _hyper_weight(n, n_corrupt, k, reach, k) * n * per_event <= all_draws

    # Correctness: Pr[surviving neighbours < t] <= 2^-20 / n. fcp clamps the
    # threshold to >= 2 after the feasibility test, which breaks this bound
    # when floor(gamma n) = 0 (see test_fcp_threshold_clamp_caveat).
    if n_corrupt >= 1:
        assert _hyper_weight(n, n_surviving, k, 0, t - 1) * n * 2**CORRECTNESS_BITS <= all_draws


def test_fcp_threshold_clamp_caveat() -> None:
    # fcp's own row (10 clients, 5% corrupt, 33% dropout) -> (4, 2): no client is
    # corrupt so t1 = 0, and only t2 >= 1 is required, but the threshold is then
    # raised to 2. With 7 survivors of 10, Pr[a client has < 2 surviving
    # neighbours among 4] = 7 / 210 = 1/30, far above 2^-20 / 10. Kept for
    # agreement with fcp; documented in the module.
    assert derive_parameters(10, 0.33, 0.05, SH) == GraphParameters(4, 2)
    assert _hyper_weight(10, 7, 4, 0, 1) * 30 == math.comb(10, 4)


@_PROPERTY_SETTINGS
@given(
    n=st.integers(4, 2000),
    dropouts=st.lists(_rates, min_size=2, max_size=2),
    corrupts=st.lists(_rates, min_size=2, max_size=2),
    adversary=_adversaries,
)
def test_monotone_in_rates(
    n: int, dropouts: list[float], corrupts: list[float], adversary: AdversaryClass
) -> None:
    """More dropouts or more corruption never allows a smaller degree.

    (A weaker threat model has fewer bad clients, so each degree test is
    easier; checked beforehand on a 0.01-step grid for n <= 5000.)
    """
    low_d, high_d = sorted(dropouts)
    low_c, high_c = sorted(corrupts)
    harder = _derive_or_none(n, high_d, high_c, adversary)
    if harder is None:
        return
    easier = _derive_or_none(n, low_d, low_c, adversary)
    assert easier is not None
    assert easier.degree <= harder.degree


@_PROPERTY_SETTINGS
@given(n=st.integers(4, 2000), dropout=_rates, corrupt=_rates)
def test_semi_malicious_needs_at_least_the_semi_honest_degree(
    n: int, dropout: float, corrupt: float
) -> None:
    """The semi-malicious shift only raises t1 (for t1 <= k), so each degree
    feasible against a semi-malicious server is feasible against a semi-honest one."""
    malicious = _derive_or_none(n, dropout, corrupt, SM)
    if malicious is None:
        return
    honest = _derive_or_none(n, dropout, corrupt, SH)
    assert honest is not None
    assert honest.degree <= malicious.degree


@_PROPERTY_SETTINGS
@given(n=st.integers(4, 2000), dropout=_rates, corrupt=_rates, adversary=_adversaries)
def test_monotone_in_security_and_correctness_bits(
    n: int, dropout: float, corrupt: float, adversary: AdversaryClass
) -> None:
    base = _derive_or_none(n, dropout, corrupt, adversary)
    if base is None:
        return
    for kwargs in ({"security_bits": 30}, {"correctness_bits": 10}):
        weaker = derive_parameters(n, dropout, corrupt, adversary, **kwargs)
        assert weaker.degree <= base.degree


def test_defaults_are_fcp_parameters() -> None:
    assert derive_parameters(1000, 0.05, 0.05, SH) == derive_parameters(
        1000, 0.05, 0.05, SH, security_bits=40, correctness_bits=20
    )
