"""One honest client process of the chaos test: the SDK's ``Client.run()`` and nothing else.

Started (and restarted after a SIGKILL, as a rebooted device would be) by
``tests.chaos.harness``. It never restarts itself and has no retry loop of its
own: recovering from a server restart, a 5xx or a late message is the SDK's job.

Training is deterministic: the update of client ``index`` on base version
``b`` is ``k / scale`` with integers ``k`` drawn from a generator seeded by
``(seed, index, b)``, and its weight likewise. Before the update leaves (the
training function returns it to the SDK), the exact delta and weight are
written to ``<work>/updates/c<index>-round<round_id>.json``, so the harness
can recompute every round's weighted mean from files.

The process reports where it is by appending a line to
``<work>/status/c<index>.log``: ``<unix time> <pid> <stage> [details]`` with
stages ``start``, ``checkin``, ``assigned``, ``training``, ``R0`` .. ``R4``,
``outcome``, ``http5xx`` (a 5xx answer seen by the SDK), ``hold`` and ``exit``.
If ``<work>/orders/hold`` names the stage, the first client to enter it holds
there for ``HOLD_S`` seconds (the harness kills the server meanwhile). If the
file ``<work>/orders/next`` names the stage a client is entering, that client
claims the order (an atomic rename, so only one does), says ``killed`` and
SIGKILLs itself there: the harness's way to kill a client in a given stage,
exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from client_sdk.client import Client, ClientPolicy
from client_sdk.identity import Identity
from client_sdk.models import FunctionModel
from protocol.encoding import EvalSums

# Largest |k| of an update coordinate k / scale (the task's clip must exceed it).
MAX_STEPS = 256
MAX_WEIGHT = 50
# How long the straggler of the server kill stays in its stage.
HOLD_S = 3.0


def update_for(
    seed: int, index: int, base_version: int, length: int, scale: float
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], int]:
    """Client ``index``'s update on ``base_version`` and its weight (test data, not secrets)."""
    rng = np.random.default_rng([seed, index, base_version])
    steps = rng.integers(-MAX_STEPS, MAX_STEPS + 1, size=length)
    weight = int(rng.integers(1, MAX_WEIGHT + 1))
    return steps.astype(np.float64) / scale, weight


class Reporter:
    """Appends stage lines to the status file and obeys kill orders."""

    def __init__(self, work: Path, index: int) -> None:
        self.status = work / "status" / f"c{index}.log"
        self.order = work / "orders" / "next"
        self.claimed = work / "orders" / f"claimed-c{index}-{os.getpid()}"
        self.hold = work / "orders" / "hold"
        self.pid = os.getpid()

    def __call__(self, stage: str, *details: object) -> None:
        line = " ".join([f"{time.time():.3f}", str(self.pid), stage, *map(str, details)])
        with self.status.open("a") as fh:
            fh.write(line + "\n")
        self._maybe_hold(stage)
        try:
            if self.order.read_text().strip() != stage:
                return
            os.rename(self.order, self.claimed)  # atomic: one client claims an order
        except FileNotFoundError:
            return  # no order, or another client claimed it first
        with self.status.open("a") as fh:
            fh.write(f"{time.time():.3f} {self.pid} killed {stage}\n")
        os.kill(self.pid, signal.SIGKILL)

    def _maybe_hold(self, stage: str) -> None:
        """The harness's straggler order: stay HOLD_S in this stage (the server dies meanwhile)."""
        try:
            if self.hold.read_text().strip() != stage:
                return
            os.rename(self.hold, self.claimed.with_suffix(".hold"))
        except FileNotFoundError:
            return
        with self.status.open("a") as fh:
            fh.write(f"{time.time():.3f} {self.pid} hold {stage}\n")
        time.sleep(HOLD_S)


class ChaosClient(Client):
    """The SDK client, reporting what each round came to."""

    report: Reporter


# The method run() calls once per check-in, whatever the SDK version names it.
_ONE_ROUND = "_participate_typed" if hasattr(Client, "_participate_typed") else "participate"


def _one_round(self: ChaosClient, *args: Any, **kwargs: Any) -> Any:
    outcome = getattr(super(ChaosClient, self), _ONE_ROUND)(*args, **kwargs)
    if outcome is not None:
        self.report("outcome", outcome.round_number, outcome.state, outcome.abort_reason or "-")
    return outcome


setattr(ChaosClient, _ONE_ROUND, _one_round)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--scale", type=float, required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--train-s", type=float, default=0.0, help="extra training time (slow client)")
    a = p.parse_args()
    work = Path(a.work)
    report = Reporter(work, a.index)
    report("start")
    identity = Identity.load(a.identity)  # the ledger lives beside it, across restarts
    state: dict[str, Any] = {"w": np.zeros(a.length), "assignment": None}

    def get() -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.array(state["w"], dtype=np.float64)

    def set_(v: np.ndarray[Any, Any]) -> None:
        state["w"] = np.asarray(v, dtype=np.float64)

    def on_assignment(assignment: dict[str, Any]) -> None:
        state["assignment"] = assignment
        report("assigned", assignment["round_id"], assignment.get("round_number"))

    def train(_: object) -> int:
        assignment = state["assignment"]
        report("training", assignment["round_id"])
        if a.train_s:
            time.sleep(a.train_s)  # a slow device
        base = state["w"]
        delta, weight = update_for(
            a.seed, a.index, int(assignment["base_version"]), len(base), a.scale
        )
        new = base + delta
        record = {
            "index": a.index,
            "client_id": identity.client_id,
            "round_id": int(assignment["round_id"]),
            "round_number": int(assignment["round_number"]),
            "base_version": int(assignment["base_version"]),
            # Exactly what the SDK computes as the delta (float64, exact here).
            "delta": (new - base).tolist(),
            "weight": weight,
        }
        target = work / "updates" / f"c{a.index}-round{record['round_id']}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, target)
        state["w"] = new
        return weight

    def fault(_number: int, stage: Any) -> bool:
        report(str(getattr(stage, "value", stage))[:2])
        return False

    client = ChaosClient(
        a.server,
        identity,
        FunctionModel(get, set_, num_weights=a.length),
        train,
        lambda _m: EvalSums(1, 1, 0.0),
        task_id=a.task,
        verify=a.ca,
        policy=ClientPolicy(),  # the defaults: certified identities, active sessions
        fault=fault,
    )
    client.report = report
    client.on_assignment = on_assignment
    http = getattr(client, "_http", None)
    if isinstance(http, httpx.Client):

        def seen(response: httpx.Response) -> None:
            if response.status_code >= 500:
                report("http5xx", response.request.method, response.url.path, response.status_code)

        def sending(request: httpx.Request) -> None:
            if request.url.path.endswith("/checkin"):
                report("checkin")

        hooks = http.event_hooks
        hooks.setdefault("request", []).append(sending)
        hooks.setdefault("response", []).append(seen)
        http.event_hooks = hooks
    outcomes = client.run()
    report("exit", json.dumps([getattr(o, "state", str(o)) for o in outcomes or []]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
