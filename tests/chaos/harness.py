"""The chaos harness: a real ``secagg serve`` on PostgreSQL, real client processes, faults.

One run (:func:`run_chaos`):

1. A fresh PostgreSQL schema (``search_path`` in the URL's ``options``, as
   ``tests/server/conftest.py`` does); the server's connections carry an
   ``application_name`` of their own, so they can be cut by name.
2. ``secagg serve`` over HTTPS (a self-signed certificate) as a process; a
   task with a task authority: every identity (the honest clients and the
   garbage client) is enrolled pinning the authority's key and certified in
   its roster.
3. ``clients`` honest client processes (``tests/chaos/chaos_client.py``: the
   SDK's ``Client.run()``, deterministic training, stage reports), one of them
   slow, and one garbage client (``tests/chaos/garbage_client.py``).
4. Faults from a plan drawn from the seed: client SIGKILLs in given stages
   (killed clients are restarted, as a rebooted device would be; surviving
   clients never are, except by the watchdog that keeps a run going after a
   client died by itself, which is a failed invariant), one SIGKILL of the
   server and its restart (while a straggler holds a stage open, so that the
   stage is surely running), and cut database connections
   (``pg_terminate_backend`` on the server's backends, with or without the
   one holding its writer lock). A server that exits by itself is restarted,
   as a supervisor would.
5. Invariants, checked at the end (:class:`ChaosReport`); see ``INVARIANTS``.

Every process started is stopped by its pid at the end, failure or not (and
gets ``PR_SET_PDEATHSIG``, so it dies with the harness if the harness is
killed). ``python -m tests.chaos.harness --variant long --seed N`` runs the
longer variant (``make chaos``); the exit status is 1 if an invariant failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from client_sdk.client import enrol, tls_verify
from client_sdk.identity import Identity
from protocol import SystemRandom
from protocol.authority import sign_roster, task_scope
from protocol.crypto import ed25519_public_key
from protocol.crypto.x509 import self_signed_certificate
from tests.chaos.chaos_client import MAX_STEPS

try:  # the signing scheme may move out of protocol/ (issue 7, item 9)
    from secagg_http.signing import CBOR_MEDIA_TYPE
except ImportError:  # pragma: no cover - depends on the layout that lands
    CBOR_MEDIA_TYPE = "application/cbor"

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ADMIN = "chaos-admin-token"
# secagg serve's exit status when it lost its writer-lock connection and
# failed closed (secagg/writer_lock.py, EXIT_WRITER_LOCK_LOST).
EXIT_WRITER_LOCK_LOST = 4

# Where a client can be SIGKILLed. "checkin": by the harness, while the client
# waits in its check-in long-poll; the others: by the client itself on entering
# the stage, on the harness's order (the protocol stages last milliseconds).
STAGES = ("checkin", "training", "R0", "R1", "R2", "R3", "R4")
SERVER_KILL_STAGES = ("training", "R0", "R1", "R2", "R3", "R4")
DB_CUT_STAGES = ("checkin", "training", "R2", "R4")

INVARIANTS = {
    "exact_mean": "every completed round's published model is the base model plus the exact "
    "weighted mean of the counted clients' updates, within one quantisation step",
    "versions_kept": "no model version lost or changed (hashes recorded while running), "
    "versions contiguous, each made by exactly one completed round",
    "no_round_running": "no round left running once the task is over",
    "clients_recover": "no client process exited by itself while the task ran",
    "clients_return": "every client's run() returned (exit 0) once the task was over",
    "completions_true": "a round a client reported completed is completed with a version",
    "no_500": "the server never answered 500 (its log, clients, garbage client, harness)",
    "task_completes": "the task completed within the time limit",
    "server_alive": "the server process never exited by itself, except by failing closed "
    "(status 4) when a cut took its writer-lock connection",
    "faults_injected": "every fault of the plan was injected",
}


class ServerExited(RuntimeError):
    """``secagg serve`` exited while starting."""


class PostgresUnavailable(RuntimeError):
    """PostgreSQL does not answer at 127.0.0.1:5432 (the chaos test needs it)."""


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    # Cohorts of 7, a session needs 6 (who trained): one client lost anywhere
    # leaves at least 5 survivors, the clients' default floor (a cohort of 6
    # sessions in 5 and aborts at the next dropout). Clients are killed one
    # per finished round, so only the server kill aborts a round on purpose.
    # A round that aborts after R2 bars its whole cohort from its base version
    # (spec §4.7: a client contributes at most once per base version), so the
    # fleet holds two cohorts: a round can still start after the server kill.
    clients: int = 14
    clients_per_round: int = 7
    min_clients: int = 6
    rounds: int = 4
    vector_length: int = 32
    scale: float = 1024.0
    client_kills: int = 3
    server_kill: bool = True
    db_cuts: int = 1
    # Of the cuts, how many also take the connection holding the server's
    # writer lock (the others cut every other backend of the server).
    db_cuts_with_lock: int = 0
    slow_client: bool = True
    slow_train_s: float = 3.0
    garbage_client: bool = True
    # The garbage client checks in (genuinely) once, so it may be selected and
    # answer a round with junk: one more dropout in that round.
    garbage_checks_in: bool = False
    time_limit_s: float = 75.0
    # Protocol stage deadlines (today R0 includes training).
    deadlines: tuple[tuple[str, float], ...] = (
        ("R0", 12.0),
        ("R1", 5.0),
        ("R2", 5.0),
        ("R3", 5.0),
        ("R4", 5.0),
    )
    max_body_bytes: int = 256 * 1024
    long_poll_s: float = 3.0


# One round more than the faults need: kill orders go out one round at a time,
# and on a loaded machine a round may finish before the next order is claimed.
SHORT = ChaosConfig(seed=7, rounds=5)
# Two server deaths (the kill, and the exit that a cut of the writer-lock
# connection forces) can each interrupt a round after its masked inputs
# arrived, burning a cohort of 7 on one base version (a client contributes at
# most once per base version, §4.7): 21 clients leave a third cohort.
LONG = replace(
    SHORT,
    clients=21,
    rounds=16,
    client_kills=2 * len(STAGES),
    garbage_checks_in=True,
    db_cuts=4,
    db_cuts_with_lock=1,
    time_limit_s=420.0,
)


@dataclass(frozen=True)
class Plan:
    """The faults of one run, drawn from the seed."""

    kill_stages: tuple[str, ...]  # one client SIGKILL per entry, in this order
    server_kill_stage: str | None  # killed when a client enters it (after a completed round)
    db_cut_stages: tuple[str, ...]
    db_cut_with_lock: tuple[bool, ...]
    slow_index: int | None
    reboot_delays: tuple[float, ...]


def make_plan(cfg: ChaosConfig) -> Plan:
    rng = random.Random(cfg.seed)  # a test plan, not key material
    if cfg.client_kills >= len(STAGES):  # every stage, then random ones
        stages = list(STAGES) * (cfg.client_kills // len(STAGES))
        stages += rng.sample(STAGES, cfg.client_kills % len(STAGES))
    else:
        stages = rng.sample(STAGES, cfg.client_kills)
    rng.shuffle(stages)
    return Plan(
        kill_stages=tuple(stages),
        server_kill_stage=rng.choice(SERVER_KILL_STAGES) if cfg.server_kill else None,
        db_cut_stages=tuple(rng.choice(DB_CUT_STAGES) for _ in range(cfg.db_cuts)),
        db_cut_with_lock=tuple(
            rng.sample(
                [True] * cfg.db_cuts_with_lock + [False] * (cfg.db_cuts - cfg.db_cuts_with_lock),
                cfg.db_cuts,
            )
        ),
        slow_index=rng.randrange(cfg.clients) if cfg.slow_client else None,
        reboot_delays=tuple(rng.uniform(0.3, 2.0) for _ in range(64)),
    )


@dataclass
class ChaosReport:
    config: dict[str, Any]
    plan: dict[str, Any]
    work: str
    violations: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in INVARIANTS})
    facts: dict[str, Any] = field(default_factory=dict)

    def fail(self, invariant: str, what: str) -> None:
        self.violations[invariant].append(what)

    @property
    def failed(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.violations.items() if v}

    def summary(self) -> str:
        lines = [f"chaos run (seed {self.config['seed']}, work dir {self.work})"]
        for name, text in INVARIANTS.items():
            problems = self.violations[name]
            lines.append(f"  [{'FAIL' if problems else ' ok '}] {name}: {text}")
            lines.extend(f"         - {p}" for p in problems[:8])
            if len(problems) > 8:
                lines.append(f"         ... and {len(problems) - 8} more")
        lines.append("  facts: " + json.dumps(self.facts, default=str, sort_keys=True))
        return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the harness dies (Linux; best effort)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Processes:
    """Every process the harness started; all stopped by pid at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("a") as fh:
            fh.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(args[2:5])}\n")
        out = log.open("ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        self.started.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        """SIGTERM then, after 10 s, SIGKILL each still running; the pids that needed SIGKILL."""
        for p in self.started:
            if p.poll() is None:
                p.terminate()
        forced = []
        for p in self.started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
                forced.append(p.pid)
        return forced


class ServerProcess:
    def __init__(self, procs: Processes, work: Path, db_url: str, cfg: ChaosConfig) -> None:
        self.procs, self.work, self.cfg = procs, work, cfg
        self.port = _free_port()
        cert, key = self_signed_certificate(["127.0.0.1"], days=1)
        (work / "cert.pem").write_bytes(cert)
        (work / "key.pem").write_bytes(key)
        self.ca = str(work / "cert.pem")
        self.url = f"https://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.log = work / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> float:
        """Start ``secagg serve`` and wait for /healthz; the seconds it took.

        A server that exits while starting (e.g. its predecessor's writer lock
        not yet released by the database) is started again, until ``timeout``.
        """
        started = time.monotonic()
        while True:
            try:
                self._start(started + timeout)
                return time.monotonic() - started
            except ServerExited:
                if time.monotonic() - started > timeout:
                    raise
                time.sleep(1.0)

    def log_tail(self) -> str:
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line]
        return " | ".join(lines[-3:])[-600:]

    def _start(self, deadline: float) -> None:
        env = {
            "SECAGG_DATABASE_URL": self.db_url,
            "SECAGG_ADMIN_TOKEN": ADMIN,
            "SECAGG_ADMIN_TOKEN_FILE": str(self.work / "admin-token"),
            "SECAGG_LONG_POLL_S": str(self.cfg.long_poll_s),
            "SECAGG_MAX_BODY_BYTES": str(self.cfg.max_body_bytes),
            "SECAGG_LOG_LEVEL": "info",
        }
        args = [
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
        ]
        self.proc = self.procs.start(args, self.log, env)
        with httpx.Client(verify=tls_verify(self.ca), timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerExited(
                        f"secagg serve exited with {self.proc.returncode}: "
                        + self.log.read_text()[-3000:]
                    )
                try:
                    if c.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"secagg serve not healthy in time: {self.log_tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM; the exit status (None: it ignored SIGTERM for 20 s and was killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=tls_verify(self.ca),
            timeout=15,
            headers={"authorization": f"Bearer {ADMIN}"},
        )


@dataclass
class ClientSlot:
    index: int
    identity_path: Path
    client_id: int
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    ordered_kill: bool = False  # the next SIGKILL exit is ours
    stage: str = ""
    stage_since: float = 0.0
    stage_pid: int = 0
    status_offset: int = 0
    finished: bool = False  # exited 0 once the task was over

    @property
    def alive(self) -> bool:
        return self.restart_at is None and self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


class Chaos:
    def __init__(self, cfg: ChaosConfig, work: Path) -> None:
        self.cfg, self.work = cfg, work
        self.plan = make_plan(cfg)
        self.report = ChaosReport(asdict(cfg), asdict(self.plan), str(work))
        self.procs = Processes()
        for sub in ("status", "orders", "updates", "ids", "logs"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.slots: list[ClientSlot] = []
        self.garbage: subprocess.Popen[bytes] | None = None
        self.versions_seen: dict[int, str] = {}
        self.detail: dict[str, Any] | None = None
        self.admin_500s: list[str] = []
        self.app_name = ""  # the server's database application_name (for cuts)
        self.events: list[str] = []
        self.t0 = time.monotonic()
        self.reboots = iter(self.plan.reboot_delays * 100)

    # -- set-up -----------------------------------------------------------------

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:6.1f}s {what}")

    def admin_get(self, path: str) -> httpx.Response | None:
        try:
            with self.server.admin() as c:
                r = c.get(path)
        except httpx.HTTPError:
            return None
        if r.status_code == 500:
            self.admin_500s.append(f"GET {path}: {r.text[:200]}")
        return r

    def setup(self, db_url: str) -> None:
        self.server = ServerProcess(self.procs, self.work, db_url, self.cfg)
        self.report.facts["server_start_s"] = round(self.server.start(), 2)
        cfg = self.cfg
        body = {
            "name": f"chaos-{cfg.seed}",
            "vector_length": cfg.vector_length,
            "rounds": cfg.rounds,
            "clients_per_round": cfg.clients_per_round,
            "min_clients": cfg.min_clients,
            "mode": "active",
            "graph": "complete",
            "dropout_rate": 0.1,
            "clip": 1.0,
            "scale": cfg.scale,
            "max_weight": 100,
            "deadlines": dict(cfg.deadlines),
            "strategy": {"name": "fedavg", "server_lr": 1.0, "momentum": 0.0},
            "max_aborted_rounds": 1000,
        }
        assert MAX_STEPS / cfg.scale < body["clip"]  # type: ignore[operator]
        authority = SystemRandom().random_bytes(32)
        with self.server.admin() as c:
            r = c.post("/v1/admin/tasks", json=body)
            if r.status_code >= 300:
                raise RuntimeError(f"task creation refused: {r.status_code} {r.text}")
            self.task_id = int(r.json()["id"])
            members = []
            for index in range(cfg.clients + 1):  # the last one is the garbage client
                token = c.post("/v1/admin/tokens", json={"label": f"chaos-{index}"})
                token.raise_for_status()
                ident = enrol(
                    self.server.url,
                    token.json()["token"],
                    Identity.generate(),
                    name=f"chaos-{index}",
                    verify=self.server.ca,
                    authority_key=ed25519_public_key(authority),
                )
                path = self.work / "ids" / f"c{index}.json"
                ident.save(path)
                assert ident.client_id is not None
                members.append((ident.client_id, ident.public_key))
                self.slots.append(ClientSlot(index, path, ident.client_id))
            now = int(time.time())
            roster = sign_roster(
                authority, task_scope(self.task_id), 1, now - 60, now + 86400, members
            )
            c.put(
                f"/v1/admin/tasks/{self.task_id}/roster",
                content=roster.encode(),
                headers={"content-type": CBOR_MEDIA_TYPE},
            ).raise_for_status()
        self.garbage_slot = self.slots.pop()
        self.by_client_id = {s.client_id: s.index for s in self.slots}

    def start_client(self, slot: ClientSlot) -> None:
        args = [
            "-m",
            "tests.chaos.chaos_client",
            "--server",
            self.server.url,
            "--ca",
            self.server.ca,
            "--identity",
            str(slot.identity_path),
            "--task",
            str(self.task_id),
            "--index",
            str(slot.index),
            "--work",
            str(self.work),
            "--seed",
            str(self.cfg.seed),
            "--scale",
            str(self.cfg.scale),
            "--length",
            str(self.cfg.vector_length),
        ]
        if slot.index == self.plan.slow_index:
            args += ["--train-s", str(self.cfg.slow_train_s)]
        slot.proc = self.procs.start(args, self.work / "logs" / f"c{slot.index}.log")
        slot.restart_at, slot.ordered_kill = None, False

    def start_garbage(self) -> None:
        args = [
            "-m",
            "tests.chaos.garbage_client",
            "--server",
            self.server.url,
            "--ca",
            self.server.ca,
            "--identity",
            str(self.garbage_slot.identity_path),
            "--task",
            str(self.task_id),
            "--work",
            str(self.work),
            "--seed",
            str(self.cfg.seed),
            "--max-body",
            str(self.cfg.max_body_bytes),
        ]
        if self.cfg.garbage_checks_in:
            args.append("--checkin")
        self.garbage = self.procs.start(args, self.work / "logs" / "garbage.log")

    # -- the run ----------------------------------------------------------------

    def read_status(self, slot: ClientSlot) -> list[tuple[float, int, str, list[str]]]:
        path = self.work / "status" / f"c{slot.index}.log"
        try:
            with path.open() as fh:
                fh.seek(slot.status_offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind("\n") + 1]
        slot.status_offset += len(complete)
        lines = []
        for line in complete.splitlines():
            t, pid, stage, *rest = line.split(" ")
            lines.append((float(t), int(pid), stage, rest))
        return lines

    def cut_db(self, why: str, with_lock: bool) -> None:
        """Terminate the server's database sessions: all of them, or all but the one
        holding an advisory lock (the server's writer lock, where there is one)."""
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True, connect_timeout=5) as c:
            rows = c.execute(
                "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
                "WHERE a.application_name LIKE %s AND a.pid <> pg_backend_pid() AND (%s OR "
                "NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
                "AND l.locktype = 'advisory'))",
                (self.app_name + "%", with_lock),
            ).fetchall()
        self.report.facts.setdefault("db_cuts", []).append(
            {"at": why, "backends": len(rows), "with_lock": with_lock}
        )
        self.note(f"cut {len(rows)} database connections ({why}, writer lock: {with_lock})")

    def run(self) -> None:
        cfg, plan = self.cfg, self.plan
        for slot in self.slots:
            self.start_client(slot)
        if cfg.garbage_client:
            self.start_garbage()
        kills = list(plan.kill_stages)
        cuts = list(zip(plan.db_cut_stages, plan.db_cut_with_lock, strict=True))
        lock_cut_at = -1e9
        server_kill = plan.server_kill_stage
        executed: list[dict[str, Any]] = []
        last_cut = 0.0
        finished_at_kill = -1  # rounds finished when the last client kill happened
        order: str | None = None  # the stage of the kill order out now
        hold_issued = hold_seen = False  # the straggler of the server kill
        next_detail = 0.0
        limit = time.monotonic() + cfg.time_limit_s
        self.t0 = time.monotonic()
        done = False
        while time.monotonic() < limit:
            now = time.monotonic()
            rounds = (self.detail or {}).get("rounds_detail", [])
            completed = sum(r["status"] == "completed" for r in rounds)
            finished = sum(r["status"] != "running" for r in rounds)
            # Exit statuses first, status lines second: a client's last lines
            # (e.g. "killed R2") were written before it died, so they are read.
            exits = {s.index: s.proc.poll() if s.proc is not None else None for s in self.slots}
            fresh: list[tuple[ClientSlot, str]] = []
            for slot in self.slots:
                for _t, pid, stage, rest in self.read_status(slot):
                    if stage == "killed":  # it obeyed an order: this SIGKILL is ours
                        slot.ordered_kill = True
                        executed.append(
                            {"client": slot.index, "stage": rest[0], "rounds_done": completed}
                        )
                        self.note(f"client {slot.index} SIGKILLed itself in {rest[0]}")
                        order = None
                        finished_at_kill = finished
                        continue
                    if stage == "hold":
                        hold_seen = True
                        self.note(f"client {slot.index} holds in {rest[0]}")
                        continue
                    slot.stage, slot.stage_since, slot.stage_pid = stage, now, pid
                    fresh.append((slot, stage))
            if now >= next_detail:
                next_detail = now + 0.5
                r = self.admin_get(f"/v1/admin/tasks/{self.task_id}")
                if r is not None and r.status_code == 200:
                    self.detail = r.json()
                    for v in self.detail.get("versions", []):
                        previous = self.versions_seen.setdefault(int(v["version"]), v["sha256"])
                        if previous != v["sha256"]:
                            self.report.fail(
                                "versions_kept",
                                f"version {v['version']} changed "
                                f"from {previous} to {v['sha256']} while running",
                            )
                    if self.detail["status"] != "active" and not any(
                        rd["status"] == "running" for rd in self.detail["rounds_detail"]
                    ):
                        done = True
                        break
            # Client processes: expected deaths, deaths on their own, restarts.
            for slot in self.slots:
                assert slot.proc is not None
                rc = exits[slot.index]
                if slot.finished:
                    continue
                if rc == 0 and self.task_over():  # run() returned: the task is over
                    slot.finished = True
                    continue
                if rc is not None and slot.restart_at is None:
                    if rc == -signal.SIGKILL and slot.ordered_kill:
                        slot.restart_at = now + next(self.reboots)
                    else:
                        tail = self._log_tail(slot.index)
                        self.report.fail(
                            "clients_recover",
                            f"client {slot.index} exited by "
                            f"itself with status {rc} in stage {slot.stage!r} at "
                            f"{now - self.t0:.1f} s: {tail}",
                        )
                        self.note(f"client {slot.index} died by itself ({rc}); watchdog restart")
                        slot.restart_at = now + 1.0  # a watchdog, so the run goes on
                if slot.restart_at is not None and now >= slot.restart_at:
                    self.start_client(slot)
                    self.note(f"client {slot.index} restarted (pid {slot.proc.pid})")
            # Client kills, one at a time, the next once a round finished since the last.
            if kills and order is None and finished > finished_at_kill:
                stage = kills[0]
                alive = [s for s in self.slots if s.alive]
                if stage == "checkin":  # the harness kills it in its check-in long-poll
                    waiting = [
                        s
                        for s in alive
                        if s.stage == "checkin"
                        and now - s.stage_since > 0.3
                        and s.stage_pid == s.pid
                    ]
                    if waiting:
                        slot = random.Random(len(kills)).choice(waiting)
                        slot.ordered_kill = True
                        os.kill(slot.pid, signal.SIGKILL)
                        executed.append(
                            {"client": slot.index, "stage": stage, "rounds_done": completed}
                        )
                        self.note(f"client {slot.index} SIGKILLed in its check-in")
                        kills.pop(0)
                        finished_at_kill = finished
                else:
                    # The first client to enter the stage claims the order (an
                    # atomic rename) and SIGKILLs itself there.
                    order = kills.pop(0)
                    tmp = self.work / "orders" / "next.tmp"
                    tmp.write_text(order)
                    os.replace(tmp, self.work / "orders" / "next")
            # The server kill: once a round completed, the first client to enter the
            # stage holds there (a straggler) and the server is killed meanwhile,
            # so the stage is surely open when it dies (e.g. R2 with the other
            # clients' masked inputs in, not yet recorded).
            if server_kill and completed >= 1 and not hold_issued:
                tmp = self.work / "orders" / "hold.tmp"
                tmp.write_text(server_kill)
                os.replace(tmp, self.work / "orders" / "hold")
                hold_issued = True
            if server_kill and hold_seen:
                self.server.kill()
                self.note(f"server SIGKILLed (a client holds in {server_kill})")
                time.sleep(next(self.reboots))
                took = self.server.start()
                self.note(f"server restarted, healthy after {took:.1f} s")
                self.report.facts["server_kill"] = {
                    "stage": server_kill,
                    "restart_s": round(took, 2),
                    "after_rounds": completed,
                }
                server_kill = None
                continue
            # Database cuts.
            if cuts and now - last_cut > 3 and any(st == cuts[0][0] for _, st in fresh):
                stage, with_lock = cuts.pop(0)
                self.cut_db(f"a client entered {stage}", with_lock)
                last_cut = now
                if with_lock:
                    lock_cut_at = now
            # The server exiting by itself: restarted, as a supervisor would.
            assert self.server.proc is not None
            rc = self.server.proc.poll()
            if rc is not None:
                expected = rc == EXIT_WRITER_LOCK_LOST and now - lock_cut_at < 60
                if not expected:
                    self.report.fail(
                        "server_alive",
                        f"secagg serve exited by itself with status {rc} at "
                        f"{now - self.t0:.1f} s: {self.server.log_tail()}",
                    )
                self.note(f"server exited by itself ({rc}); restarting it")
                took = self.server.start()
                self.report.facts.setdefault("server_exits", []).append(
                    {"status": rc, "expected": expected, "restart_s": round(took, 2)}
                )
                continue
            time.sleep(0.1)
        elapsed = time.monotonic() - self.t0
        self.report.facts["run_s"] = round(elapsed, 1)
        self.report.facts["client_kills"] = executed
        if not done:
            status = (self.detail or {}).get("status")
            running = [
                r["number"]
                for r in (self.detail or {}).get("rounds_detail", [])
                if r["status"] == "running"
            ]
            self.report.fail(
                "task_completes",
                f"task status {status!r}, rounds {running} running, after the "
                f"{cfg.time_limit_s:.0f} s limit",
            )
        elif (self.detail or {}).get("status") != "completed":
            self.report.fail(
                "task_completes",
                f"task ended {self.detail['status']!r}: "  # type: ignore[index]
                f"{(self.detail or {}).get('failure_reason')}",
            )
        missing = []
        with contextlib.suppress(FileNotFoundError):  # withdrawn (unless claimed just now)
            os.rename(self.work / "orders" / "next", self.work / "orders" / "withdrawn")
        if order is not None and not (self.work / "orders" / "withdrawn").exists():
            order = None  # claimed as the run ended: it died, and is restarted below
        if kills or order is not None:
            pending = ([order] if order else []) + kills
            missing.append(f"client kills not done: {pending}")
        if server_kill:
            (self.work / "orders" / "hold").unlink(missing_ok=True)
            missing.append(f"server kill (stage {server_kill}) not done")
        if cuts:
            missing.append(f"database cuts not done: {[stage for stage, _ in cuts]}")
        for m in missing:
            self.report.fail("faults_injected", m)
        self.wait_clients_return(done)

    def task_over(self) -> bool:
        """Whether the task has ended (asks the server now)."""
        r = self.admin_get(f"/v1/admin/tasks/{self.task_id}")
        return r is not None and r.status_code == 200 and r.json()["status"] != "active"

    def wait_clients_return(self, done: bool) -> None:
        """Once the task is over, clients return by themselves within 30 s."""
        if not done:
            return  # the task is still on: they are stopped with everything else
        for slot in self.slots:  # a client killed at the very end is restarted
            if slot.restart_at is not None:
                self.start_client(slot)
        deadline = time.monotonic() + 30
        for slot in self.slots:
            while slot.proc is not None:
                try:
                    rc = slot.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.report.fail(
                        "clients_return",
                        f"client {slot.index} still running 30 s after the task was over",
                    )
                    break
                killed = any(line[2] == "killed" for line in self.read_status(slot))
                if rc == -signal.SIGKILL and killed:  # an order claimed as the run ended
                    self.start_client(slot)
                    continue
                if rc != 0:
                    self.report.fail(
                        "clients_return",
                        f"client {slot.index} ended with status {rc} after the task was "
                        f"over: {self._log_tail(slot.index)}",
                    )
                break

    def _log_tail(self, index: int) -> str:
        text = (self.work / "logs" / f"c{index}.log").read_text(errors="replace")
        last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
        return last[0][:300]

    # -- the invariants -----------------------------------------------------------

    def check(self) -> None:
        r = self.admin_get(f"/v1/admin/tasks/{self.task_id}")
        if r is None or r.status_code != 200:
            raise RuntimeError(f"no final task detail: {r and r.status_code}")
        detail = r.json()
        rounds = detail["rounds_detail"]
        self.report.facts["rounds"] = [
            {
                "number": rd["number"],
                "status": rd["status"],
                "reason": rd["abort_reason"],
                "participants": len(rd["participants"]),
                "version": rd["result_version"],
            }
            for rd in rounds
        ]
        weights = self.check_versions(detail)
        self.check_rounds(rounds, weights)
        self.check_client_claims(rounds)

    def check_versions(self, detail: dict[str, Any]) -> dict[int, np.ndarray[Any, Any]]:
        versions = {int(v["version"]): v for v in detail["versions"]}
        for number, sha in sorted(self.versions_seen.items()):
            if number not in versions:
                self.report.fail("versions_kept", f"version {number} (seen while running) is gone")
            elif versions[number]["sha256"] != sha:
                self.report.fail(
                    "versions_kept",
                    f"version {number} changed: {sha} -> {versions[number]['sha256']}",
                )
        if sorted(versions) != list(range(1, len(versions) + 1)):
            self.report.fail("versions_kept", f"versions not contiguous: {sorted(versions)}")
        weights: dict[int, np.ndarray[Any, Any]] = {}
        with self.server.admin() as c:
            for number, v in sorted(versions.items()):
                resp = c.get(f"/v1/admin/tasks/{self.task_id}/versions/{number}/weights")
                if resp.status_code != 200:
                    self.report.fail(
                        "versions_kept", f"version {number}: download answered {resp.status_code}"
                    )
                    continue
                array = np.load(io.BytesIO(resp.content), allow_pickle=False)
                raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
                if hashlib.sha256(raw).hexdigest() != v["sha256"]:
                    self.report.fail(
                        "versions_kept",
                        f"version {number}: weights do not match their recorded hash",
                    )
                weights[number] = array.astype(np.float32)
        made_by = Counter(
            rd["result_version"] for rd in detail["rounds_detail"] if rd["status"] == "completed"
        )
        for number in versions:
            if number > 1 and made_by[number] != 1:
                self.report.fail(
                    "versions_kept",
                    f"version {number} was made by {made_by[number]} "
                    "completed rounds (expected exactly one)",
                )
        self.report.facts["versions"] = len(versions)
        return weights

    def check_rounds(self, rounds: list[dict[str, Any]], weights: dict[int, Any]) -> None:
        worst = 0.0
        step = 1.0 / self.cfg.scale
        uncounted = (
            "dropped_in_R0",
            "dropped_in_R1",
            "dropped_in_R2",
            "refused_in_R0",
            "refused_in_R1",
            "refused_in_R2",
            "pruned_in_R0",
            "pruned_in_R1",
        )
        for rd in rounds:
            where = f"round {rd['number']} (id {rd['id']})"
            if rd["status"] == "running":
                self.report.fail("no_round_running", f"{where} is still running")
                continue
            if rd["status"] == "aborted" and not rd["abort_reason"]:
                self.report.fail("no_round_running", f"{where} aborted without a reason")
            if rd["status"] != "completed":
                continue
            statuses = rd["client_status"] or {}
            counted = sorted(int(u) for u, s in statuses.items() if s["status"] not in uncounted)
            metrics = rd["metrics"] or {}
            if metrics.get("survivors") is not None and metrics["survivors"] != len(counted):
                self.report.fail(
                    "exact_mean",
                    f"{where}: {len(counted)} clients counted from "
                    f"client_status, metrics say {metrics['survivors']}",
                )
            base, new = weights.get(rd["base_version"]), weights.get(rd["result_version"])
            if base is None or new is None:
                self.report.fail(
                    "exact_mean",
                    f"{where}: base {rd['base_version']} or result "
                    f"{rd['result_version']} version missing",
                )
                continue
            total = np.zeros(self.cfg.vector_length, dtype=object)
            weight = 0
            problem = False
            for cid in counted:
                index = self.by_client_id.get(cid)
                path = self.work / "updates" / f"c{index}-round{rd['id']}.json"
                if index is None or not path.exists():
                    self.report.fail(
                        "exact_mean",
                        f"{where}: counted client {cid} (index "
                        f"{index}) has no recorded update for this round",
                    )
                    problem = True
                    continue
                update = json.loads(path.read_text())
                if update["base_version"] != rd["base_version"]:
                    self.report.fail(
                        "exact_mean",
                        f"{where}: client {index} trained on version "
                        f"{update['base_version']}, the round on {rd['base_version']}",
                    )
                    problem = True
                steps = [round(d * self.cfg.scale) for d in update["delta"]]
                total += np.array([update["weight"] * k for k in steps], dtype=object)
                weight += update["weight"]
            if problem or not counted:
                continue
            if metrics.get("train_examples") is not None and metrics["train_examples"] != weight:
                self.report.fail(
                    "exact_mean",
                    f"{where}: total weight {metrics['train_examples']}"
                    f", the counted clients' weights sum to {weight}",
                )
            mean = np.array([int(t) for t in total], dtype=np.float64) / (self.cfg.scale * weight)
            expected = (base.astype(np.float64) + mean).astype(np.float32)
            error = float(np.max(np.abs(new.astype(np.float64) - expected.astype(np.float64))))
            worst = max(worst, error / step)
            if error > step:
                self.report.fail(
                    "exact_mean",
                    f"{where}: published model is {error / step:.2f} "
                    f"quantisation steps from base + weighted mean of {counted}",
                )
        self.report.facts["worst_error_steps"] = worst

    def check_client_claims(self, rounds: list[dict[str, Any]]) -> None:
        completed = {
            rd["number"]
            for rd in rounds
            if rd["status"] == "completed" and rd["result_version"] is not None
        }
        claims: Counter[str] = Counter()
        answers_5xx: Counter[str] = Counter()
        for slot in self.slots:
            path = self.work / "status" / f"c{slot.index}.log"
            for line in path.read_text().splitlines():
                _t, _pid, stage, *rest = line.split(" ")
                if stage == "outcome":
                    claims[rest[1]] += 1
                    if rest[1] == "completed" and int(rest[0]) not in completed:
                        self.report.fail(
                            "completions_true",
                            f"client {slot.index} reported round "
                            f"{rest[0]} completed; the server has no completed "
                            "round with that number",
                        )
                elif stage == "http5xx":
                    answers_5xx[rest[-1]] += 1
                if stage == "http5xx" and rest[-1] == "500":
                    self.report.fail(
                        "no_500", f"client {slot.index} got 500 on {rest[0]} {rest[1]}"
                    )
        self.report.facts["client_outcomes"] = dict(claims)
        self.report.facts["client_5xx_answers"] = dict(answers_5xx)  # 503: transient, retried

    def scan_logs(self) -> None:
        markers = ("unhandled error", "internal_error", "Exception in ASGI application")
        server_log = self.server.log.read_text(errors="replace")
        for line in server_log.splitlines():
            if any(m in line for m in markers):
                self.report.fail("no_500", f"server log: {line[:300]}")
        self.report.facts["server_log_tracebacks"] = server_log.count("Traceback")
        garbage = self.work / "garbage.log"
        if garbage.exists():
            statuses: Counter[int] = Counter()
            for line in garbage.read_text().splitlines():
                entry = json.loads(line)
                statuses[entry["status"]] += 1
                if entry["status"] == 500:
                    self.report.fail(
                        "no_500",
                        f"garbage {entry['action']} {entry['method']} {entry['path']} got 500",
                    )
            self.report.facts["garbage_statuses"] = dict(sorted(statuses.items()))
        for what in self.admin_500s:
            self.report.fail("no_500", f"harness admin {what}")

    def check_db_after_stop(self, schema: str) -> None:
        """With the server stopped: no round is left running in the database itself."""
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True, connect_timeout=5) as c:
            rows = c.execute(
                f'SELECT number, status FROM "{schema}".rounds WHERE task_id = %s',
                (self.task_id,),
            ).fetchall()
        running = [n for n, status in rows if str(status).lower() == "running"]
        if running:
            self.report.fail(
                "no_round_running",
                f"rounds {running} running in the database after the server stopped",
            )


