"""The integer noise samplers (specs/dp-v1.md §5).

Three kinds of evidence:

* **Bit-exactness.** A slow, scalar reference implementation of §5, written
  from the spec's text with Python integers and lists only, consumes a known
  keystream (the real AES-128-CTR one, a SHA-256 stream fed through a
  monkeypatched ``prg_fill``, and hand-made uniforms that tie table entries
  on their high 64 bits) and must agree with ``protocol.dp.samplers``
  sample for sample.
* **Precision.** The cumulative tables are compared with the exact CDFs
  computed independently with ``mpmath`` at 60 digits.
* **Distribution.** Chi-square goodness of fit, mean and variance against
  the exact pmfs computed with ``mpmath`` (Skellam: ``exp(-v) I_|k|(v)``;
  discrete Gaussian: ``exp(-k^2/2v) / theta_3``) at variances 1, 5/2, 100,
  10^4 and 10^8; keys are fixed, so every statistic is deterministic and the
  bounds are chosen to hold for these keys with a margin (a p-value above
  1e-6, six standard deviations) while a wrong law fails them.

``python -m tests.protocol.dp.test_samplers`` rewrites the known-answer
vectors ``specs/vectors/dp/samplers.json`` from the reference implementation.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import cache
from pathlib import Path

import mpmath
import numpy as np
import numpy.typing as npt
import pytest

from protocol.crypto import prg_fill
from protocol.dp import samplers
from protocol.dp.params import Mechanism
from protocol.dp.samplers import (
    MAX_VARIANCE,
    dgauss_table,
    noise_statistical_distance,
    poisson_table,
    sample_discrete_gaussian,
    sample_noise,
    sample_skellam,
)
from protocol.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "specs" / "dp-v1.md"
VECTORS = ROOT / "specs" / "vectors" / "dp" / "samplers.json"

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
OTHER_KEY = bytes.fromhex("f0e0d0c0b0a090807060504030201000")

# ============================================================ reference implementation of §5
# Written from the spec's text, not from the module: Python ints, lists, bisect.

REF_W = 256  # WEIGHT_BITS
REF_TAU = 112  # TAIL_BITS
REF_T = 2 ** (REF_W - REF_TAU)
REF_MAX_POISSON_MEAN = 2**31


def ref_cumulative(weights: Sequence[int]) -> list[int]:
    """§5.1: ``C_j = floor(2^128 S_j / Z)`` for every ``j`` (the last one is ``2^128``)."""
    total = sum(weights)
    out, partial = [], 0
    for u in weights:
        partial += u
        out.append(partial * 2**128 // total)
    assert out[-1] == 2**128
    return out


def ref_poisson_table(lam: Fraction) -> tuple[int, list[int]]:
    """§5.3: ``(L, [C_0 .. C_{N-1}])`` for Poisson(``lam``)."""
    a, b = lam.numerator, lam.denominator
    m = a // b
    w = {m: 2**REF_W}
    k = m
    while True:
        w[k + 1] = w[k] * a // (b * (k + 1))
        k += 1
        if w[k] * (k + 1) * b <= REF_T * ((k + 1) * b - a):
            high = k - 1
            break
    low, k = 0, m
    while k >= 1:
        w[k - 1] = w[k] * k * b // a
        k -= 1
        if w[k] * a <= REF_T * (a - k * b):
            low = k + 1
            break
    return low, ref_cumulative([w[j] for j in range(low, high + 1)])


def ref_exp(c: int, d: int) -> int:
    """§5.4: ``E(c, d)``."""
    t = 2 ** (REF_W + 32)
    series = [t]
    j = 0
    while t != 0:
        j += 1
        t = t * c // (d * j)
        series.append(t)
    return sum(term if i % 2 == 0 else -term for i, term in enumerate(series)) >> 32


def ref_dgauss_table(sigma2: Fraction) -> tuple[int, list[int]]:
    """§5.4: ``(0, [C_0 .. C_K])`` for ``|X|``, ``X ~ N_Z(0, sigma2)``."""
    a, b = sigma2.numerator, sigma2.denominator
    q, r = ref_exp(b, a), ref_exp(b, 2 * a)
    g = math.isqrt(-(-a // b)) + 1
    w = 2**REF_W
    weights = [w]
    while True:
        w, r = (w * r) >> REF_W, (r * q) >> REF_W
        if w * (2 + 3 * g) <= REF_T:
            break
        weights.append(2 * w)
    return 0, ref_cumulative(weights)


def ref_invert(table: tuple[int, list[int]], u: int) -> int:
    """§5.1: ``L + min{j : U < C_j}``."""
    low, cumulative = table
    return low + bisect.bisect_right(cumulative, u)


def ref_skellam(
    words: Sequence[int], variance: Fraction, max_mean: int = REF_MAX_POISSON_MEAN
) -> list[int]:
    """§5.3 on a keystream given as a list of uint64 words."""
    s = max(1, math.ceil(variance / 2 / max_mean))
    table = ref_poisson_table(variance / (2 * s))
    out = []
    for i in range(len(words) // (4 * s)):
        base = 4 * s * i
        draws = [
            ref_invert(table, words[base + 2 * r] + 2**64 * words[base + 2 * r + 1])
            for r in range(2 * s)
        ]
        out.append(sum(draws[:s]) - sum(draws[s:]))
    return out


def ref_dgauss(words: Sequence[int], variance: Fraction) -> list[int]:
    """§5.4 on a keystream given as a list of uint64 words."""
    table = ref_dgauss_table(variance)
    out = []
    for i in range(len(words) // 3):
        magnitude = ref_invert(table, words[3 * i] + 2**64 * words[3 * i + 1])
        out.append(-magnitude if words[3 * i + 2] & 1 else magnitude)
    return out


def aes_words(key: bytes, count: int) -> list[int]:
    """The first ``count`` keystream words of ``PRG(key)``."""
    words = np.empty(count, dtype=np.uint64)
    prg_fill(key, words)
    return [int(x) for x in words]


def sha_words(label: bytes, count: int) -> list[int]:
    """A known, non-AES stream: SHA-256(label || counter), 4 little-endian words a block."""
    out: list[int] = []
    for counter in range((count + 3) // 4):
        digest = hashlib.sha256(label + counter.to_bytes(8, "big")).digest()
        out += [int.from_bytes(digest[8 * i : 8 * i + 8], "little") for i in range(4)]
    return out[:count]


def feed(monkeypatch: pytest.MonkeyPatch, words: Sequence[int]) -> None:
    """Make the samplers read ``words`` as their keystream, whatever the key."""
    stream = np.array(words, dtype=np.uint64)

    def fake_fill(key: bytes, out: npt.NDArray[np.uint64], *, start: int = 0) -> None:
        out[:] = stream[start : start + out.shape[0]]

    monkeypatch.setattr(samplers, "prg_fill", fake_fill)


# ============================================================ bit-exactness


@pytest.mark.parametrize("variance", [1, Fraction(5, 2), 100, 10**4, Fraction(12345, 7)])
def test_skellam_is_the_specified_function_of_the_aes_keystream(variance: int | Fraction) -> None:
    n = 300
    expected = ref_skellam(aes_words(KEY, 4 * n), Fraction(variance))
    assert sample_skellam(KEY, variance, n).tolist() == expected


@pytest.mark.parametrize("variance", [1, Fraction(5, 2), 100, 10**4, Fraction(12345, 7)])
def test_dgauss_is_the_specified_function_of_the_aes_keystream(variance: int | Fraction) -> None:
    n = 300
    expected = ref_dgauss(aes_words(KEY, 3 * n), Fraction(variance))
    assert sample_discrete_gaussian(KEY, variance, n).tolist() == expected


@pytest.mark.parametrize("variance", [1, 100, 10**4])
def test_a_fed_keystream_gives_the_reference_output(
    monkeypatch: pytest.MonkeyPatch, variance: int
) -> None:
    n = 200
    words = sha_words(b"dp-samplers-test", 4 * n)
    feed(monkeypatch, words)
    assert sample_skellam(KEY, variance, n).tolist() == ref_skellam(words, Fraction(variance))
    # The key is ignored once the stream is fixed: the output is the stream's function.
    assert sample_skellam(OTHER_KEY, variance, n).tolist() == ref_skellam(words, Fraction(variance))
    assert sample_discrete_gaussian(KEY, variance, n).tolist() == ref_dgauss(
        words[: 3 * n], Fraction(variance)
    )


def test_split_skellam_follows_the_layout_of_section_5_3(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lowering MAX_POISSON_MEAN to 8 makes v = 100 a sum of s = 7 Poisson(50/7)
    # per side: 28 words per sample, the split path without a 2^31-mean table.
    monkeypatch.setattr(samplers, "MAX_POISSON_MEAN", 8)
    assert samplers.skellam_splits(Fraction(100)) == 7
    n = 100
    words = sha_words(b"dp-samplers-split", 28 * n)
    feed(monkeypatch, words)
    expected = ref_skellam(words, Fraction(100), max_mean=8)
    assert sample_skellam(KEY, 100, n).tolist() == expected
    assert sample_skellam(KEY, 100, 30, start=60).tolist() == expected[60:90]


def _tie_uniforms(cumulative: list[int]) -> list[int]:
    """Uniforms at, just below and just above table entries, and runs of equal high words."""
    picks = sorted({0, 1, 2, len(cumulative) // 3, len(cumulative) // 2, len(cumulative) - 2})
    us = [0, 1, 2**64 - 1, 2**64, 2**128 - 1, 2**127]
    for j in picks:
        c = cumulative[j]
        us += [u for u in (c - 1, c, c + 1) if 0 <= u < 2**128]
    # A uniform in the run of entries below 2^64 (the left tail) or at or above
    # 2^128 - 2^64 (the right tail): several entries share its high word.
    us += [cumulative[0] // 2, (2**128 - 1) - 5, 2**128 - 2**63]
    return us


def test_uniforms_tying_table_entries_on_the_high_word(monkeypatch: pytest.MonkeyPatch) -> None:
    poisson = ref_poisson_table(Fraction(50))
    gauss = ref_dgauss_table(Fraction(100))
    # The crafted uniforms do tie: some share their high word with a stored entry.
    for _, cumulative in (poisson, gauss):
        highs = {c >> 64 for c in cumulative[:-1]}
        assert sum((u >> 64) in highs for u in _tie_uniforms(cumulative)) >= 10
        assert len(highs) < len(cumulative) - 1  # runs of equal high words exist
    us = _tie_uniforms(poisson[1])
    us += us[: len(us) % 2]  # an even count: two uniforms per Skellam sample
    words = [w for u in us for w in (u % 2**64, u >> 64)]
    feed(monkeypatch, words)
    got = sample_skellam(KEY, 100, len(us) // 2).tolist()
    assert got == ref_skellam(words, Fraction(100))
    # The module's table inverts each crafted uniform as min{j : U < C_j}.
    table = poisson_table(Fraction(50))
    u_lo = np.array([u % 2**64 for u in us], dtype=np.uint64)
    u_hi = np.array([u >> 64 for u in us], dtype=np.uint64)
    assert table.invert(u_lo, u_hi).tolist() == [ref_invert(poisson, u) for u in us]
    us = _tie_uniforms(gauss[1])
    words = [w for i, u in enumerate(us) for w in (u % 2**64, u >> 64, i)]
    feed(monkeypatch, words)
    assert sample_discrete_gaussian(KEY, 100, len(us)).tolist() == ref_dgauss(words, Fraction(100))


def test_module_tables_equal_the_reference_tables() -> None:
    for lam in (Fraction(1, 2), Fraction(5, 4), Fraction(50), Fraction(12345, 14)):
        low, cumulative = ref_poisson_table(lam)
        table = poisson_table(lam)
        assert table.offset == low
        stored = [int(h) << 64 | int(lo) for h, lo in zip(table.hi, table.lo, strict=True)]
        assert stored == cumulative[:-1]
    for sigma2 in (Fraction(1), Fraction(5, 2), Fraction(100), Fraction(12345, 7)):
        _, cumulative = ref_dgauss_table(sigma2)
        table = dgauss_table(sigma2)
        stored = [int(h) << 64 | int(lo) for h, lo in zip(table.hi, table.lo, strict=True)]
        assert table.offset == 0
        assert stored == cumulative[:-1]


# ============================================================ keystream only: determinism, seeking


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_output_depends_only_on_key_and_position(
    monkeypatch: pytest.MonkeyPatch, mechanism: Mechanism
) -> None:
    whole = sample_noise(mechanism, KEY, 100, 1000)
    assert np.array_equal(whole, sample_noise(mechanism, KEY, 100, 1000))
    assert not np.array_equal(whole, sample_noise(mechanism, OTHER_KEY, 100, 1000))
    # Seeking: coordinate i uses its own words only, so any slice regenerates alone.
    assert np.array_equal(sample_noise(mechanism, KEY, 100, 300, start=500), whole[500:800])
    assert np.array_equal(sample_noise(mechanism, KEY, 100, 7), whole[:7])
    assert sample_noise(mechanism, KEY, 100, 0).shape == (0,)
    # Chunked generation (tiny chunks, one partial) equals one-shot generation.
    monkeypatch.setattr(samplers, "_CHUNK_WORDS", 40)
    assert np.array_equal(sample_noise(mechanism, KEY, 100, 1000), whole)
    assert whole.dtype == np.int64


def test_sample_noise_dispatches_on_the_mechanism() -> None:
    assert np.array_equal(sample_noise(Mechanism.SKELLAM, KEY, 10, 50), sample_skellam(KEY, 10, 50))
    assert np.array_equal(
        sample_noise(Mechanism("ddgauss"), KEY, 10, 50), sample_discrete_gaussian(KEY, 10, 50)
    )
    assert not np.array_equal(sample_skellam(KEY, 10, 50), sample_discrete_gaussian(KEY, 10, 50))


# ============================================================ bad input


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"variance": 0}, "variance"),
        ({"variance": -5}, "variance"),
        ({"variance": Fraction(1, 2)}, "variance"),
        ({"variance": MAX_VARIANCE + 1}, "variance"),
        ({"variance": Fraction(3 * 2**33 + 1, 2**33)}, "denominator"),
        ({"variance": 2.5}, "variance"),
        ({"variance": True}, "variance"),
        ({"key": bytes(15)}, "16 bytes"),
        ({"key": bytes(17)}, "16 bytes"),
        ({"key": "0" * 16}, "16 bytes"),
        ({"size": -1}, "size"),
        ({"size": 1.0}, "size"),
        ({"size": 2**30 + 1}, "start + size"),
        ({"start": -1}, "start"),
        ({"start": 2**30, "size": 1}, "start + size"),
    ],
)
@pytest.mark.parametrize("mechanism", [*list(Mechanism), "nope"])
def test_bad_input_is_a_config_error(
    kwargs: dict[str, object], words: str, mechanism: object
) -> None:
    args: dict[str, object] = {"key": KEY, "variance": 4, "size": 3, "start": 0, **kwargs}
    with pytest.raises(ConfigError, match="mechanism" if mechanism == "nope" else re.escape(words)):
        sample_noise(mechanism, **args)  # type: ignore[arg-type]
    if mechanism == Mechanism.SKELLAM:
        with pytest.raises(ConfigError, match=re.escape(words)):
            sample_skellam(**args)  # type: ignore[arg-type]
    if mechanism == Mechanism.DDGAUSS:
        with pytest.raises(ConfigError, match=re.escape(words)):
            sample_discrete_gaussian(**args)  # type: ignore[arg-type]


def test_bad_mechanism_or_variance_in_the_distance_bound() -> None:
    with pytest.raises(ConfigError, match="mechanism"):
        noise_statistical_distance(3, 10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="variance"):
        noise_statistical_distance(Mechanism.SKELLAM, 0)


# ============================================================ precision against mpmath


def gauss_sum(s2: mpmath.mpf) -> mpmath.mpf:
    """``sum_k exp(-k^2 / 2 s2)`` by Poisson summation.

    ``= sqrt(2 pi s2) theta_3(0, exp(-2 pi^2 s2))``: ``theta_3(0, exp(-1/2 s2))``
    itself fails in mpmath once its nome is within ~1e-8 of 1.
    """
    return mpmath.sqrt(2 * mpmath.pi * s2) * mpmath.jtheta(3, 0, mpmath.exp(-2 * mpmath.pi**2 * s2))


def _poisson_log_pmf(lam: Fraction, k: int) -> mpmath.mpf:
    x = mpmath.mpf(lam.numerator) / lam.denominator
    return k * mpmath.log(x) - x - mpmath.loggamma(k + 1)


@pytest.mark.parametrize("lam", [Fraction(1, 2), Fraction(5, 4), Fraction(50), Fraction(5000)])
def test_poisson_table_is_within_2_to_minus_108_of_the_exact_cdf(lam: Fraction) -> None:
    table = poisson_table(lam)
    x = mpmath.mpf(lam.numerator) / lam.denominator
    with mpmath.workdps(60):
        # Exact CDF: F(k) = Q(k + 1, lambda), the regularised upper incomplete gamma.
        below = (
            mpmath.gammainc(table.offset, x, mpmath.inf, regularized=True)
            if table.offset > 0
            else mpmath.mpf(0)
        )
        assert below <= mpmath.mpf(2) ** -111  # the left tail left out (§5.5 step 3)
        cdf = below
        worst = mpmath.mpf(0)
        for j in range(table.size - 1):
            cdf += mpmath.exp(_poisson_log_pmf(lam, table.offset + j))
            stored = mpmath.mpf(int(table.hi[j]) << 64 | int(table.lo[j])) / mpmath.mpf(2) ** 128
            worst = max(worst, abs(stored - cdf))
        last = table.offset + table.size - 1
        above = 1 - (cdf + mpmath.exp(_poisson_log_pmf(lam, last)))
        assert above <= mpmath.mpf(2) ** -111  # the right tail left out
    assert worst <= mpmath.mpf(2) ** -108
    assert table.statistical_distance_bound() <= 2.0**-108


def test_poisson_table_at_a_large_mean_matches_the_exact_cdf() -> None:
    lam = Fraction(5 * 10**7)  # one side of Skellam(10^8)
    table = poisson_table(lam)
    assert 25 * 7071 < table.size < 27 * 7072  # about 26 sqrt(lambda) entries (§5.6)
    with mpmath.workdps(60):
        for j in (0, 1000, table.size // 3, table.size // 2, table.size - 5000, table.size - 2):
            k = table.offset + j
            exact = mpmath.gammainc(k + 1, lam.numerator, mpmath.inf, regularized=True)
            stored = mpmath.mpf(int(table.hi[j]) << 64 | int(table.lo[j])) / mpmath.mpf(2) ** 128
            assert abs(stored - exact) <= mpmath.mpf(2) ** -108, j


@pytest.mark.parametrize("sigma2", [Fraction(1), Fraction(5, 2), Fraction(100), Fraction(10**4)])
def test_dgauss_table_is_within_2_to_minus_108_of_the_exact_cdf(sigma2: Fraction) -> None:
    table = dgauss_table(sigma2)
    with mpmath.workdps(60):
        s2 = mpmath.mpf(sigma2.numerator) / sigma2.denominator
        theta = gauss_sum(s2)
        cdf = mpmath.mpf(0)
        worst = mpmath.mpf(0)
        for j in range(table.size - 1):
            cdf += (1 if j == 0 else 2) * mpmath.exp(-(j**2) / (2 * s2)) / theta
            stored = mpmath.mpf(int(table.hi[j]) << 64 | int(table.lo[j])) / mpmath.mpf(2) ** 128
            worst = max(worst, abs(stored - cdf))
        k = table.size - 1
        above = 1 - (cdf + 2 * mpmath.exp(-(k**2) / (2 * s2)) / theta)
        assert above <= mpmath.mpf(2) ** -111
    assert worst <= mpmath.mpf(2) ** -108


def test_statistical_distance_is_below_2_to_minus_100_at_the_largest_skellam_variance() -> None:
    # v = 2^36: s = 16 splits of a 2^31-mean table, the largest table and most draws.
    bound = noise_statistical_distance(Mechanism.SKELLAM, MAX_VARIANCE)
    assert 2.0**-104 < bound <= 2.0**-103
    assert noise_statistical_distance(Mechanism.DDGAUSS, 10**8) <= 2.0**-110
    assert noise_statistical_distance(Mechanism.SKELLAM, 10**8) <= 2.0**-109


# ============================================================ distribution against mpmath


@cache
def skellam_pmf(variance: Fraction, kmax: int) -> tuple[float, ...]:
    """``exp(-v) I_|k|(v)`` for ``k = -kmax .. kmax``.

    ``I_k(v)`` by Miller's backward recurrence ``I_{k-1} = I_{k+1} + (2k/v) I_k``
    started at ``2 kmax + 50`` (the spurious solution dies off by a factor
    ``exp(-3 kmax^2 / v)`` or more) and anchored at ``mpmath.besseli(0, v)``.
    """
    with mpmath.workdps(30):
        v = mpmath.mpf(variance.numerator) / variance.denominator
        upper, current = mpmath.mpf(0), mpmath.mpf(1)
        values = [mpmath.mpf(0)] * (kmax + 1)
        for k in range(2 * kmax + 50, 0, -1):
            upper, current = current, upper + (2 * k / v) * current
            if k - 1 <= kmax:
                values[k - 1] = current
        scale = mpmath.exp(-v) * mpmath.besseli(0, v) / values[0]
        half = [float(x * scale) for x in values]
    return tuple(half[:0:-1] + half)


@cache
def dgauss_pmf(sigma2: Fraction, kmax: int) -> tuple[float, ...]:
    """``exp(-k^2 / 2 sigma^2) / sum_j exp(-j^2 / 2 sigma^2)`` for ``k = -kmax .. kmax``."""
    with mpmath.workdps(30):
        s2 = mpmath.mpf(sigma2.numerator) / sigma2.denominator
        theta = gauss_sum(s2)
        half = [float(mpmath.exp(-(k**2) / (2 * s2)) / theta) for k in range(kmax + 1)]
    return tuple(half[:0:-1] + half)


def test_reference_pmfs_agree_with_direct_mpmath_evaluations() -> None:
    for v, kmax in ((Fraction(5, 2), 30), (Fraction(10**8), 70_010)):
        pmf = skellam_pmf(v, kmax)
        with mpmath.workdps(30):
            x = mpmath.mpf(v.numerator) / v.denominator
            for k in (0, 1, 7, int(3 * math.sqrt(v))):
                direct = float(mpmath.exp(-x) * mpmath.besseli(k, x))
                assert math.isclose(pmf[kmax + k], direct, rel_tol=1e-12)
                assert pmf[kmax - k] == pmf[kmax + k]
        assert math.isclose(sum(pmf), 1.0, rel_tol=1e-9)
    assert math.isclose(sum(dgauss_pmf(Fraction(100), 200)), 1.0, rel_tol=1e-12)
    with mpmath.workdps(40):
        for s2 in (mpmath.mpf(1), mpmath.mpf(5) / 2, mpmath.mpf(10**4)):
            direct = mpmath.jtheta(3, 0, mpmath.exp(-1 / (2 * s2)))
            assert abs(gauss_sum(s2) / direct - 1) < mpmath.mpf(10) ** -35


def chi_square_pvalue(samples: npt.NDArray[np.int64], pmf: Sequence[float], kmax: int) -> float:
    """Pearson's test of ``samples`` against ``pmf`` on ``-kmax .. kmax`` (tails lumped in).

    Consecutive values are merged into bins of expected count at least
    ``max(n / 100, 20)``; the statistic has ``bins - 1`` degrees of freedom.
    """
    n = samples.shape[0]
    target = max(n / 100, 20.0)
    cumulative = np.cumsum(np.asarray(pmf))
    edges, mass = [], 0.0  # bin b holds the values with index in (edges[b-1], edges[b]]
    for index, p in enumerate(pmf):
        mass += p
        if mass >= target / n and cumulative[-1] - cumulative[index] >= target / n:
            edges.append(index)
            mass = 0.0
    indices = np.clip(samples + kmax, 0, 2 * kmax)
    bins = np.searchsorted(np.array(edges), indices, side="left")  # last bin takes the rest
    observed = np.bincount(bins, minlength=len(edges) + 1)
    bounds = [-1, *edges, 2 * kmax]
    expected = np.array(
        [n * sum(pmf[bounds[b] + 1 : bounds[b + 1] + 1]) for b in range(len(edges) + 1)]
    )
    # Tails beyond kmax (below 1e-10 here) go to the end bins, as the clip does.
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    df = len(edges)
    return float(mpmath.gammainc(df / 2, statistic / 2, mpmath.inf, regularized=True))


VARIANCES = [Fraction(1), Fraction(5, 2), Fraction(100), Fraction(10**4), Fraction(10**8)]
SAMPLES = 200_000


def _kmax(variance: Fraction) -> int:
    # 7 standard deviations (+10): the mass beyond is below 1e-11, i.e. under 1e-5
    # expected samples in the lumped tails for 2e5 samples.
    return math.ceil(7 * math.sqrt(variance)) + 10


def _pmf(mechanism: Mechanism, variance: Fraction) -> tuple[float, ...]:
    if mechanism is Mechanism.SKELLAM:
        return skellam_pmf(variance, _kmax(variance))
    return dgauss_pmf(variance, _kmax(variance))


@pytest.mark.parametrize("variance", VARIANCES, ids=str)
@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_chi_square_mean_and_variance(mechanism: Mechanism, variance: Fraction) -> None:
    kmax = _kmax(variance)
    pmf = _pmf(mechanism, variance)
    key = hashlib.sha256(f"{mechanism.value}/{variance}".encode()).digest()[:16]
    if mechanism is Mechanism.SKELLAM:
        samples = sample_skellam(key, variance, SAMPLES)
    else:
        samples = sample_discrete_gaussian(key, variance, SAMPLES)
    # Under the right law the p-value is uniform: 1e-6 is a 1-in-a-million
    # failure for a random key, and these keys are fixed.
    assert chi_square_pvalue(samples, pmf, kmax) > 1e-6
    # Mean and variance within six standard errors (normal limit; the exact
    # moments from the pmf; Skellam's variance is v exactly).
    values = np.arange(-kmax, kmax + 1, dtype=np.float64)
    p = np.asarray(pmf)
    var = float(np.sum(p * values**2))
    fourth = float(np.sum(p * values**4))
    if mechanism is Mechanism.SKELLAM:
        assert math.isclose(var, float(variance), rel_tol=1e-9)
    mean_error = 6 * math.sqrt(var / SAMPLES)
    var_error = 6 * math.sqrt((fourth - var**2) / SAMPLES)
    assert abs(float(np.mean(samples))) <= mean_error
    assert abs(float(np.var(samples)) - var) <= var_error
    # The bounds bite: 3 % off in variance (a wrong scale) lies outside them.
    assert var_error < 0.03 * var


def test_chi_square_rejects_a_wrong_law() -> None:
    # The test has power: Skellam(1) samples are not N_Z(0, 1), nor is a law shifted by sigma/20.
    variance = Fraction(1)
    kmax = _kmax(variance)
    skellam = sample_skellam(KEY, variance, SAMPLES)
    assert chi_square_pvalue(skellam, _pmf(Mechanism.DDGAUSS, variance), kmax) < 1e-6
    gauss = sample_discrete_gaussian(KEY, 10**4, SAMPLES)
    wide = _kmax(Fraction(10**4))
    assert chi_square_pvalue(gauss + 5, _pmf(Mechanism.DDGAUSS, Fraction(10**4)), wide) < 1e-6
    assert chi_square_pvalue(gauss, _pmf(Mechanism.DDGAUSS, Fraction(10**4)), wide) > 1e-6


def test_split_skellam_has_the_skellam_law(monkeypatch: pytest.MonkeyPatch) -> None:
    # 7 Poisson(50/7) per side must still give Skellam(100) exactly.
    monkeypatch.setattr(samplers, "MAX_POISSON_MEAN", 8)
    variance = Fraction(100)
    samples = sample_skellam(KEY, variance, SAMPLES // 4)
    kmax = _kmax(variance)
    assert chi_square_pvalue(samples, skellam_pmf(variance, kmax), kmax) > 1e-6


# ============================================================ spec quotes and known-answer vectors


def test_spec_constants_table_matches_the_module() -> None:
    text = SPEC.read_text(encoding="utf-8")
    block = text.split("<!-- quote: dp-sampler-constants -->", 1)[1].strip().split("\n\n", 1)[0]
    quoted = {}
    for line in block.splitlines()[2:]:
        name, value = (cell.strip() for cell in line.strip("|").split("|")[:2])
        base, _, exponent = value.partition("^")
        quoted[re.sub(r"`| \(.*", "", name)] = int(base) ** int(exponent or 1)
    assert quoted == {
        name: getattr(samplers, name)
        for name in (
            "UNIFORM_BITS",
            "WEIGHT_BITS",
            "TAIL_BITS",
            "MAX_POISSON_MEAN",
            "MAX_VARIANCE",
            "MAX_VARIANCE_DENOMINATOR",
        )
    }


VECTOR_CASES: tuple[tuple[Mechanism, int], ...] = (
    (Mechanism.SKELLAM, 1),
    (Mechanism.SKELLAM, 100),
    (Mechanism.SKELLAM, 10**8),
    (Mechanism.DDGAUSS, 1),
    (Mechanism.DDGAUSS, 100),
    (Mechanism.DDGAUSS, 10**8),
)
REFERENCE: dict[Mechanism, Callable[[Sequence[int], Fraction], list[int]]] = {
    Mechanism.SKELLAM: ref_skellam,
    Mechanism.DDGAUSS: ref_dgauss,
}
WORDS_PER_SAMPLE = {Mechanism.SKELLAM: 4, Mechanism.DDGAUSS: 3}


def generate_vectors() -> dict[str, object]:
    """Known-answer vectors from the reference implementation on the real keystream."""
    cases = []
    for index, (mechanism, variance) in enumerate(VECTOR_CASES):
        key = hashlib.sha256(b"dp-v1 sampler vector %d" % index).digest()[:16]
        words = aes_words(key, WORDS_PER_SAMPLE[mechanism] * 16)
        expected = REFERENCE[mechanism](words, Fraction(variance))
        cases.append(
            {"mechanism": mechanism.value, "key": key.hex(), "variance": variance,
             "size": 16, "expected": expected}
        )  # fmt: skip
    return {
        "format": "dp-v1-sampler-vector",
        "spec": "specs/dp-v1.md §5",
        "cases": cases,
    }


def dumps_vectors(vectors: dict[str, object]) -> str:
    """The file's canonical text: one line per case."""
    cases = vectors["cases"]
    assert isinstance(cases, list)
    head = json.dumps({k: v for k, v in vectors.items() if k != "cases"}, ensure_ascii=False)
    lines = ",\n".join("  " + json.dumps(case, ensure_ascii=False) for case in cases)
    return head[:-1] + ', "cases": [\n' + lines + "\n]}\n"


def test_known_answer_vectors_replay() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert vectors["format"] == "dp-v1-sampler-vector"
    assert len(vectors["cases"]) == len(VECTOR_CASES)
    for case in vectors["cases"]:
        got = sample_noise(
            Mechanism(case["mechanism"]), bytes.fromhex(case["key"]), case["variance"], case["size"]
        )
        assert got.tolist() == case["expected"], case["mechanism"]


def test_known_answer_vectors_are_the_reference_output() -> None:
    assert VECTORS.read_text(encoding="utf-8") == dumps_vectors(generate_vectors())


if __name__ == "__main__":
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(dumps_vectors(generate_vectors()), encoding="utf-8")
    sys.stdout.write(f"wrote {VECTORS}\n")
