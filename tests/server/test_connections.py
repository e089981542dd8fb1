"""Connection guards of ``secagg serve`` (secagg/limits.py), on an in-process uvicorn.

The attacker holds half-open connections from one loopback address
(127.0.0.2) and trickles request heads; what it achieves is measured: how many
connections the server keeps for it, whether an honest host (127.0.0.1) still
gets ``/healthz``, how long a never-ending head keeps a connection open.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from secagg.limits import ConnectionLimits, guarded_h11_protocol

PER_PEER = 4
HEADER_TIMEOUT_S = 0.5


@pytest.fixture
def guarded() -> Iterator[tuple[str, int, ConnectionLimits]]:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    limits = ConnectionLimits(
        max_connections=64, max_per_peer=PER_PEER, header_timeout_s=HEADER_TIMEOUT_S
    )
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        http=guarded_h11_protocol(limits),
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port, limits
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def _half_open(port: int, source: str = "127.0.0.2") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it said first."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return False, b""
    except OSError:
        return True, b""
    return True, data  # b"" is an orderly close; bytes before the close are a response


def test_a_host_at_its_cap_leaves_room_for_everybody_else(
    guarded: tuple[str, int, ConnectionLimits],
) -> None:
    host, port, limits = guarded
    held = [_half_open(port) for _ in range(PER_PEER)]
    try:
        deadline = time.monotonic() + 5
        while limits.open.get("127.0.0.2", 0) < PER_PEER and time.monotonic() < deadline:
            time.sleep(0.01)
        assert limits.open["127.0.0.2"] == PER_PEER
        # One more from the same host: refused on the spot with a typed 503.
        extra = _half_open(port)
        closed, said = _closed_within(extra, 5)
        extra.close()
        assert closed and said.startswith(b"HTTP/1.1 503") and b"too_many_connections" in said
        assert limits.open["127.0.0.2"] == PER_PEER  # what the attacker holds: its cap
        # An honest host is served meanwhile.
        r = httpx.get(f"http://{host}:{port}/healthz", timeout=5)
        assert r.status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_a_never_ending_request_head_is_closed_at_the_deadline(
    guarded: tuple[str, int, ConnectionLimits],
) -> None:
    _, port, _ = guarded
    sock = _half_open(port)
    started = time.monotonic()
    # Keep trickling: every byte is "progress", none of it completes the head.
    closed = False
    while not closed and time.monotonic() - started < 10:
        try:
            sock.send(b"a")
        except OSError:
            break
        closed, _ = _closed_within(sock, 0.1)
    elapsed = time.monotonic() - started
    sock.close()
    assert elapsed < HEADER_TIMEOUT_S + 3, f"connection held for {elapsed:.1f} s"
    assert elapsed >= HEADER_TIMEOUT_S * 0.8


def test_a_keep_alive_connection_cannot_trickle_its_next_head(
    guarded: tuple[str, int, ConnectionLimits],
) -> None:
    _, port, _ = guarded
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        # The next request's head starts but never ends (keep-alive is 30 s here).
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        closed, said = _closed_within(sock, 10)
        assert closed and said == b""
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_honest_requests_on_one_connection_are_not_cut(
    guarded: tuple[str, int, ConnectionLimits],
) -> None:
    host, port, _ = guarded
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as http:
        for _ in range(5):
            assert http.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT_S * 0.5)  # idle between requests: keep-alive, not head
        assert http.get("/healthz").status_code == 200
