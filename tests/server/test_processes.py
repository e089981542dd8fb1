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
from sqlalchemy import select

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
            s.client(task, i, 3, "--slow-round", "2", "--slow-until", str(resume)) for i in range(3)
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


def _protocol_seconds(r: dict[str, Any]) -> float:
    """R0..R4 of a round (training excluded: its length is the client's business)."""
    return float(sum(v["seconds"] for k, v in r["stage_stats"].items() if k != "training"))


@pytest.mark.slow
def test_a_client_killed_in_r2_costs_seconds_not_a_deadline(tmp_path: Path) -> None:
    """specs/service-v1.md §4: a SIGKILLed client is gone after the liveness timeout
    (4 s by default), so its stage closes then, not at its (here 60 s) deadline."""
    with server(tmp_path) as s:
        deadlines = dict.fromkeys(("R0", "R1", "R2", "R3", "R4"), 60)
        task = s.task(
            rounds=2, clients_per_round=5, min_clients=5, dropout_rate=0.2, deadlines=deadlines
        )
        procs = [s.client(task, i, 2) for i in range(4)]
        # Round 1 runs without a fault (the reference); in round 2 client 4 dies
        # with SIGKILL just before sending its masked input.
        procs.append(s.client(task, 4, 2, "--crash-round", "2", "--crash-stage", "R2"))
        _wait(lambda: s.detail(task)["status"] == "completed", 120, "both rounds")
        assert procs[4].wait(timeout=10) == -signal.SIGKILL
        rounds = s.detail(task)["rounds_detail"]
        assert [r["status"] for r in rounds] == ["completed", "completed"]
        assert [r["stage_stats"]["R2"]["dropouts"] for r in rounds] == [0, 1]
        normal, killed = (_protocol_seconds(r) for r in rounds)
        r2 = rounds[1]["stage_stats"]["R2"]["seconds"]
        print(
            f"R2-SIGKILL round: {killed:.2f} s of protocol stages against {normal:.2f} s "
            f"without a fault (+{killed - normal:.2f} s; R2 {r2:.2f} s)"
        )
        assert killed < normal + 5.0
        for p in procs[:4]:
            assert p.wait(timeout=60) == 0


@pytest.mark.slow
def test_sigterm_closes_the_running_round_before_exit(tmp_path: Path) -> None:
    s = Server(tmp_path)
    s.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        task = s.task(rounds=1, min_participants=3, dropout_rate=0.0)
        # Training lasts until the file exists (never, here): the round is in its
        # training window when the server is told to stop.
        never = tmp_path / "never"
        for i in range(3):
            procs.append(s.client(task, i, 1, "--slow-round", "1", "--slow-until", str(never)))
        _wait(
            lambda: any(r["status"] == "running" for r in s.detail(task)["rounds_detail"]),
            60,
            "round 1 to start",
        )
        s.stop()  # SIGTERM; fails the test if the server ignores it for 20 s
        # uvicorn re-raises the signal once its shutdown (ours included) is complete.
        assert s.proc is not None and s.proc.returncode in (0, -signal.SIGTERM)
        with dbm.Database.from_url(s.db_url).session() as session:
            rows = list(session.scalars(select(dbm.Round).where(dbm.Round.task_id == task)))
            assert [(r.status, r.abort_reason) for r in rows] == [
                (dbm.RoundStatus.ABORTED, "server_shutdown")
            ]
            assert ModelRegistry(dbm.Database.from_url(s.db_url)).get(task).version == 1
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        s.stop()
