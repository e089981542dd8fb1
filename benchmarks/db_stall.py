"""/healthz latency while the database stalls (issue 7: "one database stall freezes the server").

A ``secagg serve`` process on a fresh PostgreSQL schema. Another session
takes ACCESS EXCLUSIVE locks on the tables requests touch (clients, tasks,
enrolment tokens) and holds them for ``--stall`` seconds, while worker
threads send signed client requests and admin requests in a loop and one
thread polls ``/healthz`` every 20 ms. Prints one JSON object: /healthz
latency (p50, p99, max) before and during the stall, the answers the
workers got (status counts; 503 is ``database_unavailable``), and how long
after the stall the first request succeeded.

    .venv/bin/python -m benchmarks.db_stall [--stall 8] [--workers 8] [--admin-reads]

``--admin-reads`` adds ``GET /v1/admin/tasks`` to the traffic (an endpoint
that, before the API split, read the database on the event loop).
Needs PostgreSQL at 127.0.0.1:5432 (user postgres, database test).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from protocol import SystemRandom
from protocol.crypto import ed25519_public_key
from secagg.db import Client, Database
from secagg_http.signing import sign_request

CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
ADMIN = "stall-admin"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    a = np.array(samples) * 1000
    return {
        "n": len(samples),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def run(stall_s: float, workers: int, admin_reads: bool) -> dict[str, Any]:
    schema = f"secagg_stall_{uuid.uuid4().hex[:12]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    admin_pg = psycopg.connect(CONNINFO, autocommit=True)
    admin_pg.execute(f'CREATE SCHEMA "{schema}"')
    secret = SystemRandom().random_bytes(32)
    db = Database.from_url(url)
    with db.session() as s:
        s.add(Client(id=1, name="c1", public_key=ed25519_public_key(secret)))
    db.dispose()
    port = _port()
    work = Path(tempfile.mkdtemp(prefix="db-stall-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "secagg.cli", "serve", "--port", str(port)],
        env={
            **os.environ,
            "SECAGG_DATABASE_URL": url,
            "SECAGG_ADMIN_TOKEN": ADMIN,
            "SECAGG_LOG_LEVEL": "error",
        },
        stdout=(work / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((work / "serve.log").read_text())
            time.sleep(0.2)

        phase = ["before"]
        healthz: dict[str, list[float]] = {"before": [], "stall": [], "after": []}
        answers: Counter[str] = Counter()
        first_ok_after: list[float] = []
        released_at: list[float] = []
        stop = threading.Event()
        lock = threading.Lock()

        def poll() -> None:
            with httpx.Client(base_url=base, timeout=120) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    c.get("/healthz")
                    healthz[phase[0]].append(time.perf_counter() - t0)
                    time.sleep(0.02)

        def traffic(index: int) -> None:
            kinds = ["signed", "token"] + (["tasks"] if admin_reads else [])
            kind = kinds[index % len(kinds)]
            headers = {"authorization": f"Bearer {ADMIN}"}
            with httpx.Client(base_url=base, timeout=120) as c:
                while not stop.is_set():
                    if kind == "signed":
                        path = "/v1/tasks/1/models/current"
                        signed = sign_request(
                            secret, 1, "GET", path, int(time.time()), os.urandom(16).hex(), b""
                        )
                        r = c.get(path, headers=signed)
                        ok = r.status_code == 403
                    elif kind == "token":
                        r = c.post("/v1/admin/tokens", json={}, headers=headers)
                        ok = r.status_code == 200
                    else:
                        r = c.get("/v1/admin/tasks", headers=headers)
                        ok = r.status_code == 200
                    with lock:
                        answers[f"{phase[0]}:{kind}:{r.status_code}"] += 1
                        if ok and phase[0] == "after" and not first_ok_after:
                            first_ok_after.append(time.monotonic() - released_at[0])

        threads = [threading.Thread(target=poll, daemon=True)] + [
            threading.Thread(target=traffic, args=(i,), daemon=True) for i in range(workers)
        ]
        for t in threads:
            t.start()
        time.sleep(2.0)  # baseline traffic
        locker = psycopg.connect(CONNINFO)
        locker.execute(f'SET search_path TO "{schema}"')
        # The stall begins when the lock is requested: requests queue behind it at once.
        phase[0] = "stall"
        locker.execute("LOCK TABLE clients, tasks, enrolment_tokens IN ACCESS EXCLUSIVE MODE")
        time.sleep(stall_s)
        phase[0] = "after"
        released_at.append(time.monotonic())
        locker.rollback()
        locker.close()
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        return {
            "stall_s": stall_s,
            "workers": workers,
            "admin_reads": admin_reads,
            "healthz": {k: _stats(v) for k, v in healthz.items()},
            "answers": dict(sorted(answers.items())),
            "first_success_after_release_s": round(first_ok_after[0], 3)
            if first_ok_after
            else None,
            "server_alive": proc.poll() is None,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        admin_pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin_pg.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stall", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--admin-reads", action="store_true")
    args = p.parse_args()
    print(json.dumps(run(args.stall, args.workers, args.admin_reads)))


if __name__ == "__main__":
    main()
