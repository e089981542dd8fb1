"""The in-memory reference driver: N real ClientSessions against one real ServerSession.

Every message goes through its canonical encoding, exactly as it would on
the network; dropouts are scripted per client and round. This is what the
property tests, the test-vector generator and ``secagg bench`` run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from protocol._state import Round
from protocol.client import ClientSession
from protocol.config import GraphKind, Mode, SessionConfig
from protocol.crypto import DeterministicRandom, RandomSource, SystemRandom, ed25519_public_key
from protocol.encoding import from_modular
from protocol.errors import ConfigError, RoundAborted
from protocol.policy import SessionPolicy
from protocol.server import AggregateResult, ServerSession

# The round in which a client stops: it never sends that round's message (nor later ones).
DROP_ROUNDS = (
    Round.R0_ADVERTISE_KEYS,
    Round.R1_SHARE_KEYS,
    Round.R2_MASKED_INPUT_COLLECTION,
    Round.R3_CONSISTENCY_CHECK,
    Round.R4_UNMASKING,
)
_ORDER = {r: i for i, r in enumerate(DROP_ROUNDS)}


@dataclass(frozen=True)
class TranscriptEntry:
    """One message on the (simulated) wire."""

    round: Round
    direction: Literal["to_server", "to_client"]
    client: int
    data: bytes


@dataclass
class SimulationResult:
    """Outcome of a simulated session.

    Attributes:
        aggregate: the unmasked sum as signed integers (centred lift mod 2^b).
        result: the server's raw result (unsigned words, survivor set, ...).
        client_seconds: per client, time spent inside its ClientSession.
        server_seconds: time spent inside the ServerSession.
        bytes_sent / bytes_received: per client, bytes of protocol messages.
        transcript: every message, if recording was requested.
    """

    aggregate: npt.NDArray[np.int64]
    result: AggregateResult
    client_seconds: dict[int, float]
    server_seconds: float
    bytes_sent: dict[int, int]
    bytes_received: dict[int, int]
    transcript: list[TranscriptEntry] = field(default_factory=list)

    @property
    def survivors(self) -> tuple[int, ...]:
        return self.result.survivors


SIMULATION_IDENTITY_SEED = b"secagg-simulation-identity"


def identity_secret(client: int, seed: bytes = SIMULATION_IDENTITY_SEED) -> bytes:
    """Deterministic Ed25519 identity secret of a simulated client (tests and vectors only)."""
    return DeterministicRandom(seed + b"/" + client.to_bytes(4, "big")).random_bytes(32)


def make_config(
    num_clients: int,
    vector_length: int,
    *,
    bit_width: int = 32,
    threshold: int | None = None,
    graph: GraphKind | str = GraphKind.COMPLETE,
    degree: int = 0,
    mode: Mode | str = Mode.SEMI_HONEST,
    seed: bytes = b"secagg-simulation",
    context: bytes = b"",
) -> SessionConfig:
    """A configuration for clients ``1..num_clients`` with simulation identity keys.

    ``threshold`` defaults to a strict majority of the neighbourhood.
    """
    graph = GraphKind(graph)
    mode = Mode(mode)
    participants = tuple(range(1, num_clients + 1))
    k = num_clients - 1 if graph is GraphKind.COMPLETE else degree
    t = threshold if threshold is not None else k // 2 + 1
    keys: tuple[bytes, ...] = ()
    if mode is Mode.ACTIVE:
        keys = tuple(ed25519_public_key(identity_secret(u)) for u in participants)
    nonce = DeterministicRandom(seed + b"/nonce").random_bytes(32)
    return SessionConfig(
        participants=participants,
        threshold=t,
        vector_length=vector_length,
        bit_width=bit_width,
        nonce=nonce,
        mode=mode,
        graph=graph,
        degree=k if graph is GraphKind.HARARY else 0,
        identity_keys=keys,
        context=context,
    )


def simulate(
    config: SessionConfig,
    inputs: Mapping[int, npt.NDArray[np.integer]] | Sequence[npt.NDArray[np.integer]],
    *,
    dropouts: Mapping[int, Round] | None = None,
    seed: bytes | None = None,
    identity_keys: Mapping[int, bytes] | None = None,
    record: bool = False,
    policy: SessionPolicy | None = None,
) -> SimulationResult:
    """Run one session in memory.

    Args:
        config: the session configuration.
        inputs: integer vectors, keyed by client id or in participant order.
        dropouts: client id -> the round whose message it never sends.
        seed: if given, every party's randomness is deterministic (test vectors);
            otherwise the OS CSPRNG is used.
        identity_keys: active mode: Ed25519 secrets by client; default:
            :func:`identity_secret`, matching :func:`make_config`.
        record: keep every message in ``transcript``.
        policy: every client's policy; by default ``SessionPolicy.protocol_only()``
            (the reference harness runs any configuration).

    Returns:
        The result; ``aggregate`` equals the sum of the survivors' inputs mod 2^b.

    Raises:
        RoundAborted: the session aborted (e.g. too many dropouts).
    """
    parts = config.participants
    by_id: dict[int, npt.NDArray[np.integer]] = (
        dict(inputs) if isinstance(inputs, Mapping) else dict(zip(parts, inputs, strict=True))
    )
    if set(by_id) != set(parts):
        raise ConfigError("inputs must be given for exactly the participants")
    drops = dict(dropouts or {})
    for u, r in drops.items():
        if u not in parts or r not in _ORDER:
            raise ConfigError(f"bad dropout {u}: {r}")

    def rng_for(u: int) -> RandomSource:
        if seed is None:
            return SystemRandom()
        return DeterministicRandom(seed + b"/client/" + u.to_bytes(4, "big"))

    transcript: list[TranscriptEntry] = []
    client_s = dict.fromkeys(parts, 0.0)
    sent = dict.fromkeys(parts, 0)
    recv = dict.fromkeys(parts, 0)
    server_s = 0.0

    clients: dict[int, ClientSession] = {}
    for u in parts:
        ident = None
        if config.mode is Mode.ACTIVE:
            ident = (identity_keys or {}).get(u) or identity_secret(u)
        t0 = time.perf_counter()
        clients[u] = ClientSession(
            config,
            u,
            by_id[u],
            rng=rng_for(u),
            identity_key=ident,
            policy=policy or SessionPolicy.protocol_only(),
        )
        client_s[u] += time.perf_counter() - t0

    server = ServerSession(config)

    def deliver_to_server(u: int, data: bytes) -> None:
        nonlocal server_s
        sent[u] += len(data)
        if record:
            transcript.append(TranscriptEntry(server.round, "to_server", u, data))
        t0 = time.perf_counter()
        server.receive(data)
        server_s += time.perf_counter() - t0

    def drops_in(u: int, r: Round) -> bool:
        return u in drops and _ORDER[drops[u]] <= _ORDER[r]

    # Round 0: every client that has not dropped advertises its keys.
    for u in parts:
        if drops_in(u, Round.R0_ADVERTISE_KEYS):
            continue
        t0 = time.perf_counter()
        data = clients[u].start()
        client_s[u] += time.perf_counter() - t0
        deliver_to_server(u, data)

    while server.round not in (Round.COMPLETED, Round.ABORTED):
        closing = Round(server.round)
        t0 = time.perf_counter()
        outgoing = server.advance()
        server_s += time.perf_counter() - t0
        next_round = Round(server.round)  # re-read: advance() moved it
        for u, data in outgoing.items():
            recv[u] += len(data)
            if record:
                transcript.append(TranscriptEntry(next_round, "to_client", u, data))
            # A client is gone from the round it drops in; an Abort closing round
            # r still reaches those that drop only later.
            if drops_in(u, closing if next_round is Round.ABORTED else next_round):
                continue
            t0 = time.perf_counter()
            reply = clients[u].receive(data)
            client_s[u] += time.perf_counter() - t0
            if reply is not None:
                deliver_to_server(u, reply)

    if server.round is Round.ABORTED:
        assert server.abort_reason is not None
        raise RoundAborted(server.abort_reason, server.abort_detail)
    result = server.result
    return SimulationResult(
        aggregate=from_modular(result.aggregate, config.bit_width),
        result=result,
        client_seconds=client_s,
        server_seconds=server_s,
        bytes_sent=sent,
        bytes_received=recv,
        transcript=transcript,
    )
