"""A DP round's vector: clip, rotate, scale, round, noise; and its decoding (specs/dp-v1.md §7).

The client's pipeline (:meth:`DPEncoding.encode`):

1. clip the update to L2 norm ``c`` (the norm is the correctly rounded
   ``sqrt(fsum(x_i**2))``, so every implementation clips identically);
2. rotate it (:mod:`protocol.dp.rotation`, signs from the session id);
3. scale by ``gamma``;
4. round conditionally (:mod:`protocol.dp.rounding`) to L2 norm at most
   ``Delta_2 = DPParams.l2_sensitivity``;
5. add discrete noise of variance ``v`` (:mod:`protocol.dp.samplers`);
6. append the count slot ``1``.

The result is a signed integer vector of length ``d + 1``; the secure sum
reduces it modulo ``2**b`` (modular clipping) and the server's centred lift
of the sum (``from_modular``) is what :meth:`DPEncoding.decode` takes. The
server undoes only public transforms: ``/ gamma``, the inverse rotation and
the division by the count. It never sees a less noisy value than the sum.

Weights: every survivor counts once (uniform FedAvg, as in DP-FedAvg): a
per-client example count would need its own sensitivity and noise.
Evaluation sums are not collected in DP rounds, since they would leak
outside the guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from protocol.crypto import PRG_KEY_SIZE, RandomSource
from protocol.dp.params import DPParams
from protocol.dp.rotation import rotate, rotation_signs, unrotate
from protocol.dp.rounding import conditional_round
from protocol.dp.samplers import sample_noise
from protocol.errors import ConfigError

__all__ = ["DP_SEED_SIZE", "DPEncoding"]

DP_SEED_SIZE: Final = 32
"""Bytes drawn from the RandomSource per seed; two seeds per encode (rounding, then noise)."""


@dataclass(frozen=True)
class DPEncoding:
    """Encoding and decoding of a DP round's vector under fixed :class:`DPParams`."""

    params: DPParams
    _signs_cache: dict[bytes, npt.NDArray[np.float64]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def vector_length(self) -> int:
        """``d + 1``: the rotated, noised coordinates and the count slot."""
        return self.params.vector_length

    def context(self) -> bytes:
        """The bytes bound into the session's ``context`` (``DPParams.context``)."""
        return self.params.context()

    def required_bit_width(self, num_clients: int) -> int:
        """The session's modulus exponent: the task's ``b`` (the count slot must fit too)."""
        if num_clients >= 1 << (self.params.bits - 1):
            raise ConfigError(
                f"{num_clients} clients overflow the count slot of {self.params.bits} bits"
            )
        return self.params.bits

    def _signs(self, session_id: bytes) -> npt.NDArray[np.float64]:
        signs = self._signs_cache.get(session_id)
        if signs is None:
            signs = rotation_signs(session_id, self.params.dim)
            if len(self._signs_cache) >= 4:
                self._signs_cache.clear()
            self._signs_cache[session_id] = signs
        return signs

    def clip(self, update: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Step 1: ``x * min(1, c / ||x||_2)`` in binary64 (a new array).

        Raises:
            ConfigError: not a 1-D floating array of length ``d``, or a value
                is not finite (the message names the first such index).
        """
        if not isinstance(update, np.ndarray) or update.ndim != 1:
            raise ConfigError("the update must be a 1-D numpy array")
        if not np.issubdtype(update.dtype, np.floating):
            raise ConfigError(f"the update must have a floating dtype, got {update.dtype}")
        if update.shape[0] != self.params.dim:
            raise ConfigError(
                f"the update has {update.shape[0]} values, the round expects {self.params.dim}"
            )
        x = update.astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            index = int(np.argmin(finite))
            raise ConfigError(f"update[{index}] = {x[index]!r} is not finite")
        norm = math.sqrt(math.fsum(np.square(x).tolist()))
        clip = float(self.params.l2_clip)
        if norm > clip:
            np.multiply(x, clip / norm, out=x)
        return x

    def encode(
        self, update: npt.NDArray[np.floating], session_id: bytes, rng: RandomSource
    ) -> npt.NDArray[np.int64]:
        """The client's noised integer vector (length ``d + 1``) for session ``session_id``.

        Exactly two calls ``rng.random_bytes(32)``: the rounding seed, then the
        noise seed; each PRG key is the seed's first 16 bytes.

        Raises:
            ConfigError: a bad update (see :meth:`clip`) or session id;
                ``RoundingFailed`` if conditional rounding cannot meet the bound.
        """
        if not isinstance(session_id, bytes) or len(session_id) != 32:
            raise ConfigError("session id must be 32 bytes")
        p = self.params
        x = self.clip(update)
        round_seed = rng.random_bytes(DP_SEED_SIZE)
        noise_seed = rng.random_bytes(DP_SEED_SIZE)
        if len(round_seed) != DP_SEED_SIZE or len(noise_seed) != DP_SEED_SIZE:
            raise ConfigError(f"RandomSource returned fewer than {DP_SEED_SIZE} bytes")
        y = rotate(x, self._signs(session_id))
        np.multiply(y, float(p.scale), out=y)
        z, _ = conditional_round(y, round_seed[:PRG_KEY_SIZE], p.l2_sensitivity)
        z += sample_noise(p.mechanism, noise_seed[:PRG_KEY_SIZE], p.local_variance, p.dim)
        out = np.empty(p.vector_length, dtype=np.int64)
        out[:-1] = z
        out[-1] = 1
        return out

    def decode_sum(
        self, total: npt.NDArray[np.integer], session_id: bytes
    ) -> tuple[npt.NDArray[np.float64], int]:
        """``(noisy sum of the clipped updates in real units, count)`` from the lifted sum.

        Raises:
            ConfigError: wrong length, or a count below 1 (no contribution, or
                a wrapped or corrupt sum).
        """
        p = self.params
        if not isinstance(total, np.ndarray) or total.shape != (p.vector_length,):
            raise ConfigError(f"the sum must be a vector of {p.vector_length} integers")
        count = int(total[-1])
        if count < 1:
            raise ConfigError(f"the count slot is {count}: no contribution, or a corrupt sum")
        body = total[:-1].astype(np.float64)
        np.divide(body, float(p.scale), out=body)
        return unrotate(body, self._signs(session_id)), count

    def decode(
        self, total: npt.NDArray[np.integer], session_id: bytes
    ) -> tuple[npt.NDArray[np.float64], int]:
        """``(noisy mean of the clipped updates, count)``: :meth:`decode_sum` over the count."""
        total_sum, count = self.decode_sum(total, session_id)
        np.divide(total_sum, count, out=total_sum)
        return total_sum, count
