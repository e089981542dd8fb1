"""A malicious aggregation server behind a fake HTTP transport, for the real SDK.

The SDK's :class:`~client_sdk.client.Client` talks to it exactly as to
``secagg serve`` (check-in, model download, signed CBOR messages, long
polls), but every server decision is the attacker's: the session
configuration it proposes after training, and each answer to what the client posts (a
callback such as :meth:`SubstitutingServer.on_message`). Everything the
client posts is recorded, so a test can hand it to the reconstruction oracle
or assert that nothing left the client at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from protocol import SessionConfig
from protocol.encoding import FixedPointEncoding, RoundEncoding, session_context
from tests.model_file import npy_response

TASK_ID, ROUND_ID, ROUND_NUMBER, BASE_VERSION = 1, 1, 1, 1
ENCODING = RoundEncoding(FixedPointEncoding(clip=1.0, scale=float(1 << 12), max_weight=10_000))


def round_context() -> bytes:
    """The ``context`` an honest-looking session of the fake task must carry."""
    return session_context(TASK_ID, ROUND_NUMBER, ENCODING.context())


@dataclass
class FakeServer:
    """Answers the SDK's requests; ``on_message`` plays the protocol's server side."""

    config: SessionConfig
    model: npt.NDArray[np.float32]
    on_message: Callable[[bytes], bytes | None]
    extra_assignment: dict[str, Any] = field(default_factory=dict)
    posted: list[bytes] = field(default_factory=list)
    outbox: list[bytes] = field(default_factory=list)
    checkins: int = 0

    def assignment(self) -> dict[str, Any]:
        enc = ENCODING
        return {
            "round_id": ROUND_ID,
            "task_id": TASK_ID,
            "round_number": ROUND_NUMBER,
            "base_version": BASE_VERSION,
            "mode": self.config.mode.value,
            "model_length": int(self.model.shape[0]),
            "encoding": {
                "clip": enc.update.clip,
                "scale": enc.update.scale,
                "max_weight": enc.update.max_weight,
                "max_eval_examples": enc.max_eval_examples,
                "max_example_loss": enc.max_example_loss,
                "loss_scale": enc.loss_scale,
            },
            "training_deadline_s": 600.0,
            "heartbeat_s": 1.0,
            "deadlines": {"R0": 60.0, "R1": 15.0, "R2": 30.0, "R3": 15.0, "R4": 15.0},
            **self.extra_assignment,
        }

    def session(self) -> dict[str, Any]:
        """The session 'formed' after training: the attacker's configuration."""
        return {
            "config": self.config.encode().hex(),
            "roster": self.extra_assignment.get("roster"),
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"/v1/tasks/{TASK_ID}/checkin":
            self.checkins += 1
            if self.checkins > 1:  # one round, then the task is over
                return httpx.Response(404, json={"error": "unknown_task", "detail": "done"})
            return httpx.Response(200, json=self.assignment())
        if path == f"/v1/tasks/{TASK_ID}/models/{BASE_VERSION}":
            return npy_response(self.model, BASE_VERSION)
        if path == f"/v1/rounds/{ROUND_ID}/heartbeat":
            return httpx.Response(200, json={"stage": "R0"})
        if path == f"/v1/rounds/{ROUND_ID}/ready":
            return httpx.Response(202, json={"status": "accepted"})
        if path == f"/v1/rounds/{ROUND_ID}/session":
            return httpx.Response(200, json=self.session())
        if path == f"/v1/rounds/{ROUND_ID}/outcome":
            return httpx.Response(200, json={"status": "completed", "version": BASE_VERSION + 1})
        if request.method == "POST" and path == f"/v1/rounds/{ROUND_ID}/messages":
            body = request.read()
            self.posted.append(body)
            answer = self.on_message(body)
            if answer is not None:
                self.outbox.append(answer)
            return httpx.Response(200, json={"status": "accepted"})
        match = re.fullmatch(rf"/v1/rounds/{ROUND_ID}/messages/(\d+)", path)
        if match and request.method == "GET":
            seq = int(match.group(1))
            if seq < len(self.outbox):
                return httpx.Response(200, content=self.outbox[seq])
            return httpx.Response(410, json={"error": "round_over", "detail": "no more"})
        return httpx.Response(404, json={"error": "not_found", "detail": path})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def attach(client: Any, server: FakeServer) -> None:
    """Point an SDK ``Client`` at the fake server instead of the network."""
    client._http = httpx.Client(base_url="https://malicious.invalid", transport=server.transport())
