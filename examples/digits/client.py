"""One demo client process: load its identity (or enrol), then train on its digits shard
with secure aggregation.

Run by ``secagg demo`` as ``python -m examples.digits.client ...``; each process
holds only its own shard of the data, as a hospital or a phone would.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from client_sdk.client import Client, ClientPolicy, enrol
from client_sdk.identity import Identity
from client_sdk.models import TorchModel
from examples.digits.digits import (
    DEMO,
    evaluate,
    load_digits_split,
    local_seed,
    make_model,
    train_local,
)
from protocol import Round
from protocol.encoding import EvalSums

STAGES = {
    "R0": Round.R0_ADVERTISE_KEYS,
    "R1": Round.R1_SHARE_KEYS,
    "R2": Round.R2_MASKED_INPUT_COLLECTION,
    "R4": Round.R4_UNMASKING,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--ca", default=None)
    p.add_argument("--identity", default=None, help="enrolled identity file (pins the authority)")
    p.add_argument("--token", default=None, help="or: enrol with this one-time token")
    p.add_argument("--index", type=int, required=True, help="0-based client index in the split")
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--drops", default="{}", help='JSON {"round": "R1"}: stop answering there')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    drops = {int(k): STAGES[v] for k, v in json.loads(args.drops).items()}
    split = load_digits_split(DEMO.num_clients, alpha=DEMO.alpha, seed=DEMO.seed)
    data = split.clients[args.index]
    x_eval, y_eval = split.test_shard(args.index, DEMO.num_clients)
    model = make_model(DEMO.seed, DEMO.hidden)
    # Warm torch up on a throw-away copy before checking in: first calls cost
    # seconds on a busy machine, which round 1's R0 deadline should not pay.
    # train_local draws from its own seeded generator, so this changes nothing.
    warm = make_model(DEMO.seed, DEMO.hidden)
    train_local(warm, data.x, data.y, epochs=1, batch_size=DEMO.batch_size, lr=DEMO.lr, seed=0)
    evaluate(warm, x_eval, y_eval)
    verify: bool | str = args.ca or True
    if args.identity is not None:
        identity = Identity.load(args.identity)
    elif args.token is not None:
        identity = enrol(args.server, args.token, name=f"demo-{args.index}", verify=verify)
    else:
        p.error("--identity or --token is required")
    current_round = {"n": 0}

    def train(_: object) -> int:
        # Round numbers are 1-based on the server, 0-based in the plaintext reference.
        return train_local(
            model,
            data.x,
            data.y,
            epochs=DEMO.local_epochs,
            batch_size=DEMO.batch_size,
            lr=DEMO.lr,
            seed=local_seed(DEMO.seed, current_round["n"] - 1, args.index),
        )

    def evaluate_global(_: object) -> EvalSums:
        r = evaluate(model, x_eval, y_eval)
        return EvalSums(r.correct, r.count, r.loss_sum)

    def fault(number: int, stage: Round) -> bool:
        current_round["n"] = number
        return drops.get(number) is stage

    client = Client(
        args.server,
        identity,
        TorchModel(model),
        train,
        evaluate_global,
        task_id=args.task,
        verify=verify,
        policy=ClientPolicy(),  # the defaults: active mode, certified peers, floor of 5
        fault=fault,
    )
    # The fault hook is also how the client learns the round number before training.
    client.on_assignment = lambda a: current_round.__setitem__("n", int(a["round_number"]))
    outcomes = client.run(rounds=args.rounds, idle_timeout_s=120)
    for o in outcomes:
        print(json.dumps(o.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
