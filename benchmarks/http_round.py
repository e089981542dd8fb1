"""Round latency over loopback HTTP next to the in-memory ``simulate`` of the same session.

A ``secagg serve`` process (plain HTTP on loopback, SQLite) and N SDK clients
(threads of this process, each with a ``length``-weight model whose training
is a no-op) run one secure aggregation round; the server's stage timings give
the round latency. The same configuration then runs through
``protocol.simulate``, so ``ratio`` shows what transport, persistence and
scheduling add. Prints one JSON object per client count.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from client_sdk.client import Client, enrol
from client_sdk.models import FunctionModel
from protocol import GraphKind, SessionConfig, SystemRandom
from protocol.crypto import ed25519_public_key
from protocol.encoding import EvalSums
from protocol.testing import make_config, simulate
from secagg_sim import upload_roster

ADMIN = "bench-admin"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_round(n: int, length: int, work: Path) -> dict[str, Any]:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SECAGG_DATABASE_URL": f"sqlite:///{work / f'bench-{n}.db'}",
        "SECAGG_ADMIN_TOKEN": ADMIN,
        "SECAGG_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "secagg.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=(work / f"server-{n}.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        admin = httpx.Client(base_url=url, timeout=60, headers={"authorization": f"Bearer {ADMIN}"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if admin.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        task = admin.post(
            "/v1/admin/tasks",
            json={
                "name": "bench",
                "vector_length": length,
                "rounds": 1,
                "clients_per_round": n,
                "graph": "auto",
                "dropout_rate": 0.1,
                "corrupt_rate": 0.05,
                "clip": 1.0,
                "scale": 1024.0,
                "max_weight": 100,
                "deadlines": {"R0": 120, "R1": 60, "R2": 60, "R3": 60, "R4": 60},
            },
        ).json()["id"]
        clients = []
        rng = np.random.default_rng(0)  # model data, not secrets
        # The default, certified path: this process also plays the task authority.
        authority = SystemRandom().random_bytes(32)
        for i in range(n):
            token = admin.post("/v1/admin/tokens", json={}).json()["token"]
            ident = enrol(url, token, name=f"b{i}", authority_key=ed25519_public_key(authority))
            w = {"v": np.zeros(length, np.float32)}
            step = rng.uniform(-0.01, 0.01, length).astype(np.float32)
            model = FunctionModel(
                lambda w=w: w["v"].copy(),
                lambda v, w=w: w.__setitem__("v", np.asarray(v, np.float32)),
                num_weights=length,
            )

            def train(_: object, w: dict[str, Any] = w, step: Any = step) -> int:
                w["v"] = w["v"] + step
                return 1

            clients.append(
                Client(
                    url,
                    ident,
                    model,
                    train,
                    lambda m: EvalSums(0, 0, 0.0),
                    task_id=task,
                )
            )
        members = [(c.client_id, c.identity.public_key) for c in clients]
        upload_roster(admin, task, authority, members)
        errors: list[BaseException] = []
        outcomes: list[Any] = []

        def run(c: Client) -> None:
            try:
                outcomes.extend(c.run(rounds=1))
            except Exception as exc:  # reported in the JSON, not as thread noise
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(c,)) for c in clients]
        probes: list[float] = []
        done = threading.Event()

        def probe() -> None:
            # /healthz from a connection of its own while the round runs: the event
            # loop must stay responsive through every stage (R4's unmasking included).
            with httpx.Client(base_url=url, timeout=120) as h:
                while not done.is_set():
                    t = time.perf_counter()
                    h.get("/healthz")
                    probes.append(time.perf_counter() - t)
                    done.wait(0.05)

        prober = threading.Thread(target=probe)
        t0 = time.perf_counter()
        prober.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        # Clients finish when they have answered the unmasking request; the
        # server completes the round (unmasking, update, storage) just after.
        while True:
            detail = admin.get(f"/v1/admin/tasks/{task}").json()
            if detail["rounds_detail"] and detail["rounds_detail"][0]["status"] != "running":
                break
            time.sleep(0.05)
        done.set()
        prober.join()
        rnd = detail["rounds_detail"][0]
        stages = {k: round(v["seconds"], 4) for k, v in rnd["stage_stats"].items()}
        config = SessionConfig.decode(bytes.fromhex(rnd["config"]))
        return {
            "status": rnd["status"],
            "errors": sorted({str(e) for e in errors}),
            "outcomes": sorted({f"{o.state}:{o.abort_reason}" for o in outcomes}),
            "round_s": round(sum(stages.values()), 4),
            "wall_s": round(wall, 4),
            "stages": stages,
            "config": config,
            "healthz_ms": _percentiles(probes),
        }
    finally:
        server.terminate()
        server.wait(timeout=20)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = np.sort(np.asarray(seconds)) * 1000
    return {
        "probes": len(ms),
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
        "max": round(float(ms[-1]), 1),
    }


def main() -> int:
    lengths = int(os.environ.get("SECAGG_BENCH_LENGTH", "100000"))
    counts = [int(x) for x in os.environ.get("SECAGG_BENCH_CLIENTS", "10,50,100").split(",")]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            result = http_round(n, lengths, Path(tmp))
            config: SessionConfig = result.pop("config")
            # The same session parameters in memory (simulation identities stand in
            # for the enrolled ones, which only the clients hold).
            reference = make_config(
                config.num_participants,
                config.vector_length,
                bit_width=config.bit_width,
                threshold=config.threshold,
                graph=config.graph,
                degree=config.degree if config.graph is GraphKind.HARARY else 0,
                mode=config.mode,
            )
            inputs = [np.zeros(config.vector_length, np.int64) for _ in config.participants]
            t0 = time.perf_counter()
            simulate(reference, inputs)
            sim = time.perf_counter() - t0
            report = {
                "clients": n,
                "length": lengths,
                "mode": config.mode.value,
                "graph": config.graph.value,
                "degree": config.degree,
                "threshold": config.threshold,
                "bit_width": config.bit_width,
                "http_round_s": result["round_s"],
                "http_wall_s": result["wall_s"],
                "simulate_s": round(sim, 4),
                "ratio": round(result["round_s"] / sim, 2),
                "stages": result["stages"],
                "status": result["status"],
                "client_errors": result["errors"],
                "healthz_ms_during_round": result["healthz_ms"],
            }
            print(json.dumps(report), flush=True)
            ok = ok and result["status"] == "completed"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
