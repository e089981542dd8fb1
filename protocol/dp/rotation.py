"""The random rotation of a DP round: randomised Walsh-Hadamard transforms (specs/dp-v1.md §4).

With ``n`` the largest power of two ``<= d``, ``rotate(x)`` multiplies
``x`` by random signs ``s``, applies ``H_n / sqrt(n)`` to its first ``n``
coordinates and, when ``n < d``, multiplies the last ``n`` by more random
signs ``t`` and applies ``H_n / sqrt(n)`` to them too (``H_n`` the
Sylvester-Hadamard matrix: ``H_1 = [1]``, ``H_2k = [[H, H], [H, -H]]``).
Each step is orthogonal, so L2 norms (and with them the sensitivity) are
preserved; every coordinate's energy is spread over at least ``n > d / 2``
coordinates, which keeps every coordinate of the noisy sum small enough for
a narrow modulus (KLS21 §4, TFF's ``hadamard`` rotation). Nothing is
padded: the secure sum carries exactly ``d`` words, not the next power of
two (for ``d = 610`` that is 610 words instead of 1024).

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
from protocol.dp.params import rotation_block
from protocol.errors import ConfigError

__all__ = ["fwht", "rotate", "rotation_signs", "sign_count", "unrotate"]


def sign_count(dim: int) -> int:
    """How many signs a rotation of ``dim`` coordinates uses: ``d``, plus ``n`` if ``n < d``."""
    n = rotation_block(dim)
    return dim if n == dim else dim + n


def rotation_signs(session_id: bytes, dim: int) -> npt.NDArray[np.float64]:
    """The signs ``s`` (then ``t``) of a session's rotation, ``+1.0`` or ``-1.0`` (§4 step 1).

    With ``key = KDF(sid, "dp-rotation", "", 16)`` and ``w = prg_fill(key,
    uint64[ceil(m / 64)])`` for ``m = sign_count(dim)``, sign ``i`` takes
    bit ``i % 64`` (least significant first) of word ``i // 64``: 0 gives
    ``+1``, 1 gives ``-1``. Signs ``0 .. d-1`` are ``s``, the rest ``t``.
    """
    length = sign_count(dim)
    words = np.empty((length + 63) // 64, dtype=np.uint64)
    prg_fill(dp_rotation_key(session_id), words)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:length]
    return 1.0 - 2.0 * bits.astype(np.float64)


def fwht(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The unnormalised Walsh-Hadamard transform ``H v`` (a new array; §4 step 2).

    For ``h = 1, 2, 4, ..., n/2``, every block of ``2h`` consecutive
    coordinates ``(a, b)`` (``a`` the first ``h``, ``b`` the next ``h``)
    becomes ``(a + b, a - b)``: ``log2(n)`` vectorised passes, no loop over
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


def _normalised(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # H v times the binary64 value 1 / sqrt(n): sqrt and division are correctly rounded.
    out = fwht(values)
    np.multiply(out, 1.0 / math.sqrt(values.shape[0]), out=out)
    return out


def _check(x: npt.NDArray[np.float64], signs: npt.NDArray[np.float64]) -> tuple[int, int]:
    d = int(x.shape[0])
    if x.ndim != 1 or signs.ndim != 1 or signs.shape[0] != sign_count(d):
        raise ConfigError(
            f"a rotation of {x.shape[0]} values needs {sign_count(d) if d else '?'} signs, "
            f"got {signs.shape[0]}"
        )
    return d, rotation_block(d)


def rotate(x: npt.NDArray[np.float64], signs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The rotated vector (a new array; §4 steps 2-3).

    ``v = s * x``; ``v[0:n] = H_n v[0:n] / sqrt(n)``; if ``n < d``:
    ``v[d-n:d] = H_n (t * v[d-n:d]) / sqrt(n)``.

    Raises:
        ConfigError: ``signs`` is not ``rotation_signs(., len(x))``-shaped.
    """
    d, n = _check(x, signs)
    v = np.multiply(x, signs[:d], dtype=np.float64)
    v[:n] = _normalised(v[:n])
    if n < d:
        v[d - n :] = _normalised(np.multiply(v[d - n :], signs[d:]))
    return v


def unrotate(y: npt.NDArray[np.float64], signs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The inverse (a new array): the steps undone in reverse order.

    If ``n < d``: ``v[d-n:d] = t * (H_n v[d-n:d] / sqrt(n))``; then
    ``v[0:n] = H_n v[0:n] / sqrt(n)``; then ``x = s * v`` (``H_n`` is
    symmetric and ``H_n H_n = n I``).
    """
    d, n = _check(y, signs)
    v = np.array(y, dtype=np.float64, copy=True)
    if n < d:
        v[d - n :] = np.multiply(_normalised(v[d - n :]), signs[d:])
    v[:n] = _normalised(v[:n])
    np.multiply(v, signs[:d], out=v)
    return v
