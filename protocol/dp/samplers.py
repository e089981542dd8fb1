"""Integer noise samplers driven only by the protocol keystream (specs/dp-v1.md §5).

Each sample is a pure, specified function of the AES-128-CTR keystream
:func:`~protocol.crypto.prg_fill` ``(key, ...)``: no floating point takes part
in any decision, and neither ``numpy.random`` nor ``random`` is used.

Both mechanisms sample by *inversion* of a cumulative table computed with
big-integer fixed-point arithmetic (§5.1-§5.4):

* Skellam (Agarwal, Kairouz, Liu 2021): ``Poisson(v/2) - Poisson(v/2)``,
  each Poisson of mean above :data:`MAX_POISSON_MEAN` split into ``s``
  independent Poissons of mean ``v/(2s)`` (Poisson is closed under sums, so the
  split changes nothing in distribution and caps the table size);
* discrete Gaussian (Canonne, Kamath, Steinke 2020) ``N_Z(0, sigma^2 = v)``:
  the magnitude from a one-sided table, the sign from one keystream bit.

A table inverts a 128-bit uniform ``U`` (two consecutive keystream words) to the
smallest index ``j`` with ``U < C_j``; its statistical distance to the exact
law is proven below ``N * 2**-129 + 2**(1 - TAIL_BITS) + 2**-150`` per draw
(§5.5), which :func:`noise_statistical_distance` returns for the accountant.

The hot path is vectorised: one ``searchsorted`` over the table's high words
for every draw of a chunk; a draw whose high word ties a table entry (an
event of probability about ``N * 2**-64``) is resolved exactly on its low word.
"""

from __future__ import annotations

import functools
import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import numpy as np
import numpy.typing as npt

from protocol.crypto import PRG_KEY_SIZE, prg_fill
from protocol.dp.params import Mechanism
from protocol.errors import ConfigError

__all__ = [
    "MAX_POISSON_MEAN",
    "MAX_SAMPLE_COUNT",
    "MAX_VARIANCE",
    "MAX_VARIANCE_DENOMINATOR",
    "TAIL_BITS",
    "UNIFORM_BITS",
    "WEIGHT_BITS",
    "InversionTable",
    "dgauss_table",
    "noise_statistical_distance",
    "poisson_table",
    "sample_discrete_gaussian",
    "sample_noise",
    "sample_skellam",
    "skellam_splits",
]

UNIFORM_BITS: Final = 128
"""Bits of the uniform a table inverts: one AES block, ``U = w[2i] + 2**64 w[2i+1]``."""

WEIGHT_BITS: Final = 256
"""``W``: fixed-point precision of the unnormalised weights (the largest weight is ``2**W``)."""

TAIL_BITS: Final = 112
"""``tau``: a table stops where the mass left out on one side is below ``2**-tau`` (§5.5)."""

MAX_POISSON_MEAN: Final = 1 << 31
"""Largest Poisson mean tabulated at once; a larger mean is split into equal parts (§5.3)."""

MAX_VARIANCE: Final = 1 << 36
"""Largest supported variance, for both mechanisms (§5.6)."""

MAX_VARIANCE_DENOMINATOR: Final = 1 << 32
"""Largest denominator of a rational variance (keeps the table arithmetic bounded)."""

MAX_SAMPLE_COUNT: Final = 1 << 30
"""Largest ``size`` (and ``start + size``) of one call."""

_MASK64: Final = (1 << 64) - 1
_CHUNK_WORDS: Final = 1 << 19  # keystream words per chunk: 4 MiB, cache friendly
_TABLE_CACHE: Final = 4  # tables kept per mechanism (least recently used dropped)

Int64Array = npt.NDArray[np.int64]
Uint64Array = npt.NDArray[np.uint64]
_Combine = Callable[[Uint64Array], Int64Array]  # one chunk of keystream rows -> samples


