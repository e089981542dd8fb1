"""Distributed DP on the server side: calibration at task creation, the budget rule.

The clients add the noise and keep their own ledgers (specs/dp-v1.md); the
server is trusted for none of it. What the server does (service-v1.md §11):

1. at task creation, calibrate the noise once (:func:`calibrate_task`) for
   the guaranteed number of honest noise shares ``m`` (:func:`default_min_honest`)
   and refuse a task whose calibration is infeasible;
2. run every round of the task with the same :class:`protocol.dp.DPParams`
   (bound into the session context), and abort a round before unmasking
   when fewer than ``m + c`` masked inputs arrived (:func:`required_survivors`);
3. keep the budget: a client's spent epsilon is
   ``participation_epsilon(params, k)``, ``k`` the completed rounds of the
   task whose sum holds its masked input; a client with
   ``k >= max_participations(params)`` is never selected again
   (:func:`exhausted_clients`), and a task whose eligible enrolled clients
   cannot fill ``min_clients`` any more ends (:data:`BUDGET_SPENT`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from protocol.dp import DPParams, Mechanism
from protocol.dp.accounting import max_participations, participation_epsilon
from protocol.dp.calibrate import calibrate
from protocol.errors import ConfigError
from secagg import db as dbm
from secagg.task_spec import DPSpec

__all__ = [
    "BUDGET_SPENT",
    "DP_TOO_FEW_SURVIVORS",
    "DPBudget",
    "assumed_colluders",
    "calibrate_task",
    "client_participations",
    "default_min_honest",
    "exhausted_clients",
    "required_survivors",
]

DP_TOO_FEW_SURVIVORS = "dp_too_few_survivors"
"""Round abort reason: fewer masked inputs than ``m + c`` arrived; R2 is not closed."""

BUDGET_SPENT = "privacy_budget_spent"
"""``failure_reason`` code of a DP task that ended because no round can open any more."""


def assumed_colluders(corrupt_rate: float, clients_per_round: int) -> int:
    """``c``: the clients of a cohort assumed to collude with the server, at least one."""
    return max(1, math.ceil(round(corrupt_rate * clients_per_round, 9)))


def default_min_honest(
    *,
    min_participants: int,
    dropout_rate: float,
    min_clients: int,
    corrupt_rate: float,
    clients_per_round: int,
) -> int:
    """``m``: honest noise shares every released sum holds, from the task's settings.

    ``max(min_participants, ceil((1 - dropout_rate) * min_clients)) - c``: a
    round needs that many masked inputs (the clients' participant floor, and
    the survivors the task plans for), of which ``c`` may be colluders whose
    noise the server knows. May be below 1; the caller refuses the task then.
    """
    survivors = max(min_participants, math.ceil(round((1 - dropout_rate) * min_clients, 9)))
    return survivors - assumed_colluders(corrupt_rate, clients_per_round)


@dataclass(frozen=True)
class DPBudget:
    """A task's calibrated parameters and what one participation costs."""

    params: DPParams
    round_epsilon: float
    max_participations: int


def calibrate_task(
    spec: DPSpec,
    *,
    dim: int,
    min_participants: int,
    dropout_rate: float,
    min_clients: int,
    corrupt_rate: float,
    clients_per_round: int,
) -> DPBudget:
    """Calibrate the noise of a new DP task (specs/dp-v1.md §10).

    Args:
        spec: the task's ``dp`` field.
        dim: the model's length ``d``.
        min_participants, dropout_rate, min_clients, corrupt_rate,
            clients_per_round: the task's settings (for ``m`` and the cohort).

    Raises:
        ConfigError: ``m < 1``, the calibration is infeasible (its message
            says why), or the budget allows no participation at all.
    """
    m = spec.min_honest
    if m is None:
        m = default_min_honest(
            min_participants=min_participants,
            dropout_rate=dropout_rate,
            min_clients=min_clients,
            corrupt_rate=corrupt_rate,
            clients_per_round=clients_per_round,
        )
        if m < 1:
            raise ConfigError(
                f"dp: the guaranteed honest noise shares m = max(min_participants, "
                f"ceil((1 - dropout_rate) * min_clients)) - max(1, ceil(corrupt_rate * "
                f"clients_per_round)) = {m} < 1; raise min_clients or min_participants, or "
                "lower dropout_rate or corrupt_rate"
            )
    c = assumed_colluders(corrupt_rate, clients_per_round)
    if m + c > clients_per_round:
        raise ConfigError(
            f"dp: min_honest {m} plus the {c} assumed colluders exceeds clients_per_round "
            f"{clients_per_round}: no round could ever release a sum"
        )
    params = calibrate(
        Mechanism(spec.mechanism),
        dim=dim,
        l2_clip=spec.l2_clip,
        epsilon=spec.epsilon,
        delta=spec.delta,
        participations=spec.participations if spec.participations is not None else 1,
        min_honest=m,
        num_clients=clients_per_round,
        bits=spec.bits,
        beta=spec.beta,
        modclip_prob=spec.modclip_prob,
        noise_multiplier=spec.noise_multiplier,
    )
    allowed = max_participations(params)
    if allowed < 1:
        raise ConfigError(
            f"dp: one round already costs epsilon {participation_epsilon(params, 1):.4g} > "
            f"the budget {spec.epsilon}; raise noise_multiplier or epsilon"
        )
    return DPBudget(params, participation_epsilon(params, 1), allowed)


def required_survivors(task: dbm.Task, params: DPParams) -> int:
    """``m + c``: fewest masked inputs a DP round's sum may be released with."""
    return params.min_honest + assumed_colluders(task.corrupt_rate, task.clients_per_round)


def client_participations(
    session: Session, task_id: int, clients: Iterable[int] | None = None
) -> dict[int, int]:
    """``k`` per client: completed rounds of the task whose sum holds its masked input.

    Clients without a participation are absent from the answer.
    """
    query = (
        select(dbm.DPParticipation.client_id, func.count())
        .where(dbm.DPParticipation.task_id == task_id)
        .group_by(dbm.DPParticipation.client_id)
    )
    if clients is not None:
        query = query.where(dbm.DPParticipation.client_id.in_(sorted(set(clients))))
    return {int(u): int(k) for u, k in session.execute(query)}


def exhausted_clients(session: Session, task_id: int, allowed: int) -> set[int]:
    """Clients whose ``k`` reached ``allowed`` = ``max_participations``: never selected again."""
    return {u for u, k in client_participations(session, task_id).items() if k >= allowed}
