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
    """next_weights = f(current weights, mean client delta, state), element by element.

    ``apply`` takes whole vectors. The server applies a strategy segment by
    segment instead (``secagg.update``), so that no float64 copy of the model
    is ever whole: ``start`` loads the state's arrays, ``step`` maps one
    segment (updating the state arrays' matching segments in place), and
    ``finish`` serialises the state. ``apply`` is the three on one segment.
    """

    def apply(
        self, weights: FloatArray, mean_delta: npt.NDArray[np.float64], state: bytes | None
    ) -> tuple[FloatArray, bytes | None]: ...

    def start(self, state: bytes | None, length: int) -> list[npt.NDArray[np.float64]]: ...

    def step(
        self,
        weights: FloatArray,
        mean_delta: npt.NDArray[np.float64],
        arrays: list[npt.NDArray[np.float64]],
    ) -> FloatArray: ...

    def finish(self, arrays: list[npt.NDArray[np.float64]]) -> bytes | None: ...


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
        arrays = self.start(state, len(weights))
        return self.step(weights, mean_delta, arrays), self.finish(arrays)

    def start(self, state: bytes | None, length: int) -> list[npt.NDArray[np.float64]]:
        if not self.momentum:
            return []
        return _load(state, 1, length) if state else [np.zeros(length)]

    def step(
        self,
        weights: FloatArray,
        mean_delta: npt.NDArray[np.float64],
        arrays: list[npt.NDArray[np.float64]],
    ) -> FloatArray:
        step = mean_delta
        if self.momentum:
            (velocity,) = arrays
            velocity[...] = self.momentum * velocity + mean_delta
            step = velocity
        return (weights.astype(np.float64) + self.server_lr * step).astype(np.float32)

    def finish(self, arrays: list[npt.NDArray[np.float64]]) -> bytes | None:
        return _save(*arrays) if self.momentum else None


class FedAdam:
    """FedAdam (Reddi et al., ICLR 2021): Adam on the server, the mean delta as gradient."""

    def __init__(
        self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        self.lr, self.b1, self.b2, self.tau = server_lr, beta1, beta2, tau

    def apply(
        self, weights: FloatArray, mean_delta: npt.NDArray[np.float64], state: bytes | None
    ) -> tuple[FloatArray, bytes | None]:
        arrays = self.start(state, len(weights))
        return self.step(weights, mean_delta, arrays), self.finish(arrays)

    def start(self, state: bytes | None, length: int) -> list[npt.NDArray[np.float64]]:
        return _load(state, 2, length) if state else [np.zeros(length), np.zeros(length)]

    def step(
        self,
        weights: FloatArray,
        mean_delta: npt.NDArray[np.float64],
        arrays: list[npt.NDArray[np.float64]],
    ) -> FloatArray:
        m, v = arrays
        m[...] = self.b1 * m + (1 - self.b1) * mean_delta
        v[...] = self.b2 * v + (1 - self.b2) * mean_delta**2
        out = weights.astype(np.float64) + self.lr * m / (np.sqrt(v) + self.tau)
        return out.astype(np.float32)

    def finish(self, arrays: list[npt.NDArray[np.float64]]) -> bytes | None:
        return _save(*arrays)


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
