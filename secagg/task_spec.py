"""The task schema: what an administrator may say when creating a task, strictly.

Rules this module keeps:

1. Nothing is dropped silently. An unknown field (``min_client`` for
   ``min_clients``) is refused with 422 naming it and listing the valid ones;
   so is an unknown strategy or strategy parameter (``secagg.strategies``).
2. Every field carries a description: the OpenAPI document and
   ``docs/reference.md`` (generated from these models by
   ``python -m secagg.reference``) are the documentation of a task.
3. Only what a model can check alone is checked here. Checks that need the
   protocol's parameter search (task admission against the client policy)
   live in ``secagg.services.tasks`` and answer 400 ``bad_task``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.policy import DEFAULT_MIN_PARTICIPANTS
from secagg import db as dbm
from secagg.strategies import FedAvgSpec, StrategySpec, parse_strategy

__all__ = [
    "MAX_TRAINING_WINDOW_S",
    "DPSpec",
    "LayoutEntry",
    "TaskCreate",
    "TaskView",
    "describe_validation_errors",
    "layout_length",
]

MAX_TRAINING_WINDOW_S = 7 * 86400.0
"""The longest training window a task may ask for (seconds)."""

MAX_LAYOUT_ENTRIES = 100_000
Stage = Literal["R0", "R1", "R2", "R3", "R4"]


class LayoutEntry(BaseModel):
    """One named tensor of the model inside the flat weight vector."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=500, description="tensor name (state_dict key)")
    shape: list[Annotated[int, Field(ge=0, le=1 << 40)]] = Field(
        max_length=32, description="tensor shape; the tensor holds prod(shape) weights"
    )
    dtype: str = Field(
        default="float32",
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9_.]+$",
        description="dtype the tensor had in the initial model (weights travel as float32)",
    )

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def layout_length(layout: Iterable[LayoutEntry]) -> int:
    """Number of weights a layout describes (the sum of its tensors' sizes)."""
    return sum(e.numel for e in layout)


def _refuse_unknown(model: type[BaseModel], data: Any, what: str) -> None:
    # pydantic's own message ("Extra inputs are not permitted") does not say
    # what was meant; this one names the field and lists the valid ones.
    if isinstance(data, Mapping):
        unknown = sorted(str(k) for k in data if k not in model.model_fields)
        if unknown:
            raise ValueError(
                f"unknown {what} field(s) {unknown}; valid fields: {sorted(model.model_fields)}"
            )


class DPSpec(BaseModel):
    """Distributed differential privacy of a task (specs/dp-v1.md; service-v1.md §11).

    Each client clips its update to ``l2_clip``, rotates, scales and rounds
    it, and adds a share of discrete noise before masking; the noise is
    calibrated at task creation so that the sum of ``min_honest`` honest
    shares is ``(epsilon, delta)``-DP for each client over all the rounds it
    may join. Exactly one of ``noise_multiplier`` and ``participations``.
    """

    model_config = ConfigDict(extra="forbid")

    mechanism: Literal["skellam", "ddgauss"] = Field(
        default="skellam",
        description="the clients' discrete noise: `skellam` (Agarwal, Kairouz, Liu 2021) or "
        "`ddgauss`, the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021)",
    )
    epsilon: float = Field(
        gt=0,
        le=1000,
        description="each client's privacy budget over the whole task (user-level, at delta)",
    )
    delta: float = Field(
        default=1e-5, gt=0, lt=1, description="the delta of every (epsilon, delta) statement"
    )
    l2_clip: float = Field(
        gt=0, le=1e9, description="each client's update is scaled down to this L2 norm"
    )
    noise_multiplier: float | None = Field(
        default=None,
        gt=0,
        le=1e4,
        description="the guaranteed sum's noise standard deviation over its L2 sensitivity "
        "(central-DP z); the budget then allows as many rounds per client as it covers. "
        "Exactly one of noise_multiplier and participations",
    )
    participations: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="rounds one client may join within the budget: the noise is calibrated "
        "so that this many participations spend it. Exactly one of noise_multiplier and "
        "participations",
    )
    bits: int = Field(
        default=20,
        ge=8,
        le=62,
        description="modulus exponent b of the secure sum (bits per weight)",
    )
    beta: float = Field(
        default=math.exp(-0.5),
        ge=0,
        lt=1,
        description="conditional randomised rounding parameter (0: unconditional rounding)",
    )
    modclip_prob: float = Field(
        default=1e-4,
        ge=1e-100,
        lt=1,
        description="bound on the probability that the sum wraps modulo 2**bits "
        "(chooses the scale)",
    )
    min_honest: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="honest noise shares the sum is guaranteed to hold; default "
        "max(min_participants, ceil((1 - dropout_rate) * min_clients)) - "
        "max(1, ceil(corrupt_rate * clients_per_round))",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        _refuse_unknown(cls, data, "dp")
        return data

    @model_validator(mode="after")
    def _one_noise_rule(self) -> DPSpec:
        if (self.noise_multiplier is None) == (self.participations is None):
            raise ValueError(
                "dp: give exactly one of noise_multiplier and participations "
                f"(got {'both' if self.participations is not None else 'neither'})"
            )
        return self


