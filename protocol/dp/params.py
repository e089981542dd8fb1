"""The parameters of one distributed-DP round, as every party agrees on them (specs/dp-v1.md §3).

A DP round's parameters are fixed by the task and bound into the session's
``context`` (:meth:`DPParams.context`), so a client that accepts a session
also accepts exactly these numbers, and computes its own privacy cost from
them: the server is trusted for none of them.
"""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from protocol.errors import ConfigError

__all__ = [
    "MAX_DIM",
    "MAX_LOCAL_VARIANCE",
    "DPParams",
    "Mechanism",
    "check_int",
    "check_real",
    "conditional_rounding_bound",
    "rotation_block",
]

MAX_DIM: Final = 1 << 26
"""Largest model (number of weights) a DP round supports."""

MAX_LOCAL_VARIANCE: Final = 1 << 36
"""Largest per-client noise variance, in integer units squared (the samplers' range, dp-v1 §5)."""


class Mechanism(StrEnum):
    """Which discrete noise each client adds (§5)."""

    SKELLAM = "skellam"
    """Agarwal, Kairouz, Liu (NeurIPS 2021): ``Poisson(v/2) - Poisson(v/2)``, variance ``v``."""
    DDGAUSS = "ddgauss"
    """Kairouz, Liu, Steinke (ICML 2021): discrete Gaussian ``N_Z(0, v)``."""


def rotation_block(dim: int) -> int:
    """``n``: the rotation's Hadamard block, the largest power of two ``<= dim`` (§4).

    The rotation applies ``H_n`` to the first ``n`` coordinates and, when
    ``n < dim``, again to the last ``n``: nothing is padded, so the secure sum
    carries exactly ``dim`` noised words, and every coordinate is spread over
    at least ``n > dim / 2`` others.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise ConfigError(f"dim must be an int in [1, {MAX_DIM}], got {dim!r}")
    return 1 << (dim.bit_length() - 1)


def conditional_rounding_bound(scaled_clip: float, dim: int, beta: float) -> float:
    """L2 norm bound of a conditionally rounded vector (Kairouz et al. 2021, Theorem 1; §6).

    A vector of L2 norm at most ``scaled_clip`` in ``R**dim``, rounded
    stochastically coordinate by coordinate and re-rounded until its norm is
    at most this bound, has norm at most this bound; the bound holds with
    probability at least ``1 - beta`` per attempt, so the expected number of
    attempts is at most ``1 / (1 - beta)``. ``beta = 0`` means unconditional
    rounding, whose norm is at most ``scaled_clip + sqrt(dim)`` always.

    ``min(c + sqrt(d), sqrt(c**2 + d/4 + sqrt(2 ln(1/beta)) * (c + sqrt(d)/2)))``.

    Raises:
        ConfigError: a parameter is out of range.
    """
    if not (math.isfinite(scaled_clip) and scaled_clip > 0):
        raise ConfigError(f"scaled clip must be finite and > 0, got {scaled_clip!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"dim must be an int >= 1, got {dim!r}")
    if not 0 <= beta < 1:
        raise ConfigError(f"beta must be in [0, 1), got {beta!r}")
    root_d = math.sqrt(dim)
    bound_1 = scaled_clip + root_d
    if beta == 0:
        return bound_1
    squared_2 = (
        scaled_clip**2
        + 0.25 * dim
        + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_clip + 0.5 * root_d)
    )
    return min(bound_1, math.sqrt(squared_2))


def check_real(name: str, value: object) -> float:
    """``value`` as a finite float, or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {type(value).__name__}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return as_float


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


