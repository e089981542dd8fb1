"""The training-side client: check in, train, take part in secure aggregation, repeat.

Embedding it in an existing PyTorch loop::

    from client_sdk.client import Client, RetryPolicy
    from client_sdk.identity import Identity
    from client_sdk.models import TorchModel
    from protocol.encoding import EvalSums

    net = MyNet()                                     # any torch.nn.Module
    identity = Identity.load("client.key")            # from `secagg client enrol`

    def train(m: TorchModel) -> int:                  # m wraps net: m.module is net
        return train_one_epoch(m.module, loader)      # returns the number of examples

    def evaluate(m: TorchModel) -> EvalSums:          # on the round's base model
        correct, count, loss_sum = run_eval(m.module, test_loader)
        return EvalSums(correct, count, loss_sum)

    client = Client("https://server:8443", identity, net, train_fn=train,
                    eval_fn=evaluate, task_id=1, verify="ca.pem",
                    retry=RetryPolicy(give_up_after_s=1800))  # optional: ride out 30 min
    outcomes = client.run()                           # returns when the task is over

``train_fn`` and ``eval_fn`` receive the :class:`~client_sdk.models.FlatModel`
the client made of ``model`` (:func:`~client_sdk.models.as_flat_model`: a
:class:`~client_sdk.models.TorchModel` for an ``nn.Module``, whose ``.module``
is the module itself), with the round's base weights already loaded. Since
the module is updated in place, closing over ``net`` works as well.

:meth:`Client.run` keeps taking part in rounds until the server says the task
is over (410 ``task_finished``). A round the client missed, was dropped from
or that aborted leads to the next check-in; a paused task (409
``task_paused``) is checked again with backoff; connection losses and 5xx
answers are retried under a :class:`~client_sdk.transport.RetryPolicy`, so a
server restart of a few minutes goes unnoticed. What cannot be retried
raises a typed :class:`~client_sdk.errors.ClientError`: ``TrustError`` (fix
the CA file or the host name), ``ServerUnreachable`` (the retry budget ran
out), ``RequestRefused`` (e.g. 404 ``unknown_task``), ``PolicyViolation``.
Each round is logged at INFO on the ``secagg.client`` logger: round, stage
reached, bytes, seconds and outcome.

The client refuses sessions its :class:`ClientPolicy` does not accept (spec
§4.7) and, through its contribution ledger (``<identity file>.ledger``), a
second masked input on a base model version it already contributed to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import io
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from client_sdk.errors import AlreadyContributed as AlreadyContributed
from client_sdk.errors import ClientError as ClientError
from client_sdk.errors import PolicyViolation as PolicyViolation
from client_sdk.errors import PrivacyBudgetSpent as PrivacyBudgetSpent
from client_sdk.errors import RequestRefused as RequestRefused
from client_sdk.errors import ServerUnreachable as ServerUnreachable
from client_sdk.errors import Stopped as Stopped
from client_sdk.errors import TaskFinished as TaskFinished
from client_sdk.errors import TaskPaused as TaskPaused
from client_sdk.errors import TrustError as TrustError
from client_sdk.identity import Identity
from client_sdk.ledger import ContributionLedger, ledger_path_for
from client_sdk.models import FlatModel, as_flat_model
from client_sdk.transport import RetryPolicy as RetryPolicy
from client_sdk.transport import SignedTransport, Signer, json_body
from client_sdk.transport import tls_verify as tls_verify
from protocol import ClientSession, MessageType, Mode, Round, SessionConfig, SystemRandom
from protocol.authority import (
    CertificationError,
    PinnedAuthority,
    Roster,
    check_session_roster,
    task_scope,
    verify_roster,
)
from protocol.dp import DPEncoding, DPParams
from protocol.encoding import EvalSums, FixedPointEncoding, RoundEncoding, session_context
from protocol.errors import ConfigError, DecodeError, SecAggError
from protocol.policy import (
    DEFAULT_MIN_PARTICIPANTS,
    PolicyError,
    SessionPolicy,
    assumed_colluders,
    check_session,
)
from secagg_http.signing import CBOR_MEDIA_TYPE, sign_request

log = logging.getLogger("secagg.client")

TrainFn = Callable[[FlatModel], int]
EvalFn = Callable[[FlatModel], EvalSums]
# Called at each stage with (round number, stage); returning True makes the
# client stop answering in that stage, as if it had crashed (fault injection).
FaultFn = Callable[[int, Round], bool]


DEFAULT_MAX_EPSILON = 10.0
"""A client's default privacy budget per task (at ``delta <= DEFAULT_MAX_DELTA``)."""
DEFAULT_MAX_DELTA = 1e-5
DEFAULT_MIN_NOISE_MULTIPLIER = 0.5

RESUBMISSION_WARNING = (
    "resubmission on the same base version allowed by explicit opt-in: two sums over "
    "the same contribution let the server subtract them and read one client's update"
)


