"""Real sockets: the failures a server restart produces are classified as retryable.

The fakes elsewhere raise httpx's exceptions themselves; here the operating
system and a real server produce them (connection refused, a connection
closed without an answer), so a change in how httpx reports them shows up.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from client_sdk.client import Client, RetryPolicy
from client_sdk.identity import Identity
from client_sdk.models import FunctionModel
from tests.sdk.fakes import https_server

# Small waits, a budget far above anything a loaded machine needs.
FAST = RetryPolicy(initial_delay_s=0.05, multiplier=2.0, max_delay_s=0.2, give_up_after_s=300)


def _client(url: str, verify: bool | str = True) -> Client:
    ident = Identity.generate().with_enrolment(3, url)
    w = np.zeros(4, np.float32)
    return Client(
        url,
        ident,
        FunctionModel(lambda: w, lambda v: None),
        lambda m: 1,
        task_id=1,
        verify=verify,
        retry=FAST,
        timeout_s=30,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_server_that_is_not_up_yet_is_waited_for(tmp_path: Path) -> None:
    port = _free_port()
    client = _client(f"http://127.0.0.1:{port}")
    result: dict[str, object] = {}

    def checkin() -> None:
        try:
            result["response"] = client._request("POST", "/v1/tasks/1/checkin")
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=checkin, daemon=True)
    thread.start()
    # Liveness signal: the client has met a refused connection and is retrying.
    _wait(lambda: client._transport.retries >= 2, 60, "the client to retry")
    assert "response" not in result and "error" not in result
    with https_server(tmp_path, ["127.0.0.1"], port, tls=False) as (_, _, hits):
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert "error" not in result, result.get("error")
        response = result["response"]
        assert isinstance(response, httpx.Response) and response.json() == {"client_id": 42}
        assert hits == ["/v1/tasks/1/checkin"]


def test_a_connection_closed_without_an_answer_is_retried(tmp_path: Path) -> None:
    with https_server(tmp_path, ["127.0.0.1"], tls=True, hangups=2) as (port, cert, hits):
        client = _client(f"https://127.0.0.1:{port}", verify=str(cert))
        response = client._request(
            "POST", "/v1/rounds/5/messages", b"\x84\x04x", "application/cbor"
        )
        assert response.json() == {"client_id": 42}
        # Two attempts cut by the server, the third answered; all reached it.
        assert hits == ["/v1/rounds/5/messages"] * 3
        assert client._transport.retries == 2
