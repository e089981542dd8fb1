"""``ClientSession``: one client's side of one secure aggregation session.

Sans-I/O: bytes in, bytes out. The caller delivers each server message to
:meth:`ClientSession.receive` and sends back whatever it returns. Every
check a client makes on a server message is here, each tied to an
:class:`~protocol.errors.AbortReason`; any violation aborts the session
(the client stops and reveals nothing further) and raises
:class:`~protocol.errors.RemoteProtocolError`.

Laid out by round: ``receive`` runs the common pipeline of §12.1, in which
``_state.CLIENT_TRANSITIONS`` alone decides whether a message is accepted in
the current state; then one handler per round (``_r1_share_keys`` ...
``_r4_unmask``, through ``_HANDLERS``) checks the message and computes the
reply. Every check carries a ``# §12.x step n`` comment naming the step of
``specs/secagg-v1.md`` it implements (``tests/specs/test_spec_anchors.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from protocol import _cbor
from protocol._keys import (
    advertise_payload,
    consistency_payload,
    pairwise_mask_key,
    self_mask_commitment,
    self_mask_key,
    share_aad,
    share_encryption_key,
    u32,
)
from protocol._state import CLIENT_TRANSITIONS, TERMINAL, Round, client_after_abort
from protocol.authority import (
    CertificationError,
    CertificationFault,
    PinnedAuthority,
    Roster,
    check_session_roster,
    verify_roster,
)
from protocol.config import Mode, SessionConfig
from protocol.crypto import (
    MaskExpander,
    RandomSource,
    SystemRandom,
    X25519Secret,
    aead_open,
    aead_seal,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    x25519_generate,
    x25519_is_valid_public,
)
from protocol.encoding import pack_bits, to_modular, word_dtype
from protocol.errors import (
    AbortReason,
    ConfigError,
    CryptoError,
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocol.messages import (
    SHARE_PLAINTEXT_SIZE,
    Abort,
    AdvertisedKeys,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    MessageType,
    ServerRequest,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from protocol.policy import PolicyError, SessionPolicy, check_session, check_survivors
from protocol.shamir import SHARE_SIZE, decode_share, encode_share, split_secrets

IntArray = npt.NDArray[np.integer]

SECRET_FIELDS = (
    "_input",
    "_cipher_sk",
    "_mask_sk",
    "_self_mask_seed",
    "_identity_key",
    "_rng",
    "_cipher_shared",
    "_held_mask_key_shares",
    "_held_self_mask_shares",
)
"""Attributes of :class:`ClientSession` that hold secrets (or a source that can
regenerate them); every one is empty or ``None`` once the session is
``COMPLETED`` or ``ABORTED``."""


class ClientSession:
    """One client in one session.

    Args:
        config: the session configuration the client agreed to (from its own
            policy, not merely from the server; see ``specs/secagg-v1.md``).
        client_id: this client's id; must be a participant.
        input_vector: 1-D integer vector of ``config.vector_length`` elements,
            signed or unsigned; it is reduced modulo 2^b.
        rng: source of secret randomness (default: the OS CSPRNG).
        identity_key: active mode: this client's raw Ed25519 secret key, whose
            public key must match the configuration.
        policy: what this client accepts (§4.7); the strict
            ``SessionPolicy()`` by default. Conformance tests pass
            ``SessionPolicy.protocol_only()``.
        roster: the task authority's signed roster relayed by the server
            (``specs/authority-v1.md``); checked against ``authority``.
        authority: the pinned task authority, the expected scope and the
            current time. When given, the session is refused unless it is in
            active mode and ``roster`` certifies every participant's identity
            key (authority-v1.md §5.2), before anything is sent.

    Raises:
        PolicyError: the policy refuses the configuration (nothing was produced).
        ConfigError: inconsistent arguments.
        CertificationError: the roster is missing or does not certify the
            session (``fault`` names the failed step).
    """

    def __init__(
        self,
        config: SessionConfig,
        client_id: int,
        input_vector: IntArray,
        *,
        rng: RandomSource | None = None,
        identity_key: bytes | None = None,
        policy: SessionPolicy | None = None,
        roster: bytes | Roster | None = None,
        authority: PinnedAuthority | None = None,
    ) -> None:
        if not config.is_participant(client_id):
            raise ConfigError(f"client {client_id} is not a participant of this session")
        self.policy = policy if policy is not None else SessionPolicy()
        check_session(config, self.policy)  # §4.7: before start() can produce anything
        vec = np.asarray(input_vector)
        if vec.ndim != 1 or vec.shape[0] != config.vector_length:
            raise ConfigError(
                f"input vector must be 1-D of length {config.vector_length}, got shape {vec.shape}"
            )
        if not np.issubdtype(vec.dtype, np.integer):
            raise ConfigError(f"input vector must be integers, got {vec.dtype}")
        if config.mode is Mode.ACTIVE:
            if identity_key is None:
                raise ConfigError("active mode needs the client's Ed25519 identity key")
            if ed25519_public_key(identity_key) != config.identity_key(client_id):
                raise ConfigError("identity key does not match the configuration")
        if authority is not None:
            # authority-v1.md §5.2: every identity is certified before round 0. A
            # semi-honest session has unsigned round-0 keys that no roster can tie
            # to an identity: accepting one would let the server downgrade.
            if config.mode is not Mode.ACTIVE:
                raise CertificationError(
                    CertificationFault.NOT_ACTIVE,
                    "a client pinned to a task authority takes part only in active sessions",
                )
            if roster is None:
                raise CertificationError(
                    CertificationFault.MISSING_ROSTER,
                    "an active session needs a roster of the pinned authority",
                )
            assert identity_key is not None
            check_session_roster(
                verify_roster(roster, authority),
                config,
                client_id,
                ed25519_public_key(identity_key),
            )
        elif roster is not None:
            raise ConfigError("a roster is only checked against a pinned authority")
        elif config.mode is Mode.ACTIVE and self.policy.require_certified_identities:
            # §4.7 rule 5: without a pinned authority every peer's identity key
            # comes from whoever built the configuration, the server included.
            raise PolicyError(
                "uncertified_identities",
                "an active session needs a pinned task authority that certifies every "
                "participant's identity key (spec §4.6); without one the server could "
                "substitute its own keys for the peers",
            )
        self.config = config
        self.client_id = client_id
        self.session_id = config.session_id
        # Both are secrets too (a DeterministicRandom regenerates every key and
        # seed drawn from it): erased with the rest when the session ends.
        self._rng: RandomSource | None = rng if rng is not None else SystemRandom()
        self._identity_key: bytes | None = identity_key
        # Reduced mod 2^b only when the masked input is computed (round 2), so an
        # idle session holds no copy; the caller must not modify it meanwhile.
        self._input: IntArray | None = vec
        self._neighbours = config.neighbour_graph.neighbours(client_id)
        self._transitions = CLIENT_TRANSITIONS[config.mode]
        self.round = Round.R0_ADVERTISE_KEYS
        self.abort_reason: AbortReason | None = None
        self._started = False
        # Secrets and what we learnt, filled round by round.
        self._cipher_sk: X25519Secret | None = None
        self._mask_sk: X25519Secret | None = None
        self._own_keys: AdvertisedKeys | None = None
        self._directory: dict[int, AdvertisedKeys] = {}  # live neighbours after R0
        self._cipher_shared: dict[int, bytes] = {}
        self._share_senders: frozenset[int] = frozenset()  # live neighbours after R1
        self._held_mask_key_shares: dict[int, bytes] = {}
        self._held_self_mask_shares: dict[int, bytes] = {}
        self._signed_survivors: tuple[int, ...] | None = None
        self._self_mask_seed = b""

    # -- public API -----------------------------------------------------------

    def start(self) -> bytes:
        """Round 0: generate the session key pairs and return ``AdvertiseKeys`` bytes."""
        if self._started:
            raise LocalProtocolError("start() was already called")
        self._started = True
        assert self._rng is not None  # only erased in a terminal state, after start()
        # §12.4 step 1 (this order: the vectors replay it)
        self._cipher_sk = x25519_generate(self._rng)
        self._mask_sk = x25519_generate(self._rng)
        cipher_pk, mask_pk = self._cipher_sk.public, self._mask_sk.public
        # §12.4 step 2
        signature = b""
        if self.config.mode is Mode.ACTIVE:
            assert self._identity_key is not None
            signature = ed25519_sign(
                self._identity_key,
                advertise_payload(self.session_id, self.client_id, cipher_pk, mask_pk),
            )
        # §12.4 step 3
        self._own_keys = AdvertisedKeys(self.client_id, cipher_pk, mask_pk, signature)
        return AdvertiseKeys(self.session_id, self._own_keys).encode()

    def receive(self, data: bytes) -> bytes | None:
        """Process one server message; return the reply to send, if any.

        The common pipeline of §12.1 (client), then the handler of the
        message's round (``_HANDLERS``).

        Raises:
            LocalProtocolError: ``start()`` has not been called.
            RemoteProtocolError: the server broke the protocol (the session is
                then aborted, except for a refused second unmasking request on a
                completed session, which stays completed).
        """
        # §12.1 step 1
        if not self._started:
            raise LocalProtocolError("call start() before receive()")
        # §12.1 step 2
        if self.round is Round.ABORTED:
            raise RemoteProtocolError(AbortReason.WRONG_ROUND, "the session is aborted")
        # §12.1 step 3
        try:
            msg = decode_message(data)
        except DecodeError as exc:
            if self.round is Round.COMPLETED:
                raise
            self._abort(exc.reason)
            raise
        # §12.1 step 4
        if msg.session_id != self.session_id:
            self._fail(AbortReason.WRONG_SESSION, "message belongs to another session")
        # §12.1 step 5
        if isinstance(msg, Abort):
            if client_after_abort(self.round) is Round.ABORTED:
                self._abort(msg.reason)
            return None
        # §12.1 step 6: a client-to-server message has no recipient at all.
        recipient = msg.recipient if isinstance(msg, ServerRequest) else None
        if recipient != self.client_id:
            self._fail(AbortReason.WRONG_RECIPIENT, f"message addressed to {recipient}")
        # §12.1 step 7: the transition table alone decides what is accepted where.
        next_round = self._transitions.get((self.round, msg.TYPE))
        if next_round is None:
            if self.round is Round.COMPLETED:
                # Never answer twice: a second (possibly different) unmasking
                # request could otherwise make us reveal both shares of a peer.
                reason = (
                    AbortReason.SECOND_UNMASK_REQUEST
                    if msg.TYPE is MessageType.UNMASK_REQUEST
                    else AbortReason.WRONG_ROUND
                )
                raise RemoteProtocolError(reason, "the session is already completed")
            self._fail(AbortReason.WRONG_ROUND, f"{msg.TYPE.name} is not expected in {self.round}")
        # §12.1 step 8
        reply = _HANDLERS[msg.TYPE](self, msg)
        self.round = next_round
        if next_round is Round.COMPLETED:
            self._forget_secrets()
        return reply

    # -- failure --------------------------------------------------------------

    def _abort(self, reason: AbortReason) -> None:
        self.round = Round.ABORTED
        self.abort_reason = reason
        self._forget_secrets()

    def _fail(self, reason: AbortReason, detail: str) -> NoReturn:
        if self.round not in TERMINAL:
            self._abort(reason)
        raise RemoteProtocolError(reason, detail)

    def _forget_secrets(self) -> None:
        """Drop every secret the session holds (§12: on abort and on completion).

        Python cannot overwrite immutable ``bytes`` in place; what it can do is
        drop every reference the session holds, so that nothing reachable from
        this object (or from a later ``receive``) yields a secret. SECRET_FIELDS
        names them all; ``tests/protocol/test_client_erasure.py`` checks each.
        """
        self._input = None
        self._cipher_sk = None
        self._mask_sk = None
        self._self_mask_seed = b""
        self._identity_key = None
        self._rng = None
        self._cipher_shared.clear()
        self._held_mask_key_shares.clear()
        self._held_self_mask_shares.clear()

    # -- one handler per round (§12.5-§12.9), dispatched by ``_HANDLERS`` ------

    def _r1_share_keys(self, msg: KeyDirectory) -> bytes:
        """R0 -> R1 (§12.5): check the relayed keys, then share our secrets."""
        entries = {e.sender: e for e in msg.entries}
        # §12.5 step 1
        if entries.get(self.client_id) != self._own_keys:
            self._fail(AbortReason.OWN_KEYS_NOT_ECHOED, "our own advertised keys were not echoed")
        # §12.5 step 2
        strangers = set(entries) - self._neighbours - {self.client_id}
        if strangers:
            self._fail(AbortReason.NOT_A_NEIGHBOUR, f"keys of non-neighbours {sorted(strangers)}")
        all_keys = [k for e in msg.entries for k in (e.cipher_public_key, e.mask_public_key)]
        # §12.5 step 3: one encoding per key, so the duplicate check below sees aliases.
        for entry in msg.entries:
            for k in (entry.cipher_public_key, entry.mask_public_key):
                if not x25519_is_valid_public(k):
                    self._fail(
                        AbortReason.INVALID_PUBLIC_KEY,
                        f"client {entry.sender} has a non-canonical or small-order X25519 key",
                    )
        # §12.5 step 4
        if len(set(all_keys)) != len(all_keys):
            self._fail(AbortReason.DUPLICATE_KEYS, "two advertised public keys are equal")
        # §12.5 step 5
        for entry in msg.entries:
            self._check_advert_signature(entry)
        # §12.5 step 6
        live = sorted(set(entries) - {self.client_id})
        self._require_threshold(len(live), "live neighbours after round 0")
        self._directory = {v: entries[v] for v in live}

        # §12.5 step 7: drawn only now, after every check, so an aborted R1
        # leaves no seed behind.
        assert self._rng is not None
        seed = self._rng.random_bytes(32)
        self._self_mask_seed = seed
        assert self._mask_sk is not None and self._cipher_sk is not None
        # §12.5 step 8
        shares = split_secrets([self._mask_sk.raw, seed], live, self.config.threshold, self._rng)
        ciphertexts: list[tuple[int, bytes]] = []
        # §12.5 step 9
        for j, v in enumerate(live):
            shared = self._agree(self._cipher_sk, entries[v].cipher_public_key)
            self._cipher_shared[v] = shared
            plaintext = (
                u32(self.client_id)
                + u32(v)
                + encode_share(shares[0][j])
                + encode_share(shares[1][j])
            )
            key = share_encryption_key(shared, self.session_id, self.client_id, v)
            ciphertexts.append(
                (v, aead_seal(key, plaintext, share_aad(self.session_id, self.client_id, v)))
            )
        # §12.5 step 10
        commitment = self_mask_commitment(seed, self.session_id, self.client_id)
        # §12.5 step 11
        return ShareKeys(self.session_id, self.client_id, commitment, tuple(ciphertexts)).encode()

    def _r2_masked_input(self, msg: ShareBundle) -> bytes:
        """R1 -> R2 (§12.6): open our shares, then send the masked input."""
        senders = [v for v, _ in msg.ciphertexts]
        # §12.6 step 1
        unknown = set(senders) - set(self._directory)
        if unknown:
            self._fail(AbortReason.NOT_A_NEIGHBOUR, f"shares from {sorted(unknown)}")
        # §12.6 step 2
        self._require_threshold(len(senders), "live neighbours after round 1")
        # §12.6 step 3: sender and recipient are bound into both the key and the
        # AD, and again checked in the plaintext.
        for v, ciphertext in msg.ciphertexts:
            key = share_encryption_key(self._cipher_shared[v], self.session_id, v, self.client_id)
            try:
                plaintext = aead_open(
                    key, ciphertext, share_aad(self.session_id, v, self.client_id)
                )
            except CryptoError:
                self._fail(AbortReason.SHARE_DECRYPTION_FAILED, f"shares from {v} do not open")
            if len(plaintext) != SHARE_PLAINTEXT_SIZE or plaintext[:8] != u32(v) + u32(
                self.client_id
            ):
                self._fail(AbortReason.SHARE_DECRYPTION_FAILED, f"shares from {v} misaddressed")
            try:
                decode_share(plaintext[8 : 8 + SHARE_SIZE])
                decode_share(plaintext[8 + SHARE_SIZE :])
            except DecodeError:
                self._fail(AbortReason.SHARE_DECRYPTION_FAILED, f"shares from {v} out of range")
            self._held_mask_key_shares[v] = plaintext[8 : 8 + SHARE_SIZE]
            self._held_self_mask_shares[v] = plaintext[8 + SHARE_SIZE :]
        # §12.6 step 4
        self._share_senders = frozenset(senders)
        masked = self._masked_input(senders)
        # §12.6 step 5
        return MaskedInput(self.session_id, self.client_id, masked).encode()

    def _masked_input(self, peers: Iterable[int]) -> bytes:
        """y = x + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod 2^b)."""
        assert self._input is not None
        cfg = self.config
        y = to_modular(self._input, cfg.bit_width)  # a fresh array, masked in place
        plus = [self_mask_key(self._self_mask_seed, self.session_id, self.client_id)]
        minus: list[bytes] = []
        for v in peers:
            (plus if self.client_id < v else minus).append(self._pairwise_key(v))
        MaskExpander(word_dtype(cfg.bit_width)).apply(y, add=plus, subtract=minus)
        self._self_mask_seed = b""
        self._input = None
        if cfg.bit_width < 8 * y.itemsize:
            np.bitwise_and(y, y.dtype.type(cfg.modulus_mask), out=y)
        return pack_bits(y, cfg.bit_width)

    def _pairwise_key(self, v: int) -> bytes:
        assert self._mask_sk is not None
        try:
            return pairwise_mask_key(
                self._mask_sk,
                self._directory[v].mask_public_key,
                self.session_id,
                self.client_id,
                v,
            )
        except CryptoError as exc:
            self._fail(AbortReason.INVALID_PUBLIC_KEY, f"mask key of {v} is invalid: {exc}")

    def _r3_consistency(self, msg: ConsistencyRequest) -> bytes:
        """R2 -> R3 (§12.8, active mode): sign the survivor set after checking it."""
        # §12.8 step 1
        self._check_survivors(msg.survivors, None)
        # §12.8 step 2: remembered, so that the unmasking request must name the
        # very set we signed (§12.10 step 5).
        self._signed_survivors = msg.survivors
        assert self._identity_key is not None
        signature = ed25519_sign(
            self._identity_key,
            consistency_payload(self.session_id, _cbor.dumps(list(msg.survivors))),
        )
        # §12.8 step 3
        return ConsistencySignature(self.session_id, self.client_id, signature).encode()

    def _r4_unmask(self, msg: UnmaskRequest) -> bytes:
        """R2/R3 -> done (§12.9): reveal, per neighbour, exactly one of its two secrets."""
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        # §12.9 step 1: a client in both sets would have both its secrets revealed.
        if survivors & dropped:
            self._fail(
                AbortReason.SURVIVORS_DROPPED_OVERLAP,
                f"clients {sorted(survivors & dropped)} are both survivors and dropped",
            )
        # §12.9 step 2
        self._check_survivors(msg.survivors, msg.dropped)
        # §12.9 step 3
        if self.config.mode is Mode.ACTIVE:
            self._check_consistency_signatures(msg)
        elif msg.signatures:
            self._fail(AbortReason.MALFORMED_MESSAGE, "signatures in a semi-honest session")
        # §12.9 step 4
        try:  # the survivor floor of the client's policy (§4.7), on the signed set
            check_survivors(len(survivors), self.policy)
        except PolicyError as exc:
            self._fail(AbortReason.BELOW_THRESHOLD, str(exc))
        # §12.9 step 5
        self_shares = tuple(
            (v, self._held_self_mask_shares[v]) for v in sorted(self._share_senders & survivors)
        )
        key_shares = tuple(
            (v, self._held_mask_key_shares[v]) for v in sorted(self._share_senders & dropped)
        )
        return UnmaskResponse(self.session_id, self.client_id, self_shares, key_shares).encode()

    # -- checks -----------------------------------------------------------------

    def _check_advert_signature(self, entry: AdvertisedKeys) -> None:
        if self.config.mode is Mode.ACTIVE:
            payload = advertise_payload(
                self.session_id, entry.sender, entry.cipher_public_key, entry.mask_public_key
            )
            if not ed25519_verify(self.config.identity_key(entry.sender), entry.signature, payload):
                self._fail(AbortReason.BAD_SIGNATURE, f"keys of {entry.sender} are not signed")
        elif entry.signature:
            self._fail(AbortReason.MALFORMED_MESSAGE, "signature in a semi-honest session")

    def _check_survivors(self, survivors: tuple[int, ...], dropped: tuple[int, ...] | None) -> None:
        """The survivor (and dropped) sets must agree with what this client saw.

        Among its neighbours a client knows exactly who sent it shares in
        round 1: only they can be survivors or dropped, and when the dropped
        set is given each of them must be in exactly one of the two sets.
        """
        s = set(survivors)
        d = set(dropped or ())
        # §12.10 step 1
        if self.client_id not in s:
            self._fail(
                AbortReason.INCONSISTENT_SURVIVORS, "we sent our input but are not a survivor"
            )
        # §12.10 step 2
        if not (s | d) <= set(self.config.participants):
            self._fail(AbortReason.INCONSISTENT_SURVIVORS, "survivor set names non-participants")
        # §12.10 step 3
        mine = (s | d) & self._neighbours
        if not mine <= self._share_senders:
            self._fail(
                AbortReason.INCONSISTENT_SURVIVORS,
                f"clients {sorted(mine - self._share_senders)} never sent us shares",
            )
        # §12.10 step 4
        if dropped is not None and mine != self._share_senders:
            self._fail(
                AbortReason.INCONSISTENT_SURVIVORS,
                f"neighbours {sorted(self._share_senders - mine)} are neither survivor nor dropped",
            )
        # §12.10 step 5
        if (
            self.config.mode is Mode.ACTIVE
            and self._signed_survivors is not None
            and tuple(survivors) != self._signed_survivors
        ):
            self._fail(
                AbortReason.INCONSISTENT_SURVIVORS, "survivor set differs from the signed one"
            )
        # §12.10 step 6
        if len(s) < self.config.threshold:
            self._fail(AbortReason.BELOW_THRESHOLD, f"{len(s)} survivors < threshold")
        # §12.10 step 7
        self._require_threshold(len(s & self._neighbours), "surviving neighbours")

    def _check_consistency_signatures(self, msg: UnmaskRequest) -> None:
        closed = self._neighbours | {self.client_id}
        payload = consistency_payload(self.session_id, _cbor.dumps(list(msg.survivors)))
        valid = 0
        # §12.9 step 3, in order: each signer, then each signature, then the count.
        for signer, signature in msg.signatures:
            if signer not in closed or signer not in msg.survivors:
                self._fail(
                    AbortReason.INCONSISTENT_SURVIVORS, f"signature of {signer} is not expected"
                )
            if not ed25519_verify(self.config.identity_key(signer), signature, payload):
                self._fail(AbortReason.BAD_SIGNATURE, f"consistency signature of {signer}")
            valid += 1
        self._require_threshold(valid, "valid consistency signatures")

    def _require_threshold(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            self._fail(
                AbortReason.BELOW_THRESHOLD,
                f"{count} {what} < threshold {self.config.threshold}",
            )

    def _agree(self, secret: X25519Secret, public: bytes) -> bytes:
        try:
            return secret.agree(public)
        except CryptoError as exc:
            self._fail(AbortReason.INVALID_PUBLIC_KEY, f"invalid public key: {exc}")


# The client's round table (after h11's READERS), keyed by the server message a
# handler consumes: each is accepted in exactly one state per mode, and which
# one is decided by ``_state.CLIENT_TRANSITIONS`` alone (§12.1 step 7) before a
# handler runs. ``Any``: each handler takes the message class of its key
# (tests/protocol/test_round_tables.py checks the annotations).
_HANDLERS: dict[MessageType, Callable[[ClientSession, Any], bytes]] = {
    MessageType.KEY_DIRECTORY: ClientSession._r1_share_keys,
    MessageType.SHARE_BUNDLE: ClientSession._r2_masked_input,
    MessageType.CONSISTENCY_REQUEST: ClientSession._r3_consistency,
    MessageType.UNMASK_REQUEST: ClientSession._r4_unmask,
}
