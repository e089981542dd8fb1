"""Server-side federated optimisation and client selection (pluggable).

A strategy turns the securely aggregated weighted-mean update into the next
global model. It sees only the mean (never one client's update) and keeps
its own state (e.g. momentum) as bytes so that the task survives restarts.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class Strategy(Protocol):
    """next_weights = f(current weights, mean client delta, state)."""

    def apply(
        self, weights: FloatArray, mean_delta: npt.NDArray[np.float64], state: bytes | None
    ) -> tuple[FloatArray, bytes | None]: ...


def _save(*arrays: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return buf.getvalue()


def _load(state: bytes, count: int, length: int) -> list[npt.NDArray[np.float64]]:
    with np.load(io.BytesIO(state)) as data:
        arrays = [data[f"arr_{i}"].astype(np.float64) for i in range(count)]
    if any(a.shape != (length,) for a in arrays):
        raise ValueError("strategy state does not match the model length")
    return arrays


class FedAvg:
    """FedAvg with server learning rate and optional heavy-ball momentum.

    ``v <- momentum * v + delta; w <- w + server_lr * v`` (momentum 0 is plain FedAvg).
    """

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.0) -> None:
        if server_lr <= 0 or not 0 <= momentum < 1:
            raise ValueError("need server_lr > 0 and 0 <= momentum < 1")
        self.server_lr, self.momentum = server_lr, momentum

    def apply(
        self, weights: FloatArray, mean_delta: npt.NDArray[np.float64], state: bytes | None
    ) -> tuple[FloatArray, bytes | None]:
        step = mean_delta
        new_state = None
        if self.momentum:
            (velocity,) = _load(state, 1, len(weights)) if state else [np.zeros(len(weights))]
            velocity = self.momentum * velocity + mean_delta
            step, new_state = velocity, _save(velocity)
        out = (weights.astype(np.float64) + self.server_lr * step).astype(np.float32)
        return out, new_state


class FedAdam:
    """FedAdam (Reddi et al., ICLR 2021): Adam on the server, the mean delta as gradient."""

    def __init__(
        self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        self.lr, self.b1, self.b2, self.tau = server_lr, beta1, beta2, tau

    def apply(
        self, weights: FloatArray, mean_delta: npt.NDArray[np.float64], state: bytes | None
    ) -> tuple[FloatArray, bytes | None]:
        n = len(weights)
        m, v = _load(state, 2, n) if state else [np.zeros(n), np.zeros(n)]
        m = self.b1 * m + (1 - self.b1) * mean_delta
        v = self.b2 * v + (1 - self.b2) * mean_delta**2
        out = weights.astype(np.float64) + self.lr * m / (np.sqrt(v) + self.tau)
        return out.astype(np.float32), _save(m, v)


STRATEGIES: Mapping[str, Callable[..., Strategy]] = {"fedavg": FedAvg, "fedadam": FedAdam}


def make_strategy(spec: Mapping[str, Any]) -> Strategy:
    """``{"name": "fedavg", "server_lr": 1.0, "momentum": 0.9}`` -> a strategy."""
    params = dict(spec)
    name = str(params.pop("name", "fedavg"))
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name](**params)


class ClientSelector(Protocol):
    def select(self, available: Sequence[int], count: int) -> list[int]: ...


class UniformSelector:
    """Uniformly random selection (the OS CSPRNG: a predictable choice could be gamed)."""

    def __init__(self) -> None:
        self._rng = random.SystemRandom()

    def select(self, available: Sequence[int], count: int) -> list[int]:
        pool = sorted(available)
        return sorted(self._rng.sample(pool, min(count, len(pool))))
