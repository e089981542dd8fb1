"""The key schedule: every derived key of a session, in one place.

Each function is quoted by ``specs/secagg-v1.md`` ("Key schedule"); a test
checks the spec's table of labels against :data:`LABELS`.
"""

from __future__ import annotations

from protocol.crypto import (
    DETERMINISTIC_RANDOM_LABEL,
    PRG_KEY_SIZE,
    PROTOCOL_LABEL,
    X25519Secret,
    derive_key,
    sha256,
    x25519_agree,
)


def u32(value: int) -> bytes:
    """4-byte big-endian encoding of a client id, as used in KDF contexts and AADs."""
    return value.to_bytes(4, "big")


LABEL_SHARE_ENCRYPTION = b"share-encryption"
LABEL_PAIRWISE_MASK = b"pairwise-mask"
LABEL_SELF_MASK = b"self-mask"
LABEL_GRAPH = b"graph"
LABEL_DP_ROTATION = b"dp-rotation"
LABEL_ADVERTISE = b"advertise-keys"
LABEL_CONSISTENCY = b"consistency"
LABEL_SELF_MASK_COMMITMENT = b"self-mask-commitment"
LABEL_SESSION = b"session"

LABELS = (
    LABEL_SHARE_ENCRYPTION,
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    LABEL_GRAPH,
    LABEL_DP_ROTATION,
    LABEL_ADVERTISE,
    LABEL_CONSISTENCY,
    LABEL_SELF_MASK_COMMITMENT,
    LABEL_SESSION,
    DETERMINISTIC_RANDOM_LABEL,
)


def share_encryption_key(shared: bytes, session_id: bytes, sender: int, recipient: int) -> bytes:
    """One-time AEAD key for the shares ``sender`` sends to ``recipient``.

    The X25519 secret is symmetric, so the direction is bound into the KDF
    context: the two directions of a pair get independent keys, which is
    what makes the all-zero nonce safe.
    """
    return derive_key(
        shared,
        purpose=LABEL_SHARE_ENCRYPTION,
        session_id=session_id,
        context=u32(sender) + u32(recipient),
    )


def share_aad(session_id: bytes, sender: int, recipient: int) -> bytes:
    """Associated data of a share ciphertext: session id, sender, recipient."""
    return session_id + u32(sender) + u32(recipient)


def pairwise_mask_key(
    mask_secret: bytes | X25519Secret, peer_mask_public: bytes, session_id: bytes, a: int, b: int
) -> bytes:
    """PRG key of the pairwise mask between clients ``a`` and ``b`` (order-free)."""
    lo, hi = (a, b) if a < b else (b, a)
    return derive_key(
        x25519_agree(mask_secret, peer_mask_public),
        purpose=LABEL_PAIRWISE_MASK,
        session_id=session_id,
        context=u32(lo) + u32(hi),
        length=PRG_KEY_SIZE,
    )


def self_mask_key(seed: bytes, session_id: bytes, owner: int) -> bytes:
    """PRG key of ``owner``'s self mask, from its 32-byte self-mask seed."""
    return derive_key(
        seed,
        purpose=LABEL_SELF_MASK,
        session_id=session_id,
        context=u32(owner),
        length=PRG_KEY_SIZE,
    )


def self_mask_commitment(seed: bytes, session_id: bytes, owner: int) -> bytes:
    """SHA-256 commitment to ``owner``'s self-mask seed, sent to the server in round 1.

    The server checks the reconstructed seed against it, so a wrong share
    aborts the session instead of silently corrupting the sum. The seed is 32
    uniformly random bytes, so the commitment hides it.
    """
    return sha256(
        PROTOCOL_LABEL
        + b"\x00"
        + LABEL_SELF_MASK_COMMITMENT
        + b"\x00"
        + session_id
        + u32(owner)
        + seed
    )


def advertise_payload(session_id: bytes, sender: int, cipher_pk: bytes, mask_pk: bytes) -> bytes:
    """What a client signs in round 0 (active mode)."""
    return (
        PROTOCOL_LABEL
        + b"\x00"
        + LABEL_ADVERTISE
        + b"\x00"
        + session_id
        + u32(sender)
        + cipher_pk
        + mask_pk
    )


def consistency_payload(session_id: bytes, survivors_cbor: bytes) -> bytes:
    """What a client signs in round 3: the canonical CBOR array of survivor ids."""
    return PROTOCOL_LABEL + b"\x00" + LABEL_CONSISTENCY + b"\x00" + session_id + survivors_cbor


def dp_rotation_key(session_id: bytes) -> bytes:
    """PRG key of the signs of a DP round's random rotation (specs/dp-v1.md §4).

    Public: every party derives it from the session id, so the server can
    undo the rotation; it hides nothing and only spreads a vector's energy.
    """
    return derive_key(
        session_id, purpose=LABEL_DP_ROTATION, session_id=session_id, length=PRG_KEY_SIZE
    )
