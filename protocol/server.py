"""``ServerSession``: the aggregator's side of one secure aggregation session.

Sans-I/O and clock-free, after fcp's ``SecAggServer``: the driver delivers
client messages with :meth:`ServerSession.receive`, asks :meth:`pending` /
:meth:`ready` / :meth:`can_advance`, and calls :meth:`advance` when every
expected client has answered or when its deadline passes. Whoever has not
sent by then has dropped out. ``advance`` returns the messages to send,
keyed by client id.

A bad client message is refused with :class:`RemoteProtocolError` and leaves
the session unchanged (the client simply counts as not having sent). A round
that cannot finish safely moves the session to ``ABORTED``; it then reveals
nothing and answers every live client with an ``Abort`` message.

Laid out by round, so that "what happens in R2" is read in one place: per
collecting state, a receiver (``_receive_r2``: that round's checks on one
message, run after the common pipeline of ``_receive``) and an advance pair
(``_check_r2``, which decides without changing anything whether the round can
close, and ``_close_r2``, which commits and cannot fail), dispatched through
``_RECEIVERS`` and ``_ADVANCERS``. Which message each state accepts and which
state follows stay in ``_state.py``. Every check carries a ``# §12.x step n``
comment naming the step of ``specs/secagg-v1.md`` it implements
(``tests/specs/test_spec_anchors.py`` holds the two together).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import _cbor
from protocol._keys import (
    advertise_payload,
    consistency_payload,
    pairwise_mask_key,
    self_mask_commitment,
    self_mask_key,
)
from protocol._state import SERVER_ACCEPTS, SERVER_ADVANCE, TERMINAL, Round
from protocol.config import Mode, SessionConfig
from protocol.crypto import MaskExpander, X25519Secret, ed25519_verify, x25519_is_valid_public
from protocol.encoding import WordArray, add_packed, word_dtype
from protocol.errors import (
    AbortReason,
    BlameReason,
    ClientStatus,
    CryptoError,
    LocalProtocolError,
    ReconstructionFailed,
    RemoteProtocolError,
)
from protocol.messages import (
    Abort,
    AdvertisedKeys,
    AdvertiseKeys,
    ClientMessage,
    ConsistencySignature,
    MaskedInput,
    ShareKeys,
    UnmaskResponse,
    decode_message,
    encode_consistency_requests,
    encode_key_directories,
    encode_share_bundles,
    encode_unmask_requests,
)
from protocol.shamir import decode_share, judge_shares, reconstruct_secrets

# Stage index of each collecting round, for the per-client status names.
_STAGE = {
    Round.R0_ADVERTISE_KEYS: 0,
    Round.R1_SHARE_KEYS: 1,
    Round.R2_MASKED_INPUT_COLLECTION: 2,
    Round.R3_CONSISTENCY_CHECK: 3,
    Round.R4_UNMASKING: 4,
}


@dataclass(frozen=True)
class ClientRecord:
    """What became of one participant, and why (specs/secagg-v1.md §16.1).

    Attributes:
        status: the outcome.
        reason: for ``refused_in_Ri`` the refusal's abort reason, for
            ``blamed`` the blame reason; otherwise None.
        detail: a sentence for the operator.
    """

    status: ClientStatus
    reason: AbortReason | BlameReason | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        """A bounded metrics label: the status, ``refused_<reason>`` or ``blamed_<reason>``."""
        if self.reason is None:
            return self.status.value
        prefix = "blamed" if self.status is ClientStatus.BLAMED else "refused"
        return f"{prefix}_{self.reason.value}"


# Rounds whose advance may leave out (prune) clients that did send.
_PRUNING = frozenset({Round.R0_ADVERTISE_KEYS, Round.R1_SHARE_KEYS})


@dataclass(frozen=True)
class AggregateResult:
    """What a completed session reveals: the sum and who is in it.

    Attributes:
        aggregate: sum over ``survivors`` of their input vectors, mod 2^b,
            as unsigned words (see ``protocol.encoding.from_modular``).
        survivors: clients whose inputs are in the sum.
        dropped: clients that shared keys but whose input is not in the sum.
        stage_participants: how many clients sent in each round.
        client_status: what became of every participant (§16.1).
    """

    aggregate: WordArray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    stage_participants: Mapping[Round, int]
    client_status: Mapping[int, ClientRecord] = field(default_factory=dict)


class ServerSession:
    """The server of one session. See the module docstring for the driving loop."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.session_id = config.session_id
        self.round = Round.R0_ADVERTISE_KEYS
        self.abort_reason: AbortReason | None = None
        self.abort_detail = ""
        self._graph = config.neighbour_graph
        self._nbrs = {u: self._graph.neighbours(u) for u in config.participants}
        self._t = config.threshold
        # Who is expected to send in the current round (sent the previous message).
        self._expected: frozenset[int] = frozenset(config.participants)
        self._received: dict[int, ClientMessage] = {}
        self._stage_counts: dict[Round, int] = {}
        # Session data.
        self._adverts: dict[int, AdvertisedKeys] = {}
        self._seen_keys: set[bytes] = set()
        self._u1: frozenset[int] = frozenset()
        self._u2: frozenset[int] = frozenset()
        self._u3: frozenset[int] = frozenset()
        self._dropped: frozenset[int] = frozenset()
        self._share_cts: dict[int, dict[int, bytes]] = {}
        self._acc: WordArray | None = None
        self._signatures: dict[int, bytes] = {}
        self._survivors_cbor = b""
        self._commitments: dict[int, bytes] = {}
        self._self_shares: dict[int, dict[int, int]] = defaultdict(dict)  # owner -> holder -> share
        self._key_shares: dict[int, dict[int, int]] = defaultdict(dict)
        self._result: AggregateResult | None = None
        # Why each client left (§16.1); refusals of the round being collected.
        self._status: dict[int, ClientRecord] = {
            u: ClientRecord(ClientStatus.ACTIVE) for u in config.participants
        }
        self._refused: dict[int, tuple[AbortReason, str]] = {}
        self._claimed: int | None = None
        self.blame: Mapping[int, BlameReason] = {}
        self.blame_detail = ""

    # -- driving API ------------------------------------------------------------

    def pending(self) -> frozenset[int]:
        """Clients expected to send in the current round that have not yet."""
        if self.round in TERMINAL:
            return frozenset()
        return self._expected - self._received.keys()

    def ready(self) -> bool:
        """True when every expected client has sent: advancing cannot gain anything by waiting."""
        return self.round not in TERMINAL and not self.pending()

    def can_advance(self) -> bool:
        """True iff :meth:`advance` now would move to the next round without aborting.

        It runs the round's advance check, the very function ``advance`` runs,
        which changes nothing. In R4 that check reconstructs and checks every
        secret (§13 steps 1-3; Shamir arithmetic, no mask expansion), so a
        wrong share makes it False as it makes ``advance`` abort.
        """
        if self.round in TERMINAL:
            return False
        check, _ = _ADVANCERS[self.round]
        try:
            check(self, frozenset(self._received))
        except RemoteProtocolError:
            return False
        return True

    @property
    def client_status(self) -> Mapping[int, ClientRecord]:
        """Every participant's status so far (final once the session is terminal)."""
        return dict(self._status)

    @property
    def blamed(self) -> tuple[int, ...]:
        """Clients the unmasking evidence blames (§13.1), ascending; empty unless aborted so."""
        return tuple(sorted(self.blame))

    @property
    def result(self) -> AggregateResult:
        """The aggregate of a completed session."""
        if self._result is None:
            raise LocalProtocolError(f"no result: the session is in {self.round.value}")
        return self._result

    def receive(
        self, data: bytes | ClientMessage, *, authenticated_sender: int | None = None
    ) -> None:
        """Accept one client message of the current round.

        Args:
            data: the message bytes, or a message the driver already decoded
                with :func:`~protocol.messages.decode_client_message` (e.g. off
                its event loop), which skips step 2 of the pipeline only.
            authenticated_sender: the client the transport authenticated, if any;
                a message claiming to come from another client is refused.

        Raises:
            RemoteProtocolError: malformed, wrong session, wrong round, unexpected
                sender, replay or invalid content. The session is unchanged.
        """
        # §12.1 server step 1
        if self.round in TERMINAL:
            raise RemoteProtocolError(AbortReason.WRONG_ROUND, f"session is {self.round.value}")
        try:
            self._receive(data, authenticated_sender)
        except RemoteProtocolError as exc:
            # Attribute the refusal (§16.1): to the authenticated client if the
            # transport names one, else to the claimed sender; only while that
            # client is still expected in this round (a later valid message wins).
            who = authenticated_sender if authenticated_sender is not None else self._claimed
            if who is not None and who in self._expected and who not in self._received:
                self._refused[who] = (exc.reason, exc.detail)
            raise

    def _receive(self, data: bytes | ClientMessage, authenticated_sender: int | None) -> None:
        """The common pipeline of §12.1 (server), then the round's receiver."""
        self._claimed = None
        # §12.1 server step 2
        msg = data if isinstance(data, ClientMessage) else decode_message(data)
        claimed = msg.sender if isinstance(msg, ClientMessage) else None
        self._claimed = claimed
        # §12.1 server step 3
        if authenticated_sender is not None and claimed != authenticated_sender:
            raise RemoteProtocolError(
                AbortReason.WRONG_SENDER,
                f"authenticated as client {authenticated_sender} but the message is from {claimed}",
            )
        # §12.1 server step 4
        if msg.session_id != self.session_id:
            raise RemoteProtocolError(AbortReason.WRONG_SESSION, "message of another session")
        # §12.1 server step 5: the table decides; a server-to-client message is
        # of no type the server accepts, so it is refused here too.
        expected_type = SERVER_ACCEPTS[self.round]
        if msg.TYPE is not expected_type or not isinstance(msg, ClientMessage):
            raise RemoteProtocolError(
                AbortReason.WRONG_ROUND,
                f"{msg.TYPE.name} received while collecting {expected_type.name}",
            )
        sender = msg.sender
        # §12.1 server step 6
        if sender in self._received:
            raise RemoteProtocolError(
                AbortReason.REPLAYED_MESSAGE, f"client {sender} already sent in {self.round.value}"
            )
        # §12.1 server step 7
        if sender not in self._expected:
            raise RemoteProtocolError(
                AbortReason.WRONG_SENDER, f"client {sender} is not expected in {self.round.value}"
            )
        # §12.1 server step 8: the round's checks, then the message is recorded.
        # A receiver raises before it changes anything, so a refusal leaves the
        # session as it was.
        self._received[sender] = _RECEIVERS[self.round](self, msg)

    def advance(self) -> dict[int, bytes]:
        """Close the current round; return the messages to send, keyed by client id.

        Clients expected in this round that have not sent are dropouts. If the
        session cannot continue safely it aborts and every live client gets an
        ``Abort`` message.
        """
        if self.round in TERMINAL:
            raise LocalProtocolError(f"cannot advance: the session is {self.round.value}")
        senders = frozenset(self._received)
        live = self._expected
        # The round's check decides, without changing anything, whether the
        # session can go on (``can_advance`` asks the same function); only then
        # does the round's closer commit, and a closer cannot fail.
        check, close = _ADVANCERS[self.round]
        try:
            plan = check(self, senders)
        except RemoteProtocolError as exc:
            self._close_stage(senders, frozenset(live))
            if isinstance(exc, ReconstructionFailed):
                self.blame, self.blame_detail = exc.blame, exc.detail
                for u, why in exc.blame.items():
                    self._status[u] = ClientRecord(ClientStatus.BLAMED, why, exc.detail)
            # §12.11: an Abort to every client of the round's expected set.
            return self._abort_to(live, exc.reason, exc.detail)
        out = close(self, plan)
        self._close_stage(senders, frozenset(out) if self.round in _PRUNING else senders)
        self._stage_counts[self.round] = len(senders)
        if self.round is Round.R4_UNMASKING:
            for u, record in self._status.items():
                if record.status is ClientStatus.ACTIVE:
                    self._status[u] = ClientRecord(ClientStatus.COMPLETED)
            assert self._result is not None
            self._result = AggregateResult(
                aggregate=self._result.aggregate,
                survivors=self._result.survivors,
                dropped=self._result.dropped,
                stage_participants=self._result.stage_participants,
                client_status=dict(self._status),
            )
        self.round = SERVER_ADVANCE[self.config.mode][self.round]
        self._expected = frozenset(out)
        self._received = {}
        return out

    def _close_stage(self, senders: frozenset[int], kept: frozenset[int]) -> None:
        """Record who missed the stage being closed: refused, dropped or pruned."""
        stage = _STAGE[self.round]
        for u in sorted(self._expected - senders):
            if u in self._refused:
                reason, detail = self._refused[u]
                status = ClientStatus(f"refused_in_R{stage}")
                self._status[u] = ClientRecord(status, reason, detail)
            else:
                self._status[u] = ClientRecord(ClientStatus(f"dropped_in_R{stage}"))
        for u in sorted(senders - kept):
            self._status[u] = ClientRecord(
                ClientStatus(f"pruned_in_R{stage}"), None, f"fewer than {self._t} live neighbours"
            )
        self._refused = {}

    def abort(
        self, reason: AbortReason = AbortReason.CANCELLED, detail: str = ""
    ) -> dict[int, bytes]:
        """Abort from outside (e.g. the operator cancelled the task)."""
        if self.round in TERMINAL:
            raise LocalProtocolError(f"cannot abort: the session is {self.round.value}")
        return self._abort_to(self._expected, reason, detail or "aborted by the driver")

    # -- R0: AdvertiseKeys (§12.4) ----------------------------------------------

    def _receive_r0(self, msg: AdvertiseKeys) -> AdvertiseKeys:
        keys = msg.keys
        # §12.4 server step 1
        if self.config.mode is Mode.ACTIVE:
            payload = advertise_payload(
                self.session_id, keys.sender, keys.cipher_public_key, keys.mask_public_key
            )
            if not ed25519_verify(self.config.identity_key(keys.sender), keys.signature, payload):
                raise RemoteProtocolError(
                    AbortReason.BAD_SIGNATURE, f"advertised keys of {keys.sender} are not signed"
                )
        elif keys.signature:
            raise RemoteProtocolError(
                AbortReason.MALFORMED_MESSAGE, "signature in a semi-honest session"
            )
        # §12.4 server step 2: refused on arrival, so that one client cannot make
        # each of its neighbours abort later (§6.5).
        for key in (keys.cipher_public_key, keys.mask_public_key):
            if not x25519_is_valid_public(key):
                raise RemoteProtocolError(
                    AbortReason.INVALID_PUBLIC_KEY,
                    f"client {keys.sender} advertised a non-canonical or small-order X25519 key",
                )
        # §12.4 server step 3
        if keys.cipher_public_key == keys.mask_public_key:
            raise RemoteProtocolError(AbortReason.DUPLICATE_KEYS, "the two public keys are equal")
        # §12.4 server step 4
        if keys.cipher_public_key in self._seen_keys or keys.mask_public_key in self._seen_keys:
            raise RemoteProtocolError(
                AbortReason.DUPLICATE_KEYS, f"client {keys.sender} reuses another client's key"
            )
        self._adverts[keys.sender] = keys
        self._seen_keys.update((keys.cipher_public_key, keys.mask_public_key))
        return msg

    def _check_r0(self, senders: frozenset[int]) -> frozenset[int]:
        """U1, or BELOW_THRESHOLD when nobody keeps t live neighbours."""
        # §12.4 advance step 1
        u1 = self._prune(senders)
        if not u1:
            raise self._below(f"only {len(senders)} clients advertised keys")
        return u1

    def _close_r0(self, u1: frozenset[int]) -> dict[int, bytes]:
        self._u1 = u1
        # §12.4 advance step 2
        return encode_key_directories(
            self.session_id,
            {v: self._adverts[v] for v in u1},
            {u: sorted((self._nbrs[u] | {u}) & u1) for u in sorted(u1)},
        )

    # -- R1: ShareKeys (§12.5) --------------------------------------------------

    def _receive_r1(self, msg: ShareKeys) -> ShareKeys:
        # §12.5 server step 1
        want = self._nbrs[msg.sender] & self._u1
        got = {v for v, _ in msg.ciphertexts}
        if got != want:
            raise RemoteProtocolError(
                AbortReason.WRONG_RECIPIENT,
                f"client {msg.sender} must share with exactly its live neighbours {sorted(want)}",
            )
        return msg

    def _check_r1(self, senders: frozenset[int]) -> frozenset[int]:
        """U2, or BELOW_THRESHOLD when nobody keeps t live neighbours."""
        # §12.5 advance step 1
        u2 = self._prune(senders)
        if not u2:
            raise self._below(f"only {len(senders)} clients shared keys")
        return u2

    def _close_r1(self, u2: frozenset[int]) -> dict[int, bytes]:
        self._u2 = u2
        share_keys = {u: self._received[u] for u in u2}
        cts: dict[int, dict[int, bytes]] = {}
        for u, msg in share_keys.items():
            assert isinstance(msg, ShareKeys)  # what _receive_r1 recorded
            cts[u] = dict(msg.ciphertexts)
            # §12.5 advance step 2: keep com_u; the commitments are not forwarded.
            self._commitments[u] = msg.self_mask_commitment
        self._adverts = {u: self._adverts[u] for u in u2}
        # §12.5 advance step 3
        return encode_share_bundles(
            self.session_id, cts, {v: sorted(self._nbrs[v] & u2) for v in sorted(u2)}
        )

    # -- R2: MaskedInputCollection (§12.6) --------------------------------------

    def _receive_r2(self, msg: MaskedInput) -> MaskedInput:
        # §12.6 server step 1
        if len(msg.masked) != self.config.packed_size:
            raise RemoteProtocolError(
                AbortReason.WRONG_VECTOR_LENGTH,
                f"masked vector of {len(msg.masked)} bytes, expected {self.config.packed_size}",
            )
        # §12.6 server step 3. Streaming aggregation: the sum is all the server
        # keeps; keeping the vector would cost (survivors x vector size) of
        # memory for nothing.
        if self._acc is None:
            self._acc = np.zeros(self.config.vector_length, word_dtype(self.config.bit_width))
        # §12.6 server step 2, fused with step 3: add_packed refuses non-zero
        # padding bits before it adds anything, then unpacks block by block, so
        # no unpacked copy of the vector is held either.
        add_packed(self._acc, msg.masked, self.config.bit_width)
        return MaskedInput(msg.session_id, msg.sender, b"")

    def _check_r2(self, senders: frozenset[int]) -> tuple[frozenset[int], frozenset[int]]:
        """(U3, D), or BELOW_THRESHOLD when a needed secret would be unrecoverable."""
        # §12.6 advance step 1
        u3, dropped = senders, self._u2 - senders
        # §12.6 advance step 2
        self._check_recoverable(u3, dropped, u3, "sent masked inputs")
        return u3, dropped

    def _close_r2(self, plan: tuple[frozenset[int], frozenset[int]]) -> dict[int, bytes]:
        self._u3, self._dropped = plan
        survivors = tuple(sorted(self._u3))
        self._survivors_cbor = _cbor.dumps(list(survivors))
        # §12.6 advance step 3
        if self.config.mode is Mode.ACTIVE:
            return encode_consistency_requests(self.session_id, survivors, survivors)
        return encode_unmask_requests(self.session_id, survivors, survivors, sorted(self._dropped))

    # -- R3: ConsistencyCheck, active mode (§12.8) ------------------------------

    def _receive_r3(self, msg: ConsistencySignature) -> ConsistencySignature:
        # §12.8 server step 1
        key = self.config.identity_key(msg.sender)
        if not ed25519_verify(
            key, msg.signature, consistency_payload(self.session_id, self._survivors_cbor)
        ):
            raise RemoteProtocolError(
                AbortReason.BAD_SIGNATURE, f"consistency signature of {msg.sender} is invalid"
            )
        self._signatures[msg.sender] = msg.signature
        return msg

    def _check_r3(self, senders: frozenset[int]) -> frozenset[int]:
        """U4, or BELOW_THRESHOLD when a needed secret would be unrecoverable."""
        # §12.8 advance step 1
        self._check_recoverable(self._u3, self._dropped, senders, "signed the survivor set")
        return senders

    def _close_r3(self, u4: frozenset[int]) -> dict[int, bytes]:
        # §12.8 advance step 2: each client gets the signatures of its closed
        # neighbourhood, the ones it can check against its own view.
        signatures = {
            u: [(v, self._signatures[v]) for v in sorted((self._nbrs[u] | {u}) & u4)]
            for u in sorted(u4)
        }
        return encode_unmask_requests(
            self.session_id,
            sorted(u4),
            tuple(sorted(self._u3)),
            tuple(sorted(self._dropped)),
            signatures,
        )

    # -- R4: Unmasking (§12.9, §13) ---------------------------------------------

    def _receive_r4(self, msg: UnmaskResponse) -> UnmaskResponse:
        sender = msg.sender
        # §12.9 server step 1: exactly the shares requested, never both of one owner.
        mine = self._nbrs[sender] & self._u2
        want_self = mine & self._u3
        want_key = mine & self._dropped
        got_self = {v for v, _ in msg.self_mask_shares}
        got_key = {v for v, _ in msg.mask_key_shares}
        if got_self != want_self or got_key != want_key:
            raise RemoteProtocolError(
                AbortReason.INCONSISTENT_SURVIVORS,
                f"client {sender} revealed shares other than those requested",
            )
        # §12.9 server step 2: decode_share refuses a share >= p (malformed_message).
        decoded_self = {v: decode_share(s) for v, s in msg.self_mask_shares}
        decoded_key = {v: decode_share(s) for v, s in msg.mask_key_shares}
        for v, share in decoded_self.items():
            self._self_shares[v][sender] = share
        for v, share in decoded_key.items():
            self._key_shares[v][sender] = share
        return msg

    def _check_r4(self, responders: frozenset[int]) -> _Unmasking:
        """§13 steps 1-3: every secret reconstructed and checked, no mask removed.

        Raises:
            RemoteProtocolError: BELOW_THRESHOLD (§12.9 advance step 1).
            ReconstructionFailed: a secret fails its check; carries the blame.
        """
        sid = self.session_id
        # §12.9 advance step 1
        self._check_recoverable(self._u3, self._dropped, responders, "answered the unmasking")
        # §12.9 advance step 2: the unmasking of §13, whose checks all run here.
        survivors = sorted(self._u3)
        # §13 step 1: reconstruct every seed; the failures are collected so that
        # the evidence of all of them is judged (§13.1).
        seeds = self._reconstruct(survivors, self._self_shares, responders)
        # §13 step 2
        bad_seeds = [u for u in survivors if not self._seed_check(u)(seeds[u])]
        # §13 step 3
        needed = [d for d in sorted(self._dropped) if self._nbrs[d] & self._u3]
        mask_secrets = self._reconstruct(needed, self._key_shares, responders)
        bad_keys = [d for d in needed if not self._mask_key_check(d)(mask_secrets[d])]
        if bad_seeds or bad_keys:
            raise self._blame(bad_seeds, bad_keys, responders)
        minus = [self_mask_key(_checked(seeds[u]), sid, u) for u in survivors]
        plus: list[bytes] = []
        # Pairwise masks between a dropped client d and its surviving neighbours v:
        # y_v contains +PRG(s_vd) if v < d and -PRG(s_vd) if v > d; undo that.
        for d in needed:
            secret = X25519Secret(_checked(mask_secrets[d]))
            for v in sorted(self._nbrs[d] & self._u3):
                try:
                    key = pairwise_mask_key(secret, self._adverts[v].mask_public_key, sid, d, v)
                except CryptoError as exc:  # pragma: no cover - keys were agreed before
                    raise RemoteProtocolError(AbortReason.RECONSTRUCTION_FAILED, str(exc)) from exc
                (minus if v < d else plus).append(key)
        return _Unmasking(responders, tuple(plus), tuple(minus))

    def _close_r4(self, plan: _Unmasking) -> dict[int, bytes]:
        """§13 steps 4-5: remove every mask in one pass, after all the checks."""
        cfg = self.config
        assert self._acc is not None
        acc = self._acc
        plus, minus = list(plan.plus), list(plan.minus)
        # §13 step 4: every secret is reconstructed and checked before any mask is removed.
        MaskExpander(word_dtype(cfg.bit_width)).apply(acc, add=plus, subtract=minus)
        if cfg.bit_width < 8 * acc.itemsize:
            np.bitwise_and(acc, acc.dtype.type(cfg.modulus_mask), out=acc)
        self._acc = None
        # §13 step 5
        self._result = AggregateResult(
            aggregate=acc,
            survivors=tuple(sorted(self._u3)),
            dropped=tuple(sorted(self._dropped)),
            stage_participants=dict(
                self._stage_counts, **{Round.R4_UNMASKING: len(plan.responders)}
            ),
        )
        return {}

    # -- shared by the advance checks ---------------------------------------------

    def _prune(self, members: frozenset[int]) -> frozenset[int]:
        """Largest subset in which every client keeps >= t neighbours (a fixed point).

        A client with fewer than t live neighbours could not have its secrets
        reconstructed; it would refuse to continue, so it is left out (§12.2).
        """
        live = set(members)
        changed = True
        while changed:
            changed = False
            for u in sorted(live):
                if len(self._nbrs[u] & live) < self._t:
                    live.discard(u)
                    changed = True
        return frozenset(live)

    def _below(self, detail: str) -> RemoteProtocolError:
        return RemoteProtocolError(AbortReason.BELOW_THRESHOLD, detail)

    def _check_recoverable(
        self,
        survivors: frozenset[int],
        dropped: frozenset[int],
        holders: frozenset[int],
        what: str,
    ) -> None:
        """§12.3 ``Recoverable(S, D, H)``: every secret to reconstruct has >= t holders."""
        # §12.3 step 1
        if len(survivors) < self._t:
            raise self._below(f"{len(survivors)} survivors < threshold {self._t}")
        # §12.3 step 2
        for u in sorted(survivors):
            if len(self._nbrs[u] & holders) < self._t:
                raise self._below(f"survivor {u}: fewer than {self._t} of its neighbours {what}")
        # §12.3 step 3
        for d in sorted(dropped):
            if self._nbrs[d] & survivors and len(self._nbrs[d] & holders) < self._t:
                raise self._below(f"dropped {d}: fewer than {self._t} of its neighbours {what}")

    def _seed_check(self, u: int) -> Callable[[bytes | None], bool]:
        """§13 step 2: does a candidate self-mask seed of ``u`` match its commitment?"""
        sid, commitment = self.session_id, self._commitments[u]

        def check(seed: bytes | None) -> bool:
            return seed is not None and self_mask_commitment(seed, sid, u) == commitment

        return check

    def _mask_key_check(self, d: int) -> Callable[[bytes | None], bool]:
        """§13 step 3: is a candidate the secret of ``d``'s advertised mask key?"""
        public = self._adverts[d].mask_public_key

        def check(secret: bytes | None) -> bool:
            return secret is not None and X25519Secret(secret).public == public

        return check

    def _blame(
        self, bad_seeds: list[int], bad_keys: list[int], responders: frozenset[int]
    ) -> ReconstructionFailed:
        """§13.1: judge the shares of every secret that failed its check."""
        blame: dict[int, BlameReason] = {}
        notes: list[str] = []
        cases = [
            (
                u,
                "self-mask seed",
                self._self_shares,
                self._seed_check(u),
                BlameReason.WRONG_SELF_MASK_COMMITMENT,
            )
            for u in bad_seeds
        ] + [
            (
                d,
                "mask key",
                self._key_shares,
                self._mask_key_check(d),
                BlameReason.WRONG_MASK_PUBLIC_KEY,
            )
            for d in bad_keys
        ]
        for owner, what, shares, check, owner_reason in cases:
            held = {h: y for h, y in shares.get(owner, {}).items() if h in responders}
            verdict = judge_shares(held, self._t, check)
            if verdict.owner_at_fault:
                blame.setdefault(owner, owner_reason)
            for h in verdict.bad_holders:
                blame.setdefault(h, BlameReason.SHARE_OFF_POLYNOMIAL)
            notes.append(f"{what} of {owner}: {verdict.detail}")
        first, what = (bad_seeds[0], "self-mask seed") if bad_seeds else (bad_keys[0], "mask key")
        target = "its commitment" if bad_seeds else "its public key"
        who = f"blamed {sorted(blame)}" if blame else "nobody blamed"
        return ReconstructionFailed(
            f"reconstructed {what} of {first} does not match {target}; {who} ({'; '.join(notes)})",
            blame,
        )

    def _reconstruct(
        self, owners: Iterable[int], shares: dict[int, dict[int, int]], responders: frozenset[int]
    ) -> dict[int, bytes | None]:
        """Reconstruct one secret per owner from the first t responding holders.

        Owners whose first t holders coincide share one set of Lagrange
        coefficients (in the complete graph, almost all of them). A value
        ``>= 2**256`` is not a secret: None, judged like a failed check.
        """
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for owner in owners:
            holders = sorted(h for h in shares.get(owner, {}) if h in responders)
            if len(holders) < self._t:
                raise self._below(f"only {len(holders)} shares for client {owner}")
            groups[tuple(holders[: self._t])].append(owner)
        out: dict[int, bytes | None] = {}
        for holders_t, group in groups.items():
            matrix = [[shares[o][h] for h in holders_t] for o in group]
            try:
                secrets: list[bytes | None] = list(reconstruct_secrets(holders_t, matrix))
            except RemoteProtocolError:  # some value >= 2**256: find which, one by one
                secrets = []
                for row in matrix:
                    try:
                        secrets.append(reconstruct_secrets(holders_t, [row])[0])
                    except RemoteProtocolError:
                        secrets.append(None)
            for owner, secret in zip(group, secrets, strict=True):
                out[owner] = secret
        return out

    def _abort_to(self, live: Iterable[int], reason: AbortReason, detail: str) -> dict[int, bytes]:
        for u, record in self._status.items():
            if record.status is ClientStatus.ACTIVE:
                self._status[u] = ClientRecord(ClientStatus.ABORTED)
        self.round = Round.ABORTED
        self.abort_reason = reason
        self.abort_detail = detail
        self._acc = None
        self._self_shares.clear()
        self._key_shares.clear()
        return {u: Abort(self.session_id, reason).encode() for u in sorted(live)}


