"""Conditional randomised rounding (Kairouz, Liu, Steinke 2021, §4.1; specs/dp-v1.md §6).

Stochastic rounding of a real vector to integers is unbiased but can grow
its L2 norm by up to ``sqrt(d)``. The DP analysis needs a norm bound that
holds *always*, so rounding is repeated, with fresh randomness, until the
rounded vector's norm is at most :func:`~protocol.dp.params.conditional_rounding_bound`;
each attempt succeeds with probability at least ``1 - beta`` (KLS21,
Theorem 1). The conditioning introduces a bias bounded in KLS21; it is
part of the predicted error.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from protocol.crypto import PRG_KEY_SIZE, prg_fill
from protocol.errors import ConfigError

__all__ = ["MAX_ROUNDING_ATTEMPTS", "RoundingFailed", "conditional_round"]

MAX_ROUNDING_ATTEMPTS: Final = 256
"""Attempts before giving up; at ``beta = exp(-0.5)`` all fail with probability < ``2**-180``."""

_U32_RANGE: Final = 2.0**32


class RoundingFailed(ConfigError):
    """No attempt met the norm bound (the input was not clipped, or beta is near 1)."""


def conditional_round(
    y: npt.NDArray[np.float64], key: bytes, bound: float
) -> tuple[npt.NDArray[np.int64], int]:
    """Round ``y`` stochastically until ``||z||_2 <= bound`` (§6).

    Attempt ``a = 0, 1, ...`` reads ``r = prg_fill(key, uint32[d])`` at words
    ``a*d .. a*d + d - 1`` and sets ``z_i = floor(y_i) + (1 if r_i <
    (y_i - floor(y_i)) * 2**32 else 0)``; it is accepted when the exact
    integer ``sum(z_i**2) <= bound**2`` (``bound**2`` in binary64, compared
    exactly with the integer).

    Returns:
        ``(z, attempts)``: the accepted vector and how many attempts it took.

    Raises:
        ConfigError: bad arguments (key length, non-finite values, a vector
            whose squared norm could overflow 63 bits).
        RoundingFailed: :data:`MAX_ROUNDING_ATTEMPTS` attempts all failed.
    """
    if len(key) != PRG_KEY_SIZE:
        raise ConfigError(f"rounding key must be {PRG_KEY_SIZE} bytes, got {len(key)}")
    if y.ndim != 1 or not np.isfinite(y).all():
        raise ConfigError("the vector to round must be 1-D and finite")
    d = int(y.shape[0])
    floor = np.floor(y)
    # |z_i| <= |y_i| + 1, so sum(z**2) <= (||y||_inf + 1)**2 * d; int64 must hold it.
    top = float(np.max(np.abs(floor))) + 2.0 if d else 0.0
    if top * top * d >= 2.0**62:
        raise ConfigError("the scaled vector is too large to round exactly in 64 bits")
    frac = (y - floor) * _U32_RANGE  # exact: scaling by a power of two
    base = floor.astype(np.int64)
    limit = float(bound) * float(bound)
    r = np.empty(d, dtype=np.uint32)
    z = np.empty(d, dtype=np.int64)
    for attempt in range(MAX_ROUNDING_ATTEMPTS):
        prg_fill(key, r, start=attempt * d)
        np.add(base, r < frac, out=z)
        if int(np.dot(z, z)) <= limit:
            return z, attempt + 1
    raise RoundingFailed(
        f"conditional rounding missed the norm bound {bound:.6g} in {MAX_ROUNDING_ATTEMPTS} "
        "attempts: the input exceeds the clip or beta is too close to 1"
    )