@contextlib.contextmanager
def postgres_schema() -> Iterator[tuple[str, str, str]]:
    """A fresh schema: (schema, SQLAlchemy URL for the server, application name). Dropped after."""
    try:
        admin = psycopg.connect(POSTGRES_CONNINFO, connect_timeout=2, autocommit=True)
    except psycopg.Error as exc:
        raise PostgresUnavailable(f"PostgreSQL not reachable: {exc}") from exc
    tag = uuid.uuid4().hex[:12]
    schema, app = f"secagg_chaos_{tag}", f"secagg-chaos-{tag}"
    try:
        admin.execute(f'CREATE SCHEMA "{schema}"'.encode())
        yield schema, f"{POSTGRES_URL}?options=-csearch_path%3D{schema}&application_name={app}", app
    finally:
        with contextlib.suppress(psycopg.Error):
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            )
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())
        admin.close()


def run_chaos(cfg: ChaosConfig, work: Path) -> ChaosReport:
    """One chaos run in ``work``; every process it started is stopped before it returns."""
    chaos = Chaos(cfg, work)
    with postgres_schema() as (schema, url, app):
        chaos.app_name = app
        try:
            chaos.setup(url)
            chaos.run()
            chaos.check()
        finally:
            if chaos.garbage is not None:
                (work / "stop-garbage").touch()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    chaos.garbage.wait(timeout=10)
            server = getattr(chaos, "server", None)
            rc = server.stop() if server is not None else None
            chaos.report.facts["server_sigterm_exit"] = rc
            forced = chaos.procs.stop_all()
            if forced:
                chaos.report.facts["processes_killed_at_end"] = forced
        chaos.scan_logs()
        if hasattr(chaos, "task_id"):
            chaos.check_db_after_stop(schema)
    chaos.report.facts["events"] = chaos.events
    (work / "report.json").write_text(json.dumps(asdict(chaos.report), indent=2, default=str))
    return chaos.report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=["short", "long"], default="long")
    p.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "0") or 0) or None)
    p.add_argument("--work", default=os.environ.get("CHAOS_WORK"))
    p.add_argument("--no-server-kill", action="store_true", help="leave the server alone")
    p.add_argument("--no-client-kills", action="store_true")
    p.add_argument("--no-db-cuts", action="store_true")
    p.add_argument("--db-cuts", type=int, help="how many database cuts (default: the variant's)")
    p.add_argument(
        "--db-cuts-with-lock", type=int, help="of which also cut the writer-lock connection"
    )
    p.add_argument("--rounds", type=int, help="rounds of the task (default: the variant's)")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    cfg = replace(SHORT if a.variant == "short" else LONG, seed=seed)
    if a.no_server_kill:
        cfg = replace(cfg, server_kill=False)
    if a.no_client_kills:
        cfg = replace(cfg, client_kills=0)
    if a.no_db_cuts:
        cfg = replace(cfg, db_cuts=0, db_cuts_with_lock=0)
    if a.db_cuts is not None:
        cfg = replace(
            cfg, db_cuts=a.db_cuts, db_cuts_with_lock=min(cfg.db_cuts_with_lock, a.db_cuts)
        )
    if a.db_cuts_with_lock is not None:
        cfg = replace(cfg, db_cuts_with_lock=min(a.db_cuts_with_lock, cfg.db_cuts))
    if a.rounds is not None:
        cfg = replace(cfg, rounds=a.rounds)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"chaos: variant {a.variant}, seed {seed} (CHAOS_SEED={seed} reproduces the plan), "
        f"work dir {work}",
        flush=True,
    )
    report = run_chaos(cfg, work)
    print(report.summary(), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
