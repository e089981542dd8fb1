"""Planning a round, as pure functions: no asyncio, no database, no clock.

A round has two plans (specs/service-v1.md §3):

1. :func:`plan_training`, at selection: the *training assignment* a selected
   client gets from its check-in (base version, encoding, how long it may
   train, how often to send heartbeats, the protocol stages' deadlines). No
   session configuration yet: keys are advertised after training.
2. :func:`plan_session`, when the training window closes: the
   ``SessionConfig`` among the clients that reported ready, with the graph
   and threshold derived from that actual cohort (:func:`choose_graph`).

:func:`plan_round` composes both for a cohort known up front (tests,
benchmarks). :func:`stage_deadlines` is the deadline formula of §5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol import GraphKind, Mode, SessionConfig
from protocol.dp import DPEncoding, DPParams
from protocol.encoding import FixedPointEncoding, RoundEncoding, session_context
from protocol.errors import ConfigError, ParameterError
from protocol.params import AdversaryClass, derive_parameters
from protocol.policy import SessionPolicy, check_parameters, smallest_threshold
from secagg import db as dbm

AUTO_HARARY_MIN_CLIENTS = 100
STAGES = ("R0", "R1", "R2", "R3", "R4")

# -- the deadline formula (specs/service-v1.md §5) ------------------------------------
# Every protocol stage gets BASE_S (scheduling, TLS, a loaded machine) plus
# PER_CLIENT_S per participant (the server verifies and routes every message;
# a client does per-neighbour work), plus its upload at a conservative
# MIN_UPLINK_BYTES_S, plus, in R2, the client's masking work at
# MASK_S_PER_WORD per word per mask (20x the measured 0.55 ns of DESIGN.md,
# for a busy machine). A stage closes earlier as soon as every expected
# client has sent or is gone: deadlines bound slow-but-alive clients only.
BASE_S = 10.0
PER_CLIENT_S = 0.05
MIN_UPLINK_BYTES_S = 1_000_000.0  # 8 Mbit/s
MASK_S_PER_WORD = 1.1e-8
# Upload sizes besides R2's masked vector (generous, per message).
_ADVERT_BYTES = 256
_SHARE_BYTES_PER_NEIGHBOUR = 256
_CONSISTENCY_BYTES = 256
_UNMASK_BYTES_PER_NEIGHBOUR = 128

DEFAULT_TRAINING_WINDOW_S = 600.0
MAX_DEADLINE_S = 86400.0


@dataclass(frozen=True)
class Liveness:
    """How clients show they are alive (specs/service-v1.md §4).

    A participant is *gone* once it has no heartbeat held open and sent no
    authenticated request for ``timeout_s``, or as soon as the connection of
    a held heartbeat closes (its process died: the kernel closed the socket).
    Clients send a heartbeat every ``heartbeat_s`` from a thread of their
    own; the server holds each one open up to ``hold_s``. ``tick_s`` is how
    often a waiting stage re-checks who is gone.
    """

    heartbeat_s: float = 1.0
    timeout_s: float = 4.0
    tick_s: float = 0.25
    hold_s: float = 10.0

    def __post_init__(self) -> None:
        if (
            self.heartbeat_s <= 0
            or self.timeout_s < 2 * self.heartbeat_s
            or self.tick_s <= 0
            or self.hold_s < 0
        ):
            raise ConfigError(
                f"liveness timeout {self.timeout_s} s must cover at least two heartbeats "
                f"of {self.heartbeat_s} s (and both be positive)"
            )


def round_encoding(task: dbm.Task) -> RoundEncoding:
    """The task's vector encoding (update, weight, evaluation sums)."""
    return RoundEncoding(
        FixedPointEncoding(clip=task.clip, scale=task.scale, max_weight=task.max_weight)
    )


def dp_params(task: dbm.Task) -> DPParams | None:
    """A DP task's calibrated parameters (stored at creation); None without DP.

    Raises:
        ConfigError: the stored parameters do not parse.
    """
    state = getattr(task, "dp", None)
    return DPParams.from_json(state.params) if state is not None else None


def session_shape(task: dbm.Task, participants: int) -> tuple[int, int, bytes]:
    """(vector length, bit width, encoding context) of a session of ``participants``.

    A DP round's vector is ``d + 1`` words (the rotated, noised update and
    the count slot; no weight or metric slots) of the task's ``bits``, and
    its context binds the DP parameters (specs/dp-v1.md §3); otherwise the
    fixed-point round encoding's.

    Raises:
        ConfigError: the cohort overflows the encoding's words.
    """
    params = dp_params(task)
    if params is not None:
        encoding = DPEncoding(params)
        return (
            encoding.vector_length,
            encoding.required_bit_width(participants),
            encoding.context(),
        )
    plain = round_encoding(task)
    return (
        plain.vector_length(task.vector_length),
        plain.required_bit_width(participants),
        plain.context(),
    )


