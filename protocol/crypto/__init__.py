"""The only module of secagg that touches cryptographic libraries.

Everything here composes vetted primitives from ``cryptography`` (and
``nacl`` where it is the better tool); nothing here is a new primitive.
The ciphersuite is named by one identifier, :data:`CIPHERSUITE`:

* key agreement: X25519 (RFC 7748), keys on the wire as raw 32 bytes;
* key derivation: HKDF-SHA256 (RFC 5869) with domain-separated ``info``
  (protocol, version, purpose, session id, then purpose-specific context);
* share transport: ChaCha20-Poly1305 (RFC 8439) under a fresh one-time key
  per (session, sender, recipient), all-zero nonce, sender and recipient
  also bound as associated data;
* signatures: Ed25519 (RFC 8032), raw 32-byte keys, 64-byte signatures;
* mask expansion: AES-128-CTR keystream from a 16-byte key, counter block
  starting at zero, read as little-endian unsigned words (seekable);
* hashing: SHA-256.
"""

from __future__ import annotations

from protocol.crypto._primitives import (
    AEAD_OVERHEAD,
    CIPHERSUITE,
    DETERMINISTIC_RANDOM_LABEL,
    ED25519_GROUP_ORDER,
    ED25519_SMALL_ORDER_Y,
    FIELD_PRIME,
    PRG_KEY_SIZE,
    PROTOCOL_LABEL,
    X25519_SMALL_ORDER,
    DeterministicRandom,
    Ed25519Rejection,
    MaskExpander,
    RandomSource,
    SystemRandom,
    X25519Secret,
    aead_open,
    aead_seal,
    derive_key,
    ed25519_check,
    ed25519_is_valid_public,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    prg_fill,
    sha256,
    x25519_agree,
    x25519_generate,
    x25519_is_canonical_public,
    x25519_is_valid_public,
    x25519_public_key,
)

__all__ = [
    "AEAD_OVERHEAD",
    "CIPHERSUITE",
    "DETERMINISTIC_RANDOM_LABEL",
    "ED25519_GROUP_ORDER",
    "ED25519_SMALL_ORDER_Y",
    "FIELD_PRIME",
    "PRG_KEY_SIZE",
    "PROTOCOL_LABEL",
    "X25519_SMALL_ORDER",
    "DeterministicRandom",
    "Ed25519Rejection",
    "MaskExpander",
    "RandomSource",
    "SystemRandom",
    "X25519Secret",
    "aead_open",
    "aead_seal",
    "derive_key",
    "ed25519_check",
    "ed25519_is_valid_public",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "prg_fill",
    "sha256",
    "x25519_agree",
    "x25519_generate",
    "x25519_is_canonical_public",
    "x25519_is_valid_public",
    "x25519_public_key",
]
