"""Transcript test vectors: the generator (``make vectors``).

The replay checker, which other implementations can use on their own, is
:mod:`protocol.testing.vectors`; its public names are re-exported here.

A *vector* is a JSON-able dict that records one session byte for byte: the
configuration, the seeds every client's randomness comes from, the inputs,
the scripted dropouts and every message on the wire, in order. Any
implementation can replay it: feed its client the recorded server messages
and compare the client's replies with the recorded bytes, feed its server the
recorded client messages and compare what it sends back.

Two kinds, after the CFRG VDAF draft's test vectors (each operation carries
``success``):

* positive (``"success": true``): a whole session; the expected survivors,
  dropped clients and aggregate close it.
* negative (``bad_*``, ``"success": false``): a valid transcript prefix, then
  one offending message (the last transcript step, ``"success": false``)
  that the named ``party`` (``"client N"`` or ``"server"``) must refuse with
  ``abort_reason`` (a :class:`~protocol.errors.AbortReason` value), ending in
  ``state_after``.

The formats are described in :mod:`protocol.testing.vectors` and
``specs/vectors/README.md``.

This module is pure (no files, no clocks, no OS randomness): every random
byte comes from :class:`~protocol.crypto.DeterministicRandom`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from protocol._keys import advertise_payload
from protocol._state import TERMINAL, Round
from protocol.client import ClientSession
from protocol.config import PROTOCOL_VERSION, GraphKind, Mode, SessionConfig
from protocol.crypto import CIPHERSUITE, DeterministicRandom, ed25519_public_key, ed25519_sign
from protocol.encoding import (
    EvalSums,
    FixedPointEncoding,
    RoundEncoding,
    from_modular,
    session_context,
)
from protocol.errors import AbortReason, RemoteProtocolError
from protocol.messages import (
    AdvertisedKeys,
    AdvertiseKeys,
    KeyDirectory,
    Message,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from protocol.params import AdversaryClass
from protocol.policy import SessionPolicy
from protocol.server import ServerSession
from protocol.shamir import FIELD_PRIME, decode_share, encode_share
from protocol.simulate import DROP_ROUNDS, identity_secret, make_config, simulate
from protocol.testing.vectors import (
    DECODING_FORMAT,
    FORMAT,
    FORMAT_VERSION,
    PARAMETER_FORMAT,
    ReplayedSessions,
    Vector,
    VectorMismatch,
    check_vector,
    client_rng_seed,
    decode_outcome,
    dropped_by,
    dumps_vector,
    message_type_name,
    parameter_outcome,
    replay_vector,
)

__all__ = [
    "DECODING_FORMAT",
    "FORMAT",
    "FORMAT_VERSION",
    "INVARIANT_REASONS",
    "PARAMETER_FORMAT",
    "ReplayedSessions",
    "VectorMismatch",
    "check_vector",
    "client_rng_seed",
    "decoding_vector",
    "dumps_vector",
    "generate_all",
    "parameter_vector",
    "replay_vector",
]

# The protocol invariants the bad_* vectors cover: every one has a vector.
INVARIANT_REASONS: Final = frozenset(
    {
        AbortReason.OWN_KEYS_NOT_ECHOED,
        AbortReason.DUPLICATE_KEYS,
        AbortReason.INVALID_PUBLIC_KEY,
        AbortReason.NOT_A_NEIGHBOUR,
        AbortReason.BAD_SIGNATURE,
        AbortReason.WRONG_SESSION,
        AbortReason.WRONG_RECIPIENT,
        AbortReason.WRONG_ROUND,
        AbortReason.SHARE_DECRYPTION_FAILED,
        AbortReason.SURVIVORS_DROPPED_OVERLAP,
        AbortReason.SECOND_UNMASK_REQUEST,
        AbortReason.INCONSISTENT_SURVIVORS,
        AbortReason.BELOW_THRESHOLD,
        AbortReason.REPLAYED_MESSAGE,
        AbortReason.WRONG_VECTOR_LENGTH,
        AbortReason.WRONG_SENDER,
        AbortReason.MALFORMED_MESSAGE,
    }
)

_SEED_PREFIX: Final = b"secagg-v1/test-vector/"
_MALFORMED: Final = b"\xff\x00garbage"


# ---------------------------------------------------------------------------
# Small shared helpers.
# ---------------------------------------------------------------------------


def _int_list(values: npt.NDArray[np.integer]) -> list[int]:
    return [int(v) for v in values]


def _inputs(seed: bytes, parts: Sequence[int], length: int, bound: int) -> dict[int, list[int]]:
    """Readable pseudo-random integer inputs in ``[-bound, bound]``."""
    out: dict[int, list[int]] = {}
    width = 4 if bound < 1 << 31 else 9  # 9 bytes: no visible modulo bias below 2^63
    for u in parts:
        raw = DeterministicRandom(seed + b"/inputs/" + u.to_bytes(4, "big")).random_bytes(
            width * length
        )
        out[u] = [
            int.from_bytes(raw[width * i : width * i + width], "little") % (2 * bound + 1) - bound
            for i in range(length)
        ]
    return out


def _config(
    participants: Sequence[int],
    vector_length: int,
    *,
    bit_width: int,
    threshold: int | None,
    graph: GraphKind,
    degree: int,
    mode: Mode,
    seed: bytes,
    context: bytes = b"",
) -> SessionConfig:
    """:func:`protocol.simulate.make_config` for any participant ids (same nonce, same keys)."""
    if tuple(participants) == tuple(range(1, len(participants) + 1)):
        return make_config(
            len(participants),
            vector_length,
            bit_width=bit_width,
            threshold=threshold,
            graph=graph,
            degree=degree,
            mode=mode,
            seed=seed,
            context=context,
        )
    k = len(participants) - 1 if graph is GraphKind.COMPLETE else degree
    keys: tuple[bytes, ...] = ()
    if mode is Mode.ACTIVE:
        keys = tuple(ed25519_public_key(identity_secret(u)) for u in participants)
    return SessionConfig(
        participants=tuple(participants),
        threshold=threshold if threshold is not None else k // 2 + 1,
        vector_length=vector_length,
        bit_width=bit_width,
        nonce=DeterministicRandom(seed + b"/nonce").random_bytes(32),
        mode=mode,
        graph=graph,
        degree=k if graph is GraphKind.HARARY else 0,
        identity_keys=keys,
        context=context,
    )


# ---------------------------------------------------------------------------
# Vector skeleton: configuration, seeds, clients.
# ---------------------------------------------------------------------------


def _config_dict(config: SessionConfig) -> dict[str, Any]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "ciphersuite": CIPHERSUITE,
        "nonce": config.nonce.hex(),
        "participants": list(config.participants),
        "threshold": config.threshold,
        "vector_length": config.vector_length,
        "bit_width": config.bit_width,
        "mode": config.mode.value,
        "graph": config.graph.value,
        "degree": config.degree,
        "identity_keys": [k.hex() for k in config.identity_keys],
        "context": config.context.hex(),
    }


def _skeleton(
    name: str,
    description: str,
    config: SessionConfig,
    seed: bytes,
    inputs: Mapping[int, Sequence[int]],
    dropouts: Mapping[int, Round],
) -> Vector:
    graph = config.neighbour_graph
    clients: list[dict[str, Any]] = []
    for u in config.participants:
        entry: dict[str, Any] = {
            "id": u,
            "rng_seed": client_rng_seed(seed, u).hex(),
            "input": [int(x) for x in inputs[u]],
            "neighbours": sorted(graph.neighbours(u)),
        }
        if config.mode is Mode.ACTIVE:
            secret = identity_secret(u)
            entry["identity_secret"] = secret.hex()
            entry["identity_public_key"] = ed25519_public_key(secret).hex()
        clients.append(entry)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "config": _config_dict(config),
        "config_encoding": config.encode().hex(),
        "session_id": config.session_id.hex(),
        "seed": seed.hex(),
        "clients": clients,
        "dropouts": {str(u): r.value for u, r in sorted(dropouts.items())},
    }


def _step(index: int, rnd: Round, direction: str, client: int, data: bytes) -> dict[str, Any]:
    return {
        "step": index,
        "round": rnd.value,
        "direction": direction,
        "client": client,
        "type": message_type_name(data),
        "message": data.hex(),
        "success": True,
    }


def _result_dict(
    config: SessionConfig,
    survivors: Sequence[int],
    dropped: Sequence[int],
    aggregate_mod: npt.NDArray[np.integer],
) -> dict[str, Any]:
    words = np.asarray(aggregate_mod)
    return {
        "survivors": list(survivors),
        "dropped": list(dropped),
        "aggregate": _int_list(from_modular(words, config.bit_width)),
        "aggregate_mod": _int_list(words),
    }


# ---------------------------------------------------------------------------
# Positive vectors: whole sessions, recorded by protocol.simulate.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Good:
    name: str
    description: str
    num_clients: int
    vector_length: int
    bit_width: int = 32
    graph: GraphKind = GraphKind.COMPLETE
    degree: int = 0
    threshold: int | None = None
    mode: Mode = Mode.SEMI_HONEST
    dropouts: Mapping[int, Round] = field(default_factory=dict)
    input_bound: int = 1000
    participants: tuple[int, ...] = ()  # default: 1 .. num_clients
    final_states: bool = False  # record every client's end state (pruned clients)


_R0, _R1, _R2, _R3, _R4 = DROP_ROUNDS
_MAX_ID: Final = (1 << 32) - 1

_POSITIVE: Final = (
    _Good(
        "complete_semi_honest",
        "SecAgg, complete graph, semi-honest, 5 clients, no dropouts.",
        5,
        8,
    ),
    _Good(
        "complete_drop_r1",
        "Complete graph, semi-honest; client 3 drops in round 1 (never sends ShareKeys): "
        "it is in no later message and not in the sum.",
        5,
        8,
        dropouts={3: _R1},
    ),
    _Good(
        "complete_drop_r2",
        "Complete graph, semi-honest; client 2 shares its keys, then drops before sending its "
        "masked input: the survivors reveal shares of its mask key and the server removes its "
        "pairwise masks.",
        6,
        8,
        dropouts={2: _R2},
    ),
    _Good(
        "complete_drop_r4",
        "Complete graph, semi-honest; client 4 sends its masked input, then drops before "
        "unmasking: its input is in the sum, its self mask is reconstructed from the others.",
        5,
        8,
        dropouts={4: _R4},
    ),
    _Good(
        "harary_dropouts",
        "SecAgg+: Harary graph, 10 clients, degree 4, threshold 3; client 4 drops in round 2 "
        "(its mask key is reconstructed from its 4 neighbours' shares) and client 7, no "
        "neighbour of client 4's neighbours, in round 4.",
        10,
        6,
        graph=GraphKind.HARARY,
        degree=4,
        threshold=3,
        dropouts={4: _R2, 7: _R4},
    ),
    _Good(
        "active_dropouts",
        "Active mode (signed keys, consistency check), complete graph, 8 clients, threshold 4; "
        "client 8 drops in round 2, client 7 in round 3 (never signs the survivor set) and "
        "client 6 in round 4.",
        8,
        6,
        mode=Mode.ACTIVE,
        dropouts={8: _R2, 7: _R3, 6: _R4},
    ),
    _Good(
        "bit_width_13",
        "b = 13: 11 elements pack into 18 bytes (padding bits in the last byte); complete "
        "graph, client 2 drops in round 2.",
        5,
        11,
        bit_width=13,
        dropouts={2: _R2},
        input_bound=400,
    ),
    _Good(
        "bit_width_64",
        "b = 64: masks are 64-bit PRG words (w = 64, §7.2) with no reduction; inputs up to "
        "2^62 in absolute value (the sum wraps mod 2^64); complete graph, client 2 drops in "
        "round 2 (its pairwise masks are removed) and client 5 in round 4 (its self mask "
        "is reconstructed); 6 clients, threshold 3.",
        6,
        6,
        bit_width=64,
        dropouts={2: _R2, 5: _R4},
        input_bound=1 << 62,
    ),
    _Good(
        "bit_width_33",
        "b = 33: 64-bit PRG words reduced to 33 bits; 9 elements pack into 38 bytes (7 "
        "padding bits); complete graph, client 4 drops in round 1.",
        5,
        9,
        bit_width=33,
        dropouts={4: _R1},
        input_bound=1 << 30,
    ),
    _Good(
        "large_client_ids",
        "Active mode, complete graph, threshold 3; client ids 7, 24, 300, 70000 and "
        "2^32 - 1 = 4294967295, whose CBOR encodings use a 0-, 1-, 2-, 4- and 4-byte "
        "argument (messages-v1.md §1), in every id list, pair and signed survivor set; "
        "client 300 drops in round 3 (never signs).",
        5,
        5,
        mode=Mode.ACTIVE,
        threshold=3,
        participants=(7, 24, 300, 70000, _MAX_ID),
        dropouts={300: _R3},
    ),
    _Good(
        "harary_odd_degree",
        "SecAgg+ with an odd degree: Harary graph, 10 clients, k = 3 (each client is also "
        "joined to the client opposite it on the ring, §9.2), threshold 2; client 5 drops "
        "in round 2.",
        10,
        6,
        graph=GraphKind.HARARY,
        degree=3,
        threshold=2,
        dropouts={5: _R2},
    ),
    _Good(
        "harary_active",
        "Active mode on the Harary graph: 10 clients, degree 5 (odd), threshold 3 (2t > k); "
        "client 1 drops in round 2, client 2 in round 3 (never signs) and client 5 in "
        "round 4.",
        10,
        6,
        graph=GraphKind.HARARY,
        degree=5,
        threshold=3,
        mode=Mode.ACTIVE,
        dropouts={1: _R2, 2: _R3, 5: _R4},
    ),
    _Good(
        "harary_pruning",
        "Pruning (§12.2): Harary graph, 10 clients, degree 4, threshold 2. Clients 1, 3 and 8 "
        "drop in round 0, which leaves client 6 (neighbours 1, 3, 8, 10) one live "
        "neighbour: the server prunes it after round 0 (no KeyDirectory for it; it is in no "
        "directory). Client 4 drops in round 1, which leaves client 7 (neighbours 2, 3, 4, "
        "8; 3 and 8 are gone) one: pruned after round 1 (it sent ShareKeys; it gets no "
        "ShareBundle and its ciphertexts are never forwarded). Survivors: 2, 5, 9, 10. "
        "final_states shows the pruned clients still waiting, in R0_ADVERTISE_KEYS and "
        "R1_SHARE_KEYS.",
        10,
        5,
        graph=GraphKind.HARARY,
        degree=4,
        threshold=2,
        dropouts={1: _R0, 3: _R0, 8: _R0, 4: _R1},
        final_states=True,
    ),
)


def _positive(spec: _Good) -> Vector:
    seed = _SEED_PREFIX + spec.name.encode()
    config = _config(
        spec.participants or tuple(range(1, spec.num_clients + 1)),
        spec.vector_length,
        bit_width=spec.bit_width,
        threshold=spec.threshold,
        graph=spec.graph,
        degree=spec.degree,
        mode=spec.mode,
        seed=seed,
    )
    inputs = _inputs(seed, config.participants, spec.vector_length, spec.input_bound)
    vector = _recorded_session(spec.name, spec.description, config, seed, inputs, spec.dropouts)
    if spec.final_states:
        vector["final_states"] = _final_states(replay_vector(vector).clients)
    return vector


def _final_states(clients: Mapping[int, ClientSession]) -> dict[str, dict[str, str | None]]:
    return {
        str(u): {
            "state": c.round.value,
            "abort_reason": c.abort_reason.value if c.abort_reason is not None else None,
        }
        for u, c in sorted(clients.items())
    }


def _recorded_session(
    name: str,
    description: str,
    config: SessionConfig,
    seed: bytes,
    inputs: Mapping[int, Sequence[int]],
    dropouts: Mapping[int, Round],
) -> Vector:
    arrays = {u: np.asarray(x, dtype=np.int64) for u, x in inputs.items()}
    sim = simulate(config, arrays, dropouts=dropouts, seed=seed, record=True)
    vector = _skeleton(name, description, config, seed, inputs, dropouts)
    vector["transcript"] = [
        _step(i, e.round, e.direction, e.client, e.data) for i, e in enumerate(sim.transcript)
    ]
    vector["result"] = _result_dict(
        config, sim.result.survivors, sim.result.dropped, sim.result.aggregate
    )
    vector["success"] = True
    return vector


_ENCODING: Final = FixedPointEncoding(clip=1.0, scale=256.0, max_weight=100)


def _encoding_rng_seed(seed: bytes, client: int) -> bytes:
    return seed + b"/encoding/" + client.to_bytes(4, "big")


# The service's binding (secagg/orchestrator.py): task 7, round 3.
_ENCODING_TASK: Final = 7
_ENCODING_ROUND: Final = 3


def _fixed_point() -> Vector:
    name = "fixed_point_encoding"
    seed = _SEED_PREFIX + name.encode()
    n, d = 5, 7
    enc = _ENCODING
    round_enc = RoundEncoding(enc)
    bits = round_enc.required_bit_width(n)
    context = session_context(_ENCODING_TASK, _ENCODING_ROUND, round_enc.context())
    config = make_config(n, round_enc.vector_length(d), bit_width=bits, seed=seed, context=context)
    floats: dict[int, list[float]] = {}
    weights: dict[int, int] = {}
    metrics: dict[int, EvalSums] = {}
    encoded: dict[int, list[int]] = {}
    for u in config.participants:
        raw = DeterministicRandom(seed + b"/floats/" + u.to_bytes(4, "big")).random_bytes(2 * d + 4)
        # Values in [-1.2, 1.2] with three decimals: some get clipped.
        floats[u] = [
            (int.from_bytes(raw[2 * i : 2 * i + 2], "little") % 2401 - 1200) / 1000
            for i in range(d)
        ]
        weights[u] = 1 + raw[2 * d] % enc.max_weight
        count = 1 + raw[2 * d + 1] % 200
        correct = raw[2 * d + 2] % (count + 1)
        metrics[u] = EvalSums(correct, count, (raw[2 * d + 3] % 64) / 8)
        vec = round_enc.encode(
            np.asarray(floats[u], dtype=np.float64),
            weights[u],
            metrics[u],
            DeterministicRandom(_encoding_rng_seed(seed, u)),
        )
        encoded[u] = _int_list(vec)
    dropouts = {3: _R2}
    vector = _recorded_session(
        name,
        "The service's RoundEncoding (FixedPointEncoding clip 1.0, scale 256, max weight 100, "
        "then the weight and three evaluation slots) of float vectors with integer weights "
        "and evaluation sums; the configuration's context is the service's "
        f"session_context(task {_ENCODING_TASK}, round {_ENCODING_ROUND}, "
        f"RoundEncoding.context()) (§11). b = required_bit_width(5) = {bits}. "
        "Client 3 drops in round 2.",
        config,
        seed,
        encoded,
        dropouts,
    )
    mean, total_weight, sums = round_enc.decode(
        np.asarray(vector["result"]["aggregate"], dtype=np.int64)
    )
    vector["encoding"] = {
        "clip": enc.clip,
        "scale": enc.scale,
        "max_weight": enc.max_weight,
        "max_eval_examples": round_enc.max_eval_examples,
        "max_example_loss": round_enc.max_example_loss,
        "loss_scale": round_enc.loss_scale,
        "task_id": _ENCODING_TASK,
        "round_number": _ENCODING_ROUND,
        "context": context.hex(),
        "rounding": "encode(x, weight, metrics, DeterministicRandom(seed || '/encoding/' || "
        "u32be(id)))",
        "clients": [
            {
                "id": u,
                "x": floats[u],
                "weight": weights[u],
                "correct": metrics[u].correct,
                "count": metrics[u].count,
                "loss_sum": metrics[u].loss_sum,
                "rounding_rng_seed": _encoding_rng_seed(seed, u).hex(),
                "encoded": encoded[u],
            }
            for u in config.participants
        ],
        "decoded_mean": [float(m) for m in mean],
        "total_weight": total_weight,
        "decoded_eval": [sums.correct, sums.count, sums.loss_sum],
    }
    return vector


# ---------------------------------------------------------------------------
# Negative vectors: an honest prefix, then one offending message.
# ---------------------------------------------------------------------------


class _Recorder:
    """Honest clients and server, driven step by step in simulate's message order.

    Each message delivered is recorded; a case ends with :meth:`offend_client`
    or :meth:`offend_server`, which delivers the offending message, checks the
    refusal and records it.
    """

    def __init__(
        self,
        config: SessionConfig,
        seed: bytes,
        inputs: Mapping[int, Sequence[int]],
        dropouts: Mapping[int, Round],
    ) -> None:
        self.config = config
        self.sid = config.session_id
        self.dropouts = dict(dropouts)
        self.clients = {
            u: ClientSession(
                config,
                u,
                np.asarray(inputs[u], dtype=np.int64),
                rng=DeterministicRandom(client_rng_seed(seed, u)),
                identity_key=identity_secret(u) if config.mode is Mode.ACTIVE else None,
                policy=SessionPolicy.protocol_only(),
            )
            for u in config.participants
        }
        self.server = ServerSession(config)
        self.steps: list[dict[str, Any]] = []
        self.pending: dict[int, bytes] = {}
        self.batch_round = Round.R0_ADVERTISE_KEYS
        self.closing_round = Round.R0_ADVERTISE_KEYS
        self._started = False

    def start_all(self) -> None:
        self._started = True
        for u, c in self.clients.items():
            if not dropped_by(self.dropouts, u, Round.R0_ADVERTISE_KEYS):
                self.pending[u] = c.start()

    def send(self, u: int, deviate: Callable[[bytes], bytes] | None = None) -> bytes:
        """Deliver client ``u``'s pending reply; ``deviate`` replaces it (a lying client)."""
        data = self.pending.pop(u)
        step = _step(len(self.steps), self.server.round, "to_server", u, data)
        if deviate is not None:
            data = deviate(data)
            step = _step(len(self.steps), self.server.round, "to_server", u, data)
            step["deviating"] = True
        self.steps.append(step)
        self.server.receive(data)
        return data

    def advance(self) -> dict[int, bytes]:
        self.closing_round = self.server.round
        out = self.server.advance()
        self.batch_round = self.server.round
        return out

    def deliver(self, u: int, data: bytes) -> None:
        self.steps.append(_step(len(self.steps), self.batch_round, "to_client", u, data))
        # An Abort closing round r still reaches the clients that drop only later.
        heard_in = self.closing_round if self.batch_round is Round.ABORTED else self.batch_round
        if dropped_by(self.dropouts, u, heard_in):
            return
        reply = self.clients[u].receive(data)
        if reply is not None:
            self.pending[u] = reply

    def deliver_and_send(self, out: Mapping[int, bytes]) -> None:
        for u, data in out.items():
            self.deliver(u, data)
            if u in self.pending:
                self.send(u)

    def run_all(self, deviations: Mapping[tuple[Round, int], Callable[[bytes], bytes]]) -> None:
        """Run to the end (``COMPLETED`` or ``ABORTED``); in round ``r`` client ``u``'s
        message is replaced by ``deviations[(r, u)](honest bytes)``."""
        self.start_all()
        for u in sorted(self.pending):
            self.send(u, deviations.get((self.server.round, u)))
        while self.server.round not in TERMINAL:
            out = self.advance()
            for u, data in out.items():
                self.deliver(u, data)
                if u in self.pending:
                    self.send(u, deviations.get((self.server.round, u)))

    def run_to(self, target: Round) -> dict[int, bytes]:
        """Run honestly until the server has just entered ``target``; return its
        messages for that round, not yet delivered."""
        if not self._started:
            self.start_all()
            for u in sorted(self.pending):
                self.send(u)
        while True:
            out = self.advance()
            if self.server.round is target:
                return out
            if self.server.round in TERMINAL:
                raise AssertionError(f"session ended in {self.server.round} before {target}")
            self.deliver_and_send(out)

    def _offence(
        self,
        direction: str,
        u: int,
        rnd: Round,
        data: bytes,
        party: str,
        reason: AbortReason,
        state_after: Round,
    ) -> None:
        step = _step(len(self.steps), rnd, direction, u, data)
        step.update(
            success=False, party=party, abort_reason=reason.value, state_after=state_after.value
        )
        self.steps.append(step)

    def offend_client(self, u: int, data: bytes, reason: AbortReason) -> None:
        client = self.clients[u]
        try:
            client.receive(data)
        except RemoteProtocolError as exc:
            if exc.reason is not reason:
                raise AssertionError(f"client {u} refused with {exc.reason}, not {reason}") from exc
        else:
            raise AssertionError(f"client {u} accepted the offending message")
        self._offence("to_client", u, self.batch_round, data, f"client {u}", reason, client.round)

    def offend_server(self, u: int, data: bytes, reason: AbortReason) -> None:
        rnd = self.server.round
        try:
            self.server.receive(data)
        except RemoteProtocolError as exc:
            if exc.reason is not reason:
                raise AssertionError(f"server refused with {exc.reason}, not {reason}") from exc
        else:
            raise AssertionError("the server accepted the offending message")
        self._offence("to_server", u, rnd, data, "server", reason, self.server.round)


