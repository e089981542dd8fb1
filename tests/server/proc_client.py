"""A client process for end-to-end tests: a 16-weight model whose 'training' adds a step.

``--crash-round R --crash-stage S`` makes the process SIGKILL itself at that
stage of that round (a real crash, not a polite exit; ``--crash-first``: of
the first round the client is selected for); ``--slow-round R``
makes training in round R take 4 seconds, or, with ``--slow-until FILE``,
last until FILE exists (a liveness signal from the test, so a busy machine
cannot make the round end before the test is ready).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np

from client_sdk.client import Client, ClientPolicy, enrol
from client_sdk.models import FunctionModel
from protocol import Round
from protocol.encoding import EvalSums


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--ca", default=None)
    p.add_argument("--token", required=True)
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--crash-round", type=int, default=0)
    p.add_argument("--crash-stage", default="R2")
    p.add_argument("--crash-first", action="store_true")
    p.add_argument("--slow-round", type=int, default=0)
    p.add_argument("--slow-until", default="")
    a = p.parse_args()
    verify: bool | str = a.ca or True
    ident = enrol(a.server, a.token, name=f"proc-{a.index}", verify=verify)
    state = {"w": np.zeros(16, np.float32), "round": 0}
    step = np.full(16, (a.index + 1) / 1024, np.float32)

    def train(_: object) -> int:
        if state["round"] == a.slow_round:
            if a.slow_until:
                give_up = time.monotonic() + 300
                while not os.path.exists(a.slow_until) and time.monotonic() < give_up:
                    time.sleep(0.05)
            else:
                time.sleep(4)
        state["w"] = state["w"] + step  # type: ignore[operator]
        return 10

    def fault(number: int, stage: Round) -> bool:
        first = state.setdefault("first_round", number)
        crash_round = first if a.crash_first else a.crash_round
        if number == crash_round and stage.value.startswith(a.crash_stage):
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    model = FunctionModel(
        lambda: state["w"].copy(),  # type: ignore[union-attr]
        lambda v: state.__setitem__("w", np.asarray(v, np.float32)),
    )
    client = Client(
        a.server,
        ident,
        model,
        train,
        lambda m: EvalSums(1, 1, 0.0),
        task_id=a.task,
        verify=verify,
        # Not about certified identities: no task authority (opt-out).
        policy=ClientPolicy(min_participants=2, require_certified_identities=False),
        fault=fault,
    )
    client.on_assignment = lambda asg: state.__setitem__("round", int(asg["round_number"]))
    outcomes = client.run(rounds=a.rounds, idle_timeout_s=60)
    print([o.state for o in outcomes], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
