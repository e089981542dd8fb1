"""``Client.run()``: what ends the loop, what leads to the next check-in, and what it logs.

The server side is scripted per check-in; a round itself is a stand-in for
``Client._round`` that posts protocol messages through the real signed
transport, so the loop, the retries and the per-round log line are the real ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from client_sdk.client import (
    Client,
    RequestRefused,
    RetryPolicy,
    RoundOutcome,
    ServerUnreachable,
)
from tests.sdk.fakes import TASK, FakeClock, make_client, refused

CHECKIN = f"/v1/tasks/{TASK}/checkin"


def finished() -> httpx.Response:
    return refused(410, "task_finished", "task 1 completed its 3 rounds", status="completed")


def paused() -> httpx.Response:
    return refused(409, "task_paused", "paused by the administrator")


# The first bytes of protocol messages: CBOR array head, then the message type.
ADVERTISE_KEYS, MASKED_INPUT = b"\x84\x00keys", b"\x84\x04masked"


def assignment(number: int) -> httpx.Response:
    return httpx.Response(200, json={"round_id": 100 + number, "round_number": number})


class Server:
    """Answers check-ins from a script; round requests from ``on_round``."""

    def __init__(
        self,
        checkins: list[httpx.Response | type[httpx.TransportError]],
        on_round: Callable[[httpx.Request], httpx.Response] | None = None,
        fake: FakeClock | None = None,
        checkin_s: float = 0.0,
    ) -> None:
        self.script = list(checkins)
        self.on_round = on_round or (lambda r: httpx.Response(202, json={"status": "accepted"}))
        self.fake = fake
        self.checkin_s = checkin_s  # how long each check-in long-polls (fake time)
        self.checkins = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != CHECKIN:
            return self.on_round(request)
        self.checkins += 1
        if self.fake is not None:
            self.fake.now += self.checkin_s
        item = self.script.pop(0) if self.script else finished()
        if isinstance(item, type):
            raise item("server restarting", request=request)
        return item


def scripted_rounds(client: Client, results: list[str | RequestRefused]) -> list[int]:
    """Replace the round with one that posts R0 (and R2 when completing) and then
    returns the next scripted state, or raises the scripted refusal."""
    seen: list[int] = []

    def round_(a: dict[str, Any]) -> RoundOutcome:
        number = int(a["round_number"])
        seen.append(number)
        path = f"/v1/rounds/{a['round_id']}/messages"
        client._request("POST", path, ADVERTISE_KEYS, "application/cbor")
        result = results.pop(0)
        if isinstance(result, RequestRefused):
            client._request("POST", path, MASKED_INPUT, "application/cbor")
            raise AssertionError("the scripted refusal should have been raised")
        if result == "completed":
            client._request("POST", path, MASKED_INPUT, "application/cbor")
        reason = "deadline" if result == "aborted" else None
        return RoundOutcome(number, result, reason, 1, 2, 3.0)

    client._round = round_  # type: ignore[method-assign]
    return seen


def test_run_returns_the_outcomes_when_the_server_says_the_task_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server([httpx.Response(204), assignment(1), httpx.Response(204), assignment(2)])
    client, _, _ = make_client(server)
    seen = scripted_rounds(client, ["completed", "completed"])
    caplog.set_level(logging.INFO, logger="secagg.client")
    outcomes = client.run()
    assert [(o.round_number, o.state) for o in outcomes] == [(1, "completed"), (2, "completed")]
    assert seen == [1, 2]
    assert server.checkins == 5  # 204, round 1, 204, round 2, then 410 task_finished
    over = [r.getMessage() for r in caplog.records if "is over" in r.getMessage()]
    assert over == [
        "client 7: task 1 is over (completed): task 1 completed its 3 rounds; 2 round(s) joined"
    ]


def test_dropped_and_aborted_rounds_lead_to_the_next_checkin() -> None:
    late = RequestRefused(409, "wrong_round", "R2 is over")

    def on_round(request: httpx.Request) -> httpx.Response:
        # Round 2's masked input comes after the stage closed.
        if request.url.path == "/v1/rounds/102/messages" and request.read() == MASKED_INPUT:
            return refused(409, "wrong_round", "R2 is over")
        return httpx.Response(202, json={"status": "accepted"})

    server = Server([assignment(1), assignment(2), assignment(3), assignment(4)], on_round)
    client, _, _ = make_client(server)
    scripted_rounds(client, ["aborted", late, "dropped", "completed"])
    outcomes = client.run()
    assert [(o.round_number, o.state, o.abort_reason) for o in outcomes] == [
        (1, "aborted", "deadline"),
        (2, "dropped", "wrong_round"),
        (3, "dropped", None),
        (4, "completed", None),
    ]
    assert server.checkins == 5


def test_a_paused_task_is_checked_again_with_backoff_until_it_resumes() -> None:
    fake = FakeClock()
    with_retry_after = refused(409, "task_paused", "paused")
    with_retry_after.headers["retry-after"] = "20"
    server = Server([paused(), paused(), paused(), with_retry_after, assignment(5)], fake=fake)
    policy = RetryPolicy(initial_delay_s=2.0, multiplier=2.0, max_delay_s=5.0)
    client, _, _ = make_client(server, retry=policy, fake=fake)
    scripted_rounds(client, ["completed"])
    outcomes = client.run()
    assert [(o.round_number, o.state) for o in outcomes] == [(5, "completed")]
    # Backoff caps 2, 4, then the 5 s ceiling, then the server's Retry-After.
    assert fake.sleeps == [2.0, 4.0, 5.0, 20.0]
    assert server.checkins == 6


def test_an_unknown_task_raises() -> None:
    server = Server([refused(404, "unknown_task", "no task 1")])
    client, _, _ = make_client(server)
    with pytest.raises(RequestRefused) as info:
        client.run()
    assert (info.value.status, info.value.code) == (404, "unknown_task")
    assert server.checkins == 1


def test_a_refusal_at_checkin_is_not_mistaken_for_a_dropped_round() -> None:
    server = Server([refused(409, "already_waiting", "a check-in is pending")])
    client, _, _ = make_client(server)
    with pytest.raises(RequestRefused, match="already_waiting"):
        client.run()


def test_a_server_restart_between_rounds_is_ridden_out(caplog: pytest.LogCaptureFixture) -> None:
    down = httpx.ConnectError
    server = Server([assignment(1), down, down, httpx.ReadTimeout, assignment(2)])
    client, _, fake = make_client(server)
    scripted_rounds(client, ["completed", "completed"])
    caplog.set_level(logging.INFO, logger="secagg.client")
    outcomes = client.run()
    assert [o.state for o in outcomes] == ["completed", "completed"]
    assert fake.sleeps == [0.5, 1.0, 2.0]
    retrying = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert [m.split(": ", 2)[0] for m in retrying] == [f"POST {CHECKIN}"] * 3
    assert "ConnectError: server restarting; attempt 1 failed, retrying in 0.5 s" in retrying[0]
    assert "attempt 3 failed, retrying in 2.0 s" in retrying[2]


def test_an_outage_longer_than_the_budget_raises_server_unreachable() -> None:
    server = Server([httpx.ConnectError] * 1000)
    client, _, fake = make_client(server, retry=RetryPolicy(give_up_after_s=120.0))
    with pytest.raises(ServerUnreachable, match=r"over 120\.0 s"):
        client.run()
    assert fake.now == pytest.approx(120.0)


def test_one_info_line_per_round(caplog: pytest.LogCaptureFixture) -> None:
    server = Server([assignment(1), assignment(2)])
    client, _, _ = make_client(server)
    scripted_rounds(client, ["completed", "aborted"])
    caplog.set_level(logging.INFO, logger="secagg.client")
    client.run()
    lines = [r for r in caplog.records if " round " in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO, logging.INFO]
    # Round 1 sent R0 (4+2 B) and R2 (6+2 B); round 2 only R0. The check-in
    # answers are the bytes received (the stand-in downloads nothing).
    accepted = len(httpx.Response(202, json={"status": "accepted"}).content)
    received = len(assignment(1).content) + 2 * accepted
    assert lines[0].getMessage() == (
        "client 7: task 1 round 1 completed; stage reached R2_MASKED_INPUT_COLLECTION; "
        f"sent 14 B, received {received} B; 3.0 s"
    )
    assert (
        lines[1]
        .getMessage()
        .startswith(
            "client 7: task 1 round 2 aborted (deadline); stage reached R0_ADVERTISE_KEYS; sent 6 B"
        )
    )


def test_rounds_stop_and_idle_timeout_still_end_the_loop() -> None:
    # rounds=: returns after that many rounds, without checking in again.
    server = Server([assignment(1), assignment(2), assignment(3)])
    client, _, _ = make_client(server)
    scripted_rounds(client, ["completed", "dropped", "completed"])
    assert [o.round_number for o in client.run(rounds=2)] == [1, 2]
    assert server.checkins == 2

    # idle_timeout_s: 204s for longer than the timeout (each long poll 10 s).
    fake = FakeClock()
    idle = Server([httpx.Response(204) for _ in range(100)], fake=fake, checkin_s=10.0)
    client, _, _ = make_client(idle, fake=fake)
    assert client.run(idle_timeout_s=25.0) == []
    assert idle.checkins == 3

    # stop(): asked before each check-in, and inside the paused backoff.
    fake = FakeClock()
    stalled = Server([paused() for _ in range(100)], fake=fake)
    client, _, _ = make_client(stalled, fake=fake)
    assert client.run(stop=lambda: fake.now > 3.0) == []
    assert 3.0 < fake.now <= 3.25 and stalled.checkins == 3  # waits of 0.5, 1, 2 (cut)


def test_task_refusals_raised_untyped_by_the_round_code_are_still_understood() -> None:
    # participate() may raise the raw RequestRefused for a 409/410 it saw itself.
    fake = FakeClock()
    client, _, _ = make_client(Server([]), fake=fake)
    raised = [
        RequestRefused(409, "task_paused", "paused"),
        RequestRefused(410, "task_finished", "done"),
    ]

    def participate() -> RoundOutcome | None:
        raise raised.pop(0)

    client.participate = participate  # type: ignore[method-assign]
    assert client.run() == []
    assert raised == [] and fake.sleeps == [0.5]


def test_the_client_closes_its_connections_as_a_context_manager() -> None:
    client, _, _ = make_client(Server([]))
    with client as same:
        assert same is client and not client._http.is_closed
    assert client._http.is_closed


def test_an_outage_does_not_count_as_idle_time() -> None:
    # Check-ins long-poll 10 s each; a 60 s outage after the first round is ridden
    # out by the retries and must not fire a 25 s idle timeout on its own.
    fake = FakeClock()
    down = [httpx.ConnectError] * 12
    server = Server([assignment(1), *down, httpx.Response(204), assignment(2)], fake=fake)
    server.checkin_s = 0.0
    client, _, _ = make_client(server, fake=fake)
    scripted_rounds(client, ["completed", "completed"])
    outcomes = client.run(idle_timeout_s=25.0)
    assert fake.slept > 25.0  # the outage outlasted the idle timeout
    assert [o.round_number for o in outcomes] == [1, 2]
    assert client._transport.outage_s == pytest.approx(fake.slept)

    # The same idle timeout fires when the server answers 204s that long.
    fake = FakeClock()
    idle = Server([assignment(1), *(httpx.Response(204) for _ in range(10))], fake=fake)
    idle.checkin_s = 10.0
    client, _, _ = make_client(idle, fake=fake)
    scripted_rounds(client, ["completed"])
    assert [o.round_number for o in client.run(idle_timeout_s=25.0)] == [1]
    assert idle.checkins == 4  # the round, then 204s at 20, 30, 40 s: 30 s > 25 s idle
