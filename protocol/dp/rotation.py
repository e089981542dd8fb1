"""The random rotation of a DP round: a randomised Walsh-Hadamard transform (specs/dp-v1.md §4).

``rotate(x) = H D x / sqrt(d')`` where ``d'`` is a power of two, ``x`` is
zero-padded to ``d'``, ``D = diag(s)`` holds public random signs and ``H``
is the Sylvester-Hadamard matrix (``H_1 = [1]``, ``H_2n = [[H, H], [H, -H]]``).
``H D / sqrt(d')`` is orthogonal, so L2 norms (and with them the
sensitivity) are preserved, while a vector's energy is spread evenly over
the coordinates, which keeps every coordinate of the noisy sum small enough
for a narrow modulus (KLS21 §4, TFF's ``hadamard`` rotation).

The signs are not secret: they come from the ``dp-rotation`` key derived
from the session id, so the server recomputes them to undo the rotation.

Determinism: every step is an IEEE-754 binary64 addition, subtraction or
multiplication in the order below, so two implementations that follow it
agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from protocol._keys import dp_rotation_key
from protocol.crypto import prg_fill
from protocol.errors import ConfigError

__all__ = ["fwht", "rotate", "rotation_signs", "unrotate"]


def rotation_signs(session_id: bytes, length: int) -> npt.NDArray[np.float64]:
    """The sign vector ``s`` (``+1.0`` or ``-1.0``) of a session's rotation (§4 step 1).

    With ``key = KDF(sid, "dp-rotation", "", 16)``, ``w = prg_fill(key,
    uint64[ceil(length / 64)])``, coordinate ``i`` takes bit ``i % 64``
    (least significant first) of word ``i // 64``: 0 gives ``+1``, 1 gives ``-1``.
    """
    if length < 1:
        raise ConfigError(f"rotation length must be >= 1, got {length}")
    words = np.empty((length + 63) // 64, dtype=np.uint64)
    prg_fill(dp_rotation_key(session_id), words)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:length]
    return 1.0 - 2.0 * bits.astype(np.float64)


def fwht(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The unnormalised Walsh-Hadamard transform ``H v`` (a new array; §4 step 3).

    For ``h = 1, 2, 4, ..., d'/2``, every block of ``2h`` consecutive
    coordinates ``(a, b)`` (``a`` the first ``h``, ``b`` the next ``h``)
    becomes ``(a + b, a - b)``: ``log2(d')`` vectorised passes, no loop over
    elements.
    """
    n = int(values.shape[0])
    if n < 1 or n & (n - 1):
        raise ConfigError(f"the Hadamard transform needs a power-of-two length, got {n}")
    out = np.array(values, dtype=np.float64, copy=True)
    scratch = np.empty(n // 2, dtype=np.float64)
    h = 1
    while h < n:
        blocks = out.reshape(-1, 2, h)
        a, b = blocks[:, 0, :], blocks[:, 1, :]
        s = scratch.reshape(-1, h)
        np.subtract(a, b, out=s)  # a - b, before a is overwritten
        np.add(a, b, out=a)
        b[...] = s
        h *= 2
    return out


def _norm_factor(n: int) -> float:
    # 1 / sqrt(d') as binary64: math.sqrt is correctly rounded, so is the division.
    return 1.0 / math.sqrt(n)


def rotate(x: npt.NDArray[np.float64], signs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``H (s * pad(x)) / sqrt(d')`` with ``d' = len(signs)`` (§4 steps 2-4).

    Raises:
        ConfigError: ``x`` is longer than ``signs``.
    """
    n = int(signs.shape[0])
    if x.shape[0] > n:
        raise ConfigError(f"cannot rotate {x.shape[0]} values in dimension {n}")
    padded = np.zeros(n, dtype=np.float64)
    padded[: x.shape[0]] = x
    np.multiply(padded, signs, out=padded)
    out = fwht(padded)
    np.multiply(out, _norm_factor(n), out=out)
    return out


def unrotate(
    y: npt.NDArray[np.float64], signs: npt.NDArray[np.float64], dim: int
) -> npt.NDArray[np.float64]:
    """The inverse, ``(s * H y / sqrt(d'))[:dim]``: ``H`` is symmetric and ``H H = d' I``."""
    n = int(signs.shape[0])
    if y.shape[0] != n or not 1 <= dim <= n:
        raise ConfigError(f"cannot unrotate {y.shape[0]} values of dimension {n} to {dim}")
    out = fwht(np.asarray(y, dtype=np.float64))
    np.multiply(out, _norm_factor(n), out=out)
    np.multiply(out, signs, out=out)
    return out[:dim].copy()
