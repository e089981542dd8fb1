"""Ed25519 signatures that a lenient verifier accepts and strict verification refuses.

Test-vector material for ``specs/vectors/authority/ed25519_strict.json``
(secagg-v1.md §6.6), never used by the protocol itself. Each forged case
satisfies the group equation ``[S]B = R + [k]A`` for a verifier that
decodes leniently (reduces y mod p, ignores the sign of x = 0, accepts any
S and small-order points), so each rule of :func:`ed25519_check` is
exercised by a signature that a weaker verifier would take. Scalar
multiplication is libsodium's (``crypto_scalarmult_ed25519_base_noclamp``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp

from protocol.crypto._primitives import (
    ED25519_GROUP_ORDER,
    FIELD_PRIME,
    Ed25519Rejection,
)

_L = ED25519_GROUP_ORDER


@dataclass(frozen=True)
class Ed25519Case:
    """One signature and the rule that must refuse it (None: valid)."""

    name: str
    description: str
    public: bytes
    signature: bytes
    message: bytes
    rejection: Ed25519Rejection | None


def _scalar(label: str) -> int:
    return (
        int.from_bytes(
            hashlib.sha512(b"secagg-v1 ed25519 case " + label.encode()).digest(), "little"
        )
        % _L
    )


def _base(scalar: int) -> bytes:
    """Canonical encoding of [scalar]B (0 < scalar < L)."""
    out: bytes = crypto_scalarmult_ed25519_base_noclamp(scalar.to_bytes(32, "little"))
    return out


def _challenge(r_enc: bytes, public: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r_enc + public + message).digest(), "little") % _L


def _enc(y: int, sign: int = 0) -> bytes:
    return (y | sign << 255).to_bytes(32, "little")


_IDENTITY = _enc(1)
_IDENTITY_Y_PLUS_P = _enc(1 + FIELD_PRIME)
_IDENTITY_NEGATIVE_ZERO = _enc(1, 1)


def _with_weak_key(
    name: str, description: str, public: bytes, why: Ed25519Rejection, message: bytes
) -> Ed25519Case:
    # A encodes the identity: R = [r]B, S = r satisfies [S]B = R + [k]A for any k.
    r = _scalar(name)
    return Ed25519Case(name, description, public, _base(r) + r.to_bytes(32, "little"), message, why)


def _with_weak_r(
    name: str, description: str, r_enc: bytes, why: Ed25519Rejection, message: bytes
) -> Ed25519Case:
    # R encodes the identity: S = k a gives [S]B = [k]A = R + [k]A.
    a = _scalar(name)
    public = _base(a)
    s = _challenge(r_enc, public, message) * a % _L
    return Ed25519Case(name, description, public, r_enc + s.to_bytes(32, "little"), message, why)


def ed25519_cases() -> list[Ed25519Case]:
    """The strict-verification cases, in the order of the rules of §6.6."""
    message = b"secagg-v1 strict ed25519"
    secret = hashlib.sha256(b"secagg-v1 ed25519 case key").digest()
    key = Ed25519PrivateKey.from_private_bytes(secret)
    public = key.public_key().public_bytes_raw()
    good = key.sign(message)
    s = int.from_bytes(good[32:], "little")
    high = s + 15 * _L if s + 15 * _L < 2**256 else s + _L
    return [
        Ed25519Case("valid", "An RFC 8032 signature.", public, good, message, None),
        Ed25519Case(
            "s_plus_l",
            "The valid signature with S + L in place of S (malleability).",
            public,
            good[:32] + (s + _L).to_bytes(32, "little"),
            message,
            Ed25519Rejection.S_OUT_OF_RANGE,
        ),
        Ed25519Case(
            "s_high_bits",
            "The valid signature with S + 15 L, top bits of S set.",
            public,
            good[:32] + high.to_bytes(32, "little"),
            message,
            Ed25519Rejection.S_OUT_OF_RANGE,
        ),
        _with_weak_key(
            "public_key_y_not_reduced",
            "A is the identity spelt with y = 1 + p; R = [r]B, S = r.",
            _IDENTITY_Y_PLUS_P,
            Ed25519Rejection.PUBLIC_KEY_NOT_CANONICAL,
            message,
        ),
        _with_weak_key(
            "public_key_negative_zero",
            "A is the identity spelt with the sign bit of x = 0 set; R = [r]B, S = r.",
            _IDENTITY_NEGATIVE_ZERO,
            Ed25519Rejection.PUBLIC_KEY_NOT_CANONICAL,
            message,
        ),
        _with_weak_key(
            "public_key_small_order",
            "A is the identity (order 1); R = [r]B, S = r verifies any message.",
            _IDENTITY,
            Ed25519Rejection.PUBLIC_KEY_SMALL_ORDER,
            message,
        ),
        _with_weak_r(
            "r_y_not_reduced",
            "R is the identity spelt with y = 1 + p; S = k a.",
            _IDENTITY_Y_PLUS_P,
            Ed25519Rejection.R_NOT_CANONICAL,
            message,
        ),
        _with_weak_r(
            "r_small_order",
            "R is the identity (order 1); S = k a.",
            _IDENTITY,
            Ed25519Rejection.R_SMALL_ORDER,
            message,
        ),
        Ed25519Case(
            "wrong_message",
            "The valid signature over another message.",
            public,
            good,
            message + b"!",
            Ed25519Rejection.EQUATION,
        ),
    ]
