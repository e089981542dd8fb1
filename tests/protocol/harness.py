"""A step-by-step driver: honest clients, a real ServerSession, and a seam where a
test can play a malicious server by rewriting what the clients receive."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from protocol import ClientSession, Round, ServerSession, SessionConfig, decode_message
from protocol.config import Mode
from protocol.messages import Message
from protocol.policy import SessionPolicy
from protocol.simulate import identity_secret


class Harness:
    """N honest clients and an honest server, advanced one round at a time."""

    def __init__(
        self,
        config: SessionConfig,
        seed: bytes = b"harness",
        policy: SessionPolicy | None = None,
    ) -> None:
        """``policy`` defaults to ``SessionPolicy.protocol_only()`` (protocol tests)."""
        from protocol.crypto import DeterministicRandom

        self.config = config
        policy = policy if policy is not None else SessionPolicy.protocol_only()
        self.inputs = {
            u: np.arange(config.vector_length, dtype=np.int64) * u for u in config.participants
        }
        self.clients = {
            u: ClientSession(
                config,
                u,
                self.inputs[u],
                rng=DeterministicRandom(seed + u.to_bytes(4, "big")),
                identity_key=identity_secret(u) if config.mode is Mode.ACTIVE else None,
                policy=policy,
            )
            for u in config.participants
        }
        self.server = ServerSession(config)
        self.replies: dict[int, bytes] = {}
        for u, c in self.clients.items():
            self.replies[u] = c.start()

    def to_server(self, skip: set[int] | None = None) -> None:
        """Deliver the clients' latest replies to the server."""
        for u, data in sorted(self.replies.items()):
            if skip and u in skip:
                continue
            self.server.receive(data)
        self.replies = {}

    def advance(self, skip: set[int] | None = None) -> dict[int, bytes]:
        """Deliver replies, advance the server, return its messages (undelivered)."""
        self.to_server(skip)
        return self.server.advance()

    def deliver(self, outgoing: dict[int, bytes], skip: set[int] | None = None) -> None:
        for u, data in outgoing.items():
            if skip and u in skip:
                continue
            reply = self.clients[u].receive(data)
            if reply is not None:
                self.replies[u] = reply

    def run_to(self, server_round: Round, skip: set[int] | None = None) -> dict[int, bytes]:
        """Run honestly until the server has just entered ``server_round``; return its
        messages for that round, not yet delivered."""
        out = self.advance(skip)
        while self.server.round is not server_round:
            self.deliver(out, skip)
            out = self.advance(skip)
        return out


def tamper(data: bytes, **changes: Any) -> bytes:
    """Re-encode a message with some fields replaced (a lying server)."""
    msg: Message = decode_message(data)
    return dataclasses.replace(msg, **changes).encode()
