"""A client that stops (aborted or completed) holds no secret any more (§12, §14.1).

The attacker here is whoever later gets hold of the ``ClientSession`` object
(a heap dump, a debugger, a bug that logs or pickles it): we walk everything
reachable from the object and assert that none of the client's secrets can be
read off it — the two X25519 secrets and the self-mask seed (the first 96
bytes of its randomness), the Ed25519 identity secret, the randomness source
itself (which would regenerate all of them), the input vector and the shares
it holds of its neighbours' secrets. Each scan is shown able to fail on a
session that is still running.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol import AbortReason
from protocol._state import TERMINAL, Round
from protocol.client import SECRET_FIELDS, ClientSession
from protocol.config import Mode, SessionConfig
from protocol.crypto import DeterministicRandom, SystemRandom, X25519Secret
from protocol.messages import Abort
from protocol.policy import SessionPolicy
from protocol.server import ServerSession
from protocol.simulate import identity_secret, make_config
from protocol.testing.vectors import FORMAT, replay_vector

# These tests are about the authority check / erasure, not the policy (§4.7).
PROTOCOL_ONLY = SessionPolicy.protocol_only()

VECTOR_DIR = Path(__file__).resolve().parents[2] / "specs" / "vectors"
TRANSCRIPTS = sorted(
    p for p in VECTOR_DIR.glob("*.json") if json.loads(p.read_text())["format"] == FORMAT
)
BAD = [p for p in TRANSCRIPTS if p.name.startswith("bad_")]


def _reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through attributes and containers."""
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type) or callable(obj):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, str | bytes | bytearray | memoryview | int | float | np.ndarray):
            continue
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            for name in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, name):
                    stack.append(getattr(obj, name))


def _secrets(rng_seed: bytes, identity: bytes | None) -> dict[str, bytes]:
    stream = DeterministicRandom(rng_seed).random_bytes(96)
    found = {
        "cipher secret": stream[:32],
        "mask secret": stream[32:64],
        "self-mask seed": stream[64:96],
        "rng seed": rng_seed,
    }
    if identity is not None:
        found["identity secret"] = identity
    return found


def leaks(client: ClientSession, secrets: dict[str, bytes]) -> list[str]:
    """What an attacker holding ``client`` could still read: names of secrets found."""
    out: set[str] = set()
    for obj in _reachable(client):
        if isinstance(obj, X25519Secret):
            out.add("an X25519 secret key object")
        elif hasattr(obj, "random_bytes") or isinstance(obj, SystemRandom):
            out.add(f"a randomness source ({type(obj).__name__})")
        elif isinstance(obj, np.ndarray):
            out.add("an integer array (the input)")
        elif isinstance(obj, bytes | bytearray | memoryview):
            data = bytes(obj)
            out.update(name for name, secret in secrets.items() if secret in data)
    held = [f for f in ("_held_mask_key_shares", "_held_self_mask_shares") if getattr(client, f)]
    out.update(f"shares in {f}" for f in held)
    return sorted(out)


def _assert_erased(client: ClientSession, secrets: dict[str, bytes]) -> None:
    assert client.round in TERMINAL
    for name in SECRET_FIELDS:
        value = getattr(client, name)
        assert value is None or len(value) == 0, f"{name} survives in {client.round}"
    assert leaks(client, secrets) == []


def _vector_secrets(vector: dict[str, Any], u: int) -> dict[str, bytes]:
    entry = next(c for c in vector["clients"] if c["id"] == u)
    ident = entry.get("identity_secret")
    return _secrets(bytes.fromhex(entry["rng_seed"]), bytes.fromhex(ident) if ident else None)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_every_stopped_client_of_every_vector_holds_no_secret(path: Path) -> None:
    vector = json.loads(path.read_text())
    sessions = replay_vector(vector)
    stopped = [u for u, c in sessions.clients.items() if c.round in TERMINAL]
    if path in BAD and vector["party"].startswith("client"):
        # The refusing client: ABORTED, or COMPLETED after a refused late message.
        assert int(vector["party"].split()[1]) in stopped
    for u in stopped:
        _assert_erased(sessions.clients[u], _vector_secrets(vector, u))


def _config(mode: Mode) -> SessionConfig:
    return make_config(5, 4, mode=mode, threshold=3, seed=b"erasure-" + mode.value.encode())


def _run_until(config: SessionConfig, target: Round) -> dict[int, ClientSession]:
    """An honest session, stopped as soon as client 1 is in ``target``."""
    clients = {
        u: ClientSession(
            config,
            u,
            np.arange(4, dtype=np.int64) * u,
            rng=DeterministicRandom(b"erasure/%d" % u),
            identity_key=identity_secret(u) if config.mode is Mode.ACTIVE else None,
            policy=PROTOCOL_ONLY,
        )
        for u in config.participants
    }
    server = ServerSession(config)
    for c in clients.values():
        server.receive(c.start())
    while clients[1].round is not target:
        assert server.round not in TERMINAL
        for u, data in server.advance().items():
            reply = clients[u].receive(data)
            if reply is not None:
                server.receive(reply)
    return clients


def _secrets_of(u: int, config: SessionConfig) -> dict[str, bytes]:
    ident = identity_secret(u) if config.mode is Mode.ACTIVE else None
    return _secrets(b"erasure/%d" % u, ident)


_ROUNDS = {
    Mode.SEMI_HONEST: [
        Round.R0_ADVERTISE_KEYS,
        Round.R1_SHARE_KEYS,
        Round.R2_MASKED_INPUT_COLLECTION,
    ],
    Mode.ACTIVE: [
        Round.R0_ADVERTISE_KEYS,
        Round.R1_SHARE_KEYS,
        Round.R2_MASKED_INPUT_COLLECTION,
        Round.R3_CONSISTENCY_CHECK,
    ],
}


@pytest.mark.parametrize(("mode", "rnd"), [(m, r) for m, rounds in _ROUNDS.items() for r in rounds])
def test_an_abort_message_in_any_round_erases_every_secret(mode: Mode, rnd: Round) -> None:
    config = _config(mode)
    clients = _run_until(config, rnd)
    client, secrets = clients[1], _secrets_of(1, config)
    # The scan finds what a running session legitimately holds (so it can fail).
    before = leaks(client, secrets)
    assert "a randomness source (DeterministicRandom)" in before
    assert "an X25519 secret key object" in before
    if rnd is Round.R1_SHARE_KEYS:
        assert "self-mask seed" in before and "an integer array (the input)" in before
    if rnd in (Round.R2_MASKED_INPUT_COLLECTION, Round.R3_CONSISTENCY_CHECK):
        assert any(leak.startswith("shares in") for leak in before)
    if mode is Mode.ACTIVE:
        assert "identity secret" in before
    assert client.receive(Abort(config.session_id, AbortReason.CANCELLED).encode()) is None
    assert (client.round, client.abort_reason) == (Round.ABORTED, AbortReason.CANCELLED)
    _assert_erased(client, secrets)


@pytest.mark.parametrize("mode", list(Mode))
def test_a_completed_client_holds_no_secret(mode: Mode) -> None:
    config = _config(mode)
    clients = _run_until(config, Round.COMPLETED)
    _assert_erased(clients[1], _secrets_of(1, config))
    # An Abort after completion changes nothing (§14.1 rule 5).
    assert clients[1].receive(Abort(config.session_id, AbortReason.CANCELLED).encode()) is None
    assert clients[1].round is Round.COMPLETED