class TaskCreate(BaseModel):
    """A new federated training task (``POST /v1/admin/tasks``, ``secagg task create``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=200, description="unique name of the task (shown to operators)"
    )
    vector_length: int = Field(
        ge=1, le=1 << 27, description="number of float32 weights of the model (flattened)"
    )
    initial_weights: str | None = Field(
        default=None,
        description="base64 of a .npy file holding the initial float32 weight vector "
        "(`secagg task create --init` builds it from a .pt, .safetensors or .npy file); "
        "zeros if omitted",
    )
    model_layout: list[LayoutEntry] | None = Field(
        default=None,
        max_length=MAX_LAYOUT_ENTRIES,
        description="names, shapes and dtypes of the model's tensors in flat-vector order, "
        "so a pulled model can be rebuilt as a state_dict; must add up to vector_length",
    )
    rounds: int = Field(
        ge=1,
        le=1_000_000,
        description="completed rounds after which the task is completed "
        "(aborted rounds do not count)",
    )
    clients_per_round: int = Field(
        ge=2, le=100_000, description="clients selected for each round (the cohort size)"
    )
    min_clients: int | None = Field(
        default=None,
        ge=2,
        le=100_000,
        description="fewest checked-in clients a round starts with; defaults to clients_per_round",
    )
    mode: Literal["semi-honest", "active"] = Field(
        default="active",
        description="adversary model: `active` (signed keys, consistency check; the safe "
        "default) or `semi-honest` (clients must opt in with allow_semi_honest)",
    )
    graph: Literal["complete", "harary", "auto"] = Field(
        default="auto",
        description="masking graph: complete (SecAgg), harary (SecAgg+, sparse) or auto "
        "(the cheapest one that meets the security bounds)",
    )
    dropout_rate: float = Field(
        default=0.1, ge=0, lt=1, description="fraction of a cohort expected to drop out"
    )
    corrupt_rate: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="fraction of a cohort assumed to collude with the server",
    )
    clip: float = Field(
        default=1.0, gt=0, le=1e9, description="each update element is clipped to [-clip, clip]"
    )
    # 2^12 x 10^4 keeps one client's weighted update below 2^26, so cohorts
    # of up to ~30 clients stay within 32-bit words; raise for more precision.
    scale: float = Field(
        default=float(1 << 12),
        gt=0,
        le=1e18,
        description="fixed-point scale: one quantisation step is 1/scale",
    )
    max_weight: int = Field(
        default=10_000,
        ge=1,
        le=1 << 62,
        description="largest client weight (e.g. number of examples) a client may report",
    )
    deadlines: dict[Stage, Annotated[float, Field(gt=0, le=86400)]] = Field(
        default_factory=dict,
        description="seconds each protocol stage (R0..R4) may take at most; stages "
        "not given use the formula of specs/service-v1.md §5, which scales with the "
        "model size and the cohort",
    )
    training_window_s: float = Field(
        default=600.0,
        gt=0,
        le=MAX_TRAINING_WINDOW_S,
        description="seconds a selected client has to train locally and report ready, "
        "before the protocol stages start (at most 7 days)",
    )
    strategy: StrategySpec = Field(
        default_factory=lambda: FedAvgSpec(name="fedavg"),
        description="server update rule: {name: fedavg, server_lr, momentum} or "
        "{name: fedadam, server_lr, beta1, beta2, tau}",
    )
    # The client policy the task is checked against at creation (spec §4.7): a
    # task no such client would accept is refused. Lowering either is only
    # meaningful for clients that opted in the same way.
    allow_semi_honest: bool = Field(
        default=False,
        description="clients of this task opted into semi-honest sessions (the server "
        "can then substitute keys and recover inputs)",
    )
    min_participants: int = Field(
        default=DEFAULT_MIN_PARTICIPANTS,
        ge=2,
        le=100_000,
        description="the clients' floor on participants and survivors",
    )
    max_aborted_rounds: int = Field(
        default=dbm.DEFAULT_MAX_ABORTED_ROUNDS,
        ge=1,
        le=10_000,
        description="aborted rounds in a row after which the task is marked failed",
    )
    dp: DPSpec | None = Field(
        default=None,
        description="distributed differential privacy: {mechanism, epsilon, delta, l2_clip, "
        "noise_multiplier | participations, bits, beta, modclip_prob, min_honest}; the "
        "noise is calibrated at creation (400 bad_task if infeasible) and a client joins "
        "rounds only while its budget lasts. Null: no DP",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        _refuse_unknown(cls, data, "task")
        return data

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return parse_strategy(value)
        return value

    @model_validator(mode="after")
    def _layout_fits(self) -> TaskCreate:
        if self.model_layout is not None:
            total = layout_length(self.model_layout)
            if total != self.vector_length:
                raise ValueError(
                    f"model_layout describes {total} weights, vector_length is {self.vector_length}"
                )
            names = [e.name for e in self.model_layout]
            if len(set(names)) != len(names):
                raise ValueError("model_layout names must be unique")
        return self


class TaskView(BaseModel):
    """A task as the admin API shows it."""

    id: int
    name: str
    status: Literal["active", "paused", "completed", "failed", "cancelled", "archived"]
    vector_length: int
    rounds: int
    current_round: int = Field(description="number of the last round started")
    completed_rounds: int = Field(description="rounds completed (only these count)")
    aborted_in_a_row: int
    max_aborted_rounds: int
    failure_reason: str | None
    clients_per_round: int
    min_clients: int
    mode: str
    graph: str
    dropout_rate: float
    corrupt_rate: float
    clip: float
    scale: float
    max_weight: int
    deadlines: dict[str, float]
    training_window_s: float
    strategy: dict[str, Any]
    model_layout: list[LayoutEntry] | None
    dp: dict[str, Any] | None = Field(
        default=None,
        description="a DP task's settings: spec (the dp field as given), params (the "
        "calibrated parameters every round uses), round_epsilon (one participation), "
        "max_participations (rounds one client may join); null without DP",
    )
    epsilon_spent: float | None = Field(
        default=None,
        description="the largest epsilon any client has spent in this task's rounds "
        "(at dp.spec.delta); null without DP",
    )
    epsilon_budget: float | None = Field(
        default=None, description="each client's epsilon budget (dp.spec.epsilon); null without DP"
    )

    @classmethod
    def of(cls, t: dbm.Task) -> TaskView:
        return cls(
            id=t.id,
            name=t.name,
            status=t.status.value,
            vector_length=t.vector_length,
            rounds=t.rounds,
            current_round=t.current_round,
            completed_rounds=t.completed_rounds,
            aborted_in_a_row=t.aborted_in_a_row,
            max_aborted_rounds=t.max_aborted_rounds,
            failure_reason=t.failure_reason,
            clients_per_round=t.clients_per_round,
            min_clients=t.min_clients,
            mode=t.mode.value,
            graph=t.graph.value,
            dropout_rate=t.dropout_rate,
            corrupt_rate=t.corrupt_rate,
            clip=t.clip,
            scale=t.scale,
            max_weight=t.max_weight,
            deadlines=dict(t.deadlines),
            training_window_s=t.training_window_s,
            strategy=dict(t.strategy),
            model_layout=(
                [LayoutEntry.model_validate(e) for e in t.model_layout]
                if t.model_layout is not None
                else None
            ),
            dp=(
                {
                    "spec": dict(t.dp.spec),
                    "params": dict(t.dp.params),
                    "round_epsilon": t.dp.round_epsilon,
                    "max_participations": t.dp.max_participations,
                }
                if t.dp is not None
                else None
            ),
            epsilon_spent=t.dp.epsilon_spent if t.dp is not None else None,
            epsilon_budget=float(t.dp.spec["epsilon"]) if t.dp is not None else None,
        )


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic/FastAPI validation errors as one sentence per problem, field first.

    ``[{"loc": ("body", "rounds"), "msg": "Input should be ..."}]`` becomes
    ``"rounds: Input should be ..."``; a model-level error (an unknown field)
    has its message alone.
    """
    parts: list[str] = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        msg = str(e.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"
