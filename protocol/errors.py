"""Typed errors of the protocol library.

Two families, after h11: a :class:`LocalProtocolError` means *the caller*
misused the API (wrong state, bad configuration); a
:class:`RemoteProtocolError` means *a peer* broke the protocol (malformed
bytes, wrong session, an invariant violated). Every error that ends a round
carries an :class:`~protocol._state.AbortReason` so that logs, metrics and
messages speak of the same enumerated outcome.
"""

from __future__ import annotations

from enum import StrEnum


class AbortReason(StrEnum):
    """Why a round ended without an aggregate. Shared by errors, logs, metrics."""

    # Threshold and dropout.
    BELOW_THRESHOLD = "below_threshold"
    # Message-level invariants.
    MALFORMED_MESSAGE = "malformed_message"
    WRONG_SESSION = "wrong_session"
    WRONG_ROUND = "wrong_round"
    WRONG_SENDER = "wrong_sender"
    WRONG_RECIPIENT = "wrong_recipient"
    REPLAYED_MESSAGE = "replayed_message"
    DUPLICATE_KEYS = "duplicate_keys"
    INVALID_PUBLIC_KEY = "invalid_public_key"
    OWN_KEYS_NOT_ECHOED = "own_keys_not_echoed"
    NOT_A_NEIGHBOUR = "not_a_neighbour"
    BAD_SIGNATURE = "bad_signature"
    SHARE_DECRYPTION_FAILED = "share_decryption_failed"
    SURVIVORS_DROPPED_OVERLAP = "survivors_dropped_overlap"
    INCONSISTENT_SURVIVORS = "inconsistent_survivors"
    SECOND_UNMASK_REQUEST = "second_unmask_request"
    WRONG_VECTOR_LENGTH = "wrong_vector_length"
    RECONSTRUCTION_FAILED = "reconstruction_failed"
    # Driven from outside.
    CANCELLED = "cancelled"


class BlameReason(StrEnum):
    """Why the server blames a client for a failed reconstruction (specs §13.1)."""

    # The owner's shares are consistent, their secret is not what it committed to.
    WRONG_SELF_MASK_COMMITMENT = "wrong_self_mask_commitment"
    # The owner's shares are consistent, their secret is not its advertised mask key.
    WRONG_MASK_PUBLIC_KEY = "wrong_mask_public_key"
    # A holder revealed a share off the polynomial whose secret passes the check.
    SHARE_OFF_POLYNOMIAL = "share_off_polynomial"


class ClientStatus(StrEnum):
    """What became of one participant of a session (after fcp's ``ClientStatus``).

    ``dropped_in_Ri``: the server closed round ``i`` without a message from it;
    ``refused_in_Ri``: its last message in round ``i`` was refused (the reason
    is recorded); ``pruned_in_Ri``: it sent, but kept fewer than ``t`` live
    neighbours; ``aborted``: still live when the session aborted.
    """

    ACTIVE = "active"
    COMPLETED = "completed"
    DROPPED_IN_R0 = "dropped_in_R0"
    DROPPED_IN_R1 = "dropped_in_R1"
    DROPPED_IN_R2 = "dropped_in_R2"
    DROPPED_IN_R3 = "dropped_in_R3"
    DROPPED_IN_R4 = "dropped_in_R4"
    REFUSED_IN_R0 = "refused_in_R0"
    REFUSED_IN_R1 = "refused_in_R1"
    REFUSED_IN_R2 = "refused_in_R2"
    REFUSED_IN_R3 = "refused_in_R3"
    REFUSED_IN_R4 = "refused_in_R4"
    PRUNED_IN_R0 = "pruned_in_R0"
    PRUNED_IN_R1 = "pruned_in_R1"
    ABORTED = "aborted"
    BLAMED = "blamed"


class SecAggError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(SecAggError, ValueError):
    """A configuration or parameter is invalid or infeasible; the message names the limit."""


class ParameterError(ConfigError):
    """No (degree, threshold) satisfies the requested security and correctness bounds."""


class LocalProtocolError(SecAggError):
    """The caller used the API wrongly (e.g. sent in the wrong state)."""


class RemoteProtocolError(SecAggError):
    """A peer broke the protocol. ``reason`` names the violated invariant."""

    def __init__(self, reason: AbortReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ReconstructionFailed(RemoteProtocolError):
    """``RECONSTRUCTION_FAILED`` with the clients the evidence blames (possibly none)."""

    def __init__(self, detail: str, blame: dict[int, BlameReason]) -> None:
        super().__init__(AbortReason.RECONSTRUCTION_FAILED, detail)
        self.blame = dict(sorted(blame.items()))
        self.blamed = tuple(self.blame)


class DecodeError(RemoteProtocolError):
    """Bytes that are not a canonical encoding of a valid message."""

    def __init__(self, detail: str) -> None:
        super().__init__(AbortReason.MALFORMED_MESSAGE, detail)


class CryptoError(SecAggError):
    """A cryptographic operation failed (authentication, invalid key)."""


class RoundAborted(SecAggError):
    """The round is over without an aggregate; nothing was revealed."""

    def __init__(self, reason: AbortReason, detail: str) -> None:
        super().__init__(f"round aborted ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail
