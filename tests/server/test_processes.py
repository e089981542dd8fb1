"""Real processes over loopback: `secagg serve`, client processes, SIGKILL of either."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from client_sdk.client import ServerUnreachable, enrol, tls_verify
from protocol.crypto.x509 import self_signed_certificate
from secagg import db as dbm
from secagg.registry import ModelRegistry

ADMIN = "proc-admin-token"
ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, work: Path) -> None:
        self.work, self.port = work, _port()
        cert, key = self_signed_certificate(["127.0.0.1"], days=1)
        (work / "cert.pem").write_bytes(cert)
        (work / "key.pem").write_bytes(key)
        self.ca = str(work / "cert.pem")
        self.url = f"https://127.0.0.1:{self.port}"
        self.db_url = f"sqlite:///{work / 'secagg.db'}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "SECAGG_DATABASE_URL": self.db_url,
            "SECAGG_ADMIN_TOKEN": ADMIN,
            "SECAGG_LONG_POLL_S": "3",
        }
        log = (self.work / "server.log").open("a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "secagg.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--tls-cert",
                str(self.work / "cert.pem"),
                "--tls-key",
                str(self.work / "key.pem"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.admin().get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("server did not start: " + (self.work / "server.log").read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError("secagg serve ignored SIGTERM for 20 s") from None

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=tls_verify(self.ca),
            timeout=30,
            headers={"authorization": f"Bearer {ADMIN}"},
        )

    def task(self, **kw: Any) -> int:
        body = {
            "name": "proc",
            "vector_length": 16,
            "rounds": 2,
            "clients_per_round": 3,
            "graph": "complete",
            "scale": 1024.0,
            "max_weight": 100,
            "deadlines": {"R0": 20, "R1": 3, "R2": 3, "R3": 3, "R4": 3},
        }
        body.update(kw)
        with self.admin() as c:
            r = c.post("/v1/admin/tasks", json=body)
            r.raise_for_status()
            return int(r.json()["id"])

    def detail(self, task: int) -> dict[str, Any]:
        with self.admin() as c:
            return dict(c.get(f"/v1/admin/tasks/{task}").json())

    def client(self, task: int, index: int, rounds: int, *extra: str) -> subprocess.Popen[bytes]:
        with self.admin() as c:
            token = c.post("/v1/admin/tokens", json={}).json()["token"]
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.server.proc_client",
                "--server",
                self.url,
                "--ca",
                self.ca,
                "--token",
                token,
                "--task",
                str(task),
                "--index",
                str(index),
                "--rounds",
                str(rounds),
                *extra,
            ],
            stdout=(self.work / f"client-{index}.log").open("w"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


@contextmanager
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_client_killed_mid_round_is_a_dropout_not_a_hang(tmp_path: Path) -> None:
    with server(tmp_path) as s:
        task = s.task(clients_per_round=6, min_clients=5)
        procs = [s.client(task, i, 2) for i in range(5)]
        # Client 5 dies with SIGKILL just before sending its masked input, in the
        # first round it is selected for (five clients suffice to start a round).
        procs.append(s.client(task, 5, 2, "--crash-first", "--crash-stage", "R2"))
        _wait(lambda: s.detail(task)["status"] == "completed", 90, "both rounds")
        assert procs[5].wait(timeout=10) == -signal.SIGKILL
        for p in procs[:5]:
            assert p.wait(timeout=30) == 0
        rounds = s.detail(task)["rounds_detail"]
        assert [r["status"] for r in rounds] == ["completed", "completed"]
        drops = [r["stage_stats"]["R2"]["dropouts"] for r in rounds]
        assert sorted(drops) == [0, 1]
        assert len(rounds[drops.index(1)]["participants"]) == 6
        assert len(rounds[drops.index(0)]["participants"]) == 5


@pytest.mark.slow
def test_server_killed_mid_round_restarts_with_registry_intact(tmp_path: Path) -> None:
    s = Server(tmp_path)
    s.start()
    try:
        # Two completed rounds: round 2 is aborted by the crash and does not count,
        # so the task completes with round 3. Three clients that lowered their
        # floor (proc_client's ClientPolicy); no dropouts.
        task = s.task(rounds=2, min_participants=3, dropout_rate=0.0)
        # Training in round 2 lasts until the restarted server is up, so round 2 is
        # surely running when the server dies and nobody posts while it is down.
        resume = tmp_path / "server-restarted"
        procs = [
            s.client(task, i, 3, "--slow-round", "2", "--slow-until", str(resume))
            for i in range(3)
        ]
        _wait(
            lambda: any(
                r["number"] == 2 and r["status"] == "running"
                for r in s.detail(task)["rounds_detail"]
            ),
            60,
            "round 2 to start",
        )
        before = s.detail(task)["versions"]
        s.kill()
        # While the server is down the database says round 2 is still running.
        db = dbm.Database.from_url(s.db_url)
        registry = ModelRegistry(db)
        assert [v.version for v in registry.list_versions(task)] == [1, 2]
        with pytest.raises(ServerUnreachable):
            enrol(s.url, "sa1_whatever", verify=s.ca)
        s.start()
        resume.touch()
        _wait(lambda: s.detail(task)["status"] == "completed", 120, "the task to finish")
        detail = s.detail(task)
        rounds = {r["number"]: r for r in detail["rounds_detail"]}
        assert rounds[1]["status"] == "completed"
        assert rounds[2]["status"] == "aborted"
        assert rounds[2]["abort_reason"] == "server_restart"
        assert rounds[3]["status"] == "completed"
        versions = {v["version"]: v for v in detail["versions"]}
        # Versions from before the crash are unchanged, the next round added one.
        for v in before:
            assert versions[v["version"]]["sha256"] == v["sha256"]
        assert sorted(versions) == [1, 2, 3]
        assert versions[3]["parent_version"] == 2
        for v in versions:
            weights = registry.weights(task, v)  # verified against its hash
            assert weights.shape == (16,) and np.all(np.isfinite(weights))
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        s.stop()
