"""The SDK's retrying transport: what is retried, how long, and how each attempt is signed."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from client_sdk.client import (
    CONNECT_TIMEOUT_S,
    Client,
    RequestRefused,
    RetryPolicy,
    ServerUnreachable,
    Stopped,
)
from client_sdk.transport import STOP_POLL_S
from secagg_http.signing import HEADER_NONCE, HEADER_TIMESTAMP
from tests.sdk.fakes import EPOCH, MaxJitter, identity, make_client, refused, signature_ok


def ok() -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def failing(
    n: int, exc: type[httpx.TransportError], then: httpx.Response | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    """A handler raising ``exc`` for the first ``n`` requests, then answering ``then``."""
    count = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        count["n"] += 1
        if count["n"] <= n:
            raise exc("connection refused", request=request)
        return then if then is not None else ok()

    return handler


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
        httpx.PoolTimeout,
    ],
)
def test_connection_loss_is_retried_until_the_server_answers(
    exc: type[httpx.TransportError],
) -> None:
    client, server, fake = make_client(failing(3, exc))
    response = client._request("POST", "/v1/tasks/1/checkin")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert len(server.requests) == 4
    # Full jitter drawn at its top (MaxJitter): the waits are the caps, doubling.
    assert fake.sleeps == [0.5, 1.0, 2.0]
    assert client._transport.retries == 3


def test_every_attempt_is_signed_afresh_with_a_new_nonce_and_timestamp() -> None:
    ident = identity()
    client, server, _ = make_client(failing(4, httpx.ConnectError), ident=ident)
    body = b"\x85\x00masked-bytes"
    client._request("POST", "/v1/rounds/3/messages", body, "application/cbor")
    assert len(server.requests) == 5
    nonces = [r.headers[HEADER_NONCE] for r in server.requests]
    assert len(set(nonces)) == 5
    stamps = [int(r.headers[HEADER_TIMESTAMP]) for r in server.requests]
    # The signed time follows the (fake) clock: 0.5+1+2+4 s of waits.
    assert stamps[0] == int(EPOCH) and stamps[-1] == int(EPOCH + 7.5)
    # The same bytes every time, and every signature verifies over them.
    assert all(r.body == body for r in server.requests)
    assert all(r.headers["content-type"] == "application/cbor" for r in server.requests)
    assert all(signature_ok(ident, r) for r in server.requests)


def test_gives_up_with_server_unreachable_after_the_time_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RetryPolicy(initial_delay_s=1.0, multiplier=2.0, max_delay_s=8.0, give_up_after_s=60)
    client, server, fake = make_client(failing(10**6, httpx.ConnectError), retry=policy)
    caplog.set_level(logging.INFO, logger="secagg.client")
    with pytest.raises(ServerUnreachable) as info:
        client._request("GET", "/v1/rounds/3/messages/0")
    # Waits 1, 2, 4, 8, 8, ... until 60 s have passed; the last wait is cut so
    # that a final attempt is made exactly at the budget, then it gives up.
    assert fake.sleeps[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert max(fake.sleeps) <= 8.0
    assert fake.now == pytest.approx(60.0)
    attempts = len(server.requests)
    assert attempts == len(fake.sleeps) + 1 == 11
    message = str(info.value)
    assert "cannot reach https://server.test" in message
    assert f"{attempts} attempt(s) over 60.0 s" in message
    assert "ConnectError" in message
    retry_lines = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retry_lines) == attempts - 1 and all(r.levelno == logging.INFO for r in retry_lines)
    assert "attempt 1 failed, retrying in 1.0 s" in retry_lines[0].getMessage()
    give_up = [r for r in caplog.records if "giving up" in r.getMessage()]
    assert len(give_up) == 1 and give_up[0].levelno == logging.WARNING


def test_a_single_attempt_policy_does_not_wait() -> None:
    client, server, fake = make_client(failing(1, httpx.ConnectError), retry=RetryPolicy.never())
    with pytest.raises(ServerUnreachable, match="1 attempt"):
        client._request("POST", "/v1/tasks/1/checkin")
    assert len(server.requests) == 1 and fake.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried(status: int) -> None:
    answers = [httpx.Response(status, text="upstream down"), refused(status, "internal"), ok()]

    client, server, fake = make_client(lambda r: answers.pop(0))
    assert client._request("POST", "/v1/rounds/3/ready").status_code == 200
    assert len(server.requests) == 3 and fake.sleeps == [0.5, 1.0]


def test_persistent_5xx_gives_up_naming_the_status() -> None:
    policy = RetryPolicy(give_up_after_s=5.0)
    client, server, fake = make_client(lambda r: refused(500, "internal_error"), retry=policy)
    with pytest.raises(ServerUnreachable, match=r"no usable answer from .*HTTP 500 internal_error"):
        client._request("POST", "/v1/tasks/1/checkin")
    assert fake.now == pytest.approx(5.0) and len(server.requests) > 2


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_on_429_and_503(status: int) -> None:
    answers = [
        httpx.Response(status, headers={"retry-after": "7"}, json={"error": "busy"}),
        # An HTTP date: the wall clock is EPOCH (08:00:00) + 7 s by then, so 12 s ahead.
        httpx.Response(
            status,
            headers={"retry-after": "Fri, 15 Jan 2027 08:00:19 GMT"},
            json={"error": "busy"},
        ),
        ok(),
    ]
    client, server, fake = make_client(lambda r: answers.pop(0))
    assert client._request("GET", "/v1/rounds/3/session").status_code == 200
    assert fake.sleeps == [7.0, pytest.approx(12.0)]
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (401, "bad_signature"),
        (403, "forbidden"),
        (404, "unknown_task"),
        (409, "wrong_round"),
        (413, "too_large"),
        (422, "invalid"),
    ],
)
def test_4xx_is_not_retried_and_is_typed(status: int, code: str) -> None:
    client, server, fake = make_client(lambda r: refused(status, code, "because"))
    with pytest.raises(RequestRefused) as info:
        client._request("POST", "/v1/tasks/1/checkin")
    assert (info.value.status, info.value.code, info.value.detail) == (status, code, "because")
    assert len(server.requests) == 1 and fake.sleeps == []


def test_a_4xx_without_a_json_body_is_still_typed() -> None:
    client, _, _ = make_client(lambda r: httpx.Response(403, text="<html>nope</html>"))
    with pytest.raises(RequestRefused) as info:
        client._request("GET", "/v1/tasks/1/models/1")
    assert (info.value.status, info.value.code) == (403, "http_error")
    assert "nope" in info.value.detail


def test_410_round_over_is_returned_to_the_round_code() -> None:
    client, _, _ = make_client(lambda r: refused(410, "round_over"))
    assert client._request("GET", "/v1/rounds/3/messages/2").status_code == 410


def test_stop_interrupts_the_wait_between_attempts() -> None:
    client, server, fake = make_client(failing(10**6, httpx.ConnectError))
    client._transport.stop = lambda: fake.now >= 1.2
    with pytest.raises(Stopped):
        client._request("POST", "/v1/tasks/1/checkin")
    # Waits are sliced so that stop() is asked every STOP_POLL_S at most.
    assert max(fake.sleeps) <= STOP_POLL_S
    assert fake.now < 1.2 + STOP_POLL_S + 1e-9
    assert len(server.requests) == 2  # 0.5 s wait, then stopped inside the 1.0 s wait


def test_retry_policy_caps_and_validation() -> None:
    policy = RetryPolicy(initial_delay_s=0.5, multiplier=3.0, max_delay_s=10.0)
    assert [policy.cap(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert policy.cap(10_000) == 10.0  # no overflow far out
    rng = random.Random(1)
    draws = [policy.delay(3, rng) for _ in range(2000)]
    assert min(draws) >= 0.0 and max(draws) <= 4.5
    assert min(draws) < 0.5 and max(draws) > 4.0  # full jitter spans the range
    assert MaxJitter().uniform(0, 3) == 3
    for bad in (
        {"initial_delay_s": 0.0},
        {"multiplier": 0.5},
        {"max_delay_s": 0.1},
        {"give_up_after_s": -1.0},
        {"give_up_after_s": float("inf")},
    ):
        with pytest.raises(ValueError, match="RetryPolicy"):
            RetryPolicy(**bad)


def test_bytes_are_counted_per_attempt() -> None:
    answer = httpx.Response(200, content=b"x" * 10)
    client, _, _ = make_client(failing(1, httpx.ConnectError, answer))
    client._request("POST", "/v1/rounds/3/messages", b"y" * 7)
    # The failed attempt never reached the server: one body counted each way.
    assert (client._transport.bytes_sent, client._transport.bytes_received) == (7, 10)


def test_connecting_is_bounded_apart_from_the_long_poll_timeout() -> None:
    ident = identity()
    model = [np.zeros(2, np.float32)]
    slow = Client("http://127.0.0.1:9", ident, model, lambda m: 1, task_id=1, timeout_s=60)
    assert (slow._http.timeout.connect, slow._http.timeout.read) == (CONNECT_TIMEOUT_S, 60)
    fast = Client("http://127.0.0.1:9", ident, model, lambda m: 1, task_id=1, timeout_s=5)
    assert (fast._http.timeout.connect, fast._http.timeout.read) == (5, 5)
