"""``secagg_sim``: N in-process clients against an in-process server.

For experiments: the same code paths as a deployment (HTTP on loopback,
signed requests, the orchestrator, the registry, the SDK client), without
starting processes. Needs the ``server`` extra.
"""

from __future__ import annotations

import base64
import io
import secrets
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from client_sdk.client import Client, ClientPolicy, EvalFn, FaultFn, RoundOutcome, TrainFn, enrol
from client_sdk.models import FlatModel, as_flat_model
from protocol import SystemRandom
from protocol.authority import sign_roster, task_scope
from protocol.crypto import ed25519_public_key
from secagg_http.signing import CBOR_MEDIA_TYPE


@dataclass
class SimulationReport:
    """What an experiment produced."""

    rounds: list[dict[str, Any]]  # per round: status, participants, stage stats, metrics
    final_weights: npt.NDArray[np.float32]
    outcomes: dict[int, list[RoundOutcome]]  # per client index
    # DP tasks: the task as the server shows it (dp, epsilon_spent, status) and, per
    # client index, the epsilon its own ledger says it spent (specs/dp-v1.md §11).
    task: dict[str, Any] = field(default_factory=dict)
    own_epsilon: dict[int, float] = field(default_factory=dict)


def simulate(
    models: Sequence[Any],
    train_fns: Sequence[TrainFn],
    eval_fns: Sequence[EvalFn] | None = None,
    *,
    rounds: int,
    clients_per_round: int | None = None,
    mode: str = "active",
    graph: str = "auto",
    clip: float = 1.0,
    scale: float = float(1 << 12),
    max_weight: int = 10_000,
    strategy: Mapping[str, Any] | None = None,
    deadlines: Mapping[str, float] | None = None,
    faults: Mapping[int, FaultFn] | None = None,
    workdir: Path | None = None,
    timeout_s: float = 600.0,
    policy: ClientPolicy | None = None,
    dp: Mapping[str, Any] | None = None,
    min_clients: int | None = None,
) -> SimulationReport:
    """Run ``rounds`` rounds of secure FedAvg with ``len(models)`` clients.

    Args:
        models: one model per client (anything ``as_flat_model`` accepts); the
            first one's weights are the initial global model.
        train_fns / eval_fns: per client, as for :class:`client_sdk.client.Client`.
        faults: client index -> fault hook (drop at a stage of a round).
        workdir: where the SQLite database goes (default: a temporary folder).
        policy: every client's policy (default ``ClientPolicy()``); the task is
            created for clients with this policy.
        dp: the task's ``dp`` field (specs/dp-v1.md; e.g. ``{"epsilon": 8,
            "l2_clip": 1.0, "participations": 5}``): every client noises its
            update and keeps its own privacy ledger.
        min_clients: fewest checked-in clients a round starts with (default:
            ``clients_per_round``).
    """
    import uvicorn

    from secagg.app import create_app
    from secagg.settings import Settings

    n = len(models)
    if n < 2 or len(train_fns) != n or (eval_fns is not None and len(eval_fns) != n):
        raise ValueError("need >= 2 clients and one train (and eval) function per model")
    flat: list[FlatModel] = [as_flat_model(m) for m in models]
    with tempfile.TemporaryDirectory() as tmp:
        folder = workdir or Path(tmp)
        admin_token = secrets.token_urlsafe(16)
        settings = Settings(
            database_url=f"sqlite:///{folder / 'simulation.db'}",
            admin_token=admin_token,
            long_poll_s=5.0,
        )
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        try:
            return _run(
                url,
                admin_token,
                flat,
                train_fns,
                eval_fns,
                rounds,
                clients_per_round or n,
                mode,
                graph,
                clip,
                scale,
                max_weight,
                strategy,
                deadlines,
                faults or {},
                timeout_s,
                policy or ClientPolicy(),
                dp,
                min_clients or clients_per_round or n,
            )
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def _run(
    url: str,
    admin_token: str,
    models: list[FlatModel],
    train_fns: Sequence[TrainFn],
    eval_fns: Sequence[EvalFn] | None,
    rounds: int,
    per_round: int,
    mode: str,
    graph: str,
    clip: float,
    scale: float,
    max_weight: int,
    strategy: Mapping[str, Any] | None,
    deadlines: Mapping[str, float] | None,
    faults: Mapping[int, FaultFn],
    timeout_s: float,
    policy: ClientPolicy,
    dp: Mapping[str, Any] | None,
    min_clients: int,
) -> SimulationReport:
    admin = httpx.Client(
        base_url=url, timeout=60, headers={"authorization": f"Bearer {admin_token}"}
    )
    buf = io.BytesIO()
    np.save(buf, models[0].get_weights().astype(np.float32))
    task: dict[str, Any] = {
        "name": "simulation",
        "vector_length": models[0].num_weights,
        "rounds": rounds,
        "clients_per_round": per_round,
        "min_clients": min_clients,
        "mode": mode,
        "graph": graph,
        "clip": clip,
        "scale": scale,
        "max_weight": max_weight,
        "initial_weights": base64.b64encode(buf.getvalue()).decode(),
        "strategy": dict(strategy or {"name": "fedavg"}),
        "deadlines": dict(deadlines or {"R0": 60, "R1": 5, "R2": 5, "R3": 5, "R4": 5}),
        "allow_semi_honest": policy.allow_semi_honest,
        "min_participants": policy.min_participants,
    }
    if dp is not None:
        task["dp"] = dict(dp)
    response = admin.post("/v1/admin/tasks", json=task)
    if response.status_code >= 400:
        raise ValueError(f"the server refused the task: {response.text}")
    task_id = int(response.json()["id"])
    # A task authority of the simulation's own (held here, never by the server):
    # clients pin its key at enrolment and it certifies them in a roster.
    certified = mode == "active" and policy.require_certified_identities
    authority = SystemRandom().random_bytes(32) if certified else None
    authority_key = ed25519_public_key(authority) if authority is not None else None
    outcomes: dict[int, list[RoundOutcome]] = {}
    clients: list[Client] = []
    for i, model in enumerate(models):
        token = admin.post("/v1/admin/tokens", json={"label": f"sim-{i}"}).json()["token"]
        ident = enrol(url, token, name=f"sim-{i}", authority_key=authority_key)
        clients.append(
            Client(
                url,
                ident,
                model,
                train_fns[i],
                eval_fns[i] if eval_fns else None,
                task_id=task_id,
                policy=policy,
                fault=faults.get(i),
            )
        )

    if authority is not None:
        members = [(c.client_id, c.identity.public_key) for c in clients]
        upload_roster(admin, task_id, authority, members)

    def participate(i: int) -> None:
        outcomes[i] = clients[i].run(stop=lambda: _done(admin, task_id), idle_timeout_s=30)

    threads = [threading.Thread(target=participate, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    while not _done(admin, task_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"simulation did not finish within {timeout_s:.0f} s")
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=60)
    detail = admin.get(f"/v1/admin/tasks/{task_id}").json()
    final = clients[0]._download(detail["versions"][-1]["version"])  # verified download
    own: dict[int, float] = {}
    if dp is not None:
        delta = float(detail["dp"]["params"]["delta"])
        for i, c in enumerate(clients):
            cap = min(c.policy.max_epsilon, float(detail["dp"]["params"]["epsilon_budget"]))
            own[i] = c.ledger.epsilon_spent(url, task_id, delta, epsilon_cap=cap)
    return SimulationReport(
        detail["rounds_detail"], final.astype(np.float32), outcomes, detail, own
    )


def upload_roster(
    admin: httpx.Client,
    task_id: int,
    authority_secret: bytes,
    members: Sequence[tuple[int, bytes]],
    *,
    days: float = 7.0,
) -> None:
    """Certify ``members`` (client id, identity public key) for the task and upload the roster.

    For simulations and benchmarks, where one process plays the task
    authority too; a deployment keeps the authority offline (``secagg authority``).
    """
    now = int(time.time())
    roster = sign_roster(
        authority_secret, task_scope(task_id), 1, now - 60, now + int(days * 86400), members
    )
    admin.put(
        f"/v1/admin/tasks/{task_id}/roster",
        content=roster.encode(),
        headers={"content-type": CBOR_MEDIA_TYPE},
    ).raise_for_status()


def _done(admin: httpx.Client, task_id: int) -> bool:
    detail = admin.get(f"/v1/admin/tasks/{task_id}").json()
    # A DP task may also end "failed" with privacy_budget_spent (specs/service-v1.md).
    return bool(
        detail["status"] in ("completed", "failed")
        and all(r["status"] != "running" for r in detail["rounds_detail"])
    )
