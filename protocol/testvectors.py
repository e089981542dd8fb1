"""Transcript test vectors: generation and replay.

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

Format (``"format": "secagg-v1-transcript-vector"``, ``"version": 1``)::

    name, description, success
    config          every SessionConfig field (bytes as hex) + protocol_version, ciphersuite
    config_encoding hex of the canonical CBOR configuration (SessionConfig.encode())
    session_id      hex
    seed            hex; client u's randomness is
                    DeterministicRandom(seed || "/client/" || u32be(u))
    clients         [{id, rng_seed (hex, the full DeterministicRandom seed), input (ints),
                      neighbours, [identity_secret, identity_public_key (active mode)]}]
    dropouts        {"<id>": round}: the client never sends that round's message nor later ones
    transcript      [{step, round, direction (to_server|to_client), client, type, message (hex),
                      success, [party, abort_reason, state_after]}]
    result          positive only: survivors, dropped, aggregate (signed, centred lift),
                    aggregate_mod (unsigned, mod 2^b)
    encoding        optional: FixedPointEncoding parameters, float inputs, weights and the
                    encoded integers (which are the clients' inputs), decoded mean
    party, abort_reason  negative only (copied from the offending step)

``round`` is the server's round: for ``to_server`` the round it is
collecting, for ``to_client`` the round it has just advanced to. Replay
advances the server whenever a ``to_client`` step names a new round (and once
more after the last step of a positive vector).

This module is pure (no files, no clocks, no OS randomness): every random
byte comes from :class:`~protocol.crypto.DeterministicRandom`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from protocol._state import TERMINAL, Round
from protocol.client import ClientSession
from protocol.config import PROTOCOL_VERSION, GraphKind, Mode, SessionConfig
from protocol.crypto import CIPHERSUITE, DeterministicRandom, ed25519_public_key
from protocol.encoding import FixedPointEncoding, from_modular
from protocol.errors import AbortReason, DecodeError, RemoteProtocolError
from protocol.messages import (
    AdvertisedKeys,
    AdvertiseKeys,
    KeyDirectory,
    Message,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    decode_message,
)
from protocol.policy import SessionPolicy
from protocol.server import ServerSession
from protocol.simulate import DROP_ROUNDS, identity_secret, make_config, simulate

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INVARIANT_REASONS",
    "VectorMismatch",
    "check_vector",
    "client_rng_seed",
    "dumps_vector",
    "generate_all",
]

FORMAT: Final = "secagg-v1-transcript-vector"
FORMAT_VERSION: Final = 1

Vector = dict[str, Any]
"""A test vector: a JSON-able dict (see the module docstring)."""

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
_DROP_ORDER: Final = {r: i for i, r in enumerate(DROP_ROUNDS)}
_MALFORMED: Final = b"\xff\x00garbage"


class VectorMismatch(Exception):
    """A replayed vector disagrees with this implementation (or is malformed)."""


# ---------------------------------------------------------------------------
# Small shared helpers.
# ---------------------------------------------------------------------------


def client_rng_seed(seed: bytes, client: int) -> bytes:
    """The DeterministicRandom seed of ``client``, as :func:`protocol.simulate.simulate` uses."""
    return seed + b"/client/" + client.to_bytes(4, "big")


def _gone(dropouts: Mapping[int, Round], client: int, rnd: Round) -> bool:
    """True if ``client`` has dropped by ``rnd`` (it neither receives nor answers)."""
    if client not in dropouts:
        return False
    if rnd in TERMINAL:
        return True
    return _DROP_ORDER[dropouts[client]] <= _DROP_ORDER[rnd]


def _type_name(data: bytes) -> str:
    try:
        return decode_message(data).TYPE.name
    except DecodeError:
        return "MALFORMED"


def dumps_vector(vector: Mapping[str, Any]) -> str:
    """The canonical file text of a vector: sorted keys, 2-space indent, final newline."""
    return json.dumps(vector, indent=2, sort_keys=True) + "\n"


def _int_list(values: npt.NDArray[np.integer]) -> list[int]:
    return [int(v) for v in values]


def _inputs(seed: bytes, parts: Sequence[int], length: int, bound: int) -> dict[int, list[int]]:
    """Readable pseudo-random integer inputs in ``[-bound, bound]``."""
    out: dict[int, list[int]] = {}
    for u in parts:
        raw = DeterministicRandom(seed + b"/inputs/" + u.to_bytes(4, "big")).random_bytes(
            4 * length
        )
        out[u] = [
            int.from_bytes(raw[4 * i : 4 * i + 4], "little") % (2 * bound + 1) - bound
            for i in range(length)
        ]
    return out


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
        "type": _type_name(data),
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


_R0, _R1, _R2, _R3, _R4 = DROP_ROUNDS

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
)


def _positive(spec: _Good) -> Vector:
    seed = _SEED_PREFIX + spec.name.encode()
    config = make_config(
        spec.num_clients,
        spec.vector_length,
        bit_width=spec.bit_width,
        threshold=spec.threshold,
        graph=spec.graph,
        degree=spec.degree,
        mode=spec.mode,
        seed=seed,
    )
    inputs = _inputs(seed, config.participants, spec.vector_length, spec.input_bound)
    return _recorded_session(spec.name, spec.description, config, seed, inputs, spec.dropouts)


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


def _fixed_point() -> Vector:
    name = "fixed_point_encoding"
    seed = _SEED_PREFIX + name.encode()
    n, d = 5, 7
    enc = _ENCODING
    bits = enc.required_bit_width(n)
    config = make_config(n, d + 1, bit_width=bits, seed=seed)
    floats: dict[int, list[float]] = {}
    weights: dict[int, int] = {}
    encoded: dict[int, list[int]] = {}
    for u in config.participants:
        raw = DeterministicRandom(seed + b"/floats/" + u.to_bytes(4, "big")).random_bytes(2 * d + 1)
        # Values in [-1.2, 1.2] with three decimals: some get clipped.
        floats[u] = [
            (int.from_bytes(raw[2 * i : 2 * i + 2], "little") % 2401 - 1200) / 1000
            for i in range(d)
        ]
        weights[u] = 1 + raw[2 * d] % enc.max_weight
        vec = enc.encode(
            np.asarray(floats[u], dtype=np.float64),
            weights[u],
            DeterministicRandom(_encoding_rng_seed(seed, u)),
        )
        encoded[u] = _int_list(vec)
    dropouts = {3: _R2}
    vector = _recorded_session(
        name,
        "FixedPointEncoding (clip 1.0, scale 256, max weight 100) of float vectors with "
        "integer weights; the weight is the last slot. b = required_bit_width(5) = "
        f"{bits}. Client 3 drops in round 2.",
        config,
        seed,
        encoded,
        dropouts,
    )
    mean, total_weight = enc.decode(np.asarray(vector["result"]["aggregate"], dtype=np.int64))
    vector["encoding"] = {
        "clip": enc.clip,
        "scale": enc.scale,
        "max_weight": enc.max_weight,
        "rounding": "encode(x, weight, DeterministicRandom(seed || '/encoding/' || u32be(id)))",
        "clients": [
            {
                "id": u,
                "x": floats[u],
                "weight": weights[u],
                "rounding_rng_seed": _encoding_rng_seed(seed, u).hex(),
                "encoded": encoded[u],
            }
            for u in config.participants
        ],
        "decoded_mean": [float(m) for m in mean],
        "total_weight": total_weight,
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
        self._started = False

    def start_all(self) -> None:
        self._started = True
        for u, c in self.clients.items():
            if not _gone(self.dropouts, u, Round.R0_ADVERTISE_KEYS):
                self.pending[u] = c.start()

    def send(self, u: int) -> bytes:
        data = self.pending.pop(u)
        self.steps.append(_step(len(self.steps), self.server.round, "to_server", u, data))
        self.server.receive(data)
        return data

    def advance(self) -> dict[int, bytes]:
        out = self.server.advance()
        self.batch_round = self.server.round
        return out

    def deliver(self, u: int, data: bytes) -> None:
        self.steps.append(_step(len(self.steps), self.batch_round, "to_client", u, data))
        if _gone(self.dropouts, u, self.batch_round):
            return
        reply = self.clients[u].receive(data)
        if reply is not None:
            self.pending[u] = reply

    def deliver_and_send(self, out: Mapping[int, bytes]) -> None:
        for u, data in out.items():
            self.deliver(u, data)
            if u in self.pending:
                self.send(u)

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
    recorder = _Recorder(config, seed, inputs, spec.dropouts)
    spec.build(recorder)
    last = recorder.steps[-1]
    assert last["success"] is False
    vector = _skeleton(name, spec.description, config, seed, inputs, spec.dropouts)
    vector["transcript"] = recorder.steps
    vector["success"] = False
    vector["party"] = last["party"]
    vector["abort_reason"] = last["abort_reason"]
    return vector


def generate_all() -> dict[str, Vector]:
    """Every test vector, keyed by file name (``<name>.json``)."""
    vectors = [_positive(s) for s in _POSITIVE]
    vectors.append(_fixed_point())
    vectors.extend(_negative(s) for s in _NEGATIVE)
    out: dict[str, Vector] = {}
    for v in vectors:
        file_name = f"{v['name']}.json"
        assert file_name not in out, file_name
        out[file_name] = v
    return out


# ---------------------------------------------------------------------------
# Replay.
# ---------------------------------------------------------------------------


def _field(obj: Any, key: str, kind: type[Any] | tuple[type[Any], ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise VectorMismatch(f"malformed vector: {where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise VectorMismatch(f"malformed vector: {where}.{key} has the wrong type")
    return value


def _hex(obj: Any, key: str, where: str) -> bytes:
    text = _field(obj, key, str, where)
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise VectorMismatch(f"malformed vector: {where}.{key} is not hex") from exc


def _config_from_vector(vector: Mapping[str, Any]) -> SessionConfig:
    c = _field(vector, "config", dict, "vector")
    if c.get("protocol_version") != PROTOCOL_VERSION or c.get("ciphersuite") != CIPHERSUITE:
        raise VectorMismatch(
            f"vector is for {c.get('protocol_version')} / {c.get('ciphersuite')}, "
            f"not {PROTOCOL_VERSION} / {CIPHERSUITE}"
        )
    try:
        config = SessionConfig(
            participants=tuple(_field(c, "participants", list, "config")),
            threshold=_field(c, "threshold", int, "config"),
            vector_length=_field(c, "vector_length", int, "config"),
            bit_width=_field(c, "bit_width", int, "config"),
            nonce=_hex(c, "nonce", "config"),
            mode=Mode(_field(c, "mode", str, "config")),
            graph=GraphKind(_field(c, "graph", str, "config")),
            degree=_field(c, "degree", int, "config"),
            identity_keys=tuple(
                bytes.fromhex(k) for k in _field(c, "identity_keys", list, "config")
            ),
            context=_hex(c, "context", "config"),
        )
    except VectorMismatch:
        raise
    except Exception as exc:
        raise VectorMismatch(f"invalid configuration: {exc}") from exc
    if config.encode() != _hex(vector, "config_encoding", "vector"):
        raise VectorMismatch(
            f"config encoding differs: computed {config.encode().hex()}, "
            f"vector has {vector['config_encoding']}"
        )
    if config.session_id != _hex(vector, "session_id", "vector"):
        raise VectorMismatch(
            f"session id differs: computed {config.session_id.hex()}, "
            f"vector has {vector['session_id']}"
        )
    return config


@dataclass
class _ClientData:
    input: list[int]
    rng_seed: bytes
    identity_secret: bytes | None


def _clients_from_vector(
    vector: Mapping[str, Any], config: SessionConfig
) -> dict[int, _ClientData]:
    seed = _hex(vector, "seed", "vector")
    graph = config.neighbour_graph
    out: dict[int, _ClientData] = {}
    for entry in _field(vector, "clients", list, "vector"):
        u = _field(entry, "id", int, "client")
        where = f"client {u}"
        rng_seed = _hex(entry, "rng_seed", where)
        if rng_seed != client_rng_seed(seed, u):
            raise VectorMismatch(f"{where}: rng_seed is not seed || '/client/' || u32be({u})")
        nbrs = _field(entry, "neighbours", list, where)
        if nbrs != sorted(graph.neighbours(u)):
            raise VectorMismatch(
                f"{where}: neighbours differ: computed {sorted(graph.neighbours(u))}, "
                f"vector has {nbrs}"
            )
        ident: bytes | None = None
        if config.mode is Mode.ACTIVE:
            ident = _hex(entry, "identity_secret", where)
            public = _hex(entry, "identity_public_key", where)
            if ed25519_public_key(ident) != public or public != config.identity_key(u):
                raise VectorMismatch(f"{where}: identity key does not match the configuration")
        values = _field(entry, "input", list, where)
        if len(values) != config.vector_length or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in values
        ):
            raise VectorMismatch(f"{where}: input must be {config.vector_length} integers")
        out[u] = _ClientData(values, rng_seed, ident)
    if sorted(out) != list(config.participants):
        raise VectorMismatch("clients must list exactly the participants")
    return out


def _dropouts_from_vector(vector: Mapping[str, Any]) -> dict[int, Round]:
    raw = _field(vector, "dropouts", dict, "vector")
    try:
        drops = {int(u): Round(r) for u, r in raw.items()}
    except ValueError as exc:
        raise VectorMismatch(f"malformed vector: dropouts: {exc}") from exc
    if any(r not in _DROP_ORDER for r in drops.values()):
        raise VectorMismatch("malformed vector: a dropout round must be R0 .. R4")
    return drops


def _check_encoding(vector: Mapping[str, Any], clients: Mapping[int, _ClientData]) -> None:
    enc_data = vector.get("encoding")
    if enc_data is None:
        return
    try:
        enc = FixedPointEncoding(
            clip=enc_data["clip"], scale=enc_data["scale"], max_weight=enc_data["max_weight"]
        )
        for entry in enc_data["clients"]:
            u = entry["id"]
            got = _int_list(
                enc.encode(
                    np.asarray(entry["x"], dtype=np.float64),
                    entry["weight"],
                    DeterministicRandom(bytes.fromhex(entry["rounding_rng_seed"])),
                )
            )
            if got != entry["encoded"]:
                raise VectorMismatch(
                    f"encoding of client {u}: computed {got}, vector has {entry['encoded']}"
                )
            if got != clients[u].input:
                raise VectorMismatch(f"client {u}: input is not its encoded vector")
        total = np.asarray(vector["result"]["aggregate"], dtype=np.int64)
        mean, weight = enc.decode(total)
        if [float(m) for m in mean] != enc_data["decoded_mean"] or weight != enc_data[
            "total_weight"
        ]:
            raise VectorMismatch(
                f"decoded mean differs: computed {[float(m) for m in mean]} / {weight}"
            )
    except VectorMismatch:
        raise
    except Exception as exc:
        raise VectorMismatch(f"encoding section: {type(exc).__name__}: {exc}") from exc


class _Replay:
    """Fresh clients fed the recorded server messages, a fresh server fed the recorded
    client messages; each side's output is compared with the recording."""

    def __init__(
        self,
        config: SessionConfig,
        clients: Mapping[int, _ClientData],
        dropouts: Mapping[int, Round],
    ) -> None:
        self.config = config
        self.dropouts = dropouts
        self.clients = {
            u: ClientSession(
                config,
                u,
                np.asarray(d.input, dtype=np.int64),
                rng=DeterministicRandom(d.rng_seed),
                identity_key=d.identity_secret,
                policy=SessionPolicy.protocol_only(),
            )
            for u, d in clients.items()
        }
        self.server = ServerSession(config)
        self.pending: dict[int, bytes] = {}
        self.batch: dict[int, bytes] | None = None
        self.batch_round: Round | None = None
        self.batch_seen: set[int] = set()
        for u, c in self.clients.items():
            if not _gone(dropouts, u, Round.R0_ADVERTISE_KEYS):
                self.pending[u] = c.start()

    def to_server(self, u: int, rnd: Round, data: bytes) -> None:
        # The client's side: it must have sent exactly these bytes.
        if u not in self.pending:
            raise VectorMismatch(f"client {u} has nothing to send here")
        mine = self.pending.pop(u)
        if mine != data:
            raise VectorMismatch(
                f"client {u}'s {_type_name(mine)} differs from the vector's: {_diff(mine, data)}"
            )
        # The server's side.
        if self.server.round is not rnd:
            raise VectorMismatch(f"the server is in {self.server.round.value}, not {rnd.value}")
        self.server.receive(data)

    def _close_batch(self) -> None:
        if self.batch is not None and self.batch_seen != set(self.batch):
            missing = sorted(set(self.batch) - self.batch_seen)
            raise VectorMismatch(
                f"the server also sent to clients {missing} in {self.batch_round}, "
                "which the vector omits"
            )

    def to_client(self, u: int, rnd: Round, data: bytes) -> None:
        # The server's side: a new round label means it advanced.
        if self.batch_round is not rnd:
            self._close_batch()
            self.batch = self.server.advance()
            self.batch_round = self.server.round
            self.batch_seen = set()
            if self.server.round is not rnd:
                detail = (
                    f" ({self.server.abort_reason}: {self.server.abort_detail})"
                    if self.server.abort_reason
                    else ""
                )
                raise VectorMismatch(
                    f"the server advanced to {self.server.round.value}{detail}, "
                    f"the vector says {rnd.value}"
                )
        assert self.batch is not None
        if u not in self.batch or u in self.batch_seen:
            raise VectorMismatch(f"the server sends no (further) message to client {u}")
        self.batch_seen.add(u)
        if self.batch[u] != data:
            ours = self.batch[u]
            raise VectorMismatch(
                f"the server's {_type_name(ours)} to client {u} differs from the vector's: "
                f"{_diff(ours, data)}"
            )
        # The client's side.
        if _gone(self.dropouts, u, rnd):
            return
        if u in self.pending:
            raise VectorMismatch(f"client {u}'s previous reply is missing from the vector")
        reply = self.clients[u].receive(data)
        if reply is not None:
            self.pending[u] = reply

    def finish(self) -> None:
        self._close_batch()
        if self.pending:
            raise VectorMismatch(f"replies of clients {sorted(self.pending)} are missing")
        if self.server.round not in TERMINAL:
            out = self.server.advance()
            if out:
                raise VectorMismatch(f"the server sends more messages, to {sorted(out)}")
        if self.server.round is not Round.COMPLETED:
            raise VectorMismatch(
                f"the server ends in {self.server.round.value} "
                f"({self.server.abort_reason}: {self.server.abort_detail})"
            )