@dataclass(frozen=True, eq=False)
class InversionTable:
    """A cumulative table ``0 < C_0 <= ... <= C_{N-2} < C_{N-1} = 2**128`` over ``offset + [0, N)``.

    Only ``C_0 .. C_{N-2}`` are stored, split into 64-bit halves: ``C_{N-1}``
    is never compared, since every ``U < 2**128``.

    Attributes:
        offset: the value of index 0.
        hi: ``C_j >> 64`` for ``j < N - 1`` (non-decreasing).
        lo: ``C_j mod 2**64`` for ``j < N - 1``.
    """

    offset: int
    hi: Uint64Array
    lo: Uint64Array

    @property
    def size(self) -> int:
        """``N``: the number of values the table can return."""
        return int(self.hi.shape[0]) + 1

    def statistical_distance_bound(self) -> float:
        """Upper bound on the statistical distance of one draw to the exact law (§5.5)."""
        return self.size * 2.0**-129 + 2.0 ** (1 - TAIL_BITS) + 2.0**-150

    def invert(self, u_lo: Uint64Array, u_hi: Uint64Array) -> Int64Array:
        """``offset + #{j < N-1 : C_j <= U}`` for each ``U = u_lo + 2**64 u_hi``.

        ``#{j : C_j <= U}`` is the smallest ``j`` with ``U < C_j``, since the
        ``C_j`` are non-decreasing and ``C_{N-1} > U``.
        """
        count = np.searchsorted(self.hi, u_hi, side="right")
        if self.hi.shape[0]:
            # count counted every C_j whose high word equals u_hi as <= U; those
            # (a run ending at count - 1) must be compared on the low word too.
            tie = self.hi[np.maximum(count, 1) - 1] == u_hi
            for e in np.flatnonzero(tie):  # probability ~ N * 2**-64 per draw
                first = int(np.searchsorted(self.hi, u_hi[e], side="left"))
                run = self.lo[first : int(count[e])]
                count[e] = first + int(np.searchsorted(run, u_lo[e], side="right"))
        return count.astype(np.int64) + self.offset


def _table_from_weights(
    offset: int, total: int, weights: Iterator[int], size: int
) -> InversionTable:
    """``C_j = floor(2**128 S_j / Z)`` from the weights in index order (§5.1)."""
    hi = array("Q")
    lo = array("Q")
    partial = 0
    for j, weight in enumerate(weights):
        if j == size - 1:
            break
        partial += weight
        c = (partial << UNIFORM_BITS) // total
        hi.append(c >> 64)
        lo.append(c & _MASK64)
    return InversionTable(
        offset=offset,
        hi=np.frombuffer(hi, dtype=np.uint64).copy(),
        lo=np.frombuffer(lo, dtype=np.uint64).copy(),
    )


# --------------------------------------------------------------------------- Poisson (§5.3)


def _poisson_walk(a: int, b: int) -> tuple[int, int, int, int, int]:
    """One pass over the Poisson(a/b) weights from the mode outward (§5.3).

    Returns ``(L, m, R, left_sum, right_sum)``: the table is ``[L, R]``, ``m``
    the mode, ``left_sum`` the weights of ``[L, m)``, ``right_sum`` of ``[m, R]``.
    """
    limit = 1 << (WEIGHT_BITS - TAIL_BITS)
    m = a // b
    right_sum = w = 1 << WEIGHT_BITS
    k = m
    while True:  # w = w_k; step to w_{k+1}
        w = (w * a) // (b * (k + 1))
        k += 1
        # sum_{j >= k} w_j <= w_k / (1 - mu/(k+1)): the ratios w_{j+1}/w_j = mu/(j+1) fall.
        if w * (k + 1) * b <= limit * ((k + 1) * b - a):
            break
        right_sum += w
    high = k - 1
    left_sum = 0
    w = 1 << WEIGHT_BITS
    k = m
    low = 0
    while k > 0:  # w = w_k; step to w_{k-1}
        w = (w * k * b) // a
        k -= 1
        # sum_{j <= k} w_j <= w_k / (1 - k/mu): the ratios w_{j-1}/w_j = j/mu fall.
        if w * a <= limit * (a - k * b):
            low = k + 1
            break
        left_sum += w
    return low, m, high, left_sum, right_sum


