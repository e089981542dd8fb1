"""Replay checker for the secagg-v1 test vectors (``specs/vectors``).

This module is the part of the vector tooling another implementation can
use: it reads vector files and checks this implementation against them
(:func:`check_vector`, :func:`replay_vector`), and it defines the formats.
The generator that writes the files lives apart, in
:mod:`protocol.testvectors` (as pyca ships ``cryptography_vectors`` apart
from its tests).

Three formats (``"format"``): ``FORMAT`` (transcripts), ``DECODING_FORMAT``
(inputs to the message decoder, each accepted or refused) and
``PARAMETER_FORMAT`` (rows of the §10 parameter derivation); all
``"version": 1``. The fields are specified in ``specs/vectors/README.md``.

A transcript records one session byte for byte: the configuration, the
seeds every client's randomness comes from, the inputs, the scripted
dropouts and every message on the wire, in order. Replay feeds fresh
clients the recorded server messages and compares their replies with the
recorded bytes, and feeds a fresh server the recorded client messages and
compares what it sends back. ``round`` is the server's round: for
``to_server`` the round it is collecting, for ``to_client`` the round it
has just advanced to; replay advances the server whenever a ``to_client``
step names a new round (and once more after the last step of a positive
vector).

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
    encoding        optional: the service's RoundEncoding parameters, task, round and the
                    context they bind; float inputs, weights, evaluation sums and the
                    encoded integers (which are the clients' inputs); decoded aggregate
    party, abort_reason  negative only (copied from the offending step)
    also_violates   optional, negative: other invariants the offending message breaks;
                    the check order of the spec (§12) makes abort_reason the one reported
    server_abort    instead of result: {abort_reason} of a session the server aborts
                    after accepting every message (it then sends Abort)
    final_states    optional: {"<id>": {state, abort_reason}} of every client at the end
    deviating       optional, on a to_server step: the client replaced its honest reply
                    by this message (replay delivers it without comparing)

Pure: no files, no clocks, no OS randomness.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from protocol._state import TERMINAL, Round
from protocol.client import ClientSession
from protocol.config import PROTOCOL_VERSION, GraphKind, Mode, SessionConfig
from protocol.crypto import CIPHERSUITE, DeterministicRandom, ed25519_public_key
from protocol.encoding import (
    EvalSums,
    FixedPointEncoding,
    RoundEncoding,
    from_modular,
    session_context,
)
from protocol.errors import AbortReason, DecodeError, ParameterError, RemoteProtocolError
from protocol.messages import Abort, decode_message
from protocol.params import AdversaryClass, complete_graph_threshold, derive_parameters
from protocol.policy import SessionPolicy
from protocol.server import ServerSession
from protocol.simulate import DROP_ROUNDS

__all__ = [
    "DECODING_FORMAT",
    "FORMAT",
    "FORMAT_VERSION",
    "PARAMETER_FORMAT",
    "ReplayedSessions",
    "Vector",
    "VectorMismatch",
    "check_vector",
    "client_rng_seed",
    "decode_outcome",
    "dropped_by",
    "dumps_vector",
    "message_type_name",
    "parameter_outcome",
    "replay_vector",
]


FORMAT: Final = "secagg-v1-transcript-vector"
FORMAT_VERSION: Final = 1

Vector = dict[str, Any]
"""A test vector: a JSON-able dict (see the module docstring)."""


_DROP_ORDER: Final = {r: i for i, r in enumerate(DROP_ROUNDS)}


class VectorMismatch(Exception):
    """A replayed vector disagrees with this implementation (or is malformed)."""


def client_rng_seed(seed: bytes, client: int) -> bytes:
    """The DeterministicRandom seed of ``client``, as :func:`protocol.simulate.simulate` uses."""
    return seed + b"/client/" + client.to_bytes(4, "big")


def dropped_by(dropouts: Mapping[int, Round], client: int, rnd: Round) -> bool:
    """True if ``client`` has dropped by ``rnd`` (it neither receives nor answers)."""
    if client not in dropouts:
        return False
    if rnd in TERMINAL:
        return True
    return _DROP_ORDER[dropouts[client]] <= _DROP_ORDER[rnd]


def message_type_name(data: bytes) -> str:
    """The message's type name (``KEY_DIRECTORY``, ...), or ``MALFORMED``."""
    try:
        return decode_message(data).TYPE.name
    except DecodeError:
        return "MALFORMED"