@dataclass(frozen=True)
class ClientPolicy:
    """What this client accepts from a server, checked before it sends anything.

    A thin wrapper over :class:`protocol.policy.SessionPolicy` (spec §4.7),
    whose rules ``ClientSession`` applies again at construction, plus the
    differencing rule of the contribution ledger. The defaults are the safe
    ones; each opt-in is logged as a warning when the client is created.

    Attributes:
        allow_semi_honest: accept semi-honest sessions (unsigned keys: a
            server that substitutes them recovers inputs).
        min_participants: distinct participants, and survivors, a sum must have.
        assumed_corrupt_rate: fraction of participants assumed to collude
            with the server; bounds the threshold the client accepts.
        min_assumed_colluders: colluders assumed whatever the rate gives.
        allow_resubmission_on_same_base: send a second masked input for a
            (server, task, base version) already contributed to.
        require_certified_identities: join active sessions only when the
            identity pins a task authority whose roster certifies every
            participant (``secagg client enrol --authority-key``).
        max_epsilon: this client's own privacy budget per task (specs/dp-v1.md
            §11): it refuses a DP round that would take its epsilon, computed
            from its own ledger, above ``min(max_epsilon, the task's budget)``.
        max_delta: the largest ``delta`` of a DP task it accepts.
        min_noise_multiplier: the least noise it accepts in a DP round: the
            noise std of the ``m`` guaranteed honest shares over the L2
            sensitivity, ``sqrt(m v) / Delta_2``.
        require_dp: refuse tasks without distributed DP (their sum carries
            no noise: the aggregate itself may reveal a dominant client).
    """

    allow_semi_honest: bool = False
    min_participants: int = DEFAULT_MIN_PARTICIPANTS
    assumed_corrupt_rate: float = 0.05
    min_assumed_colluders: int = 1
    allow_resubmission_on_same_base: bool = False
    require_certified_identities: bool = True
    max_epsilon: float = DEFAULT_MAX_EPSILON
    max_delta: float = DEFAULT_MAX_DELTA
    min_noise_multiplier: float = DEFAULT_MIN_NOISE_MULTIPLIER
    require_dp: bool = False

    def __post_init__(self) -> None:
        for name in ("max_epsilon", "max_delta", "min_noise_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(self.max_epsilon) and self.max_epsilon > 0):
            raise ConfigError(f"max_epsilon must be finite and > 0, got {self.max_epsilon!r}")
        if not 0 < self.max_delta < 1:
            raise ConfigError(f"max_delta must be in (0, 1), got {self.max_delta!r}")
        if not (math.isfinite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0):
            raise ConfigError(
                f"min_noise_multiplier must be finite and >= 0, got {self.min_noise_multiplier!r}"
            )

    @property
    def session(self) -> SessionPolicy:
        """The protocol-level policy (raises ConfigError if a field is invalid)."""
        return SessionPolicy(
            allow_semi_honest=self.allow_semi_honest,
            min_participants=self.min_participants,
            assumed_corrupt_rate=self.assumed_corrupt_rate,
            min_assumed_colluders=self.min_assumed_colluders,
            require_certified_identities=self.require_certified_identities,
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """What this policy gives up compared with the defaults."""
        extra = (RESUBMISSION_WARNING,) if self.allow_resubmission_on_same_base else ()
        return self.session.warnings + extra


@dataclass(frozen=True)
class RoundOutcome:
    round_number: int
    state: str  # "completed", "aborted", "dropped", "declined" (refused before training)
    abort_reason: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    # The model version the round committed (state "completed" only).
    version: int | None = None


# How long a client waits for the outcome of a round it finished its part of.
OUTCOME_WAIT_S = 900.0


@dataclass
class _Tally:
    """What one round cost this client so far."""

    number: int
    started: float
    sent: int = 0
    received: int = 0
    version: int | None = None

    def outcome(self, state: str, reason: str | None = None) -> RoundOutcome:
        return RoundOutcome(
            self.number,
            state,
            reason,
            self.sent,
            self.received,
            time.monotonic() - self.started,
            self.version,
        )


class _Heartbeat:
    """Heartbeats from a thread of their own (service-v1.md §4), from the assignment
    until the outcome is known: a client busy training is not taken for gone.

    The server may hold a heartbeat open: its open connection is the proof of
    life, and its closing (the process died) tells the server at once. The
    thread keeps a connection of its own, which :meth:`stop` shuts down, so a
    client that stops taking part (the fault hook simulates a crash) is seen
    gone at once too. (``http.client``, not httpx: closing an httpx client
    leaves an in-flight request's socket open.) Failures are not retried
    here: the next beat is the retry.
    """

    def __init__(self, client: Client, round_id: int, interval_s: float) -> None:
        self.client, self.round_id = client, round_id
        self.interval_s = min(max(interval_s, 0.2), 60.0)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(
            target=self._loop, name=f"secagg-heartbeat-{round_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            # Unblocks a held request; the server sees the connection close now.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        url = self.client._http.base_url
        host, port = url.host, url.port
        timeout = self.client._timeout_s
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            tls = self.client._tls
            context = tls if isinstance(tls, ssl.SSLContext) else ssl.create_default_context()
            if tls is False:  # verification explicitly disabled by the operator
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return conn

    def _beat(self, path: str, prefix: str) -> int:
        with self._lock:
            if self._conn is None:
                self._conn = self._connection()
            conn = self._conn
        headers = sign_request(
            self.client.identity.secret,
            self.client.client_id,
            "POST",
            path,
            int(time.time()),
            os.urandom(16).hex(),
            b"",
        )
        try:
            # Signed as _request signs (the path under the base URL), sent under it.
            conn.request("POST", prefix + path, body=b"", headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except Exception:
            with self._lock:
                self._conn = None  # a new connection for the next beat
            conn.close()
            raise

    def _loop(self) -> None:
        # The next beat leaves interval_s after the previous one was sent.
        prefix = self.client._http.base_url.raw_path.decode().rstrip("/")
        path = f"/v1/rounds/{self.round_id}/heartbeat"
        while not self._stopped.is_set():
            sent = time.monotonic()
            try:
                status = self._beat(path, prefix)
            except Exception as exc:  # a heartbeat never takes the client down
                if self._stopped.is_set():
                    return
                log.debug("round %d: heartbeat failed: %s", self.round_id, exc)
            else:
                if status == 410:
                    return  # the round is over (for this client)
            self._stopped.wait(max(0.0, self.interval_s - (time.monotonic() - sent)))
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _refused(response: httpx.Response) -> RequestRefused:
    try:
        err = response.json()
        code, detail = str(err.get("error")), str(err.get("detail"))
    except ValueError:
        code, detail = "http_error", response.text[:200]
    return RequestRefused(response.status_code, code, detail)


# The stage a client has reached once the server accepted its message of this type.
_STAGE_OF_MESSAGE: dict[int, Round] = {
    MessageType.ADVERTISE_KEYS: Round.R0_ADVERTISE_KEYS,
    MessageType.SHARE_KEYS: Round.R1_SHARE_KEYS,
    MessageType.MASKED_INPUT: Round.R2_MASKED_INPUT_COLLECTION,
    MessageType.CONSISTENCY_SIGNATURE: Round.R3_CONSISTENCY_CHECK,
    MessageType.UNMASK_RESPONSE: Round.R4_UNMASKING,
}
# Stages in the order a round goes through them (service-v1: check-in, training,
# ready, session formed, then the protocol's R0..R4).
_PROGRESS = ("none", "assigned", "ready", "session", *(r.value for r in _STAGE_OF_MESSAGE.values()))


class _RoundProgress:
    """How far the current round got, as seen on the wire (for the round's log line).

    Derived from the answers the server gave (an accepted check-in, ready,
    session and protocol messages), so it holds whatever path the round code took.
    """

    def __init__(self) -> None:
        self.round_number: int | None = None
        self._reached = 0
        self._lock = threading.Lock()

    @property
    def stage(self) -> str:
        """The furthest stage reached: ``none``, ``assigned``, ``ready``,
        ``session`` or the Round of the last protocol message the server accepted."""
        return _PROGRESS[self._reached]

    def note(self, method: str, path: str, body: bytes, response: httpx.Response) -> None:
        if not 200 <= response.status_code < 300:
            return
        reached: str | None = None
        if method == "POST" and path.endswith("/checkin") and response.status_code == 200:
            reached = "assigned"
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.round_number = int(response.json()["round_number"])
        elif method == "POST" and path.endswith("/ready"):
            reached = "ready"
        elif method == "GET" and path.endswith("/session") and response.status_code == 200:
            reached = "session"
        elif method == "POST" and path.endswith("/messages") and len(body) > 1:
            # A canonical message starts with its CBOR array head, then its type
            # as a one-byte unsigned integer (protocol/messages.py _prefix).
            stage = _STAGE_OF_MESSAGE.get(body[1])
            reached = stage.value if stage is not None else None
        if reached is not None:
            with self._lock:
                self._reached = max(self._reached, _PROGRESS.index(reached))


# Seconds to establish a connection (TCP and TLS) before the attempt counts as failed.
CONNECT_TIMEOUT_S = 15.0


class Client:
    """One federated client. See the module docstring."""

    def __init__(
        self,
        server_url: str,
        identity: Identity,
        model: Any,
        train_fn: TrainFn,
        eval_fn: EvalFn | None = None,
        *,
        task_id: int,
        verify: bool | str = True,
        policy: ClientPolicy | None = None,
        fault: FaultFn | None = None,
        timeout_s: float = 60.0,
        roster_scope: str | None = None,
        roster_min_serial: int = 0,
        ledger: ContributionLedger | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Create a client; nothing is sent until :meth:`run` or :meth:`participate`.

        Args:
            server_url: the server's base URL, e.g. ``https://host:8443``.
            identity: an enrolled identity (:func:`enrol`, ``secagg client enrol``).
            model: a :class:`~client_sdk.models.FlatModel`, a ``torch.nn.Module``
                or a list/dict of numpy arrays (:func:`~client_sdk.models.as_flat_model`).
            train_fn: trains the model in place on local data and returns the
                number of examples used (the client's weight in the mean).
                Called with the FlatModel, base weights loaded.
            eval_fn: evaluates the base model on local data (``EvalSums``);
                None sends zero sums.
            task_id: the task to take part in.
            verify: ``True`` (system CAs), a CA certificate file, or ``False``.
            policy: what sessions this client accepts (defaults: the safe ones).
            fault: fault injection for tests (see ``FaultFn``).
            timeout_s: per-attempt HTTP read/write timeout; must exceed the
                server's long polls. Connecting is bounded by ``CONNECT_TIMEOUT_S``.
            roster_scope: the scope the authority's roster must carry
                (default ``task/<task_id>``).
            roster_min_serial: refuse rosters with a lower serial.
            ledger: the contribution ledger; defaults to ``<identity
                file>.ledger`` when the identity was loaded from (or saved to)
                a file, else to a ledger kept in memory.
            retry: how connection losses and 5xx answers are retried
                (default: :class:`RetryPolicy`'s, about ten minutes).

        Raises:
            ClientError: the identity is not enrolled or the policy is invalid.
            TrustError: the CA file given as ``verify`` cannot be used.
        """
        if identity.client_id is None:
            raise ClientError("identity is not enrolled: enrol it with a token first")
        self.identity = identity
        self.client_id: int = identity.client_id
        self.model = as_flat_model(model)
        self.train_fn, self.eval_fn = train_fn, eval_fn
        self.task_id = task_id
        # The scope the authority's roster must carry (authority-v1.md §3).
        self.roster_scope = roster_scope or task_scope(task_id)
        # The highest roster serial accepted so far: an older roster is refused.
        self.roster_min_serial = roster_min_serial
        self.policy = policy or ClientPolicy()
        try:
            self._session_policy = self.policy.session
        except ConfigError as exc:
            raise ClientError(f"invalid client policy: {exc}") from exc
        for warning in self.policy.warnings:
            log.warning("client %d: %s", self.client_id, warning)
        if ledger is None:
            path = ledger_path_for(identity.path) if identity.path is not None else None
            ledger = ContributionLedger(path)
        self.ledger = ledger
        self.fault = fault
        # Kept for connections made beside the transport (the heartbeat's own).
        self._tls, self._timeout_s = tls_verify(verify), timeout_s
        http = httpx.Client(
            base_url=server_url.rstrip("/"),
            verify=self._tls,
            # A connection (TCP and TLS handshake) that takes longer than this is
            # retried rather than waited for: a host that is down drops SYNs.
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S)),
        )
        self._transport = SignedTransport(
            http, Signer(self.client_id, identity.secret), retry or RetryPolicy()
        )
        self._transport.observer = self._observe
        self._progress = _RoundProgress()
        self._rng = SystemRandom()
        self._cache: tuple[int, npt.NDArray[np.float32]] | None = None
        # Called with each assignment before training (e.g. to seed per round).
        self.on_assignment: Callable[[dict[str, Any]], None] | None = None

    # -- HTTP ---------------------------------------------------------------------

    @property
    def _http(self) -> httpx.Client:
        """The HTTP client under the signing transport (tests swap in a fake server)."""
        return self._transport.http

    @_http.setter
    def _http(self, http: httpx.Client) -> None:
        self._transport.http = http

    def _request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> httpx.Response:
        """Send a signed request through the retrying transport; type refusals.

        Returns:
            The answer for a 2xx/3xx, and for a 410 other than
            ``task_finished`` (e.g. ``round_over``: the round's code decides).

        Raises:
            TaskFinished: 410 ``task_finished`` (the task is over).
            TaskPaused: 409 ``task_paused``.
            RequestRefused: any other 4xx.
            TrustError, ServerUnreachable, Stopped: from the transport
                (:meth:`SignedTransport.request`).
        """
        response = self._transport.request(method, path, body, content_type, retry=retry)
        status = response.status_code
        if status < 400:
            return response
        try:
            err = response.json()
            if not isinstance(err, dict):
                raise ValueError("not a JSON object")
            code, detail = str(err.get("error")), str(err.get("detail"))
        except ValueError:
            code, detail = "http_error", response.text[:200]
            err = {}
        if status == 410 and code == "task_finished":
            raise TaskFinished(str(err.get("status", "finished")), detail)
        if status == 410:
            return response
        if status == 409 and code == "task_paused":
            retry_after = response.headers.get("retry-after", "")
            raise TaskPaused(detail, float(retry_after) if retry_after.isdigit() else None)
        raise RequestRefused(status, code, detail)

    def _observe(self, method: str, path: str, body: bytes, response: httpx.Response) -> None:
        """Note how far the current round got, from what the server accepted."""
        self._progress.note(method, path, body, response)

    def close(self) -> None:
        """Close the HTTP connections (the client cannot be used afterwards)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the loop -------------------------------------------------------------------

    def run(
        self,
        rounds: int | None = None,
        *,
        stop: Callable[[], bool] | None = None,
        idle_timeout_s: float | None = None,
    ) -> list[RoundOutcome]:
        """Take part in rounds until the task is over; return what happened in each.

        Each assignment ends in one :class:`RoundOutcome` (``completed``,
        ``aborted`` or ``dropped``); none ends the loop: the client checks in
        again. A paused task (409 ``task_paused``) is checked again with the
        retry policy's backoff (or the server's ``Retry-After``). Connection
        losses and 5xx answers are retried inside each request.

        Args:
            rounds: return after this many rounds were joined (any outcome).
            stop: asked before every check-in and during every wait between
                attempts; the loop returns as soon as it is true.
            idle_timeout_s: return when the server answered without a round
                (204 or a paused task) for this long; time the server was
                unreachable does not count (the retry policy bounds that).

        Returns:
            The outcomes, in order. The loop also returns normally when the
            server says the task is over (410 ``task_finished``).

        Raises:
            RequestRefused: a 4xx the loop cannot carry on from, e.g. 404
                ``unknown_task`` (a wrong ``task_id``) or 401/403 (identity
                not enrolled with this server).
            ServerUnreachable: the retry budget of one request ran out.
            TrustError: the server's certificate is not trusted.
            PolicyViolation: the server proposed a session the policy refuses.
        """
        clock = self._transport.clock
        outcomes: list[RoundOutcome] = []
        idle_since = self._idle_clock()
        paused = 0  # consecutive task_paused answers: the backoff grows with them
        self._transport.stop = stop
        try:
            while rounds is None or len(outcomes) < rounds:
                if stop is not None and stop():
                    log.info("client %d: stopped by stop()", self.client_id)
                    break
                self._progress = _RoundProgress()
                sent, received = self._transport.bytes_sent, self._transport.bytes_received
                started = clock()
                try:
                    outcome = self._participate_typed()
                except TaskFinished as exc:
                    log.info(
                        "client %d: task %d is over (%s): %s; %d round(s) joined",
                        self.client_id,
                        self.task_id,
                        exc.status,
                        exc.detail,
                        len(outcomes),
                    )
                    break
                except TaskPaused as exc:
                    paused += 1
                    if self._idle(idle_since, idle_timeout_s):
                        break
                    delay = exc.retry_after_s
                    if delay is None:
                        delay = self._transport.retry.delay(paused, self._transport.rng)
                    log.info(
                        "client %d: task %d is paused (%s); checking in again in %.1f s",
                        self.client_id,
                        self.task_id,
                        exc.detail,
                        delay,
                    )
                    self._transport.wait(delay)
                    continue
                except PrivacyBudgetSpent as exc:
                    # dp-v1 §11: the client's own ledger says no; nothing was
                    # trained or sent, and it will not take part again.
                    log.warning("client %d: privacy budget spent: %s", self.client_id, exc)
                    break
                except AlreadyContributed as exc:
                    # §4.7: refused before anything was downloaded, trained or sent.
                    # The server treats this client as gone from the round as soon
                    # as it checks in again; the refusal does not end the loop.
                    number = self._progress.round_number
                    log.warning("client %d: declined a round: %s", self.client_id, exc)
                    outcome = RoundOutcome(
                        number if number is not None else 0,
                        "declined",
                        "already_contributed",
                        seconds=clock() - started,
                    )
                except RequestRefused as exc:
                    number = self._progress.round_number
                    # A 409/410 after an assignment: this client came too late for
                    # a stage or the round ended under it; it is dropped from this
                    # round and checks in for the next one.
                    if number is None or exc.status not in (409, 410):
                        raise
                    outcome = RoundOutcome(number, "dropped", exc.code, seconds=clock() - started)
                paused = 0
                if outcome is None:  # not selected before the long poll ended
                    if self._idle(idle_since, idle_timeout_s):
                        break
                    continue
                idle_since = self._idle_clock()
                outcomes.append(outcome)
                self._log_round(
                    outcome,
                    self._transport.bytes_sent - sent,
                    self._transport.bytes_received - received,
                )
        except Stopped:
            log.info("client %d: stopped by stop()", self.client_id)
        finally:
            self._transport.stop = None
        return outcomes

    def _participate_typed(self) -> RoundOutcome | None:
        """:meth:`participate`, with the task-level refusals typed whoever raised them."""
        try:
            return self.participate()
        except TaskPaused:
            raise
        except RequestRefused as exc:
            if exc.code == "task_finished":
                raise TaskFinished("finished", exc.detail) from exc
            if exc.code == "task_paused":
                raise TaskPaused(exc.detail) from exc
            raise

    def _idle(self, idle_since: float, idle_timeout_s: float | None) -> bool:
        """Whether the server has answered without a round for ``idle_timeout_s``.

        ``idle_since`` is on the outage-free clock (:meth:`_idle_clock`): time
        the server was unreachable is the retry policy's business, not idleness,
        so a server restart does not make an idle timeout fire.
        """
        if idle_timeout_s is None or self._idle_clock() - idle_since <= idle_timeout_s:
            return False
        log.info(
            "client %d: no round for task %d in %.0f s (idle_timeout_s), returning",
            self.client_id,
            self.task_id,
            idle_timeout_s,
        )
        return True

    def _idle_clock(self) -> float:
        """The transport's clock minus the time spent riding out outages."""
        return self._transport.clock() - self._transport.outage_s

    def _log_round(self, outcome: RoundOutcome, sent: int, received: int) -> None:
        """The one INFO line per round: round, stage reached, bytes, seconds, outcome."""
        reason = f" ({outcome.abort_reason})" if outcome.abort_reason else ""
        log.info(
            "client %d: task %d round %d %s%s; stage reached %s; sent %d B, received %d B; %.1f s",
            self.client_id,
            self.task_id,
            outcome.round_number,
            outcome.state,
            reason,
            self._progress.stage,
            sent,
            received,
            outcome.seconds,
        )

    def participate(self) -> RoundOutcome | None:
        """Check in once; if selected, run the round. None if not selected this time.

        The round follows specs/service-v1.md §3: train, report ready, check the
        session formed among the ready clients, R0..R4, then the outcome poll;
        ``completed`` only from the server's outcome (the version is committed).

        Raises:
            RequestRefused: among others 409 ``task_paused`` (check in later),
                410 ``task_finished`` (the task is over), 404 ``unknown_task``.
            PolicyViolation: the round or its session is one this client refuses
                (nothing was sent).
        """
        response = self._request("POST", f"/v1/tasks/{self.task_id}/checkin")
        if response.status_code == 204:
            return None
        if response.status_code == 410:
            raise _refused(response)
        return self._round(response.json())

    def _round(self, a: dict[str, Any]) -> RoundOutcome:
        started = time.monotonic()
        try:
            number = int(a["round_number"])
            round_id = int(a["round_id"])
            encoding = self._round_encoding(a)
            base_version = int(a["base_version"])
            model_length = int(a["model_length"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(f"the server's round assignment is malformed: {exc!r}") from exc
        dp = encoding.params if isinstance(encoding, DPEncoding) else None
        # Before training: what the assignment already lets this client check.
        self._check_assignment(a, model_length)
        self._check_ledger(base_version)
        if dp is not None:
            self._check_privacy(dp, model_length)
        log.info(
            "client %d: round %d (id %d) assigned on base version %d; training",
            self.client_id,
            number,
            round_id,
            base_version,
        )
        beat = _Heartbeat(self, round_id, float(a.get("heartbeat_s", 1.0)))
        beat.start()
        tally = _Tally(number, started)
        try:
            outcome = self._take_part(a, round_id, number, encoding, base_version, beat, tally)
        finally:
            beat.stop()
        log.info(
            "client %d: round %d %s%s: sent %d B, received %d B, %.1f s",
            self.client_id,
            number,
            outcome.state,
            f" ({outcome.abort_reason})" if outcome.abort_reason else "",
            outcome.bytes_sent,
            outcome.bytes_received,
            outcome.seconds,
        )
        return outcome

    def _take_part(
        self,
        a: dict[str, Any],
        round_id: int,
        number: int,
        encoding: RoundEncoding | DPEncoding,
        base_version: int,
        beat: _Heartbeat,
        tally: _Tally,
    ) -> RoundOutcome:
        if self.on_assignment is not None:
            self.on_assignment(a)
        base = self._download(base_version)
        self.model.set_weights(base)
        metrics = self.eval_fn(self.model) if self.eval_fn else EvalSums(0, 0, 0.0)
        examples = int(self.train_fn(self.model))
        delta = self.model.get_weights().astype(np.float64) - base
        vector: npt.NDArray[np.int64] | None = None
        if isinstance(encoding, RoundEncoding):
            weight = max(0, min(examples, encoding.update.max_weight))
            vector = encoding.encode(delta, weight, metrics, self._rng)
        # Training done: join the session (keys are advertised after training).
        if self._request("POST", f"/v1/rounds/{round_id}/ready").status_code == 410:
            return tally.outcome("dropped", "too_late")
        formed = self._await_session(round_id)
        if formed is None:
            return tally.outcome("dropped", "too_late")
        try:
            config = SessionConfig.decode(bytes.fromhex(str(formed["config"])))
        except (DecodeError, ValueError) as exc:
            raise ClientError(
                f"the server proposed a session this client cannot read (protocol or "
                f"version mismatch?): {exc}"
            ) from exc
        # Before R0: the session itself (policy, certification); nothing sent if refused.
        policy = self._check_policy(config, encoding, number, int(a["model_length"]))
        roster, authority = self._check_roster(config, formed.get("roster"))
        if isinstance(encoding, DPEncoding):
            # dp-v1 §7: the rotation is bound to the session, so the update is
            # noised only now; the noise never depends on anything the server
            # chooses except the public parameters the client already checked.
            vector = encoding.encode(delta, config.session_id, self._rng)
        assert vector is not None
        session = ClientSession(
            config,
            self.client_id,
            vector,
            rng=self._rng,
            identity_key=self.identity.secret if config.mode is Mode.ACTIVE else None,
            roster=roster,
            authority=authority,
            policy=policy,
        )
        log.info(
            "client %d: round %d session of %d participants formed; R0",
            self.client_id,
            number,
            config.num_participants,
        )
        if self._faulty(number, Round.R0_ADVERTISE_KEYS):
            beat.stop()
            return tally.outcome("dropped")
        msg = session.start()
        if not self._post(round_id, msg):
            return tally.outcome("dropped", "late")
        tally.sent += len(msg)
        seq = 0
        while session.round not in (Round.COMPLETED, Round.ABORTED):
            response = self._request("GET", f"/v1/rounds/{round_id}/messages/{seq}")
            if response.status_code == 204:
                continue
            if response.status_code == 410:
                break  # the round ended without another message for us
            data = response.content
            tally.received += len(data)
            seq += 1
            try:
                reply = session.receive(data)
            except SecAggError as exc:
                log.warning("round %d: refused a server message: %s", number, exc)
                why = session.abort_reason.value if session.abort_reason else "refused"
                return tally.outcome("aborted", why)
            if reply is None:
                continue
            # The reply belongs to the stage the session has just entered
            # (COMPLETED means the reply is the round-4 unmasking answer).
            after = Round(session.round)  # re-read: receive() moved it
            stage = Round.R4_UNMASKING if after is Round.COMPLETED else after
            if self._faulty(number, stage):
                beat.stop()
                return tally.outcome("dropped")
            if stage is Round.R2_MASKED_INPUT_COLLECTION:
                # §4.7 differencing: recorded (durably) before the masked input leaves.
                self.ledger.record(self._server_key, self.task_id, base_version)
                if isinstance(encoding, DPEncoding):
                    # dp-v1 §11: the privacy cost is booked before the noised
                    # input leaves, whether or not the round completes.
                    self.ledger.record_spend(
                        self._server_key, self.task_id, round_id, encoding.params
                    )
            if not self._post(round_id, reply):
                return tally.outcome("dropped", "late")
            tally.sent += len(reply)
        # The protocol part is over; only the server's outcome says "completed".
        return self._await_outcome(round_id, tally)

    def _await_session(self, round_id: int) -> dict[str, Any] | None:
        """The session formed among the ready clients; None if formed without us."""
        while True:
            response = self._request("GET", f"/v1/rounds/{round_id}/session")
            if response.status_code == 204:
                continue
            if response.status_code == 410:
                return None
            formed = response.json()
            if not isinstance(formed, dict):
                raise ClientError("the server's session answer is not a JSON object")
            return formed

    def _await_outcome(self, round_id: int, tally: _Tally) -> RoundOutcome:
        """Long-poll the round's outcome (bounded by ``OUTCOME_WAIT_S``)."""
        give_up = time.monotonic() + OUTCOME_WAIT_S
        while time.monotonic() < give_up:
            response = self._request("GET", f"/v1/rounds/{round_id}/outcome")
            if response.status_code == 204:
                continue
            if response.status_code == 410:
                break
            decided = response.json()
            if decided.get("status") == "completed":
                tally.version = int(decided["version"])
                return tally.outcome("completed")
            return tally.outcome("aborted", str(decided.get("reason")))
        return tally.outcome("aborted", "outcome_unknown")

    def _round_encoding(self, a: dict[str, Any]) -> RoundEncoding | DPEncoding:
        """The round's vector encoding: DP (``dp``) or fixed point (``encoding``)."""
        dp = self._dp_params(a)
        if dp is not None:
            return DPEncoding(dp)
        if self.policy.require_dp:
            raise PolicyViolation(
                "the task adds no differential-privacy noise, which this client's policy "
                "(require_dp) refuses"
            )
        if self.ledger.spends(self._server_key, self.task_id):
            # dp-v1 §11: a task this client joined with noise stays a DP task
            # for it; a round without noise would be a downgrade by the server.
            raise PolicyViolation(
                f"task {self.task_id} ran DP rounds with this client before; it refuses a "
                "round of the same task without noise"
            )
        try:
            return RoundEncoding(
                FixedPointEncoding(
                    clip=float(a["encoding"]["clip"]),
                    scale=float(a["encoding"]["scale"]),
                    max_weight=int(a["encoding"]["max_weight"]),
                ),
                max_eval_examples=int(a["encoding"]["max_eval_examples"]),
                max_example_loss=float(a["encoding"]["max_example_loss"]),
                loss_scale=float(a["encoding"]["loss_scale"]),
            )
        except ConfigError as exc:
            raise PolicyViolation(f"the task's encoding is invalid: {exc}") from exc

    def _check_assignment(self, a: dict[str, Any], model_length: int) -> None:
        """What a client can refuse before it trains (service-v1.md §3.1); nothing sent."""
        if model_length != self.model.num_weights:
            raise PolicyViolation(
                f"task model has {model_length} weights, local model {self.model.num_weights}"
            )
        mode = a.get("mode")
        if mode is None:
            return
        pinned = self.identity.authority_key
        if mode != Mode.ACTIVE.value:
            if pinned is not None:
                raise PolicyViolation(
                    "this client pins a task authority and takes part only in active-mode sessions"
                )
            if not self.policy.allow_semi_honest:
                raise PolicyViolation(
                    "the task runs semi-honest sessions, which this client's policy refuses"
                )
            return
        if pinned is None:
            if self.policy.require_certified_identities:
                raise PolicyViolation(
                    "this client pins no task authority, so nothing certifies the identity "
                    "keys the server will put in the session; enrol with --authority-key (or "
                    "opt out with require_certified_identities=False)"
                )
            return
        if "roster" not in a:
            return
        relayed = a["roster"]
        if not isinstance(relayed, str) or not relayed:
            raise PolicyViolation(
                "the server relayed no roster of the pinned task authority for an active task"
            )
        floor = max(self.roster_min_serial, self.ledger.roster_floor(pinned, self.roster_scope))
        authority = PinnedAuthority(pinned, self.roster_scope, int(time.time()), floor)
        try:
            roster = verify_roster(bytes.fromhex(relayed), authority)
        except ValueError as exc:
            raise PolicyViolation(f"the relayed roster is not hex: {exc}") from exc
        except CertificationError as exc:
            raise PolicyViolation(f"the relayed roster is refused: {exc}") from exc
        if roster.key_of(self.client_id) != self.identity.public_key:
            raise PolicyViolation(
                f"the task authority's roster does not certify client {self.client_id}'s key"
            )

    def _faulty(self, number: int, stage: Round) -> bool:
        return self.fault is not None and self.fault(number, stage)

    def _post(self, round_id: int, data: bytes) -> bool:
        """Send one protocol message; False if its stage is over (409/410): dropped."""
        try:
            response = self._request(
                "POST", f"/v1/rounds/{round_id}/messages", data, CBOR_MEDIA_TYPE
            )
        except RequestRefused as exc:
            if exc.status == 409:
                log.info("round %d: message refused as late (%s)", round_id, exc.code)
                return False
            raise
        return response.status_code != 410

    def _download(self, version: int) -> npt.NDArray[np.float64]:
        """Model ``version`` of the task, checked before use (cached for the next round).

        ``x-secagg-sha256`` covers the exact body bytes and is checked before
        the file is parsed; ``x-secagg-weights-sha256`` covers the raw
        little-endian float32 values (the registry's content hash) and is
        checked on what was parsed. ``x-secagg-version`` must name ``version``.
        """
        if self._cache is None or self._cache[0] != version:
            response = self._request("GET", f"/v1/tasks/{self.task_id}/models/{version}")
            body = response.content
            if hashlib.sha256(body).hexdigest() != response.headers.get("x-secagg-sha256"):
                raise ClientError(
                    f"model version {version} failed its integrity check: the body does not "
                    "hash to x-secagg-sha256"
                )
            if response.headers.get("x-secagg-version") != str(version):
                raise ClientError(
                    f"asked for model version {version}, the server sent version "
                    f"{response.headers.get('x-secagg-version')!r}"
                )
            try:
                raw = np.load(io.BytesIO(body), allow_pickle=False)
            except ValueError as exc:
                raise ClientError(f"model version {version} is not an .npy file: {exc}") from exc
            if raw.dtype != np.dtype("<f4") or raw.ndim != 1:
                raise ClientError(
                    f"model version {version} is not a 1-D little-endian float32 vector "
                    f"(dtype {raw.dtype}, shape {raw.shape})"
                )
            digest = hashlib.sha256(raw.tobytes()).hexdigest()
            if digest != response.headers.get("x-secagg-weights-sha256"):
                raise ClientError(
                    f"model version {version} failed its integrity check: the weights do not "
                    "hash to x-secagg-weights-sha256"
                )
            self._cache = (version, raw.astype(np.float32))
        return self._cache[1].astype(np.float64)

    def _check_roster(
        self, config: SessionConfig, relayed: object
    ) -> tuple[Roster | None, PinnedAuthority | None]:
        """authority-v1.md §5.2, before training or sending anything; refusals are typed.

        Without a pinned authority an active session is refused unless the policy
        opted out of certified identities (semi-honest sessions are then governed
        by ``allow_semi_honest``). With one, only active sessions are accepted: in
        a semi-honest session the round-0 keys are unsigned, so the server could
        substitute them whatever the roster says (a downgrade).
        """
        pinned = self.identity.authority_key
        if pinned is None:
            if config.mode is Mode.ACTIVE and self.policy.require_certified_identities:
                raise PolicyViolation(
                    "this client pins no task authority, so nothing certifies the identity "
                    "keys the server put in the session; enrol with --authority-key (or "
                    "opt out with require_certified_identities=False)"
                )
            return None, None
        if config.mode is not Mode.ACTIVE:
            raise PolicyViolation(
                "this client pins a task authority and takes part only in active-mode sessions"
            )
        # The floor survives restarts through the ledger (a replayed older roster).
        floor = max(self.roster_min_serial, self.ledger.roster_floor(pinned, self.roster_scope))
        authority = PinnedAuthority(pinned, self.roster_scope, int(time.time()), floor)
        if not isinstance(relayed, str) or not relayed:
            raise PolicyViolation(
                "the server relayed no roster of the pinned task authority for an active session"
            )
        try:
            roster = verify_roster(bytes.fromhex(relayed), authority)
            check_session_roster(roster, config, self.client_id, self.identity.public_key)
        except ValueError as exc:
            raise PolicyViolation(f"the relayed roster is not hex: {exc}") from exc
        except CertificationError as exc:
            raise PolicyViolation(f"the session's participants are not certified: {exc}") from exc
        self.roster_min_serial = max(floor, roster.serial)
        self.ledger.raise_roster_floor(pinned, self.roster_scope, roster.serial)
        return roster, authority

    @property
    def _server_key(self) -> str:
        return str(self._http.base_url).rstrip("/")

    def _check_ledger(self, base_version: int) -> None:
        """Refuse a second contribution on the same base version (§4.7), nothing sent."""
        if self.ledger.contains(self._server_key, self.task_id, base_version):
            if not self.policy.allow_resubmission_on_same_base:
                raise AlreadyContributed(
                    f"already sent a masked input for task {self.task_id} on base version "
                    f"{base_version}: a second sum over the same contribution lets the "
                    "server subtract them (allow_resubmission_on_same_base opts out)"
                )
            log.warning(
                "client %d: contributing again on base version %d (%s)",
                self.client_id,
                base_version,
                RESUBMISSION_WARNING,
            )

    def _check_policy(
        self,
        config: SessionConfig,
        encoding: RoundEncoding | DPEncoding,
        number: int,
        model_length: int,
    ) -> SessionPolicy:
        """Check the formed session; return the protocol policy the session runs under."""
        if self.client_id not in config.participants:
            raise PolicyViolation(f"client {self.client_id} is not a participant of the session")
        try:
            check_session(config, self._session_policy)
        except PolicyError as exc:
            raise PolicyViolation(str(exc)) from exc
        if model_length != self.model.num_weights:
            raise PolicyViolation(
                f"task model has {model_length} weights, local model {self.model.num_weights}"
            )
        expected = (
            encoding.vector_length
            if isinstance(encoding, DPEncoding)
            else encoding.vector_length(model_length)
        )
        if config.vector_length != expected:
            raise PolicyViolation("session vector length does not match the model")
        if config.context != session_context(self.task_id, number, encoding.context()):
            raise PolicyViolation("session is bound to another task, round or encoding")
        if config.bit_width < encoding.required_bit_width(config.num_participants):
            raise PolicyViolation("session bit width would let the sum wrap")
        if not isinstance(encoding, DPEncoding):
            return self._session_policy
        if config.bit_width != encoding.params.bits:
            raise PolicyViolation("session bit width differs from the task's DP parameters")
        # dp-v1 §8: the noise is calibrated for m honest shares. With c assumed
        # colluders (whose noise the server may subtract), the client unmasks
        # only a sum of at least m + c survivors: the protocol's survivor floor
        # (check_survivors, before any share leaves in R4) is raised to it.
        base = self._session_policy
        floor = encoding.params.min_honest + assumed_colluders(config, base)
        if config.num_participants < floor:
            raise PolicyViolation(
                f"a DP session needs at least m + c = {encoding.params.min_honest} + "
                f"{floor - encoding.params.min_honest} participants, got {config.num_participants}"
            )
        return dataclasses.replace(base, min_participants=max(base.min_participants, floor))

    def _dp_params(self, a: dict[str, Any]) -> DPParams | None:
        raw = a.get("dp")
        if raw is None:
            return None
        try:
            return DPParams.from_json(raw)
        except ConfigError as exc:
            raise PolicyViolation(f"the task's DP parameters are invalid: {exc}") from exc

    def _check_privacy(self, dp: DPParams, model_length: int) -> None:
        """dp-v1 §11: what the client checks before training a DP round; nothing sent."""
        if dp.dim != model_length:
            raise PolicyViolation(f"DP parameters are for {dp.dim} weights, not {model_length}")
        if dp.delta > self.policy.max_delta:
            raise PolicyViolation(
                f"the task's delta {dp.delta:g} exceeds this client's max_delta "
                f"{self.policy.max_delta:g}"
            )
        if dp.noise_multiplier < self.policy.min_noise_multiplier:
            raise PolicyViolation(
                f"the round's noise multiplier {dp.noise_multiplier:.3g} is below this "
                f"client's min_noise_multiplier {self.policy.min_noise_multiplier:.3g}"
            )
        limit = min(self.policy.max_epsilon, dp.epsilon_budget)
        key, task = self._server_key, self.task_id
        try:
            after = self.ledger.epsilon_spent(key, task, dp.delta, extra=dp, epsilon_cap=limit)
        except ConfigError as exc:
            raise PolicyViolation(f"this client cannot price the round: {exc}") from exc
        if after > limit:
            spent = self.ledger.epsilon_spent(key, task, dp.delta, epsilon_cap=limit)
            raise PrivacyBudgetSpent(
                f"this round would take the client's epsilon for task {self.task_id} from "
                f"{spent:.3f} to {after:.3f} (delta {dp.delta:g}), over its limit {limit:.3f} "
                f"(min of its own max_epsilon {self.policy.max_epsilon:g} and the task's "
                f"budget {dp.epsilon_budget:g})"
            )


def enrol(
    server_url: str,
    token: str,
    identity: Identity | None = None,
    *,
    name: str = "",
    verify: bool | str = True,
    authority_key: bytes | None = None,
    retry: RetryPolicy | None = None,
    timeout_s: float = 30.0,
) -> Identity:
    """Enrol an identity (a new one by default) with a one-time token.

    Args:
        server_url: the server's base URL, e.g. ``https://host:8443``.
        token: the one-time enrolment token from the administrator.
        identity: the identity to enrol; a new one by default.
        name: a name for this client, shown to the administrator.
        verify: ``True`` (system CAs), a CA certificate file, or ``False``.
        authority_key: the task authority's public key to pin (obtained out
            of band from the project administrator, never from the server).
        retry: how transient failures are retried; by default not at all
            (one attempt), since enrolment is interactive. The token is used
            once: a retry after a lost answer may be refused as already used.
        timeout_s: the HTTP timeout.

    Returns:
        The identity, enrolled: it carries the client id the server assigned.

    Raises:
        ServerUnreachable: the server could not be reached.
        TrustError: the server's TLS certificate is not trusted (CA file or
            host name: the message says which).
        RequestRefused: the server refused the token or the key.
    """
    identity = identity or Identity.generate()
    if authority_key is not None:
        identity = identity.with_authority(authority_key)
    body = json_body({"token": token, "public_key": identity.public_key.hex(), "name": name})
    http = httpx.Client(
        base_url=server_url.rstrip("/"), verify=tls_verify(verify), timeout=timeout_s
    )
    transport = SignedTransport(http, None, retry or RetryPolicy.never())
    try:
        response = transport.request("POST", "/v1/enrol", body, "application/json")
    finally:
        transport.close()
    if response.status_code != 200:
        try:
            err = response.json()
            if not isinstance(err, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            err = {"error": "http_error", "detail": response.text[:200]}
        raise RequestRefused(response.status_code, str(err.get("error")), str(err.get("detail")))
    try:
        client_id = int(response.json()["client_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"the server's enrolment answer has no client id: {exc}") from exc
    return identity.with_enrolment(client_id, server_url)