def _diff(ours: bytes, theirs: bytes) -> str:
    """Where two messages first differ, with a little hex context around it."""
    k = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    lo = max(0, k - 4)
    return (
        f"first difference at byte {k} (computed {len(ours)} bytes, vector {len(theirs)}): "
        f"computed ...{ours[lo : k + 8].hex()}..., vector ...{theirs[lo : k + 8].hex()}..."
    )


def _check_result(
    vector: Mapping[str, Any],
    config: SessionConfig,
    replay: _Replay,
    clients: Mapping[int, _ClientData],
) -> None:
    res = _field(vector, "result", dict, "vector")
    got = replay.server.result
    if list(got.survivors) != res.get("survivors") or list(got.dropped) != res.get("dropped"):
        raise VectorMismatch(
            f"result: survivors {list(got.survivors)} / dropped {list(got.dropped)}, vector has "
            f"{res.get('survivors')} / {res.get('dropped')}"
        )
    words = _int_list(got.aggregate)
    if words != res.get("aggregate_mod"):
        raise VectorMismatch(
            f"result: aggregate_mod {words}, vector has {res.get('aggregate_mod')}"
        )
    signed = _int_list(from_modular(got.aggregate, config.bit_width))
    if signed != res.get("aggregate"):
        raise VectorMismatch(f"result: aggregate {signed}, vector has {res.get('aggregate')}")
    # The vector itself must be right: the sum of the survivors' inputs.
    plain = sum(
        (np.asarray(clients[u].input, dtype=object) for u in got.survivors),
        start=np.zeros(config.vector_length, dtype=object),
    )
    expected = [int(x) % (1 << config.bit_width) for x in plain]
    if expected != words:
        raise VectorMismatch(f"result: the survivors' inputs sum to {expected} mod 2^b")