def _tamper(data: bytes, **changes: Any) -> bytes:
    """Re-encode a message with some fields replaced (a lying party)."""
    msg: Message = decode_message(data)
    return dataclasses.replace(msg, **changes).encode()


def _decode(data: bytes, cls: type[Any]) -> Any:
    msg = decode_message(data)
    assert isinstance(msg, cls)
    return msg


# Each case builds its offence on a fresh recorder.


def _own_keys_not_echoed(r: _Recorder) -> None:
    out = r.run_to(_R1)
    d: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = list(d.entries)
    entries[0] = dataclasses.replace(entries[0], mask_public_key=b"\x09" * 32)
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.OWN_KEYS_NOT_ECHOED)


def _duplicate_keys(r: _Recorder) -> None:
    out = r.run_to(_R1)
    d: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = list(d.entries)
    entries[3] = dataclasses.replace(entries[3], mask_public_key=entries[2].mask_public_key)
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.DUPLICATE_KEYS)


def _duplicate_keys_server(r: _Recorder) -> None:
    r.start_all()
    first = r.send(1)
    keys: AdvertisedKeys = _decode(first, AdvertiseKeys).keys
    copy = AdvertiseKeys(r.sid, dataclasses.replace(keys, sender=2)).encode()
    r.offend_server(2, copy, AbortReason.DUPLICATE_KEYS)