def encoding_json(encoding: RoundEncoding) -> dict[str, Any]:
    """The encoding parameters as a client reads them from its assignment."""
    return {
        "clip": encoding.update.clip,
        "scale": encoding.update.scale,
        "max_weight": encoding.update.max_weight,
        "max_eval_examples": encoding.max_eval_examples,
        "max_example_loss": encoding.max_example_loss,
        "loss_scale": encoding.loss_scale,
    }


def server_policy(mode: Mode, corrupt_rate: float) -> SessionPolicy:
    """The collusion assumption the orchestrator derives its thresholds from.

    The same rule as a client's (``protocol.policy``) with the task's
    ``corrupt_rate``; the participant floor is the clients' business (and
    :func:`check_task_parameters`'), so it is left at its minimum here.
    """
    return SessionPolicy(
        allow_semi_honest=mode is Mode.SEMI_HONEST,
        min_participants=2,
        assumed_corrupt_rate=corrupt_rate,
    )


def choose_graph(
    n: int, mode: Mode, graph: str, dropout_rate: float, corrupt_rate: float
) -> tuple[GraphKind, int, int]:
    """(graph kind, degree, threshold) for ``n`` participants (spec §10.2).

    ``harary`` (or ``auto`` from 100 clients) uses the fcp-compatible parameter
    finder. The complete graph (``k = n - 1``) takes the smallest threshold
    the collusion rule of ``protocol.policy`` accepts for the task's
    ``corrupt_rate``: ``2t - k > c_max`` (active) or ``t > c_max``
    (semi-honest), ``t >= 2``, with ``c_max = max(1, ceil(corrupt_rate * n))``;
    then requires ``t <= k - ceil(dropout_rate * n)``, so that every client
    keeps ``t`` surviving neighbours when ``ceil(dropout_rate * n)`` others drop.

    Raises:
        ParameterError: no threshold meets both bounds; the message says which
            parameter to change.
    """
    # SecAgg+ pays off for large cohorts; below ~100 clients the parameter
    # finder's sparse graphs are tiny (degree 2 at n=10) and the complete graph
    # costs little, so "auto" keeps the complete graph there.
    policy = server_policy(mode, corrupt_rate)
    if graph == "harary" or (graph == "auto" and n >= AUTO_HARARY_MIN_CLIENTS):
        adversary = (
            AdversaryClass.SEMI_MALICIOUS if mode is Mode.ACTIVE else AdversaryClass.SEMI_HONEST
        )
        try:
            p = derive_parameters(n, dropout_rate, corrupt_rate, adversary)
            if p.degree < n - 1:
                # fcp's parameters meet the rule by construction (§10); checked anyway.
                check_parameters(n, mode, GraphKind.HARARY, p.degree, p.threshold, policy)
                return GraphKind.HARARY, p.degree, p.threshold
        except ParameterError:
            if graph == "harary":
                raise
    k = n - 1
    t = smallest_threshold(n, mode, GraphKind.COMPLETE, k, policy)
    dropped = math.ceil(round(dropout_rate * n, 9))
    if t > k - dropped:
        rule = "2t - k > c_max" if mode is Mode.ACTIVE else "t > c_max"
        raise ParameterError(
            f"{n} clients on the complete graph: the collusion rule ({rule} at corrupt_rate "
            f"{corrupt_rate}) needs threshold {t}, but with ceil(dropout_rate * n) = {dropped} "
            f"dropouts only k - {dropped} = {k - dropped} neighbours survive; lower "
            "dropout_rate or corrupt_rate, or select more clients per round"
        )
    return GraphKind.COMPLETE, k, t


# Cohort sizes checked one by one at task creation; beyond, a sample (§10.2).
_MAX_SIZES_CHECKED = 512