@dataclass(frozen=True)
class _Unmasking:
    """What the R4 check established: who answered, and the keys of every mask to remove."""

    responders: frozenset[int]
    plus: tuple[bytes, ...]
    minus: tuple[bytes, ...]


# The server's round tables (after h11's READERS/WRITERS), keyed by the state
# being collected. Which message a state accepts and which state ``advance``
# moves to stay in ``_state.py`` (SERVER_ACCEPTS, SERVER_ADVANCE); these say
# what the server does in each round. ``Any``: each receiver takes the message
# class that SERVER_ACCEPTS names for its state (tests/protocol/test_round_tables.py).
_Receiver = Callable[[ServerSession, Any], ClientMessage]
_RECEIVERS: dict[Round, _Receiver] = {
    Round.R0_ADVERTISE_KEYS: ServerSession._receive_r0,
    Round.R1_SHARE_KEYS: ServerSession._receive_r1,
    Round.R2_MASKED_INPUT_COLLECTION: ServerSession._receive_r2,
    Round.R3_CONSISTENCY_CHECK: ServerSession._receive_r3,
    Round.R4_UNMASKING: ServerSession._receive_r4,
}

# Per state: (check, close). ``check(session, senders)`` decides whether the
# round can close, changes nothing and raises RemoteProtocolError if not; it
# returns what ``close(session, plan)`` needs to commit and build the next
# round's messages. ``close`` cannot fail.
_Advancer = tuple[
    Callable[[ServerSession, frozenset[int]], Any],
    Callable[[ServerSession, Any], dict[int, bytes]],
]
_ADVANCERS: dict[Round, _Advancer] = {
    Round.R0_ADVERTISE_KEYS: (ServerSession._check_r0, ServerSession._close_r0),
    Round.R1_SHARE_KEYS: (ServerSession._check_r1, ServerSession._close_r1),
    Round.R2_MASKED_INPUT_COLLECTION: (ServerSession._check_r2, ServerSession._close_r2),
    Round.R3_CONSISTENCY_CHECK: (ServerSession._check_r3, ServerSession._close_r3),
    Round.R4_UNMASKING: (ServerSession._check_r4, ServerSession._close_r4),
}


def _checked(secret: bytes | None) -> bytes:
    """A secret that passed its check (so it is not None)."""
    assert secret is not None
    return secret