def _small_order_key_server(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    keys: AdvertisedKeys = _decode(r.pending[2], AdvertiseKeys).keys
    bad = AdvertiseKeys(r.sid, dataclasses.replace(keys, mask_public_key=bytes(32))).encode()
    r.offend_server(2, bad, AbortReason.INVALID_PUBLIC_KEY)


def _small_order_key_client(r: _Recorder) -> None:
    out = r.run_to(_R1)
    directory = _decode(out[1], KeyDirectory)
    entries = list(directory.entries)
    entries[2] = dataclasses.replace(entries[2], cipher_public_key=bytes(32))
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.INVALID_PUBLIC_KEY)


def _non_neighbour_keys(r: _Recorder) -> None:
    out = r.run_to(_R1)
    nbrs = r.config.neighbour_graph.neighbours(1)
    stranger = next(u for u in r.config.participants if u != 1 and u not in nbrs)
    theirs = next(e for e in _decode(out[stranger], KeyDirectory).entries if e.sender == stranger)
    mine: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = tuple(sorted([*mine.entries, theirs], key=lambda e: e.sender))
    r.offend_client(1, _tamper(out[1], entries=entries), AbortReason.NOT_A_NEIGHBOUR)


def _bad_advertise_signature(r: _Recorder) -> None:
    out = r.run_to(_R1)
    d: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = list(d.entries)
    # The server substitutes its own key for client 3's, keeping the signature.
    entries[2] = dataclasses.replace(entries[2], cipher_public_key=b"\x05" * 32)
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.BAD_SIGNATURE)