@functools.lru_cache(maxsize=_TABLE_CACHE)
def poisson_table(mean: Fraction) -> InversionTable:
    """The inversion table of Poisson(``mean``) (§5.3); cached, least recently used dropped.

    Raises:
        ConfigError: ``mean`` is not a positive rational of bounded size.
    """
    if not isinstance(mean, Fraction) or not 0 < mean <= MAX_POISSON_MEAN:
        raise ConfigError(f"Poisson mean must be a Fraction in (0, {MAX_POISSON_MEAN}]")
    a, b = mean.numerator, mean.denominator
    low, m, high, left_sum, right_sum = _poisson_walk(a, b)
    total = left_sum + right_sum
    size = high - low + 1

    def weights() -> Iterator[int]:
        # The same recurrences as _poisson_walk, replayed: the left side is
        # produced from the mode down, so it is collected (at most N/2 ints)
        # and yielded in increasing order.
        w = 1 << WEIGHT_BITS
        left: list[int] = []
        for k in range(m, low, -1):
            w = (w * k * b) // a
            left.append(w)
        yield from reversed(left)
        w = 1 << WEIGHT_BITS
        yield w
        for k in range(m, high):
            w = (w * a) // (b * (k + 1))
            yield w

    return _table_from_weights(low, total, weights(), size)