def dumps_vector(vector: Mapping[str, Any]) -> str:
    """The canonical file text of a vector: sorted keys, 2-space indent, final newline."""
    return json.dumps(vector, indent=2, sort_keys=True) + "\n"


def _int_list(values: npt.NDArray[np.integer]) -> list[int]:
    return [int(v) for v in values]


DECODING_FORMAT: Final = "secagg-v1-decoding-vector"
PARAMETER_FORMAT: Final = "secagg-v1-parameter-vector"


def decode_outcome(data: bytes) -> str:
    """The message type name, or ``malformed_message`` (a refusal of any other reason
    is reported as itself)."""
    try:
        msg = decode_message(data)
    except RemoteProtocolError as exc:
        return exc.reason.value
    if msg.encode() != data:
        return "accepted, but re-encodes differently"
    return type(msg).__name__


def _check_decoding(vector: Mapping[str, Any]) -> None:
    if vector.get("version") != FORMAT_VERSION:
        raise VectorMismatch(f"not a {DECODING_FORMAT} version {FORMAT_VERSION} vector")
    cases = _field(vector, "cases", list, "vector")
    if not cases:
        raise VectorMismatch("malformed vector: no cases")
    for i, case in enumerate(cases):
        where = f"case {i} ({case.get('name') if isinstance(case, dict) else '?'})"
        data = _hex(case, "input", where)
        want = _field(case, "result", str, where)
        if _field(case, "valid", bool, where) is (want == "malformed_message"):
            raise VectorMismatch(f"malformed vector: {where}: valid and result disagree")
        got = decode_outcome(data)
        if got != want:
            raise VectorMismatch(f"{where}: computed {got}, the vector says {want}")


def parameter_outcome(
    n: int, delta: float, gamma: float, adversary: AdversaryClass, sigma: int, eta: int
) -> dict[str, Any]:
    """What §10 derives: the Harary parameters, else the complete-graph threshold."""
    try:
        p = derive_parameters(n, delta, gamma, adversary, security_bits=sigma, correctness_bits=eta)
    except ParameterError as exc:
        if "use the complete graph" not in str(exc):
            return {"graph": None, "refused": True}
    else:
        return {"graph": "harary", "degree": p.degree, "threshold": p.threshold}
    try:
        t = complete_graph_threshold(n, delta, gamma, adversary)
    except ParameterError:
        return {"graph": "complete", "refused": True}
    return {
        "graph": "complete",
        "degree": n - 1,
        "threshold": t,
        "config_accepts": 1 <= t <= n - 1,
    }


def _check_parameters(vector: Mapping[str, Any]) -> None:
    if vector.get("version") != FORMAT_VERSION:
        raise VectorMismatch(f"not a {PARAMETER_FORMAT} version {FORMAT_VERSION} vector")
    rows = _field(vector, "rows", list, "vector")
    if not rows:
        raise VectorMismatch("malformed vector: no rows")
    for i, row in enumerate(rows):
        where = f"row {i}"
        try:
            args = (
                _field(row, "num_clients", int, where),
                float(_field(row, "dropout_rate", (int, float), where)),
                float(_field(row, "corrupt_rate", (int, float), where)),
                AdversaryClass(_field(row, "adversary", str, where)),
                _field(row, "security_bits", int, where),
                _field(row, "correctness_bits", int, where),
            )
        except ValueError as exc:
            raise VectorMismatch(f"malformed vector: {where}: {exc}") from exc
        got = parameter_outcome(*args)
        if got != row.get("expected"):
            raise VectorMismatch(
                f"{where} {args}: computed {got}, the vector says {row.get('expected')}"
            )


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