def _offence(replay: _Replay, step: Mapping[str, Any], where: str) -> None:
    party = _field(step, "party", str, where)
    reason = AbortReason(_field(step, "abort_reason", str, where))
    state_after = Round(_field(step, "state_after", str, where))
    u = _field(step, "client", int, where)
    data = _hex(step, "message", where)
    direction = _field(step, "direction", str, where)
    rnd = Round(_field(step, "round", str, where))
    if party == "server":
        if direction != "to_server":
            raise VectorMismatch(f"{where}: the server can only refuse a to_server message")
        if replay.server.round is not rnd:
            raise VectorMismatch(
                f"{where}: the server is in {replay.server.round.value}, not {rnd.value}"
            )
        target = "the server"

        def deliver() -> None:
            replay.server.receive(data)

        def state() -> Round:
            return replay.server.round
    else:
        if party != f"client {u}" or direction != "to_client":
            raise VectorMismatch(f"{where}: party {party!r} does not receive this message")
        client = replay.clients[u]
        target = party

        def deliver() -> None:
            client.receive(data)

        def state() -> Round:
            return client.round

    try:
        deliver()
    except RemoteProtocolError as exc:
        if exc.reason is not reason:
            raise VectorMismatch(
                f"{where}: {target} refuses with {exc.reason.value} ({exc.detail}), "
                f"the vector expects {reason.value}"
            ) from exc
    except Exception as exc:
        raise VectorMismatch(
            f"{where}: {target} raises {type(exc).__name__}: {exc}, "
            f"the vector expects RemoteProtocolError({reason.value})"
        ) from exc
    else:
        raise VectorMismatch(f"{where}: {target} accepts the message; expected {reason.value}")
    if state() is not state_after:
        raise VectorMismatch(
            f"{where}: {target} ends in {state().value}, the vector says {state_after.value}"
        )