def _bad_advertise_signature_server(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    msg: AdvertiseKeys = _decode(r.pending[4], AdvertiseKeys)
    forged = AdvertiseKeys(r.sid, dataclasses.replace(msg.keys, signature=bytes(64)))
    r.offend_server(4, forged.encode(), AbortReason.BAD_SIGNATURE)


def _wrong_session(r: _Recorder) -> None:
    out = r.run_to(_R1)
    r.offend_client(1, _tamper(out[1], session_id=b"\x07" * 32), AbortReason.WRONG_SESSION)


def _wrong_session_server(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    r.offend_server(2, _tamper(r.pending[2], session_id=bytes(32)), AbortReason.WRONG_SESSION)


def _wrong_recipient(r: _Recorder) -> None:
    out = r.run_to(_R1)
    r.offend_client(1, out[2], AbortReason.WRONG_RECIPIENT)


def _replayed_server_message(r: _Recorder) -> None:
    out = r.run_to(_R1)
    r.deliver(1, out[1])
    r.send(1)
    r.offend_client(1, out[1], AbortReason.WRONG_ROUND)


def _out_of_round_server_message(r: _Recorder) -> None:
    out = r.run_to(_R1)
    r.deliver(1, out[1])
    r.send(1)
    early = UnmaskRequest(r.sid, 1, r.config.participants, ()).encode()
    r.offend_client(1, early, AbortReason.WRONG_ROUND)


def _client_message_out_of_round(r: _Recorder) -> None:
    out = r.run_to(_R1)
    r.deliver(1, out[1])
    r.send(1)
    r.deliver(2, out[2])
    # Client 2's share message, sent again as if it were round 0's.
    stale = r.pending[2]
    r.send(2)
    r.deliver_and_send({u: out[u] for u in out if u not in (1, 2)})
    out = r.advance()
    assert r.server.round is _R2
    r.deliver(2, out[2])
    r.send(2)
    r.offend_server(2, stale, AbortReason.WRONG_ROUND)


def _share_swap(r: _Recorder) -> None:
    out = r.run_to(_R2)
    b: ShareBundle = _decode(out[1], ShareBundle)
    cts = list(b.ciphertexts)
    (s0, c0), (s1, c1) = cts[0], cts[1]
    cts[0], cts[1] = (s0, c1), (s1, c0)
    r.offend_client(1, _tamper(out[1], ciphertexts=tuple(cts)), AbortReason.SHARE_DECRYPTION_FAILED)


def _share_misaddressed(r: _Recorder) -> None:
    out = r.run_to(_R2)
    from_1_to_3 = dict(_decode(out[3], ShareBundle).ciphertexts)[1]
    b2: ShareBundle = _decode(out[2], ShareBundle)
    cts = tuple((s, from_1_to_3 if s == 1 else c) for s, c in b2.ciphertexts)
    r.offend_client(2, _tamper(out[2], ciphertexts=cts), AbortReason.SHARE_DECRYPTION_FAILED)


def _shares_not_to_live_neighbours(r: _Recorder) -> None:
    out = r.run_to(_R1)
    r.deliver(1, out[1])
    msg: ShareKeys = _decode(r.pending[1], ShareKeys)
    r.offend_server(
        1, _tamper(r.pending[1], ciphertexts=msg.ciphertexts[1:]), AbortReason.WRONG_RECIPIENT
    )


def _unmask_request(r: _Recorder) -> tuple[dict[int, bytes], UnmaskRequest]:
    out = r.run_to(_R4)
    req: UnmaskRequest = _decode(out[1], UnmaskRequest)
    return out, req


def _overlap(r: _Recorder) -> None:
    out, req = _unmask_request(r)
    both = tuple(sorted({*req.dropped, 2}))
    r.offend_client(1, _tamper(out[1], dropped=both), AbortReason.SURVIVORS_DROPPED_OVERLAP)


def _second_unmask_request(r: _Recorder) -> None:
    out, req = _unmask_request(r)
    r.deliver(1, out[1])
    r.send(1)
    # The server now claims client 2 dropped, to get its mask key as well.
    lie = _tamper(
        out[1],
        survivors=tuple(s for s in req.survivors if s != 2),
        dropped=tuple(sorted({*req.dropped, 2})),
    )
    r.offend_client(1, lie, AbortReason.SECOND_UNMASK_REQUEST)


def _unclassified_neighbour(r: _Recorder) -> None:
    out, _ = _unmask_request(r)
    r.offend_client(1, _tamper(out[1], dropped=()), AbortReason.INCONSISTENT_SURVIVORS)


def _below_threshold_survivors(r: _Recorder) -> None:
    out, req = _unmask_request(r)
    survivors = (1, 2)
    dropped = tuple(u for u in r.config.participants if u not in survivors)
    assert len(survivors) < r.config.threshold and set(req.dropped) <= set(dropped)
    r.offend_client(
        1, _tamper(out[1], survivors=survivors, dropped=dropped), AbortReason.BELOW_THRESHOLD
    )


def _unmask_response_other_shares(r: _Recorder) -> None:
    out, _ = _unmask_request(r)
    r.deliver(1, out[1])
    r.offend_server(
        1, _tamper(r.pending[1], mask_key_shares=()), AbortReason.INCONSISTENT_SURVIVORS
    )


def _survivors_differ_from_signed(r: _Recorder) -> None:
    out, req = _unmask_request(r)
    last = req.survivors[-1]
    r.offend_client(
        1,
        _tamper(out[1], survivors=req.survivors[:-1], dropped=tuple(sorted({*req.dropped, last}))),
        AbortReason.INCONSISTENT_SURVIVORS,
    )


def _too_few_signatures(r: _Recorder) -> None:
    out, req = _unmask_request(r)
    keep = req.signatures[: r.config.threshold - 1]
    r.offend_client(1, _tamper(out[1], signatures=keep), AbortReason.BELOW_THRESHOLD)


def _bad_consistency_signature(r: _Recorder) -> None:
    out = r.run_to(_R4)
    req2: UnmaskRequest = _decode(out[2], UnmaskRequest)
    forged = tuple((s, bytes(64)) if s == 3 else (s, g) for s, g in req2.signatures)
    r.offend_client(2, _tamper(out[2], signatures=forged), AbortReason.BAD_SIGNATURE)


def _bad_consistency_signature_server(r: _Recorder) -> None:
    out = r.run_to(_R3)
    r.deliver(1, out[1])
    r.offend_server(1, _tamper(r.pending[1], signature=bytes(64)), AbortReason.BAD_SIGNATURE)


def _below_threshold_directory(r: _Recorder) -> None:
    out = r.run_to(_R1)
    d: KeyDirectory = _decode(out[1], KeyDirectory)
    short = d.entries[: r.config.threshold - 1]
    r.offend_client(1, _tamper(out[1], entries=short), AbortReason.BELOW_THRESHOLD)


def _replayed_client_message(r: _Recorder) -> None:
    r.start_all()
    first = r.send(1)
    r.send(2)
    r.offend_server(1, first, AbortReason.REPLAYED_MESSAGE)


def _wrong_vector_length(r: _Recorder) -> None:
    out = r.run_to(_R2)
    r.deliver(1, out[1])
    r.offend_server(1, _tamper(r.pending[1], masked=b"\x00" * 3), AbortReason.WRONG_VECTOR_LENGTH)


def _wrong_sender(r: _Recorder) -> None:
    # Client 3 never advertised keys; a share message in its name is refused.
    out = r.run_to(_R1)
    r.deliver_and_send(out)
    r.offend_server(3, ShareKeys(r.sid, 3, bytes(32), ()).encode(), AbortReason.WRONG_SENDER)


def _malformed_to_server(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    r.offend_server(2, _MALFORMED, AbortReason.MALFORMED_MESSAGE)


def _malformed_to_client(r: _Recorder) -> None:
    r.run_to(_R1)
    r.offend_client(1, _MALFORMED, AbortReason.MALFORMED_MESSAGE)


# Two invariants broken by one message: the check order of §12 decides the reason.


def _order_own_keys_then_neighbour(r: _Recorder) -> None:
    out = r.run_to(_R1)
    nbrs = r.config.neighbour_graph.neighbours(1)
    stranger = next(u for u in r.config.participants if u != 1 and u not in nbrs)
    theirs = next(e for e in _decode(out[stranger], KeyDirectory).entries if e.sender == stranger)
    mine: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = [
        dataclasses.replace(e, mask_public_key=b"\x09" * 32) if e.sender == 1 else e
        for e in mine.entries
    ]
    entries = sorted([*entries, theirs], key=lambda e: e.sender)
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.OWN_KEYS_NOT_ECHOED)


def _order_session_then_recipient(r: _Recorder) -> None:
    out = r.run_to(_R1)
    r.offend_client(1, _tamper(out[2], session_id=b"\x07" * 32), AbortReason.WRONG_SESSION)


def _order_recipient_then_round(r: _Recorder) -> None:
    r.run_to(_R1)
    early = UnmaskRequest(r.sid, 2, r.config.participants, ()).encode()
    r.offend_client(1, early, AbortReason.WRONG_RECIPIENT)


def _order_duplicate_then_signature(r: _Recorder) -> None:
    out = r.run_to(_R1)
    d: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = list(d.entries)
    # Client 4's mask key replaced by client 3's: a duplicate, and client 4's
    # signature no longer covers its entry.
    entries[3] = dataclasses.replace(entries[3], mask_public_key=entries[2].mask_public_key)
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.DUPLICATE_KEYS)


def _order_stranger_then_threshold(r: _Recorder) -> None:
    out = r.run_to(_R2)
    b: ShareBundle = _decode(out[1], ShareBundle)
    # One ciphertext, from a client that is not in the directory (id 9 is no participant).
    cts = ((9, b.ciphertexts[0][1]),)
    r.offend_client(1, _tamper(out[1], ciphertexts=cts), AbortReason.NOT_A_NEIGHBOUR)


def _order_overlap_then_threshold(r: _Recorder) -> None:
    out, _ = _unmask_request(r)
    survivors = (1, 2)
    dropped = tuple(u for u in r.config.participants if u != 1)
    r.offend_client(
        1,
        _tamper(out[1], survivors=survivors, dropped=dropped),
        AbortReason.SURVIVORS_DROPPED_OVERLAP,
    )


def _order_survivor_check_then_signatures(r: _Recorder) -> None:
    out, req = _unmask_request(r)
    # The signed set is changed (inconsistent_survivors) and every signature is
    # forged (bad_signature): the survivor check (step 2) comes first.
    last = req.survivors[-1]
    forged = tuple((s, bytes(64)) for s, _ in req.signatures)
    r.offend_client(
        1,
        _tamper(
            out[1],
            survivors=req.survivors[:-1],
            dropped=tuple(sorted({*req.dropped, last})),
            signatures=forged,
        ),
        AbortReason.INCONSISTENT_SURVIVORS,
    )


def _completed_wrong_session(r: _Recorder) -> None:
    out, _ = _unmask_request(r)
    r.deliver(1, out[1])
    r.send(1)
    r.offend_client(1, _tamper(out[1], session_id=b"\x07" * 32), AbortReason.WRONG_SESSION)


def _completed_malformed(r: _Recorder) -> None:
    out, _ = _unmask_request(r)
    r.deliver(1, out[1])
    r.send(1)
    r.offend_client(1, _MALFORMED, AbortReason.MALFORMED_MESSAGE)


def _completed_other_message(r: _Recorder) -> None:
    out, _ = _unmask_request(r)
    r.deliver(1, out[1])
    r.send(1)
    late = ShareBundle(r.sid, 1, ()).encode()
    r.offend_client(1, late, AbortReason.WRONG_ROUND)


def _order_server_session_then_replay(r: _Recorder) -> None:
    r.start_all()
    first = r.send(1)
    r.offend_server(1, _tamper(first, session_id=bytes(32)), AbortReason.WRONG_SESSION)


def _order_server_round_then_sender(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    # A ShareKeys in round 0, in the name of a non-participant.
    r.offend_server(9, ShareKeys(r.sid, 9, bytes(32), ()).encode(), AbortReason.WRONG_ROUND)


def _order_server_replay_then_length(r: _Recorder) -> None:
    out = r.run_to(_R2)
    r.deliver(1, out[1])
    first = r.send(1)
    r.offend_server(1, _tamper(first, masked=b"\x00" * 3), AbortReason.REPLAYED_MESSAGE)


def _order_server_signature_then_key(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    msg: AdvertiseKeys = _decode(r.pending[2], AdvertiseKeys)
    bad = AdvertiseKeys(r.sid, dataclasses.replace(msg.keys, mask_public_key=bytes(32)))
    r.offend_server(2, bad.encode(), AbortReason.BAD_SIGNATURE)


# Witnesses: the second violation of each order case, alone, on a fresh
# recorder. The generator checks that it is refused with also_violates[0], so
# every vector's also_violates names a real violation, not a claim.


def _witness_recipient_alone(r: _Recorder) -> None:
    r.run_to(_R1)
    r.offend_client(
        1, UnmaskRequest(r.sid, 1, r.config.participants, ()).encode(), AbortReason.WRONG_ROUND
    )


def _witness_signature_alone(r: _Recorder) -> None:
    out = r.run_to(_R1)
    d: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = list(d.entries)
    entries[3] = dataclasses.replace(entries[3], mask_public_key=b"\x05" * 32)
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.BAD_SIGNATURE)


def _witness_threshold_alone(r: _Recorder) -> None:
    out = r.run_to(_R2)
    b: ShareBundle = _decode(out[1], ShareBundle)
    r.offend_client(1, _tamper(out[1], ciphertexts=b.ciphertexts[:1]), AbortReason.BELOW_THRESHOLD)


def _witness_signatures_alone(r: _Recorder) -> None:
    out, req = _unmask_request(r)
    forged = tuple((s, bytes(64)) for s, _ in req.signatures)
    r.offend_client(1, _tamper(out[1], signatures=forged), AbortReason.BAD_SIGNATURE)


def _witness_sender_alone(r: _Recorder) -> None:
    r.run_to(_R1)
    r.offend_server(9, ShareKeys(r.sid, 9, bytes(32), ()).encode(), AbortReason.WRONG_SENDER)


def _witness_small_order_alone(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    keys: AdvertisedKeys = _decode(r.pending[2], AdvertiseKeys).keys
    signed = ed25519_sign(
        identity_secret(2), advertise_payload(r.sid, 2, keys.cipher_public_key, bytes(32))
    )
    bad = dataclasses.replace(keys, mask_public_key=bytes(32), signature=signed)
    r.offend_server(2, AdvertiseKeys(r.sid, bad).encode(), AbortReason.INVALID_PUBLIC_KEY)


@dataclass(frozen=True)
class _Bad:
    name: str
    description: str
    build: Callable[[_Recorder], None]
    num_clients: int = 5
    graph: GraphKind = GraphKind.COMPLETE
    degree: int = 0
    threshold: int | None = None
    mode: Mode = Mode.SEMI_HONEST
    dropouts: Mapping[int, Round] = field(default_factory=dict)
    also_violates: tuple[AbortReason, ...] = ()
    witness: Callable[[_Recorder], None] | None = None  # also_violates[0] alone


_UNMASK_STAGE: Final = {5: _R2}  # client 5 drops before sending its masked input

_NEGATIVE: Final = (
    _Bad(
        "own_keys_not_echoed",
        "The key directory sent to client 1 alters client 1's own mask public key.",
        _own_keys_not_echoed,
    ),
    _Bad(
        "duplicate_public_keys",
        "The key directory sent to client 1 gives client 4 client 3's mask public key.",
        _duplicate_keys,
    ),
    _Bad(
        "small_order_key_server",
        "Client 2's round-0 message advertises the all-zero (small-order) X25519 point as "
        "its mask key: the server refuses it.",
        _small_order_key_server,
    ),
    _Bad(
        "small_order_key",
        "The key directory sent to client 1 replaces client 3's cipher key with the "
        "all-zero (small-order) X25519 point.",
        _small_order_key_client,
    ),
    _Bad(
        "duplicate_public_keys_server",
        "A round-0 message for client 2 reuses client 1's public keys: the server refuses it.",
        _duplicate_keys_server,
    ),
    _Bad(
        "non_neighbour_keys",
        "SecAgg+ (Harary, 10 clients, degree 4): the key directory sent to client 1 also "
        "holds the keys of a client that is not its neighbour.",
        _non_neighbour_keys,
        num_clients=10,
        graph=GraphKind.HARARY,
        degree=4,
        threshold=3,
    ),
    _Bad(
        "advertise_signature",
        "Active mode: the key directory sent to client 1 replaces client 3's cipher key, "
        "keeping client 3's signature.",
        _bad_advertise_signature,
        mode=Mode.ACTIVE,
    ),
    _Bad(
        "advertise_signature_server",
        "Active mode: client 4's round-0 message with an all-zero signature; the server "
        "refuses it.",
        _bad_advertise_signature_server,
        mode=Mode.ACTIVE,
    ),
    _Bad(
        "wrong_session_id",
        "Client 1's key directory carries another session id.",
        _wrong_session,
    ),
    _Bad(
        "wrong_session_id_server",
        "Client 2's round-0 message carries another session id; the server refuses it.",
        _wrong_session_server,
    ),
    _Bad(
        "wrong_recipient",
        "Client 1 is handed the key directory addressed to client 2.",
        _wrong_recipient,
    ),
    _Bad(
        "replayed_server_message",
        "Client 1 has answered its key directory; the same directory is delivered again.",
        _replayed_server_message,
    ),
    _Bad(
        "out_of_round_server_message",
        "Client 1, waiting for its share bundle, receives an unmasking request.",
        _out_of_round_server_message,
    ),
    _Bad(
        "client_message_out_of_round",
        "In round 2 the server receives client 2's round-1 ShareKeys message again.",
        _client_message_out_of_round,
    ),
    _Bad(
        "share_ciphertext_swap",
        "Client 1's share bundle swaps the ciphertexts of two senders: they do not open.",
        _share_swap,
    ),
    _Bad(
        "share_ciphertext_misaddressed",
        "Client 2's share bundle holds, as client 1's, the ciphertext client 1 addressed to "
        "client 3.",
        _share_misaddressed,
    ),
    _Bad(
        "shares_not_to_live_neighbours",
        "Client 1's ShareKeys omits the ciphertext for one live neighbour; the server refuses it.",
        _shares_not_to_live_neighbours,
    ),
    _Bad(
        "survivors_dropped_overlap",
        "Client 5 dropped in round 2; client 1's unmasking request lists client 2 as both "
        "survivor and dropped.",
        _overlap,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "second_unmask_request",
        "Client 1 has answered its unmasking request; a second one (now claiming client 2 "
        "dropped, to learn both of its secrets) is refused, and the client stays completed.",
        _second_unmask_request,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "unclassified_neighbour",
        "Client 5 dropped in round 2; client 1's unmasking request lists it neither as "
        "survivor nor as dropped.",
        _unclassified_neighbour,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "below_threshold_survivors",
        "Client 1's unmasking request claims only clients 1 and 2 survived (threshold 3).",
        _below_threshold_survivors,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "unmask_response_other_shares",
        "Client 1's unmasking response omits the mask-key share of the dropped client 5; the "
        "server refuses it.",
        _unmask_response_other_shares,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "unmask_survivors_differ_from_signed",
        "Active mode: the unmasking request sent to client 1 drops client 4 from the survivor "
        "set client 1 signed in round 3.",
        _survivors_differ_from_signed,
        mode=Mode.ACTIVE,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "too_few_consistency_signatures",
        "Active mode: client 1's unmasking request carries only 2 consistency signatures "
        "(threshold 3).",
        _too_few_signatures,
        mode=Mode.ACTIVE,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "consistency_signature",
        "Active mode: client 2's unmasking request carries a forged consistency signature of "
        "client 3.",
        _bad_consistency_signature,
        mode=Mode.ACTIVE,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "consistency_signature_server",
        "Active mode: client 1's consistency signature is all zeros; the server refuses it.",
        _bad_consistency_signature_server,
        mode=Mode.ACTIVE,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "below_threshold_directory",
        "Client 1's key directory lists only itself and one other client (threshold 3).",
        _below_threshold_directory,
    ),
    _Bad(
        "replayed_client_message",
        "The server receives client 1's round-0 message twice.",
        _replayed_client_message,
    ),
    _Bad(
        "wrong_length_masked_vector",
        "Client 1's masked input is 3 bytes instead of ceil(4 * 16 / 8) = 8.",
        _wrong_vector_length,
    ),
    _Bad(
        "wrong_sender",
        "Client 3 never advertised keys (dropped in round 0); a ShareKeys message in its name "
        "is refused.",
        _wrong_sender,
        dropouts={3: _R0},
    ),
    _Bad(
        "malformed_bytes",
        "The server receives bytes that are not a canonical CBOR message.",
        _malformed_to_server,
    ),
    _Bad(
        "malformed_bytes_client",
        "Client 1 receives bytes that are not a canonical CBOR message instead of its key "
        "directory.",
        _malformed_to_client,
    ),
    # -- check order (§12.11): one message, two violations, one defined reason.
    _Bad(
        "order_own_keys_before_neighbour",
        "SecAgg+ (Harary, 10 clients, degree 4): client 1's key directory alters client 1's "
        "own mask key AND adds a non-neighbour's entry; §12.5 step 1 comes before step 2.",
        _order_own_keys_then_neighbour,
        num_clients=10,
        graph=GraphKind.HARARY,
        degree=4,
        threshold=3,
        also_violates=(AbortReason.NOT_A_NEIGHBOUR,),
        witness=_non_neighbour_keys,
    ),
    _Bad(
        "order_session_before_recipient",
        "Client 1 receives client 2's key directory with another session id: §12.1 client "
        "step 4 (session) comes before step 6 (recipient).",
        _order_session_then_recipient,
        also_violates=(AbortReason.WRONG_RECIPIENT,),
        witness=_wrong_recipient,
    ),
    _Bad(
        "order_recipient_before_round",
        "Client 1, waiting for its key directory, receives an unmasking request addressed "
        "to client 2: §12.1 client step 6 (recipient) comes before step 7 (round).",
        _order_recipient_then_round,
        also_violates=(AbortReason.WRONG_ROUND,),
        witness=_witness_recipient_alone,
    ),
    _Bad(
        "order_duplicate_before_signature",
        "Active mode: client 1's key directory gives client 4 client 3's mask key, which "
        "also breaks client 4's signature: §12.5 step 3 (duplicates) comes before step 4.",
        _order_duplicate_then_signature,
        mode=Mode.ACTIVE,
        also_violates=(AbortReason.BAD_SIGNATURE,),
        witness=_witness_signature_alone,
    ),
    _Bad(
        "order_neighbour_before_threshold",
        "Client 1's share bundle holds a single ciphertext, from id 9, which is not in its "
        "directory: §12.6 step 1 (senders) comes before step 2 (threshold).",
        _order_stranger_then_threshold,
        also_violates=(AbortReason.BELOW_THRESHOLD,),
        witness=_witness_threshold_alone,
    ),
    _Bad(
        "order_overlap_before_threshold",
        "Client 1's unmasking request names survivors {1, 2} (below the threshold 3) and "
        "lists client 2 as dropped too: §12.9 step 1 (overlap) comes before step 2.",
        _order_overlap_then_threshold,
        dropouts=_UNMASK_STAGE,
        also_violates=(AbortReason.BELOW_THRESHOLD, AbortReason.INCONSISTENT_SURVIVORS),
        witness=_below_threshold_survivors,
    ),
    _Bad(
        "order_survivors_before_signatures",
        "Active mode: client 1's unmasking request changes the survivor set client 1 signed "
        "and forges every consistency signature: §12.9 step 2 (survivor check) comes before "
        "step 3 (signatures).",
        _order_survivor_check_then_signatures,
        mode=Mode.ACTIVE,
        dropouts=_UNMASK_STAGE,
        also_violates=(AbortReason.BAD_SIGNATURE,),
        witness=_witness_signatures_alone,
    ),
    _Bad(
        "completed_wrong_session",
        "Client 1 has completed; an unmasking request with another session id is refused "
        "with wrong_session (§12.1 step 4 comes before the second-request rule of step 7) "
        "and the client stays completed.",
        _completed_wrong_session,
        dropouts=_UNMASK_STAGE,
        also_violates=(AbortReason.SECOND_UNMASK_REQUEST,),
        witness=_second_unmask_request,
    ),
    _Bad(
        "completed_malformed_bytes",
        "Client 1 has completed; undecodable bytes are refused (malformed_message) and the "
        "client stays completed.",
        _completed_malformed,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "completed_other_message",
        "Client 1 has completed; a share bundle is refused (wrong_round) and the client "
        "stays completed.",
        _completed_other_message,
        dropouts=_UNMASK_STAGE,
    ),
    _Bad(
        "order_server_session_before_replay",
        "The server receives client 1's round-0 message again, with another session id: "
        "§12.1 server step 4 (session) comes before step 6 (replay).",
        _order_server_session_then_replay,
        also_violates=(AbortReason.REPLAYED_MESSAGE,),
        witness=_replayed_client_message,
    ),
    _Bad(
        "order_server_round_before_sender",
        "In round 0 the server receives a ShareKeys from id 9, no participant: §12.1 server "
        "step 5 (round) comes before step 7 (sender).",
        _order_server_round_then_sender,
        also_violates=(AbortReason.WRONG_SENDER,),
        witness=_witness_sender_alone,
    ),
    _Bad(
        "order_server_replay_before_length",
        "In round 2 client 1's masked input arrives again, 3 bytes long: §12.1 server step 6 "
        "(replay) comes before the R2 length check.",
        _order_server_replay_then_length,
        also_violates=(AbortReason.WRONG_VECTOR_LENGTH,),
        witness=_wrong_vector_length,
    ),
    _Bad(
        "order_server_signature_before_key",
        "Active mode: client 2's round-0 message advertises the all-zero (small-order) mask "
        "key under its original signature: §12.4 step 1 (signature) comes before step 2.",
        _order_server_signature_then_key,
        mode=Mode.ACTIVE,
        also_violates=(AbortReason.INVALID_PUBLIC_KEY,),
        witness=_witness_small_order_alone,
    ),
)


def _negative(spec: _Bad) -> Vector:
    name = "bad_" + spec.name
    seed = _SEED_PREFIX + name.encode()
    length, bits = 4, 16
    config = make_config(
        spec.num_clients,
        length,
        bit_width=bits,
        threshold=spec.threshold,
        graph=spec.graph,
        degree=spec.degree,
        mode=spec.mode,
        seed=seed,
    )
    inputs = _inputs(seed, config.participants, length, 1000)
    if spec.witness is not None:
        # offend_* raise AssertionError unless refused with also_violates[0].
        assert spec.also_violates, spec.name
        witness = _Recorder(config, seed, inputs, spec.dropouts)
        spec.witness(witness)
        assert witness.steps[-1]["abort_reason"] == spec.also_violates[0].value, spec.name
    recorder = _Recorder(config, seed, inputs, spec.dropouts)
    spec.build(recorder)
    last = recorder.steps[-1]
    assert last["success"] is False
    vector = _skeleton(name, spec.description, config, seed, inputs, spec.dropouts)
    vector["transcript"] = recorder.steps
    vector["success"] = False
    vector["party"] = last["party"]
    vector["abort_reason"] = last["abort_reason"]
    if spec.also_violates:
        vector["also_violates"] = [r.value for r in spec.also_violates]
    return vector


# ---------------------------------------------------------------------------
# Sessions the server aborts: every message is accepted (``"success": true``),
# then an advance() check fails and the server sends ``Abort`` (§12.1, §15).
# ---------------------------------------------------------------------------


def _wrong_self_mask_share(data: bytes) -> bytes:
    """An UnmaskResponse whose first self-mask share is off by one (still < p)."""
    msg: UnmaskResponse = _decode(data, UnmaskResponse)
    (owner, share), *rest = msg.self_mask_shares
    wrong = encode_share((decode_share(share) + 1) % FIELD_PRIME)
    return _tamper(data, self_mask_shares=((owner, wrong), *rest))


@dataclass(frozen=True)
class _Abort:
    name: str
    description: str
    reason: AbortReason
    num_clients: int = 5
    threshold: int | None = None
    mode: Mode = Mode.SEMI_HONEST
    dropouts: Mapping[int, Round] = field(default_factory=dict)
    deviations: Mapping[tuple[Round, int], Callable[[bytes], bytes]] = field(default_factory=dict)


_ABORTED: Final = (
    _Abort(
        "abort_below_threshold",
        "Complete graph, 5 clients, threshold 3; clients 3, 4 and 5 drop in round 2, so only "
        "2 masked inputs arrive: the server's round-2 advance() fails Recoverable "
        "(below_threshold) and it sends Abort(below_threshold) to the clients of round 2. "
        "Clients 1 and 2 (waiting in R2_MASKED_INPUT_COLLECTION) end ABORTED with that "
        "reason; the dropped clients never hear it.",
        AbortReason.BELOW_THRESHOLD,
        threshold=3,
        dropouts={3: _R2, 4: _R2, 5: _R2},
    ),
    _Abort(
        "abort_reconstruction_failed",
        "Active mode, complete graph, 5 clients, threshold 3. Client 1 deviates in round 4: "
        'its UnmaskResponse (step marked "deviating") carries a wrong share of client 2\'s '
        "self-mask seed. The server accepts it (a share cannot be checked alone), "
        "reconstructs a seed that misses client 2's commitment, aborts with "
        "reconstruction_failed before removing any mask, and sends Abort to the clients of "
        "round 4: they have all completed and ignore it (§14.1 rule 5).",
        AbortReason.RECONSTRUCTION_FAILED,
        threshold=3,
        mode=Mode.ACTIVE,
        deviations={(_R4, 1): _wrong_self_mask_share},
    ),
)


def _aborted(spec: _Abort) -> Vector:
    seed = _SEED_PREFIX + spec.name.encode()
    length = 4
    config = _config(
        tuple(range(1, spec.num_clients + 1)),
        length,
        bit_width=32,
        threshold=spec.threshold,
        graph=GraphKind.COMPLETE,
        degree=0,
        mode=spec.mode,
        seed=seed,
    )
    inputs = _inputs(seed, config.participants, length, 1000)
    recorder = _Recorder(config, seed, inputs, spec.dropouts)
    recorder.run_all(spec.deviations)
    assert recorder.server.round is Round.ABORTED, recorder.server.round
    assert recorder.server.abort_reason is spec.reason, recorder.server.abort_reason
    vector = _skeleton(spec.name, spec.description, config, seed, inputs, spec.dropouts)
    vector["transcript"] = recorder.steps
    vector["success"] = True
    vector["server_abort"] = {"abort_reason": spec.reason.value}
    vector["final_states"] = _final_states(recorder.clients)
    return vector


def generate_all() -> dict[str, Vector]:
    """Every test vector, keyed by file name (``<name>.json``)."""
    vectors = [_positive(s) for s in _POSITIVE]
    vectors.append(_fixed_point())
    vectors.extend(_aborted(s) for s in _ABORTED)
    vectors.extend(_negative(s) for s in _NEGATIVE)
    vectors.append(decoding_vector())
    vectors.append(parameter_vector())
    out: dict[str, Vector] = {}
    for v in vectors:
        file_name = f"{v['name']}.json"
        assert file_name not in out, file_name
        out[file_name] = v
    return out


# ---------------------------------------------------------------------------
# Decoding vectors: messages-v1.md §1, one input per way of breaking the subset.
# ---------------------------------------------------------------------------

_SID0: Final = "5820" + "00" * 32
# (case, hex, expected message type name or None for "refused: malformed_message").
# Written by hand from messages-v1.md §1 and §3; the generator asserts that the
# reference decoder agrees with every row.
_DECODING_CASES: Final[tuple[tuple[str, str, str | None], ...]] = (
    ("valid MaskedInput", f"8404{_SID0}014101", "MaskedInput"),
    ("valid ConsistencyRequest", f"8405{_SID0}018101", "ConsistencyRequest"),
    ("valid Abort", f"8309{_SID0}6963616e63656c6c6564", "Abort"),
    ("valid id 24 (1-byte head)", f"8405{_SID0}1818811818", "ConsistencyRequest"),
    ("valid id 300 (2-byte head)", f"8405{_SID0}19012c8119012c", "ConsistencyRequest"),
    (
        "valid id 2^32-1 (4-byte head)",
        f"8405{_SID0}1affffffff811affffffff",
        "ConsistencyRequest",
    ),
    ("non-minimal integer head: 1 as 1801", f"8404{_SID0}18014101", None),
    ("non-minimal integer head: 24 as 190018", f"8405{_SID0}190018811818", None),
    ("non-minimal integer head: 300 as 1a0000012c", f"8405{_SID0}1a0000012c8119012c", None),
    ("non-minimal integer head: 1 as 1b00..01", f"8404{_SID0}1b00000000000000014101", None),
    ("non-minimal message type: 4 as 1804", f"841804{_SID0}014101", None),
    ("non-minimal byte-string length head", f"8404{_SID0}01580101", None),
    ("non-minimal session-id length head", "8404590020" + "00" * 32 + "014101", None),
    ("non-minimal array length head", f"8405{_SID0}01980101", None),
    ("non-minimal outer array head", "9804" + f"04{_SID0}014101", None),
    ("indefinite-length outer array", f"9f04{_SID0}014101ff", None),
    ("indefinite-length inner array", f"8405{_SID0}019f01ff", None),
    ("indefinite-length byte string", f"8404{_SID0}015f4101ff", None),
    ("indefinite-length text string", f"8309{_SID0}7f6963616e63656c6c6564ff", None),
    ("trailing byte", f"8404{_SID0}01410100", None),
    ("truncated: last byte missing", f"8404{_SID0}0141", None),
    ("empty input", "", None),
    ("byte string longer than the input", f"8404{_SID0}014201", None),
    ("session id of 33 bytes (overlong)", "84045821" + "00" * 33 + "014101", None),
    ("session id of 31 bytes", "8404581f" + "00" * 31 + "014101", None),
    ("wrong major type: session id as text", "84047820" + "41" * 32 + "014101", None),
    ("wrong major type: sender as byte string", f"8404{_SID0}41014101", None),
    ("wrong major type: sender negative", f"8404{_SID0}204101", None),
    ("wrong major type: survivors as byte string", f"8405{_SID0}014101", None),
    ("wrong major type: masked vector as array", f"8404{_SID0}018101", None),
    ("wrong major type: abort reason as bytes", f"8309{_SID0}4963616e63656c6c6564", None),
    ("wrong major type: outer item not an array", "4401020304", None),
    ("map in a field", f"8404{_SID0}a101014101", None),
    ("map with unsorted keys", f"8404{_SID0}a2020001004101", None),
    ("map with duplicate keys", f"8404{_SID0}a2010001014101", None),
    ("tag", f"8404{_SID0}d9ffff014101", None),
    ("bignum tag", f"8404{_SID0}c241014101", None),
    ("half-precision float", f"8404{_SID0}f93c004101", None),
    ("simple value true", f"8404{_SID0}f54101", None),
    ("simple value null", f"8404{_SID0}f64101", None),
    ("id out of range: 2^32", f"8404{_SID0}1b00000001000000004101", None),
    ("id out of range: 0", f"8404{_SID0}004101", None),
    ("integer beyond 64 bits (bignum)", f"8404{_SID0}c2490100000000000000004101", None),
    ("unknown message type 10", f"840a{_SID0}014101", None),
    ("message type 0", f"8400{_SID0}014101", None),
    ("extra body field", f"8504{_SID0}01410100", None),
    ("missing body field", f"8304{_SID0}01", None),
    ("unknown abort reason", f"8309{_SID0}63666f6f", None),
    ("invalid UTF-8 in a text string", f"8309{_SID0}62c328", None),
    ("survivors not strictly increasing", f"8405{_SID0}0182020101", None),
)


def decoding_vector() -> Vector:
    """Inputs to ``decode_message``, each accepted (as the named type, re-encoding to
    the same bytes) or refused with ``malformed_message`` (messages-v1.md §1)."""
    cases: list[dict[str, Any]] = []
    for name, text, expected in _DECODING_CASES:
        got = decode_outcome(bytes.fromhex(text))
        want = expected if expected is not None else "malformed_message"
        assert got == want, f"decoding case {name!r}: the reference gives {got}, not {want}"
        cases.append({"name": name, "input": text, "valid": expected is not None, "result": want})
    return {
        "format": DECODING_FORMAT,
        "version": FORMAT_VERSION,
        "name": "decoding",
        "description": (
            "The deterministic CBOR subset of messages-v1.md §1 and the message shapes of §3: "
            "each input is either accepted (result: the message type, and the decoded "
            "message re-encodes to the identical bytes) or refused with malformed_message. "
            "The session id is all zeros: decoding does not check which session a "
            "message belongs to."
        ),
        "cases": cases,
    }


# ---------------------------------------------------------------------------
# Parameter vectors: §10, derive_parameters and the complete-graph fallback.
# ---------------------------------------------------------------------------

_SH, _SM = AdversaryClass.SEMI_HONEST, AdversaryClass.SEMI_MALICIOUS
# (n, dropout rate, corrupt rate, adversary, security bits, correctness bits)
_PARAMETER_ROWS: Final[tuple[tuple[int, float, float, AdversaryClass, int, int], ...]] = (
    # Rows of fcp's graph_parameter_finder_test.cc (both adversary classes).
    (100, 0.45, 0.45, _SH, 40, 20),
    (1000, 0.45, 0.45, _SH, 40, 20),
    (10000, 0.45, 0.45, _SH, 40, 20),
    (10, 0.33, 0.33, _SH, 40, 20),
    (1000, 0.33, 0.33, _SH, 40, 20),
    (100, 0.3, 0.3, _SM, 40, 20),
    (1000, 0.3, 0.3, _SM, 40, 20),
    (10000, 0.3, 0.3, _SM, 40, 20),
    (10, 0.33, 0.05, _SH, 40, 20),
    (100, 0.33, 0.05, _SH, 40, 20),
    (10000, 0.33, 0.05, _SH, 40, 20),
    (10, 0.33, 0.05, _SM, 40, 20),
    (1000, 0.33, 0.05, _SM, 40, 20),
    (10, 0.05, 0.33, _SH, 40, 20),
    (1000, 0.05, 0.33, _SM, 40, 20),
    (10, 0.05, 0.05, _SH, 40, 20),
    (100, 0.05, 0.05, _SH, 40, 20),
    (1000, 0.05, 0.05, _SM, 40, 20),
    (100, 0.0, 0.33, _SH, 40, 20),
    (1000, 0.0, 0.33, _SM, 40, 20),
    (1000, 0.1, 0.0, _SH, 40, 20),
    # Other security and correctness parameters.
    (1000, 0.1, 0.1, _SH, 80, 20),
    (1000, 0.1, 0.1, _SM, 40, 40),
    # Small cohort where degree 2 still qualifies (n = 8, no dropouts).
    (8, 0.0, 0.1, _SH, 40, 20),
    # No degree k < n - 1 qualifies: the complete graph (fcp's fallback), with a
    # threshold the configuration accepts (t <= n - 1) or not (t = n).
    (20, 0.45, 0.45, _SH, 40, 20),
    (10, 0.3, 0.3, _SM, 40, 20),
    (3, 0.05, 0.05, _SH, 40, 20),
    (5, 0.2, 0.1, _SM, 40, 20),
    # Refused: outside the feasibility limits of §10 or the ranges.
    (100, 0.5, 0.45, _SH, 40, 20),
    (100, 0.3, 0.35, _SM, 40, 20),
    (1_000_001, 0.1, 0.1, _SH, 40, 20),
)


def parameter_vector() -> Vector:
    """Rows of §10's derivation: inputs (n, δ, γ, adversary, σ, η) and outcome."""
    rows = []
    for n, delta, gamma, adversary, sigma, eta in _PARAMETER_ROWS:
        rows.append(
            {
                "num_clients": n,
                "dropout_rate": delta,
                "corrupt_rate": gamma,
                "adversary": adversary.value,
                "security_bits": sigma,
                "correctness_bits": eta,
                "expected": parameter_outcome(n, delta, gamma, adversary, sigma, eta),
            }
        )
    return {
        "format": PARAMETER_FORMAT,
        "version": FORMAT_VERSION,
        "name": "parameters",
        "description": (
            "secagg-v1.md §10: derive_parameters(n, dropout_rate, corrupt_rate, adversary, "
            "security_bits, correctness_bits). expected.graph = 'harary' with degree k and "
            "threshold t; or, when no even k < n - 1 qualifies, 'complete' with degree "
            "n - 1 and complete_graph_threshold (config_accepts: whether SessionConfig "
            "accepts t <= n - 1, see §19 item 1), or refused: true if that threshold fails "
            "its checks; graph null and refused: true when the inputs are outside §10's "
            "limits."
        ),
        "rows": rows,
    }
