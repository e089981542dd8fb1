"""The server's peak memory across a whole round, next to the model's size.

A ``secagg serve`` process (plain HTTP on loopback; SQLite unless
``SECAGG_BENCH_DATABASE_URL`` names another database) runs one secure
aggregation round of ``SECAGG_BENCH_CLIENTS`` (default 5) SDK clients
(threads of this process) on a model of ``SECAGG_BENCH_LENGTH`` (default
10^7) float32 weights; then every client downloads the new ``current``
model at once, as the next round's clients would.

Memory is the server process's resident set read from ``/proc/<pid>/status``.
The idle baseline is taken once the task exists and the server is quiet;
then the kernel's high-water mark (``VmHWM``) is reset (``clear_refs`` 5) and
read back after each phase, so the peak is exact, not sampled. Prints one
JSON object: the model size next to the peak above the baseline, their ratio
and whether it is within ``SECAGG_BENCH_BUDGET`` (default 4) model sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.http_round import ADMIN, _port
from client_sdk.client import Client, enrol
from client_sdk.models import FunctionModel
from protocol import SystemRandom
from protocol.crypto import ed25519_public_key
from protocol.encoding import EvalSums
from secagg_sim import upload_roster

MiB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak(pid: int) -> None:
    # "5" resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _wait_quiet(pid: int, seconds: float = 1.0, tolerance_kib: int = 1024) -> int:
    """The resident set once it has stayed within ``tolerance_kib`` for ``seconds``."""
    last, since = _status_kib(pid, "VmRSS"), time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _status_kib(pid, "VmRSS")
        if abs(now - last) > tolerance_kib:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
    return last


class _Sampler:
    """VmRSS every ``interval`` seconds in a background thread (a timeline, for diagnosis)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = _status_kib(self.pid, "VmRSS")
            except (OSError, KeyError):
                return
            self.samples.append((round(time.perf_counter() - self._t0, 2), rss // 1024))

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # reported in the JSON, not as thread noise
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _make_client(
    url: str,
    admin: httpx.Client,
    task: int,
    i: int,
    length: int,
    authority: bytes,
    rng: np.random.Generator,
) -> Client:
    token = admin.post("/v1/admin/tokens", json={}).json()["token"]
    ident = enrol(url, token, name=f"m{i}", authority_key=ed25519_public_key(authority))
    w = {"v": np.zeros(length, np.float32)}
    step = rng.uniform(-0.01, 0.01, length).astype(np.float32)
    model = FunctionModel(
        lambda w=w: w["v"],
        lambda v, w=w: w.__setitem__("v", np.array(v, np.float32)),
        num_weights=length,
    )

    def train(_: object, w: dict[str, Any] = w, step: Any = step) -> int:
        np.add(w["v"], step, out=w["v"])
        return 1

    return Client(url, ident, model, train, lambda m: EvalSums(8, 10, 2.5), task_id=task)


def measure(length: int, n: int, work: Path, database_url: str | None) -> dict[str, Any]:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SECAGG_DATABASE_URL": database_url or f"sqlite:///{work / 'memory.db'}",
        "SECAGG_ADMIN_TOKEN": ADMIN,
        "SECAGG_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "secagg.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=(work / "server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    pid = server.pid
    try:
        admin = httpx.Client(
            base_url=url, timeout=300, headers={"authorization": f"Bearer {ADMIN}"}
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if admin.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        started_kib = _status_kib(pid, "VmRSS")
        created = admin.post(
            "/v1/admin/tasks",
            json={
                "name": "memory",
                "vector_length": length,
                "rounds": 2,
                "clients_per_round": n,
                "min_clients": n,
                "dropout_rate": 0.0,
                "corrupt_rate": 0.05,
                "clip": 1.0,
                "scale": 1024.0,
                "max_weight": 100,
                "deadlines": {"R0": 600, "R1": 300, "R2": 600, "R3": 300, "R4": 600},
            },
        )
        created.raise_for_status()
        task = int(created.json()["id"])
        rng = np.random.default_rng(0)  # model data, not secrets
        authority = SystemRandom().random_bytes(32)  # this process plays the task authority
        clients = [_make_client(url, admin, task, i, length, authority, rng) for i in range(n)]
        upload_roster(
            admin, task, authority, [(c.client_id, c.identity.public_key) for c in clients]
        )

        baseline_kib = _wait_quiet(pid)
        phases: dict[str, dict[str, Any]] = {}

        # Phase 1: one whole round, from check-in to the stored new version.
        _reset_peak(pid)
        phase_start = _status_kib(pid, "VmRSS")
        outcomes: list[Any] = []
        t0 = time.perf_counter()
        with _Sampler(pid) as sampler:
            errors = _threads([lambda c=c: outcomes.extend(c.run(rounds=1)) for c in clients])
            while True:
                detail = admin.get(f"/v1/admin/tasks/{task}").json()
                rounds = detail["rounds_detail"]
                if rounds and rounds[0]["status"] != "running":
                    break
                time.sleep(0.05)
        phases["round"] = {
            "peak_above_baseline_bytes": (_status_kib(pid, "VmHWM") - baseline_kib) * 1024,
            "peak_above_phase_start_bytes": (_status_kib(pid, "VmHWM") - phase_start) * 1024,
            "rss_after_bytes": _status_kib(pid, "VmRSS") * 1024,
            "seconds": round(time.perf_counter() - t0, 2),
            "status": rounds[0]["status"],
            "abort_reason": rounds[0]["abort_reason"],
            "client_outcomes": sorted({f"{o.state}:{o.abort_reason}" for o in outcomes}),
            "client_errors": sorted({str(e)[:300] for e in errors}),
            "stage_seconds": {
                k: round(v["seconds"], 2) for k, v in rounds[0]["stage_stats"].items()
            },
        }
        if os.environ.get("SECAGG_BENCH_TIMELINE"):
            # (seconds since the phase began, VmRSS MiB), at most ~200 points.
            step = max(1, len(sampler.samples) // 200)
            phases["round"]["timeline_mib"] = sampler.samples[::step]

        # Phase 2: every client downloads the new current model at once
        # (optionally after SECAGG_BENCH_SETTLE_S seconds of quiet).
        time.sleep(float(os.environ.get("SECAGG_BENCH_SETTLE_S", "0")))
        phase_start = _wait_quiet(pid, 0.5)
        phases["round"]["rss_before_downloads_bytes"] = phase_start * 1024
        _reset_peak(pid)
        t0 = time.perf_counter()
        got: list[int] = []

        def pull(c: Client) -> None:
            response = c._request("GET", f"/v1/tasks/{task}/models/current")
            got.append(len(response.content))

        errors = _threads([lambda c=c: pull(c) for c in clients])
        phases["downloads"] = {
            "peak_above_baseline_bytes": (_status_kib(pid, "VmHWM") - baseline_kib) * 1024,
            "peak_above_phase_start_bytes": (_status_kib(pid, "VmHWM") - phase_start) * 1024,
            "seconds": round(time.perf_counter() - t0, 2),
            "bodies": sorted(set(got)),
            "client_errors": sorted({str(e)[:300] for e in errors}),
        }
        for c in clients:
            c.close()
        model_bytes = 4 * length
        peak = max(p["peak_above_baseline_bytes"] for p in phases.values())
        budget = float(os.environ.get("SECAGG_BENCH_BUDGET", "4"))
        return {
            "length": length,
            "clients": n,
            "model_bytes": model_bytes,
            "server_started_rss_bytes": started_kib * 1024,
            "baseline_rss_bytes": baseline_kib * 1024,
            "peak_above_baseline_bytes": peak,
            "peak_over_model": round(peak / model_bytes, 2),
            "budget_over_model": budget,
            "within_budget": peak <= budget * model_bytes,
            "phases": phases,
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> int:
    length = int(os.environ.get("SECAGG_BENCH_LENGTH", str(10**7)))
    n = int(os.environ.get("SECAGG_BENCH_CLIENTS", "5"))
    with tempfile.TemporaryDirectory() as tmp:
        report = measure(length, n, Path(tmp), os.environ.get("SECAGG_BENCH_DATABASE_URL"))
    print(json.dumps(report), flush=True)
    ok = report["phases"]["round"]["status"] == "completed" and report["within_budget"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