def _check_encoding(
    vector: Mapping[str, Any], config: SessionConfig, clients: Mapping[int, _ClientData]
) -> None:
    enc_data = vector.get("encoding")
    if enc_data is None:
        return
    try:
        round_enc = RoundEncoding(
            FixedPointEncoding(
                clip=enc_data["clip"], scale=enc_data["scale"], max_weight=enc_data["max_weight"]
            ),
            max_eval_examples=enc_data["max_eval_examples"],
            max_example_loss=enc_data["max_example_loss"],
            loss_scale=enc_data["loss_scale"],
        )
        context = session_context(
            enc_data["task_id"], enc_data["round_number"], round_enc.context()
        )
        if context.hex() != enc_data["context"] or context != config.context:
            raise VectorMismatch(
                f"encoding context: computed {context.hex()}, vector has {enc_data['context']} "
                f"and configuration context {config.context.hex()}"
            )
        for entry in enc_data["clients"]:
            u = entry["id"]
            got = _int_list(
                round_enc.encode(
                    np.asarray(entry["x"], dtype=np.float64),
                    entry["weight"],
                    EvalSums(entry["correct"], entry["count"], entry["loss_sum"]),
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
        mean, weight, sums = round_enc.decode(total)
        decoded = ([float(m) for m in mean], weight, [sums.correct, sums.count, sums.loss_sum])
        recorded = (enc_data["decoded_mean"], enc_data["total_weight"], enc_data["decoded_eval"])
        if decoded != recorded:
            raise VectorMismatch(f"decoded aggregate differs: computed {decoded}")
    except VectorMismatch:
        raise
    except Exception as exc:
        raise VectorMismatch(f"encoding section: {type(exc).__name__}: {exc}") from exc


def _client_session(config: SessionConfig, u: int, data: _ClientData) -> ClientSession:
    """The replayed client ``u``: the vector's input, randomness and identity key."""
    return ClientSession(
        config,
        u,
        np.asarray(data.input, dtype=np.int64),
        rng=DeterministicRandom(data.rng_seed),
        identity_key=data.identity_secret,
        # Vectors pin the protocol's checks, on sessions (2 clients, t = 1,
        # semi-honest) no deployed client's policy accepts (secagg-v1.md §4.7).
        policy=SessionPolicy.protocol_only(),
    )


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
        self.clients = {u: _client_session(config, u, d) for u, d in clients.items()}
        self.server = ServerSession(config)
        self.pending: dict[int, bytes] = {}
        self.batch: dict[int, bytes] | None = None
        self.batch_round: Round | None = None
        self.closing_round: Round | None = None
        self.batch_seen: set[int] = set()
        for u, c in self.clients.items():
            if not dropped_by(dropouts, u, Round.R0_ADVERTISE_KEYS):
                self.pending[u] = c.start()

    def to_server(self, u: int, rnd: Round, data: bytes, deviating: bool = False) -> None:
        # The client's side: it must have sent exactly these bytes, unless the
        # vector marks the client as deviating (its honest reply is replaced).
        if u not in self.pending:
            raise VectorMismatch(f"client {u} has nothing to send here")
        mine = self.pending.pop(u)
        if mine != data and not deviating:
            raise VectorMismatch(
                f"client {u}'s {message_type_name(mine)} differs from the vector's: "
                f"{_diff(mine, data)}"
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
            self.closing_round = self.server.round
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
                f"the server's {message_type_name(ours)} to client {u} differs from the vector's: "
                f"{_diff(ours, data)}"
            )
        # The client's side. An Abort closing round r reaches the clients that
        # drop only after r.
        heard_in = self.closing_round if rnd is Round.ABORTED else rnd
        assert heard_in is not None
        if dropped_by(self.dropouts, u, heard_in):
            return
        if u in self.pending:
            raise VectorMismatch(f"client {u}'s previous reply is missing from the vector")
        reply = self.clients[u].receive(data)
        if reply is not None:
            self.pending[u] = reply

    def finish(self, expected_abort: AbortReason | None) -> None:
        self._close_batch()
        if self.pending:
            raise VectorMismatch(f"replies of clients {sorted(self.pending)} are missing")
        if self.server.round not in TERMINAL:
            out = self.server.advance()
            if out:
                raise VectorMismatch(f"the server sends more messages, to {sorted(out)}")
        if expected_abort is not None:
            if (self.server.round, self.server.abort_reason) != (Round.ABORTED, expected_abort):
                raise VectorMismatch(
                    f"the server ends in {self.server.round.value} "
                    f"({self.server.abort_reason}), the vector says ABORTED "
                    f"({expected_abort.value})"
                )
            return
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


@dataclass(frozen=True)
class ReplayedSessions:
    """The sessions a transcript replay created, in their final states."""

    clients: Mapping[int, ClientSession]
    server: ServerSession


def check_vector(vector: Mapping[str, Any]) -> None:
    """Check one vector file of any of the three formats against this implementation.

    Transcript vectors (``FORMAT``) are replayed by :func:`replay_vector`;
    decoding vectors (``DECODING_FORMAT``) and parameter vectors
    (``PARAMETER_FORMAT``) are recomputed case by case.

    Raises:
        VectorMismatch: naming the first step or case that differs (or what is malformed).
    """
    fmt = vector.get("format")
    if fmt == DECODING_FORMAT:
        _check_decoding(vector)
    elif fmt == PARAMETER_FORMAT:
        _check_parameters(vector)
    else:
        replay_vector(vector)


def replay_vector(vector: Mapping[str, Any]) -> ReplayedSessions:
    """Replay a transcript vector against this implementation.

    Positive vectors: fresh clients (with the vector's deterministic randomness)
    are fed the recorded server messages and must reply with exactly the
    recorded bytes (except at a step marked ``deviating``); a fresh server is
    fed the recorded client messages and must send exactly the recorded
    messages and produce the recorded ``result``, or abort with the recorded
    ``server_abort`` reason; every client must end in its ``final_states``
    entry, if the vector has one. Negative vectors: the prefix is replayed the
    same way, then the offending message must be refused by the named party
    with the named abort reason.

    Returns:
        The replayed sessions, in their final states.

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
        _check_encoding(vector, config, clients)
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
            return ReplayedSessions(replay.clients, replay.server)
        try:
            _replay_step(replay, step, where)
        except VectorMismatch as exc:
            raise VectorMismatch(f"{where}: {exc}") from exc
        except Exception as exc:
            raise VectorMismatch(f"{where}: {type(exc).__name__}: {exc}") from exc
    if not success:
        raise VectorMismatch("a bad_ vector must end with a step whose success is false")
    expected_abort = _expected_abort(vector)
    try:
        replay.finish(expected_abort)
    except VectorMismatch as exc:
        raise VectorMismatch(f"after the last step: {exc}") from exc
    except Exception as exc:
        raise VectorMismatch(f"after the last step: {type(exc).__name__}: {exc}") from exc
    if expected_abort is None:
        _check_result(vector, config, replay, clients)
    _check_final_states(vector, replay)
    return ReplayedSessions(replay.clients, replay.server)


def _expected_abort(vector: Mapping[str, Any]) -> AbortReason | None:
    """The server's abort reason of a session that ends in ``Abort``, else None."""
    if "server_abort" not in vector:
        return None
    if "result" in vector:
        raise VectorMismatch("malformed vector: both result and server_abort")
    raw = _field(_field(vector, "server_abort", dict, "vector"), "abort_reason", str, "abort")
    try:
        return AbortReason(raw)
    except ValueError as exc:
        raise VectorMismatch(f"malformed vector: unknown abort reason {raw!r}") from exc


def _check_final_states(vector: Mapping[str, Any], replay: _Replay) -> None:
    if "final_states" not in vector:
        return
    expected = _field(vector, "final_states", dict, "vector")
    if set(expected) != {str(u) for u in replay.clients}:
        raise VectorMismatch("final_states must name every participant")
    for u, client in replay.clients.items():
        want = _field(expected, str(u), dict, "final_states")
        reason = client.abort_reason.value if client.abort_reason is not None else None
        if (client.round.value, reason) != (want.get("state"), want.get("abort_reason")):
            raise VectorMismatch(
                f"after the last step: client {u} ends in {client.round.value} ({reason}), "
                f"the vector says {want.get('state')} ({want.get('abort_reason')})"
            )


def _replay_step(replay: _Replay, step: Mapping[str, Any], where: str) -> None:
    u = _field(step, "client", int, where)
    rnd = Round(_field(step, "round", str, where))
    data = _hex(step, "message", where)
    direction = _field(step, "direction", str, where)
    deviating = step.get("deviating", False) is True
    if deviating and direction != "to_server":
        raise VectorMismatch("only a client's message can be marked deviating")
    if direction == "to_server":
        replay.to_server(u, rnd, data, deviating)
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
    if isinstance(msg, Abort):
        # Abort names no recipient (messages-v1.md §4): the step's client is where it went.
        if direction != "to_client" or rnd is not Round.ABORTED:
            raise VectorMismatch("an Abort is only sent by the server when it aborts")
        return
    if getattr(msg, party_field, None) != u:
        raise VectorMismatch(f"the message's {party_field} is {getattr(msg, party_field, None)}")
