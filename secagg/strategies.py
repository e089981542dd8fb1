"""Server-side federated optimisation and client selection (pluggable).

A strategy turns the securely aggregated weighted-mean update into the next
global model. It sees only the mean (never one client's update) and keeps
its own state (e.g. momentum) as bytes so that the task survives restarts.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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
        if server_lr <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or tau <= 0:
            raise ValueError("need server_lr > 0, 0 <= beta1 < 1, 0 <= beta2 < 1 and tau > 0")
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


# -- task-level specification (validated when a task is created) ------------------
#
# One pydantic model per strategy, extra fields forbidden, discriminated by
# ``name``: a misspelled parameter or an unknown strategy is refused with 422
# when the task is created, instead of failing every round in aggregation.
# The bounds are the constructors' own, so a spec that validates always builds.


class FedAvgSpec(BaseModel):
    """FedAvg with a server learning rate and optional heavy-ball momentum."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["fedavg"] = Field(description="strategy name")
    server_lr: float = Field(
        default=1.0, gt=0, le=1e6, description="server learning rate (1.0 is plain FedAvg)"
    )
    momentum: float = Field(
        default=0.0, ge=0, lt=1, description="heavy-ball momentum on the mean update (0: none)"
    )


class FedAdamSpec(BaseModel):
    """FedAdam (Reddi et al., ICLR 2021): Adam on the server, the mean update as gradient."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["fedadam"] = Field(description="strategy name")
    server_lr: float = Field(default=0.01, gt=0, le=1e6, description="server learning rate")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="first-moment decay")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="second-moment decay")
    tau: float = Field(default=1e-3, gt=0, le=1e6, description="adaptivity (denominator floor)")


StrategySpec = Annotated[FedAvgSpec | FedAdamSpec, Field(discriminator="name")]
"""A task's ``strategy`` field: ``{"name": "fedavg" | "fedadam", ...its parameters}``."""

STRATEGIES: Mapping[str, Callable[..., Strategy]] = {"fedavg": FedAvg, "fedadam": FedAdam}
STRATEGY_SPECS: Mapping[str, type[BaseModel]] = {"fedavg": FedAvgSpec, "fedadam": FedAdamSpec}

_SPEC = TypeAdapter[FedAvgSpec | FedAdamSpec](StrategySpec)


def parse_strategy(spec: Mapping[str, Any]) -> FedAvgSpec | FedAdamSpec:
    """Validate a strategy specification.

    Raises:
        ValueError: unknown strategy (the message lists the known ones), an
            unknown parameter (listing the valid ones) or a value out of range.
    """
    name = spec.get("name", "fedavg")
    if not isinstance(name, str) or name not in STRATEGY_SPECS:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {sorted(STRATEGY_SPECS)}")
    model = STRATEGY_SPECS[name]
    unknown = sorted(set(spec) - set(model.model_fields))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for strategy {name!r}; "
            f"valid parameters: {sorted(model.model_fields)}"
        )
    try:
        return _SPEC.validate_python({**spec, "name": name})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'strategy'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ValueError(f"strategy {name!r}: {problems}") from exc


def make_strategy(spec: Mapping[str, Any]) -> Strategy:
    """``{"name": "fedavg", "server_lr": 1.0, "momentum": 0.9}`` -> a strategy.

    Raises:
        ValueError: as :func:`parse_strategy`.
    """
    params = parse_strategy(spec).model_dump()
    name = params.pop("name")
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