def skellam_splits(variance: Fraction) -> int:
    """``s``: Skellam(``v``) is drawn as ``sum`` of ``s`` Poisson(v/2s) minus ``s`` more (§5.3)."""
    mean = variance / 2
    return max(1, -(-mean.numerator // (mean.denominator * MAX_POISSON_MEAN)))


# ------------------------------------------------------------------ discrete Gaussian (§5.4)


def _exp_neg(c: int, d: int) -> int:
    """``E(c/d)``: ``2**W exp(-c/d)`` in fixed point, for ``0 < c/d <= 1`` (§5.4).

    The alternating Taylor series with 32 guard bits, each term floored:
    ``T_0 = 2**(W+32)``, ``T_j = floor(T_{j-1} c / (d j))`` until ``T_j = 0``,
    ``E = floor((T_0 - T_1 + T_2 - ...) / 2**32)``. Within 2 units of the truth.
    """
    term = total = 1 << (WEIGHT_BITS + 32)
    j = 0
    while term:
        j += 1
        term = (term * c) // (d * j)
        total += -term if j % 2 else term
    return total >> 32


def _dgauss_weights(a: int, b: int) -> Iterator[tuple[int, int]]:
    """``(w_k, r_k)`` for ``k = 0, 1, ...``: ``w_k ~ 2**W exp(-k^2/2s^2)``, ``s^2 = a/b`` (§5.4)."""
    q = _exp_neg(b, a)  # exp(-1/s^2)
    r = _exp_neg(b, 2 * a)  # r_0 = exp(-1/(2 s^2)) = w_1 / w_0
    w = 1 << WEIGHT_BITS
    while True:
        yield w, r
        w = (w * r) >> WEIGHT_BITS  # w_{k+1} = w_k exp(-(2k+1)/(2 s^2))
        r = (r * q) >> WEIGHT_BITS  # r_{k+1} = r_k exp(-1/s^2)


@functools.lru_cache(maxsize=_TABLE_CACHE)
def dgauss_table(sigma2: Fraction) -> InversionTable:
    """The inversion table of ``|X|``, ``X ~ N_Z(0, sigma2)`` (§5.4); cached, LRU.

    Weights ``w_0`` for 0 and ``2 w_k`` for ``k >= 1`` (both signs).

    Raises:
        ConfigError: ``sigma2`` is not a rational in ``[1, MAX_VARIANCE]``.
    """
    if not isinstance(sigma2, Fraction) or not 1 <= sigma2 <= MAX_VARIANCE:
        raise ConfigError(f"sigma^2 must be a Fraction in [1, {MAX_VARIANCE}]")
    a, b = sigma2.numerator, sigma2.denominator
    # sigma <= isqrt(ceil(a/b)) + 1 =: g; the two tails beyond K hold at most
    # 2 w_{K+1} (1 + sigma sqrt(pi/2)) <= w_{K+1} (2 + 3g)  (§5.5).
    g = math.isqrt(-(-a // b)) + 1
    limit = 1 << (WEIGHT_BITS - TAIL_BITS)
    total = 0
    size = 0
    for k, (w, _) in enumerate(_dgauss_weights(a, b)):
        if k >= 1 and w * (2 + 3 * g) <= limit:
            break
        total += w if k == 0 else 2 * w
        size += 1

    def weights() -> Iterator[int]:
        for k, (w, _) in enumerate(_dgauss_weights(a, b)):
            yield w if k == 0 else 2 * w

    return _table_from_weights(0, total, weights(), size)


# --------------------------------------------------------------------------- validation


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != PRG_KEY_SIZE:
        raise ConfigError(f"noise key must be {PRG_KEY_SIZE} bytes")
    return bytes(key)


def _check_variance(variance: object) -> Fraction:
    if isinstance(variance, bool) or not isinstance(variance, int | Fraction):
        raise ConfigError(f"variance must be an int or a Fraction, got {type(variance).__name__}")
    value = Fraction(variance)
    if not 1 <= value <= MAX_VARIANCE:
        raise ConfigError(f"variance must be in [1, {MAX_VARIANCE}], got {variance}")
    if value.denominator > MAX_VARIANCE_DENOMINATOR:
        raise ConfigError(f"variance denominator must be <= {MAX_VARIANCE_DENOMINATOR}")
    return value


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _check_range(size: object, start: object) -> tuple[int, int]:
    count, first = _check_count("size", size), _check_count("start", start)
    if first + count > MAX_SAMPLE_COUNT:
        raise ConfigError(f"start + size must be <= {MAX_SAMPLE_COUNT}, got {first + count}")
    return count, first


# --------------------------------------------------------------------------- sampling (§5.1)


def _draw(
    key: bytes, size: int, start: int, words_per_sample: int, combine: _Combine
) -> Int64Array:
    """Fill ``out[i]`` from keystream words ``[(start+i) W, (start+i+1) W)``, chunk by chunk."""
    out = np.empty(size, dtype=np.int64)
    chunk = max(1, _CHUNK_WORDS // words_per_sample)
    buffer = np.empty(min(size, chunk) * words_per_sample, dtype=np.uint64)
    for first in range(0, size, chunk):
        n = min(chunk, size - first)
        words = buffer[: n * words_per_sample]
        prg_fill(key, words, start=(start + first) * words_per_sample)
        out[first : first + n] = combine(words.reshape(n, words_per_sample))
    return out


def _skellam_from_words(table: InversionTable, splits: int) -> _Combine:
    def combine(words: Uint64Array) -> Int64Array:
        # Row i holds sample i's 2s uniforms: U_r = words[i, 2r] + 2**64 words[i, 2r+1].
        n = words.shape[0]
        draws = table.invert(words[:, 0::2].ravel(), words[:, 1::2].ravel()).reshape(n, 2 * splits)
        # The offsets L cancel between the s positive and the s negative draws.
        difference: Int64Array = draws[:, :splits].sum(axis=1) - draws[:, splits:].sum(axis=1)
        return difference

    return combine


def _dgauss_from_words(table: InversionTable) -> _Combine:
    def combine(words: Uint64Array) -> Int64Array:
        # Row i: U = words[i, 0] + 2**64 words[i, 1]; the sign is bit 0 of words[i, 2].
        magnitude = table.invert(words[:, 0].copy(), words[:, 1].copy())
        negative = (words[:, 2] & np.uint64(1)).astype(bool)
        signed: Int64Array = np.where(negative, -magnitude, magnitude)
        return signed

    return combine


def sample_skellam(
    key: bytes, variance: int | Fraction, size: int, *, start: int = 0
) -> Int64Array:
    """Skellam noise ``Poisson(v/2) - Poisson(v/2)`` (variance ``v``), from ``PRG(key)`` (§5.3).

    Sample ``i`` is a function of keystream words ``[4s(start+i), 4s(start+i+1))``
    alone, so ``sample_skellam(k, v, n)[j:]`` equals
    ``sample_skellam(k, v, n - j, start=j)``.

    Args:
        key: the 16-byte PRG key.
        variance: ``v``, an int or Fraction in ``[1, MAX_VARIANCE]``.
        size: number of samples.
        start: index of the first sample (seek).

    Returns:
        ``size`` int64 samples.

    Raises:
        ConfigError: a bad key, variance, size or start.
    """
    key = _check_key(key)
    v = _check_variance(variance)
    size, start = _check_range(size, start)
    splits = skellam_splits(v)
    table = poisson_table(v / (2 * splits))
    return _draw(key, size, start, 4 * splits, _skellam_from_words(table, splits))


def sample_discrete_gaussian(
    key: bytes, variance: int | Fraction, size: int, *, start: int = 0
) -> Int64Array:
    """Discrete Gaussian noise ``N_Z(0, sigma^2 = v)`` from ``PRG(key)`` (§5.4).

    Sample ``i`` is a function of keystream words ``[3(start+i), 3(start+i+1))`` alone.

    Args:
        key: the 16-byte PRG key.
        variance: ``sigma^2``, an int or Fraction in ``[1, MAX_VARIANCE]``.
        size: number of samples.
        start: index of the first sample (seek).

    Returns:
        ``size`` int64 samples.

    Raises:
        ConfigError: a bad key, variance, size or start.
    """
    key = _check_key(key)
    v = _check_variance(variance)
    size, start = _check_range(size, start)
    return _draw(key, size, start, 3, _dgauss_from_words(dgauss_table(v)))


def _check_mechanism(mechanism: object) -> Mechanism:
    if not isinstance(mechanism, str):
        raise ConfigError(f"mechanism must be a Mechanism, got {type(mechanism).__name__}")
    try:
        return Mechanism(mechanism)
    except ValueError as exc:
        raise ConfigError(f"unknown DP mechanism {mechanism!r}") from exc


def sample_noise(
    mechanism: Mechanism, key: bytes, variance: int, size: int, *, start: int = 0
) -> Int64Array:
    """``size`` samples of the ``mechanism``'s noise of variance ``variance`` (§5).

    Raises:
        ConfigError: an unknown mechanism, or a bad key, variance, size or start.
    """
    if _check_mechanism(mechanism) is Mechanism.SKELLAM:
        return sample_skellam(key, variance, size, start=start)
    return sample_discrete_gaussian(key, variance, size, start=start)


def noise_statistical_distance(mechanism: Mechanism, variance: int | Fraction) -> float:
    """Upper bound on the statistical distance of one sample to the exact law (§5.5).

    Skellam: ``2s`` table draws, each within the table's bound; discrete
    Gaussian: one draw (the sign bit is exact). At most ``2**-100`` over the
    supported range; the accountant adds it, per coordinate, to delta.

    Raises:
        ConfigError: an unknown mechanism or a bad variance.
    """
    v = _check_variance(variance)
    if _check_mechanism(mechanism) is Mechanism.SKELLAM:
        splits = skellam_splits(v)
        return 2 * splits * poisson_table(v / (2 * splits)).statistical_distance_bound()
    return dgauss_table(v).statistical_distance_bound()