def check_vector(vector: Mapping[str, Any]) -> None:
    """Replay a vector against this implementation.

    Positive vectors: fresh clients (with the vector's deterministic randomness)
    are fed the recorded server messages and must reply with exactly the
    recorded bytes; a fresh server is fed the recorded client messages and must
    send exactly the recorded messages and produce the recorded result.
    Negative vectors: the prefix is replayed the same way, then the offending
    message must be refused by the named party with the named abort reason.

    Raises:
        VectorMismatch: naming the first step that differs (or what is malformed).
    """
    if vector.get("format") != FORMAT or vector.get("version") != FORMAT_VERSION:
        raise VectorMismatch(f"not a {FORMAT} version {FORMAT_VERSION} vector")
    success = _field(vector, "success", bool, "vector")
    config = _config_from_vector(vector)
    clients = _clients_from_vector(vector, config)
    dropouts = _dropouts_from_vector(vector)
    if success:
        _check_encoding(vector, clients)
    try:
        replay = _Replay(config, clients, dropouts)
    except Exception as exc:
        raise VectorMismatch(f"cannot set up the sessions: {type(exc).__name__}: {exc}") from exc
    steps = _field(vector, "transcript", list, "vector")
    for i, step in enumerate(steps):
        ok = _field(step, "success", bool, f"step {i}")
        where = (
            f"step {i} ({step.get('direction')} {step.get('round')} client {step.get('client')} "
            f"{step.get('type')})"
        )
        if _field(step, "step", int, where) != i:
            raise VectorMismatch(f"{where}: steps must be numbered 0, 1, 2, ...")
        if not ok:
            if success or i != len(steps) - 1:
                raise VectorMismatch(f"{where}: only the last step of a bad_ vector may fail")
            if (vector.get("party"), vector.get("abort_reason")) != (
                step.get("party"),
                step.get("abort_reason"),
            ):
                raise VectorMismatch(f"{where}: party / abort_reason differ from the vector's")
            try:
                _offence(replay, step, where)
            except VectorMismatch:
                raise
            except Exception as exc:
                raise VectorMismatch(f"{where}: {type(exc).__name__}: {exc}") from exc
            return
        try:
            _replay_step(replay, step, where)
        except VectorMismatch as exc:
            raise VectorMismatch(f"{where}: {exc}") from exc
        except Exception as exc:
            raise VectorMismatch(f"{where}: {type(exc).__name__}: {exc}") from exc
    if not success:
        raise VectorMismatch("a bad_ vector must end with a step whose success is false")
    try:
        replay.finish()
    except VectorMismatch as exc:
        raise VectorMismatch(f"after the last step: {exc}") from exc
    except Exception as exc:
        raise VectorMismatch(f"after the last step: {type(exc).__name__}: {exc}") from exc
    _check_result(vector, config, replay, clients)


def _replay_step(replay: _Replay, step: Mapping[str, Any], where: str) -> None:
    u = _field(step, "client", int, where)
    rnd = Round(_field(step, "round", str, where))
    data = _hex(step, "message", where)
    direction = _field(step, "direction", str, where)
    if direction == "to_server":
        replay.to_server(u, rnd, data)
        party_field = "sender"
    elif direction == "to_client":
        replay.to_client(u, rnd, data)
        party_field = "recipient"
    else:
        raise VectorMismatch(f"unknown direction {direction!r}")
    # Both sides agreed on the bytes; the labels must describe them.
    msg = decode_message(data)
    if msg.TYPE.name != step.get("type"):
        raise VectorMismatch(f"the message is a {msg.TYPE.name}")
    if getattr(msg, party_field, None) != u:
        raise VectorMismatch(f"the message's {party_field} is {getattr(msg, party_field, None)}")
