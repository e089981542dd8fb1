"""``secagg demo``: real federated training with secure aggregation, end to end.

Starts ``secagg serve`` (SQLite, TLS with a throw-away certificate), creates
an offline task authority (``secagg authority``), enrols ten clients that
pin its key, certifies them and uploads the signed roster the server relays
in every (active-mode) round, then starts the ten client processes, each
holding a non-IID (Dirichlet 0.5) shard of scikit-learn's digits, and
trains a small PyTorch MLP for 20 rounds of secure FedAvg while some
clients drop out mid-round at different protocol stages. It then runs
plaintext FedAvg on the same split, seeds and dropouts, and centralised
training, and writes ``demo-output/accuracy.png`` and
``demo-output/summary.json``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client_sdk.client import enrol, tls_verify
from client_sdk.models import TorchModel
from examples.digits.digits import (
    DEMO,
    accuracy,
    fedavg_plaintext,
    load_digits_split,
    make_model,
    plot_accuracy,
    train_centralised,
)
from protocol.authority import task_scope
from protocol.crypto.x509 import self_signed_certificate
from secagg import db as dbm
from secagg.authority_tool import certify, export_roster, init_authority
from secagg.registry import ModelRegistry
from secagg_http.signing import CBOR_MEDIA_TYPE

# round (1-based) -> (client index, stage where it stops answering)
DEFAULT_DROPS: dict[int, tuple[int, str]] = {
    3: (2, "R1"),  # before sharing its keys: simply left out
    6: (5, "R2"),  # before sending its masked input: masks recovered from shares
    9: (8, "R4"),  # before unmasking: its update still counts
    13: (1, "R0"),  # before advertising keys
    16: (7, "R2"),
}
ADMIN_TOKEN = "demo-admin-" + os.urandom(8).hex()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(
    out_dir: Path = Path("demo-output"),
    *,
    rounds: int = DEMO.rounds,
    drops: dict[int, tuple[int, str]] | None = None,
    console: Console | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    console = console or Console()
    drops = DEFAULT_DROPS if drops is None else drops
    drops = {r: d for r, d in drops.items() if r <= rounds}
    work = out_dir / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cert, key = self_signed_certificate(["127.0.0.1", "localhost"], days=1)
    (work / "cert.pem").write_bytes(cert)
    (work / "key.pem").write_bytes(key)
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    db_url = f"sqlite:///{(work / 'secagg.db').resolve()}"
    checkout = str(Path(__file__).resolve().parents[2])  # examples/ is not installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])),
        "SECAGG_DATABASE_URL": db_url,
        "SECAGG_ADMIN_TOKEN": ADMIN_TOKEN,
        "SECAGG_LONG_POLL_S": "10",
        "SECAGG_LOG_LEVEL": "warning",
    }
    server_log = (work / "server.log").open("w")
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "secagg.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tls-cert",
            str(work / "cert.pem"),
            "--tls-key",
            str(work / "key.pem"),
        ],
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    clients: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        http = httpx.Client(
            base_url=url,
            verify=tls_verify(str(work / "cert.pem")),
            timeout=30,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        _wait_healthy(http, server)
        split = load_digits_split(DEMO.num_clients, alpha=DEMO.alpha, seed=DEMO.seed)
        initial = TorchModel(make_model(DEMO.seed, DEMO.hidden)).get_weights().astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, initial)
        task = http.post(
            "/v1/admin/tasks",
            json={
                "name": "digits-demo",
                "vector_length": int(initial.size),
                "rounds": rounds,
                "clients_per_round": DEMO.num_clients,
                "min_clients": DEMO.num_clients,
                "graph": "complete",
                "mode": "active",
                "dropout_rate": 0.2,
                "clip": DEMO.delta_clip,
                "scale": float(1 << 16),
                "max_weight": 1000,
                "initial_weights": base64.b64encode(buf.getvalue()).decode(),
                # Training has its own window (ten torch processes on a busy machine
                # take a while); the protocol stages then get the deadlines of the
                # formula in specs/service-v1.md §5. Every wait ends early once each
                # client it waits for has answered or is gone (no heartbeat for 4 s).
                "training_window_s": 300,
                "strategy": {"name": "fedavg", "server_lr": DEMO.server_lr},
            },
        )
        task.raise_for_status()
        task_id = int(task.json()["id"])
        identity_files = _enrol_certified(http, url, work, task_id)
        for k in range(DEMO.num_clients):
            plan = {str(r): st for r, (c, st) in drops.items() if c == k}
            clients.append(
                subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [
                        sys.executable,
                        "-m",
                        "examples.digits.client",
                        "--server",
                        url,
                        "--ca",
                        str(work / "cert.pem"),
                        "--identity",
                        str(identity_files[k]),
                        "--index",
                        str(k),
                        "--task",
                        str(task_id),
                        "--rounds",
                        str(rounds),
                        "--drops",
                        json.dumps(plan),
                    ],
                    stdout=(work / f"client-{k}.log").open("w"),
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        detail = _follow(http, task_id, rounds, console, timeout_s, server, clients, work)
    finally:
        for proc in clients:
            proc.terminate()
        server.terminate()
        for proc in [*clients, server]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log.close()
    wall = time.monotonic() - started

    # Evaluate every stored version on the held-out test set.
    registry = ModelRegistry(dbm.Database.from_url(db_url))
    versions = registry.list_versions(task_id)
    model = make_model(DEMO.seed, DEMO.hidden)
    flat = TorchModel(model)
    secure: list[float] = []
    for v in versions[1:]:
        flat.set_weights(registry.weights(task_id, v.version))
        secure.append(accuracy(model, split.x_test, split.y_test))
    plain_drops = {r - 1: [c] for r, (c, st) in drops.items() if st in ("R0", "R1", "R2")}
    plaintext = fedavg_plaintext(
        split,
        rounds,
        DEMO.clients_per_round,
        local_epochs=DEMO.local_epochs,
        lr=DEMO.lr,
        seed=DEMO.seed,
        server_lr=DEMO.server_lr,
        dropouts=plain_drops,
        batch_size=DEMO.batch_size,
        hidden=DEMO.hidden,
    )
    central = train_centralised(
        split,
        rounds * DEMO.local_epochs,
        lr=DEMO.lr,
        seed=DEMO.seed,
        batch_size=DEMO.batch_size,
        hidden=DEMO.hidden,
        eval_every=DEMO.local_epochs,
    )
    plot_accuracy(
        out_dir / "accuracy.png",
        {"secure FedAvg": secure, "plaintext FedAvg": plaintext, "centralised": central},
        "digits, 10 clients, Dirichlet 0.5: test accuracy",
    )
    rounds_detail = detail["rounds_detail"]
    done = [r for r in rounds_detail if r["status"] == "completed"]
    stage_bytes = sum(
        s["bytes_in"] + s["bytes_out"] for r in rounds_detail for s in r["stage_stats"].values()
    )
    seconds = [sum(s["seconds"] for s in r["stage_stats"].values()) for r in rounds_detail]
    summary = {
        "secure_accuracy": secure[-1] if secure else None,
        "plaintext_accuracy": plaintext[-1] if plaintext else None,
        "central_accuracy": central[-1] if central else None,
        "accuracy_gap_points": (
            abs(secure[-1] - plaintext[-1]) * 100 if secure and plaintext else None
        ),
        "rounds": rounds,
        "rounds_completed": len(done),
        "bytes_per_client_per_round": int(
            stage_bytes / max(1, len(rounds_detail)) / DEMO.num_clients
        ),
        "seconds_per_round": round(float(np.mean(seconds)) if seconds else 0.0, 3),
        "dropouts_survived": sum(
            sum(s["dropouts"] for s in r["stage_stats"].values()) for r in done
        ),
        "dropout_plan": {str(r): {"client": c, "stage": st} for r, (c, st) in drops.items()},
        "secure_accuracy_per_round": secure,
        "plaintext_accuracy_per_round": plaintext,
        "central_accuracy_per_epoch_pair": central,
        "securely_aggregated_eval_accuracy": [r["metrics"]["eval_accuracy"] for r in done],
        "wall_seconds": round(wall, 1),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _report(console, summary, out_dir)
    return summary


def _enrol_certified(http: httpx.Client, url: str, work: Path, task_id: int) -> list[Path]:
    """The authority workflow of specs/authority-v1.md §6, with the demo as the admin.

    ``secagg authority init`` (offline), enrol each client with the authority
    key pinned, ``certify`` its id and identity key, ``export-roster`` for the
    task, and upload the roster; the server only relays it.
    """
    authority_dir = work / "authority"
    pinned = init_authority(authority_dir)
    scope = task_scope(task_id)
    files = []
    for k in range(DEMO.num_clients):
        token = http.post("/v1/admin/tokens", json={"label": f"demo-{k}"}).json()["token"]
        identity = enrol(
            url, token, name=f"demo-{k}", verify=str(work / "cert.pem"), authority_key=pinned
        )
        assert identity.client_id is not None
        path = work / f"client-{k}.key"
        identity.save(path)
        files.append(path)
        certify(
            authority_dir,
            identity.client_id,
            identity.public_key,
            scope,
            days=1,
            now=int(time.time()),
        )
    roster = export_roster(authority_dir, scope, days=1, now=int(time.time()))
    http.put(
        f"/v1/admin/tasks/{task_id}/roster",
        content=roster.encode(),
        headers={"content-type": CBOR_MEDIA_TYPE},
    ).raise_for_status()
    return files


def _wait_healthy(http: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("secagg serve exited; see demo-output/run/server.log")
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("secagg serve did not become healthy within 60 s")


def _follow(
    http: httpx.Client,
    task_id: int,
    rounds: int,
    console: Console,
    timeout_s: float,
    server: subprocess.Popen[bytes],
    clients: list[subprocess.Popen[bytes]],
    work: Path,
) -> dict[str, Any]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("secure FedAvg rounds", total=rounds)
        stage_bar = progress.add_task("protocol stages", total=5)
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"secagg serve exited; see {work / 'server.log'}")
            for k, proc in enumerate(clients):
                if proc.poll() not in (None, 0):
                    raise RuntimeError(f"client {k} failed; see {work / f'client-{k}.log'}")
            detail: dict[str, Any] = http.get(f"/v1/admin/tasks/{task_id}").json()
            for r in detail["rounds_detail"]:
                stats = r["stage_stats"]
                if r["status"] == "running":
                    progress.update(
                        stage_bar, completed=len(stats), description=f"round {r['number']} stages"
                    )
                if r["status"] != "running" and r["number"] not in seen:
                    seen.add(r["number"])
                    drops = {k: v["dropouts"] for k, v in stats.items() if v["dropouts"]}
                    # Clients lost before their masked input was collected are not in the sum.
                    in_sum_lost = sum(n for k, n in drops.items() if k in ("R0", "R1", "R2"))
                    acc = (r["metrics"] or {}).get("eval_accuracy")
                    secs = sum(v["seconds"] for v in stats.values())
                    progress.console.print(
                        f"round {r['number']:>2}: {r['status']:<9} "
                        f"in the sum {len(r['participants']) - in_sum_lost}/"
                        f"{len(r['participants'])}  dropouts {drops or '-'}  "
                        f"accuracy of the incoming model (secure sum) "
                        f"{acc if acc is None else f'{acc:.3f}'}  {secs:.1f} s"
                    )
                    progress.update(bar, completed=len(seen))
            if len(seen) >= rounds:
                return detail
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo did not finish within {timeout_s:.0f} s")
            time.sleep(0.3)


def _report(console: Console, summary: dict[str, Any], out_dir: Path) -> None:
    table = Table(title="secagg demo: digits, 10 clients, non-IID, secure FedAvg")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "secure_accuracy",
        "plaintext_accuracy",
        "central_accuracy",
        "accuracy_gap_points",
        "rounds_completed",
        "dropouts_survived",
        "bytes_per_client_per_round",
        "seconds_per_round",
        "wall_seconds",
    ):
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    gap = summary["accuracy_gap_points"]
    ok = gap is not None and gap <= 0.5
    console.print(
        f"secure vs plaintext FedAvg: {gap:.2f} points apart "
        f"({'within' if ok else 'NOT within'} 0.5)"
        if gap is not None
        else "no result"
    )
    console.print(f"report: {out_dir / 'accuracy.png'}, {out_dir / 'summary.json'}")
