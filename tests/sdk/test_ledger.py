"""The contribution ledger (spec §4.7, differencing), through the SDK.

A fake server (``httpx.MockTransport``) drives a real ``ServerSession`` with
the SDK client as participant 1 and four honest ``ClientSession`` peers, so
the client runs its real code path and every request it makes is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from client_sdk.client import RESUBMISSION_WARNING, Client, ClientPolicy, PolicyViolation
from client_sdk.identity import Identity
from client_sdk.ledger import ContributionLedger, LedgerError, ledger_path_for
from client_sdk.models import FunctionModel
from protocol import ClientSession, Mode, ServerSession, decode_message
from protocol.encoding import FixedPointEncoding, RoundEncoding, session_context
from protocol.messages import MessageType
from protocol.policy import SessionPolicy
from protocol.simulate import identity_secret
from protocol.testing import make_config, simulate
from tests.model_file import npy_response

URL = "http://secagg.test"
TASK = 1
ENC = RoundEncoding(FixedPointEncoding(1.0, 1024.0, 100))
N = 5


class FakeServer:
    """Honest server for one round at a time; records what the SDK client sent."""

    def __init__(self, ledger_path: Path | None) -> None:
        self.ledger_path = ledger_path
        self.requests: list[tuple[str, str]] = []
        self.posted: list[bytes] = []
        self.ledger_at_masked_input: list[bool] = []
        self.round_number = 0
        self.base_version = 1

    def new_round(self, base_version: int) -> None:
        self.round_number += 1
        self.base_version = base_version
        self.config = make_config(
            N,
            ENC.vector_length(4),
            bit_width=ENC.required_bit_width(N),
            mode=Mode.ACTIVE,
            threshold=3,
            seed=b"ledger-%d" % self.round_number,
            context=session_context(TASK, self.round_number, ENC.context()),
        )
        self.server = ServerSession(self.config)
        self.peers = {
            u: ClientSession(
                self.config,
                u,
                np.zeros(self.config.vector_length, np.int64),
                identity_key=identity_secret(u),
                policy=SessionPolicy(require_certified_identities=False),  # the server's peers
            )
            for u in range(2, N + 1)
        }
        self.pending = {u: c.start() for u, c in self.peers.items()}
        self.mailbox: list[bytes] = []

    def assignment(self) -> dict[str, Any]:
        return {
            "round_id": 100 + self.round_number,
            "task_id": TASK,
            "round_number": self.round_number,
            "base_version": self.base_version,
            "model_length": 4,
            "encoding": {
                "clip": 1.0,
                "scale": 1024.0,
                "max_weight": 100,
                "max_eval_examples": ENC.max_eval_examples,
                "max_example_loss": ENC.max_example_loss,
                "loss_scale": ENC.loss_scale,
            },
            "training_deadline_s": 600.0,
            "heartbeat_s": 1.0,
            "deadlines": {},
        }

    def _on_client_message(self, data: bytes) -> None:
        self.posted.append(data)
        if decode_message(data).TYPE is MessageType.MASKED_INPUT and self.ledger_path:
            recorded = (
                self.ledger_path.exists()
                and [URL, TASK, self.base_version]
                in json.loads(self.ledger_path.read_text())["entries"]
            )
            self.ledger_at_masked_input.append(recorded)
        self.server.receive(data, authenticated_sender=1)
        for u, msg in sorted(self.pending.items()):
            self.server.receive(msg, authenticated_sender=u)
        self.pending = {}
        for u, out in self.server.advance().items():
            if u == 1:
                self.mailbox.append(out)
            else:
                reply = self.peers[u].receive(out)
                if reply is not None:
                    self.pending[u] = reply

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if path == f"/v1/tasks/{TASK}/checkin":
            return httpx.Response(200, json=self.assignment())
        if path.startswith(f"/v1/tasks/{TASK}/models/"):
            return npy_response(np.zeros(4, np.float32), int(path.rsplit("/", 1)[1]))
        rid = f"/v1/rounds/{100 + self.round_number}"
        if path == f"{rid}/heartbeat":
            return httpx.Response(200, json={"stage": "R0"})
        if path == f"{rid}/ready":
            return httpx.Response(202, json={"status": "accepted"})
        if path == f"{rid}/session":
            return httpx.Response(200, json={"config": self.config.encode().hex(), "roster": None})
        if path == f"{rid}/outcome":
            done = {"status": "completed", "version": self.base_version + 1}
            return httpx.Response(200, json=done)
        if path.endswith("/messages") and request.method == "POST":
            self._on_client_message(request.content)
            return httpx.Response(202)
        if "/messages/" in path:
            seq = int(path.rsplit("/", 1)[1])
            if seq < len(self.mailbox):
                return httpx.Response(200, content=self.mailbox[seq])
            return httpx.Response(410, json={"error": "round_over", "detail": ""})
        return httpx.Response(404, json={"error": "not_found", "detail": path})


def _client(
    identity: Identity,
    fake: FakeServer,
    policy: ClientPolicy | None = None,
    *,
    uncertified: bool = True,
) -> Client:
    # The ledger is the subject here; the fake server relays no authority roster,
    # so certification (covered in test_authority_service.py) is opted out of.
    policy = policy or ClientPolicy()
    if uncertified:
        policy = dataclasses.replace(policy, require_certified_identities=False)
    w = {"w": np.zeros(4, np.float32)}
    client = Client(
        URL,
        identity,
        FunctionModel(lambda: w["w"].copy(), lambda v: w.__setitem__("w", np.asarray(v))),
        lambda m: 1,
        task_id=TASK,
        policy=policy,
    )
    client._http = httpx.Client(base_url=URL, transport=httpx.MockTransport(fake.handle))
    return client


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    ident = Identity(identity_secret(1), 1, URL)
    ident.save(tmp_path / "client.key")
    return Identity.load(tmp_path / "client.key")


def test_second_session_on_the_same_base_is_refused_and_nothing_is_sent(
    identity: Identity,
) -> None:
    assert identity.path is not None
    ledger_file = ledger_path_for(identity.path)
    fake = FakeServer(ledger_file)
    fake.new_round(base_version=7)
    first = _client(identity, fake).participate()
    assert first is not None and first.state == "completed"
    # Recorded, durably, before the masked input reached the server.
    assert fake.ledger_at_masked_input == [True]
    assert stat.S_IMODE(ledger_file.stat().st_mode) == 0o600
    assert ContributionLedger(ledger_file).entries() == {(URL, TASK, 7)}

    # The server aborts "for a technical reason" and offers a new session on base 7.
    # A restarted client (a new process loading its identity) still refuses it.
    fake.new_round(base_version=7)
    fake.requests.clear()
    posted_before = len(fake.posted)
    with pytest.raises(PolicyViolation, match="base version 7"):
        _client(Identity.load(identity.path), fake).participate()
    assert fake.requests == [("POST", f"/v1/tasks/{TASK}/checkin")]  # no download, no message
    assert len(fake.posted) == posted_before

    # A new base version is a new contribution.
    fake.new_round(base_version=8)
    again = _client(Identity.load(identity.path), fake).participate()
    assert again is not None and again.state == "completed"
    assert ContributionLedger(ledger_file).entries() == {(URL, TASK, 7), (URL, TASK, 8)}


def test_resubmission_only_by_explicit_opt_in_with_a_warning(
    identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeServer(None)
    fake.new_round(base_version=3)
    client = _client(identity, fake)
    assert client.participate() is not None
    fake.new_round(base_version=3)
    with pytest.raises(PolicyViolation):
        client.participate()
    with caplog.at_level(logging.WARNING, logger="secagg.client"):
        lax = _client(identity, fake, ClientPolicy(allow_resubmission_on_same_base=True))
        outcome = lax.participate()
    assert outcome is not None and outcome.state == "completed"
    assert sum(RESUBMISSION_WARNING in r.getMessage() for r in caplog.records) >= 2


def test_semi_honest_opt_in_logs_what_it_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    ident = Identity(identity_secret(1), 1, URL)
    with caplog.at_level(logging.WARNING, logger="secagg.client"):
        _client(ident, FakeServer(None), ClientPolicy(allow_semi_honest=True), uncertified=False)
    assert any("substitutes keys" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="secagg.client"):
        _client(ident, FakeServer(None), uncertified=False)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="secagg.client"):
        _client(ident, FakeServer(None))  # the certification opt-out is logged too
    assert any("without a pinned task authority" in r.getMessage() for r in caplog.records)


def test_ledger_file_errors_are_typed(tmp_path: Path) -> None:
    bad = tmp_path / "x.ledger"
    bad.write_text("{}")
    with pytest.raises(LedgerError, match="not a secagg contribution ledger"):
        ContributionLedger(bad)
    bad.write_text(json.dumps({"format": "secagg-ledger-v1", "entries": [["s", "1", 2]]}))
    with pytest.raises(LedgerError):
        ContributionLedger(bad)
    memory = ContributionLedger()
    memory.record(URL + "/", 1, 2)
    assert memory.contains(URL, 1, 2) and not memory.contains(URL, 1, 3)


def test_without_the_ledger_two_sums_reveal_one_input_by_subtraction() -> None:
    """Why the ledger: the same inputs summed over S and S minus one client."""
    x = {u: np.arange(8, dtype=np.int64) * (u + 3) - 20 for u in range(1, 7)}
    lax = SessionPolicy.protocol_only()
    assert lax.min_participants == 2  # the simulator runs any configuration
    big = make_config(6, 8, mode=Mode.ACTIVE, threshold=4, seed=b"first")
    small = make_config(5, 8, mode=Mode.ACTIVE, threshold=4, seed=b"second")
    first = simulate(big, x).aggregate
    second = simulate(small, {u: x[u] for u in range(1, 6)}).aggregate
    assert np.array_equal(first - second, x[6])


def test_run_declines_a_round_on_a_base_it_contributed_to_and_carries_on(
    identity: Identity,
) -> None:
    """run() does not die on the ledger's refusal: the round is declined, nothing sent."""
    fake = FakeServer(None)
    fake.new_round(base_version=5)
    client = _client(identity, fake)
    assert client.participate() is not None  # contributed on base 5
    fake.new_round(base_version=5)  # e.g. an honest server that lost track after a crash
    fake.requests.clear()
    posted_before = len(fake.posted)
    outcomes = client.run(rounds=1)
    assert [(o.state, o.abort_reason) for o in outcomes] == [("declined", "already_contributed")]
    assert fake.requests == [("POST", f"/v1/tasks/{TASK}/checkin")]  # no download, no message
    assert len(fake.posted) == posted_before
    fake.new_round(base_version=6)  # the loop goes on: a new base is a new contribution
    (after,) = client.run(rounds=1)
    assert after.state == "completed"
