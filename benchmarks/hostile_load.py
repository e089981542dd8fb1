"""``/healthz`` latency and server memory while hostile clients attack a real ``secagg serve``.

A ``secagg serve`` process (plain HTTP on loopback, SQLite) is attacked for
``duration`` seconds, each attack from its own loopback address, while a
prober process on 127.0.0.1 opens a fresh connection to ``/healthz`` every
50 ms:

* 127.0.0.2 holds half-open connections (a request head that never ends)
  beyond the per-host cap, reopening each one the server closes;
* 127.0.0.3 sends unauthenticated chunked uploads of 600 MiB each;
* 127.0.0.4 sends requests with out-of-range integers in headers and paths;
* two enrolled clients selected for a round send worst-case CBOR bodies
  (the map-key bomb, deep nesting, floods of tiny items) as protocol messages.

Prints one JSON object: probe latency percentiles, failures, server RSS before,
peak and after, and what each attacker achieved. ``run`` is also what
``tests/server/test_hostile_load.py`` asserts on.

Usage: ``python -m benchmarks.hostile_load [--duration 20]``
"""

from __future__ import annotations

import argparse
import contextlib
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

from client_sdk.client import enrol
from client_sdk.identity import Identity
from secagg_http.signing import CBOR_MEDIA_TYPE, sign_request

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "hostile-admin"
PER_IP = 64
HEADER_TIMEOUT_S = 3.0
UPLOAD = 600 << 20
MIB = 1 << 20


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_server(work: Path, **env_extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {
        **os.environ,
        "SECAGG_DATABASE_URL": f"sqlite:///{work / 'secagg.db'}",
        "SECAGG_ADMIN_TOKEN": ADMIN,
        "SECAGG_LONG_POLL_S": "5",
        "SECAGG_LOG_LEVEL": "warning",
        "SECAGG_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "SECAGG_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        **env_extra,
    }
    log = (work / "server.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "secagg.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not start: " + (work / "server.log").read_text())


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _signed(
    ident: Identity, method: str, path: str, body: bytes = b"", **extra: str
) -> dict[str, str]:
    assert ident.client_id is not None
    stamp, nonce = int(time.time()), os.urandom(16).hex()
    return {
        **sign_request(ident.secret, ident.client_id, method, path, stamp, nonce, body),
        **extra,
    }


# Protocol-message bodies that used to stall a decoder, or that push it to its limits.
WORST_BODIES: list[bytes] = [
    b"\xa1" * 24 + b"\x00" * 25,  # maps nested as map keys: 2^24 work to re-encode
    b"\xa1" * (MIB // 2) + b"\x00" * (MIB // 2),
    b"\x81" * MIB,
    b"\x9a\x00\x10\x00\x00" + b"\x80" * MIB,
    b"\x9a\x00\x10\x00\x00" + b"\x00" * MIB,
    b"\x9a\x00\x05\x55\x55" + b"\x82\x00\x00" * 0x55555,
    b"\x84\x04" + b"\x9a\x00\x10\x00\x00" + b"\x00" * MIB,
]


class Attack:
    """Shared counters of the attack threads."""

    def __init__(self, url: str, duration_s: float) -> None:
        self.url = url
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.stop_at = time.monotonic() + duration_s
        self.stats: dict[str, Any] = {
            "half_open_opened": 0,
            "half_open_closed_by_server": 0,
            "half_open_refused_over_cap": 0,
            "half_open_max_held": 0,
            "uploads": 0,
            "upload_max_bytes_sent": 0,
            "upload_statuses": [],
            "cbor_bodies_sent": 0,
            "cbor_statuses": {},
            "bad_header_requests": 0,
            "bad_header_5xx": 0,
            "errors": [],
        }
        self.lock = threading.Lock()

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    def _connect(self, source: str) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout=10, source_address=(source, 0)
        )

    # 127.0.0.2: half-open connections beyond the per-host cap.
    def half_open(self) -> None:
        held: list[socket.socket] = []
        try:
            while self.running():
                while len(held) < PER_IP + 16 and self.running():
                    try:
                        sock = self._connect("127.0.0.2")
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
                        sock.setblocking(False)
                        held.append(sock)
                        with self.lock:
                            self.stats["half_open_opened"] += 1
                    except OSError:
                        break
                alive = []
                for sock in held:
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        alive.append(sock)
                        continue
                    except OSError:
                        data = b""
                    key = (
                        "half_open_refused_over_cap"
                        if b" 503 " in data
                        else "half_open_closed_by_server"
                    )
                    with self.lock:
                        self.stats[key] += 1
                    sock.close()
                held = alive
                with self.lock:
                    self.stats["half_open_max_held"] = max(
                        self.stats["half_open_max_held"], len(held)
                    )
                for sock in held:  # one more byte of the never-ending header
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
                time.sleep(0.5)
        finally:
            for sock in held:
                sock.close()

    # 127.0.0.3: unauthenticated chunked uploads of 600 MiB.
    def uploads(self, count: int = 3) -> None:
        chunk = b"%x\r\n" % MIB + b"{" * MIB + b"\r\n"
        for _ in range(count):
            if not self.running():
                break
            sent = 0
            status = b""
            try:
                with self._connect("127.0.0.3") as sock:
                    sock.sendall(
                        b"POST /v1/enrol HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                        b"transfer-encoding: chunked\r\n\r\n"
                    )
                    try:
                        while sent < UPLOAD:
                            sock.sendall(chunk)
                            sent += MIB
                    except OSError:
                        pass
                    with contextlib.suppress(OSError):
                        status = sock.recv(64).split(b"\r\n")[0]
            except OSError as exc:
                with self.lock:
                    self.stats["errors"].append(f"upload: {exc}")
            with self.lock:
                self.stats["uploads"] += 1
                self.stats["upload_max_bytes_sent"] = max(self.stats["upload_max_bytes_sent"], sent)
                self.stats["upload_statuses"].append(status.decode(errors="replace"))

    # 127.0.0.4: out-of-range integers in headers and paths.
    def bad_headers(self, ident: Identity) -> None:
        transport = httpx.HTTPTransport(local_address="127.0.0.4")
        with httpx.Client(base_url=self.url, transport=transport, timeout=10) as http:
            while self.running():
                for value in (str(10**30), "-1", "18446744073709551616", "1e9", "٣"):
                    path = "/v1/rounds/1/messages/0"
                    raw: dict[str, str | bytes] = {**_signed(ident, "GET", path)}
                    raw["x-secagg-client"] = value.encode()  # bytes: any script's digits
                    r1 = http.get(path, headers=raw)
                    raw = {**_signed(ident, "GET", path), "x-secagg-timestamp": str(10**400)}
                    r2 = http.get(path, headers=raw)
                    big = "/v1/tasks/1/models/" + "9" * 40
                    r3 = http.get(big, headers=_signed(ident, "GET", big))
                    with self.lock:
                        self.stats["bad_header_requests"] += 3
                        self.stats["bad_header_5xx"] += sum(
                            r.status_code >= 500 for r in (r1, r2, r3)
                        )

    # Two enrolled participants of a round: worst-case CBOR as protocol messages.
    def worst_cbor(self, ident: Identity, round_id: int) -> None:
        path = f"/v1/rounds/{round_id}/messages"
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while self.running():
                for body in WORST_BODIES:
                    headers = _signed(
                        ident, "POST", path, body, **{"content-type": CBOR_MEDIA_TYPE}
                    )
                    r = http.post(path, content=body, headers=headers)
                    with self.lock:
                        self.stats["cbor_bodies_sent"] += 1
                        key = str(r.status_code)
                        self.stats["cbor_statuses"][key] = (
                            self.stats["cbor_statuses"].get(key, 0) + 1
                        )
                    if not self.running():
                        break


COHORT = 5  # the smallest cohort a default client accepts (specs/secagg-v1.md §4.7)


def _round_for(url: str, idents: list[Identity]) -> int:
    """Create a ``len(idents)``-client task, have ``idents`` check in, report ready
    (no training) and wait for the session: the round's id, in R0."""
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as http:
        r = http.post(
            "/v1/admin/tasks",
            json={
                "name": "hostile",
                "vector_length": 8,
                "rounds": 1,
                "clients_per_round": len(idents),
                "graph": "complete",
                "deadlines": {"R0": 600},
            },
        )
        r.raise_for_status()
        task = r.json()["id"]
    ids: list[int] = []

    def checkin(ident: Identity) -> None:
        path = f"/v1/tasks/{task}/checkin"
        for _ in range(10):
            resp = httpx.post(url + path, headers=_signed(ident, "POST", path), timeout=30)
            if resp.status_code == 200:
                rid = int(resp.json()["round_id"])
                for step, method in (("ready", "POST"), ("session", "GET")):
                    p = f"/v1/rounds/{rid}/{step}"
                    while httpx.request(
                        method, url + p, headers=_signed(ident, method, p), timeout=30
                    ).status_code not in (200, 202):
                        pass
                ids.append(rid)
                return

    threads = [threading.Thread(target=checkin, args=(i,)) for i in idents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(ids) != len(idents) or len(set(ids)) != 1:
        raise RuntimeError(f"clients were not selected together: {ids}")
    return ids[0]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _probe_process(url: str, duration_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.hostile_load",
            "--probe",
            url,
            "--duration",
            str(duration_s),
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )


def run(work: Path, duration_s: float = 20.0) -> dict[str, Any]:
    # The attacked round must stay in R0 while the participants only attack (no
    # heartbeats): a liveness timeout far beyond the attack (specs/service-v1.md §4).
    proc, url = start_server(work, SECAGG_LIVENESS_TIMEOUT_S="600")
    try:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as http:
            tokens = [
                http.post("/v1/admin/tokens", json={}).json()["token"] for _ in range(COHORT + 1)
            ]
        idents = [enrol(url, t) for t in tokens]
        round_id = _round_for(url, idents[:COHORT])
        # The same probe without any attack, for comparison on a shared machine.
        baseline = _probe_process(url, min(5.0, duration_s / 2)).communicate()[0]
        base_latencies = json.loads(baseline)["latencies"]
        rss_before = rss_bytes(proc.pid)
        attack = Attack(url, duration_s)
        threads = [
            threading.Thread(target=attack.half_open, daemon=True),
            threading.Thread(target=attack.uploads, daemon=True),
            threading.Thread(target=attack.bad_headers, args=(idents[COHORT],), daemon=True),
            threading.Thread(target=attack.worst_cbor, args=(idents[0], round_id), daemon=True),
            threading.Thread(target=attack.worst_cbor, args=(idents[1], round_id), daemon=True),
        ]
        for t in threads:
            t.start()
        time.sleep(min(2.0, duration_s / 4))  # let the attack build up
        # The prober is its own process, so the attackers' threads here do not
        # delay it (they share this process's GIL).
        prober = _probe_process(url, max(1.0, attack.stop_at - time.monotonic()))
        rss_peak = rss_before
        while prober.poll() is None:
            rss_peak = max(rss_peak, rss_bytes(proc.pid))
            time.sleep(0.05)
        probed = json.loads(prober.communicate()[0])
        latencies, failures = probed["latencies"], probed["failures"]
        for t in threads:
            t.join(timeout=30)
        rss_after = rss_bytes(proc.pid)
        return {
            "benchmark": "hostile_load",
            "duration_s": duration_s,
            "probes": len(latencies),
            "probe_failures": failures[:10],
            "healthz_p50_ms": round(_percentile(latencies, 0.50) * 1e3, 1),
            "healthz_p99_ms": round(_percentile(latencies, 0.99) * 1e3, 1),
            "healthz_max_ms": round(max(latencies) * 1e3, 1),
            "healthz_no_attack_p50_ms": round(_percentile(base_latencies, 0.50) * 1e3, 1),
            "healthz_no_attack_p99_ms": round(_percentile(base_latencies, 0.99) * 1e3, 1),
            "rss_before_mib": round(rss_before / MIB, 1),
            "rss_peak_mib": round(rss_peak / MIB, 1),
            "rss_after_mib": round(rss_after / MIB, 1),
            "server_alive": proc.poll() is None,
            **attack.stats,
        }
    finally:
        stop_server(proc)


def probe(url: str, duration_s: float) -> dict[str, Any]:
    """GET /healthz on a fresh connection every 50 ms; latencies and failures."""
    latencies: list[float] = []
    failures: list[str] = []
    stop_at = time.monotonic() + duration_s
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        try:
            r = httpx.get(url + "/healthz", timeout=10)
            if r.status_code != 200:
                failures.append(f"status {r.status_code}")
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
        latencies.append(time.perf_counter() - start)
        time.sleep(0.05)
    return {"latencies": latencies, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--probe", metavar="URL", help="only probe URL/healthz (internal)")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.duration)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp), args.duration)))


if __name__ == "__main__":
    main()
