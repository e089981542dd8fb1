"""Discrete noise samplers (specs/dp-v1.md §5).

Placeholder interface: rounds a Gaussian of the requested variance built from
the protocol PRG. The exact samplers of §5 replace this module.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from protocol.crypto import PRG_KEY_SIZE, prg_fill
from protocol.dp.params import MAX_LOCAL_VARIANCE, Mechanism
from protocol.errors import ConfigError

__all__ = ["sample_discrete_gaussian", "sample_noise", "sample_skellam"]


def _rounded_gaussian(key: bytes, variance: int | Fraction, size: int) -> npt.NDArray[np.int64]:
    if len(key) != PRG_KEY_SIZE:
        raise ConfigError(f"noise key must be {PRG_KEY_SIZE} bytes")
    if not 0 < variance <= MAX_LOCAL_VARIANCE or size < 0:
        raise ConfigError(f"bad variance {variance!r} or size {size!r}")
    words = np.empty(2 * size, dtype=np.uint64)
    prg_fill(key, words)
    u = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u1, u2 = 1.0 - u[:size], u[size:]
    g = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
    return np.rint(g * math.sqrt(float(variance))).astype(np.int64)


def sample_skellam(key: bytes, variance: int | Fraction, size: int) -> npt.NDArray[np.int64]:
    return _rounded_gaussian(key, variance, size)


def sample_discrete_gaussian(
    key: bytes, variance: int | Fraction, size: int
) -> npt.NDArray[np.int64]:
    return _rounded_gaussian(key, variance, size)


def sample_noise(
    mechanism: Mechanism, key: bytes, variance: int, size: int
) -> npt.NDArray[np.int64]:
    if Mechanism(mechanism) is Mechanism.SKELLAM:
        return sample_skellam(key, variance, size)
    return sample_discrete_gaussian(key, variance, size)