@dataclass(frozen=True)
class DPParams:
    """Everything a client needs to noise its update and to price the round (§3).

    Attributes:
        mechanism: the discrete noise (§5).
        dim: ``d``, the number of model weights.
        l2_clip: ``c``, each update is scaled down to L2 norm at most ``c``.
        scale: ``gamma``, integer units per unit of the rotated update.
        beta: conditional rounding parameter in ``[0, 1)`` (§6).
        local_variance: ``v``, the variance of each client's noise in integer
            units squared (an int: Skellam uses ``Poisson(v/2)`` twice).
        min_honest: ``m``, the number of honest noise shares the sum is
            guaranteed to hold; the calibration assumes no more (§8). A
            client refuses to unmask a sum with fewer than ``m + c`` survivors,
            ``c`` being the colluders it assumes.
        bits: ``b``, the modulus exponent of the secure sum.
        epsilon_budget: the task's per-client budget, at ``delta``.
        delta: the ``delta`` of every (epsilon, delta) statement of the task.

    Raises:
        ConfigError: on construction, for any out-of-range value.
    """

    mechanism: Mechanism
    dim: int
    l2_clip: float
    scale: float
    beta: float
    local_variance: int
    min_honest: int
    bits: int
    epsilon_budget: float
    delta: float

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mechanism", Mechanism(self.mechanism))
        except ValueError as exc:
            raise ConfigError(
                f"unknown DP mechanism {self.mechanism!r}; one of {[m.value for m in Mechanism]}"
            ) from exc
        rotation_block(self.dim)
        for name in ("l2_clip", "scale", "epsilon_budget"):
            if check_real(name, getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        beta = check_real("beta", self.beta)
        if not 0 <= beta < 1:
            raise ConfigError(f"beta must be in [0, 1), got {beta!r}")
        delta = check_real("delta", self.delta)
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
        check_int("local_variance", self.local_variance, 1, MAX_LOCAL_VARIANCE)
        check_int("min_honest", self.min_honest, 1, 1 << 32)
        check_int("bits", self.bits, 2, 62)
        if float(self.l2_clip) * float(self.scale) + math.sqrt(self.dim) >= 2.0**31:
            raise ConfigError(
                "l2_clip * scale + sqrt(dim) must be below 2**31 (exact rounding in 64 bits)"
            )
        if self.l2_sensitivity >= 2.0 ** (self.bits - 1):
            raise ConfigError(
                f"one client's rounded update (L2 bound {self.l2_sensitivity:.4g}) does not fit "
                f"in {self.bits} bits; lower the scale or raise the bits"
            )

    @property
    def rotation_block(self) -> int:
        """``n``: the rotation's Hadamard block (:func:`rotation_block`)."""
        return rotation_block(self.dim)

    @property
    def vector_length(self) -> int:
        """Words of the secure sum: ``d`` noised coordinates and the count slot."""
        return self.dim + 1

    @property
    def l2_sensitivity(self) -> float:
        """``Delta_2``: the L2 norm bound of one client's rounded update, in integer units."""
        return conditional_rounding_bound(
            float(self.l2_clip) * float(self.scale), self.dim, float(self.beta)
        )

    @property
    def l1_sensitivity(self) -> float:
        """``Delta_1``: the L1 bound of an integer vector of L2 norm ``Delta_2`` in ``Z**d``.

        ``min(Delta_2**2, sqrt(d) * Delta_2)``: an integer vector's nonzero
        coordinates are at least 1 in magnitude, so ``|x|_1 <= |x|_2**2``;
        Cauchy-Schwarz gives the other term.
        """
        l2 = self.l2_sensitivity
        return min(l2 * l2, math.sqrt(self.dim) * l2)

    @property
    def noise_multiplier(self) -> float:
        """The guaranteed sum's noise std over its sensitivity: ``sqrt(m v) / Delta_2``."""
        return math.sqrt(self.min_honest * self.local_variance) / self.l2_sensitivity

    def context(self) -> bytes:
        """The parameters as bytes, bound into the session's ``context`` (§3).

        ``"dp-v1" 0x00 || mechanism (ASCII) 0x00 || dim, local_variance,
        min_honest, bits (uint64 BE each) || l2_clip, scale, beta,
        epsilon_budget, delta (float64 BE each)``.
        """
        return (
            b"dp-v1\x00"
            + self.mechanism.value.encode("ascii")
            + b"\x00"
            + struct.pack(">QQQQ", self.dim, self.local_variance, self.min_honest, self.bits)
            + struct.pack(
                ">ddddd",
                float(self.l2_clip),
                float(self.scale),
                float(self.beta),
                float(self.epsilon_budget),
                float(self.delta),
            )
        )

    def to_json(self) -> dict[str, Any]:
        """The parameters as a JSON object (the ``dp`` field of a round assignment)."""
        return {
            "mechanism": self.mechanism.value,
            "dim": self.dim,
            "l2_clip": float(self.l2_clip),
            "scale": float(self.scale),
            "beta": float(self.beta),
            "local_variance": self.local_variance,
            "min_honest": self.min_honest,
            "bits": self.bits,
            "epsilon_budget": float(self.epsilon_budget),
            "delta": float(self.delta),
        }

    @classmethod
    def from_json(cls, value: object) -> DPParams:
        """Parse :meth:`to_json` output strictly: exactly its fields, of its types.

        Raises:
            ConfigError: a missing, unknown or mistyped field, or an invalid value.
        """
        if not isinstance(value, dict):
            raise ConfigError("DP parameters must be a JSON object")
        fields = {
            "mechanism": (str,),
            "dim": (int,),
            "l2_clip": (int, float),
            "scale": (int, float),
            "beta": (int, float),
            "local_variance": (int,),
            "min_honest": (int,),
            "bits": (int,),
            "epsilon_budget": (int, float),
            "delta": (int, float),
        }
        if set(value) != set(fields):
            missing, unknown = sorted(set(fields) - set(value)), sorted(set(value) - set(fields))
            raise ConfigError(f"DP parameters: missing {missing}, unknown {unknown}")
        for name, types in fields.items():
            item = value[name]
            if isinstance(item, bool) or not isinstance(item, types):
                raise ConfigError(f"DP parameter {name} has the wrong type: {item!r}")
        return cls(
            mechanism=Mechanism(value["mechanism"])
            if value["mechanism"] in {m.value for m in Mechanism}
            else value["mechanism"],
            dim=value["dim"],
            l2_clip=float(value["l2_clip"]),
            scale=float(value["scale"]),
            beta=float(value["beta"]),
            local_variance=value["local_variance"],
            min_honest=value["min_honest"],
            bits=value["bits"],
            epsilon_budget=float(value["epsilon_budget"]),
            delta=float(value["delta"]),
        )