def check_task_parameters(
    mode: Mode,
    graph: str,
    dropout_rate: float,
    corrupt_rate: float,
    min_clients: int,
    clients_per_round: int,
    client_policy: SessionPolicy,
) -> None:
    """Refuse a task whose rounds a client with ``client_policy`` would refuse.

    For every cohort size from ``min_clients`` to ``clients_per_round`` (a
    sample of at most 512 sizes, both ends included, when the range is
    larger): :func:`choose_graph` must succeed and its parameters must pass
    ``check_parameters`` under ``client_policy``. Sessions are formed among
    the clients that finished training, so any size in the range may occur.

    Raises:
        ConfigError: (a ``PolicyError`` or ``ParameterError``) naming the cohort
            size, the rule and what to change.
    """
    sizes = range(min_clients, clients_per_round + 1)
    if len(sizes) > _MAX_SIZES_CHECKED:
        step = len(sizes) / (_MAX_SIZES_CHECKED - 1)
        picked = {min_clients + round(i * step) for i in range(_MAX_SIZES_CHECKED - 1)}
        sizes = sorted(picked | {clients_per_round})  # type: ignore[assignment]
    for n in sizes:
        if n < client_policy.min_participants:
            raise ConfigError(
                f"min_clients {min_clients} < {client_policy.min_participants}: clients "
                f"refuse sessions with fewer than {client_policy.min_participants} "
                "participants (a small cohort lets the sum reveal one client's update); "
                f"raise min_clients and clients_per_round to at least "
                f"{client_policy.min_participants}"
            )
        try:
            kind, degree, threshold = choose_graph(n, mode, graph, dropout_rate, corrupt_rate)
        except ParameterError as exc:
            raise ParameterError(f"cohort of {n} clients: {exc}") from exc
        try:
            check_parameters(n, mode, kind, degree, threshold, client_policy)
        except ConfigError as exc:
            hint = (
                "use mode active"
                if mode is Mode.SEMI_HONEST and not client_policy.allow_semi_honest
                else f"raise corrupt_rate to at least {client_policy.assumed_corrupt_rate}"
            )
            raise ConfigError(
                f"a cohort of {n} clients would be refused by clients ({exc}); {hint}"
            ) from exc


