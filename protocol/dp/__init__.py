"""Distributed differential privacy inside the secure sum (specs/dp-v1.md).

Each client clips its update, rotates it, scales and rounds it to integers
and adds a small share of discrete noise (Skellam or discrete Gaussian)
before masking; the sum of ``m`` honest shares carries enough noise for
(epsilon, delta) user-level DP, and no party ever sees a less noisy value.
"""

from __future__ import annotations

from protocol.dp.encoding import DPEncoding
from protocol.dp.params import (
    MAX_DIM,
    MAX_LOCAL_VARIANCE,
    DPParams,
    Mechanism,
    conditional_rounding_bound,
    rotation_block,
)

__all__ = [
    "MAX_DIM",
    "MAX_LOCAL_VARIANCE",
    "DPEncoding",
    "DPParams",
    "Mechanism",
    "conditional_rounding_bound",
    "rotation_block",
]
