"""``secagg demo --dp``: federated training with distributed differential privacy, end to end.

Two parts:

1. **The service.** An in-process server and 30 SDK clients over HTTP
   (``secagg_sim``), each holding a shard of scikit-learn's digits and a
   softmax-regression model, run a DP task: every client clips its update,
   rotates it, rounds it and adds Skellam noise before masking
   (``specs/dp-v1.md``). The server records epsilon per round and version
   and stops selecting a client at its budget; each client prices every
   round itself in its own ledger. The demo prints both.
2. **The curve.** Accuracy against epsilon in {1, 2, 4, 8, inf} on LEAF
   Synthetic(1,1) (1000 devices, 100 per round) through the real protocol
   path (``benchmarks.dp_synthetic``, in a shortened run), plotted to
   ``demo-output/dp_accuracy.png``.

Everything goes to ``demo-output/dp_summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from client_sdk.models import FlatModel, FunctionModel
from examples.digits.digits import ClientData, load_digits_split

FloatArray = npt.NDArray[np.float32]

NUM_CLIENTS = 30
CLIENTS_PER_ROUND = 20
ROUNDS = 8
EPSILON = 8.0
L2_CLIP = 0.5
LOCAL_EPOCHS = 5
LR = 0.5
DIM = 64 * 10 + 10


def _logits(w: FloatArray, x: FloatArray) -> npt.NDArray[np.float64]:
    weights = w[: 64 * 10].reshape(64, 10).astype(np.float64)
    return x.astype(np.float64) @ weights + w[64 * 10 :].astype(np.float64)


def accuracy(w: FloatArray, x: FloatArray, y: npt.NDArray[np.int64]) -> float:
    """Test accuracy of the softmax regression with weights ``w``."""
    return float(np.mean(np.argmax(_logits(w, x), axis=1) == y))


def _train(data: ClientData) -> Callable[[FlatModel], int]:
    def train(model: FlatModel) -> int:
        # Full-batch gradient descent on the cross-entropy, LOCAL_EPOCHS steps.
        w = model.get_weights().astype(np.float64)
        x, y = data.x.astype(np.float64), data.y
        onehot = np.eye(10)[y]
        for _ in range(LOCAL_EPOCHS):
            z = x @ w[:640].reshape(64, 10) + w[640:]
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot) / len(y)
            w[:640] -= LR * (x.T @ g).reshape(-1)
            w[640:] -= LR * g.sum(axis=0)
        model.set_weights(w.astype(np.float32))
        return len(y)

    return train


def _model() -> FunctionModel:
    state = {"w": np.zeros(DIM, dtype=np.float32)}

    def get() -> FloatArray:
        return state["w"].copy()

    def put(v: FloatArray) -> None:
        state["w"] = np.asarray(v, dtype=np.float32).copy()

    return FunctionModel(get, put)


def service_part(console: Console, *, rounds: int = ROUNDS) -> dict[str, Any]:
    """Part 1: a DP task through the real server and SDK; returns its figures."""
    from secagg_sim import simulate

    # The server logs why it waits ("... have spent their privacy budget"): part
    # of the story, but the table below tells it; keep the console readable.
    logging.getLogger("secagg").setLevel(logging.ERROR)
    split = load_digits_split(NUM_CLIENTS, alpha=100.0, seed=0)
    models = [_model() for _ in range(NUM_CLIENTS)]
    participations = math.ceil(rounds * CLIENTS_PER_ROUND / NUM_CLIENTS)
    dp = {"epsilon": EPSILON, "l2_clip": L2_CLIP, "participations": participations}
    report = simulate(
        models,
        [_train(c) for c in split.clients],
        rounds=rounds,
        clients_per_round=CLIENTS_PER_ROUND,
        min_clients=CLIENTS_PER_ROUND,
        dp=dp,
        timeout_s=900.0,
    )
    task = report.task
    table = Table(title="DP task through the service (Skellam, 30 clients, 20 per round)")
    for column in ("round", "status", "survivors", "epsilon of the round", "epsilon spent"):
        table.add_column(column)
    for r in report.rounds:
        metrics = r.get("metrics") or {}
        table.add_row(
            str(r["number"]),
            str(r["status"]),
            str(metrics.get("train_examples", "")),
            f"{metrics.get('dp_round_epsilon', float('nan')):.3f}",
            f"{metrics.get('epsilon_spent', float('nan')):.3f}",
        )
    console.print(table)
    own = sorted(report.own_epsilon.values())
    final = accuracy(report.final_weights, split.x_test, split.y_test)
    console.print(
        f"server: epsilon spent {task['epsilon_spent']:.3f} of {task['epsilon_budget']:.1f} "
        f"(delta {task['dp']['params']['delta']:g}); each client's own ledger: "
        f"{own[0]:.3f} .. {own[-1]:.3f}; final test accuracy {final:.4f}"
    )
    return {
        "task_status": task["status"],
        "failure_reason": task.get("failure_reason"),
        "dp": task["dp"],
        "epsilon_spent_server": task["epsilon_spent"],
        "epsilon_spent_clients": report.own_epsilon,
        "rounds": [
            {
                "number": r["number"],
                "status": r["status"],
                "metrics": r.get("metrics"),
            }
            for r in report.rounds
        ],
        "final_accuracy": final,
    }


CURVE_ROUNDS = 20
CURVE_EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)


def curve_part(console: Console, out_dir: Path, *, rounds: int = CURVE_ROUNDS) -> dict[str, Any]:
    """Part 2: accuracy against epsilon through the protocol path; writes the plot."""
    from benchmarks.dp_synthetic import BenchConfig, iid_config, run_benchmark

    config = iid_config(BenchConfig(rounds=rounds, epsilons=CURVE_EPSILONS))
    console.print(
        f"accuracy against epsilon: LEAF Synthetic-IID, {config.num_devices} devices, "
        f"{config.cohort} per round, {rounds} rounds, delta {config.delta:g} "
        "(every round through the real secure sum)"
    )
    report = run_benchmark(config)
    arms = report["arms"]
    finite = [e for e in CURVE_EPSILONS if math.isfinite(e)]
    keys = [str(int(e)) for e in finite]
    table = Table(title="test accuracy (mean of the last 5 rounds)")
    for column in ("epsilon", "central DP (trusted server)", "distributed Skellam (worst case)"):
        table.add_column(column)
    for e, key in zip(finite, keys, strict=True):
        table.add_row(
            f"{e:g}",
            f"{arms['central'][key]['last5_accuracy']:.4f}",
            f"{arms['skellam_worst_case'][key]['last5_accuracy']:.4f}",
        )
    table.add_row("inf", f"{arms['clipped']['last5_accuracy']:.4f} (clipped, no noise)", "")
    console.print(table)
    console.print(f"plaintext FedAvg: {arms['plaintext']['last5_accuracy']:.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(finite, [arms["central"][k]["last5_accuracy"] for k in keys], "o-", label="central DP")
    ax.plot(
        finite,
        [arms["skellam_worst_case"][k]["last5_accuracy"] for k in keys],
        "s-",
        label="distributed Skellam (secure sum)",
    )
    ax.axhline(arms["plaintext"]["last5_accuracy"], color="grey", ls="--", label="plaintext")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"epsilon (delta = {config.delta:g}, per device)")
    ax.set_ylabel("test accuracy")
    ax.set_title("LEAF Synthetic-IID, 1000 devices, 100 per round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "dp_accuracy.png", dpi=120)
    plt.close(fig)
    console.print(f"wrote {out_dir / 'dp_accuracy.png'}")
    return report


def run_dp_demo(out_dir: Path = Path("demo-output"), *, console: Console | None = None) -> int:
    """Both parts; writes the summary and the plot. Returns the exit status."""
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"service": service_part(console)}
    summary["curve"] = curve_part(console, out_dir)
    (out_dir / "dp_summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    console.print(f"wrote {out_dir / 'dp_summary.json'}")
    own = summary["service"]["epsilon_spent_clients"]
    ok = all(e <= EPSILON + 1e-9 for e in own.values())
    ok = ok and summary["service"]["epsilon_spent_server"] <= EPSILON + 1e-9
    exact = all(
        arm["exact_rounds"] == arm["rounds_checked"]
        for arm in summary["curve"]["arms"]["skellam_worst_case"].values()
    )
    return 0 if ok and exact else 1