def stage_deadlines(
    participants: int,
    vector_words: int,
    packed_bytes: int,
    degree: int,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Seconds each protocol stage waits for a slow-but-alive client (§5).

    ``deadline = BASE_S + PER_CLIENT_S * n + upload_bytes / MIN_UPLINK_BYTES_S
    (+ MASK_S_PER_WORD * (degree + 1) * words in R2)``, rounded up to 0.1 s;
    a task's ``deadlines`` override stage by stage.

    Args:
        participants: the cohort size ``n`` (an upper bound before the session forms).
        vector_words: the session's vector length (the update plus its extra slots).
        packed_bytes: bytes of one masked vector on the wire.
        degree: masking neighbours per client (``n - 1`` on the complete graph).
        overrides: stage name -> seconds, from the task.

    Raises:
        ConfigError: an override names an unknown stage or is not in (0, 86400].
    """
    n, k = participants, degree
    upload = {
        "R0": _ADVERT_BYTES,
        "R1": _SHARE_BYTES_PER_NEIGHBOUR * k,
        "R2": packed_bytes,
        "R3": _CONSISTENCY_BYTES,
        "R4": _UNMASK_BYTES_PER_NEIGHBOUR * k,
    }
    out: dict[str, float] = {}
    for stage in STAGES:
        seconds = BASE_S + PER_CLIENT_S * n + upload[stage] / MIN_UPLINK_BYTES_S
        if stage == "R2":
            seconds += MASK_S_PER_WORD * (k + 1) * vector_words
        out[stage] = math.ceil(seconds * 10) / 10
    for stage, seconds in (overrides or {}).items():
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r} in deadlines; stages are {STAGES}")
        if not (0 < float(seconds) <= MAX_DEADLINE_S):
            raise ConfigError(f"deadline of {stage} must be in (0, {MAX_DEADLINE_S:.0f}] s")
        out[stage] = float(seconds)
    return out


def _upper_bound_deadlines(task: dbm.Task) -> dict[str, float]:
    """Deadlines for the largest cohort the task allows (told before the session forms)."""
    n = task.clients_per_round
    mode = Mode(task.mode.value)
    words, bits, _ = session_shape(task, n)
    try:
        kind, degree, _ = choose_graph(
            n, mode, task.graph.value, task.dropout_rate, task.corrupt_rate
        )
    except ParameterError:
        kind, degree = GraphKind.COMPLETE, n - 1
    packed = math.ceil(words * bits / 8)
    return stage_deadlines(
        n, words, packed, degree if kind is GraphKind.HARARY else n - 1, task.deadlines
    )


@dataclass(frozen=True)
class Assignment:
    """A selected client's training assignment (specs/service-v1.md §3.1).

    No session configuration: the session is formed among the clients that
    report ready when the training window closes.
    """

    round_id: int
    task_id: int
    round_number: int
    base_version: int
    model_length: int
    # Null for a DP task: its vector is described by ``dp`` instead.
    encoding: dict[str, Any] | None
    training_deadline_s: float
    heartbeat_s: float
    deadlines: dict[str, float]
    mode: str
    # Active mode: the task authority's roster as uploaded (authority-v1.md §6),
    # so a client can check its own certification before it trains.
    roster: bytes | None = None
    # A DP task's parameters (``DPParams.to_json()``, specs/dp-v1.md §3).
    dp: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "task_id": self.task_id,
            "round_number": self.round_number,
            "base_version": self.base_version,
            "model_length": self.model_length,
            "encoding": self.encoding,
            "training_deadline_s": self.training_deadline_s,
            "heartbeat_s": self.heartbeat_s,
            "deadlines": self.deadlines,
            "mode": self.mode,
            "roster": self.roster.hex() if self.roster is not None else None,
            "dp": self.dp,
        }


def training_window(task: dbm.Task) -> float:
    """The task's training window in seconds (its setting, else the default)."""
    window = getattr(task, "training_window_s", None)
    return float(window) if window else DEFAULT_TRAINING_WINDOW_S


def plan_training(
    task: dbm.Task,
    *,
    round_id: int,
    number: int,
    base_version: int,
    liveness: Liveness,
    roster: bytes | None = None,
) -> Assignment:
    """The training assignment of round ``number`` (what check-in answers with).

    The stage deadlines are those of the largest cohort the task allows;
    the session's own are never longer (:func:`plan_session`). A DP task's
    assignment carries ``dp`` (its parameters) and no ``encoding``.
    """
    params = dp_params(task)
    return Assignment(
        round_id=round_id,
        task_id=task.id,
        round_number=number,
        base_version=base_version,
        model_length=task.vector_length,
        encoding=encoding_json(round_encoding(task)) if params is None else None,
        training_deadline_s=training_window(task),
        heartbeat_s=liveness.heartbeat_s,
        deadlines=_upper_bound_deadlines(task),
        mode=task.mode.value,
        roster=roster if task.mode is dbm.ProtocolMode.ACTIVE else None,
        dp=params.to_json() if params is not None else None,
    )


@dataclass(frozen=True)
class SessionPlan:
    """The session formed among the ready clients, and how long each stage waits."""

    config: SessionConfig
    deadlines: dict[str, float]
    graph: GraphKind
    degree: int
    threshold: int


def plan_session(
    task: dbm.Task,
    cohort: Sequence[int],
    number: int,
    *,
    nonce: bytes,
    identity_keys: Sequence[bytes] = (),
) -> SessionPlan:
    """The ``SessionConfig`` of round ``number`` among ``cohort`` (the ready clients).

    Args:
        task: the task (its fields only; a detached row or one built in a test).
        cohort: the participants, ascending client ids.
        number: the round number (bound into the session context).
        nonce: 32 fresh random bytes (the caller's CSPRNG; this function is pure).
        identity_keys: active mode: each participant's enrolled Ed25519 key, in
            ``cohort`` order.

    Raises:
        ParameterError: no graph and threshold for this cohort size.
        ConfigError: the configuration is invalid (e.g. too long a vector).
    """
    participants = tuple(sorted(cohort))
    vector_length, bit_width, context = session_shape(task, len(participants))
    mode = Mode(task.mode.value)
    kind, degree, threshold = choose_graph(
        len(participants), mode, task.graph.value, task.dropout_rate, task.corrupt_rate
    )
    config = SessionConfig(
        participants=participants,
        threshold=threshold,
        vector_length=vector_length,
        bit_width=bit_width,
        nonce=nonce,
        mode=mode,
        graph=kind,
        degree=degree if kind is GraphKind.HARARY else 0,
        identity_keys=tuple(identity_keys) if mode is Mode.ACTIVE else (),
        context=session_context(task.id, number, context),
    )
    deadlines = stage_deadlines(
        len(participants), config.vector_length, config.packed_size, degree, task.deadlines
    )
    return SessionPlan(config, deadlines, kind, degree, threshold)


def plan_round(
    task: dbm.Task,
    participants: Sequence[int],
    base_version: int,
    *,
    round_id: int,
    number: int,
    nonce: bytes,
    liveness: Liveness | None = None,
    identity_keys: Sequence[bytes] = (),
    roster: bytes | None = None,
) -> tuple[SessionConfig, Assignment]:
    """Both plans for a cohort that is known to finish training (tests, benchmarks)."""
    assignment = plan_training(
        task,
        round_id=round_id,
        number=number,
        base_version=base_version,
        liveness=liveness or Liveness(),
        roster=roster,
    )
    session = plan_session(task, participants, number, nonce=nonce, identity_keys=identity_keys)
    return session.config, assignment
