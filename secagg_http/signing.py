"""Request signing of the service's HTTP binding (specs/service-v1.md; no I/O here).

Every request of an enrolled client carries four headers; the signature is
Ed25519 by the client's identity key over :func:`request_payload`, which binds
the method, the path and query, the time, a fresh nonce and the body hash.
The server accepts a request only within its clock-skew window and only once
per nonce, so a captured request cannot be replayed.
"""

from __future__ import annotations

from protocol.crypto import ed25519_sign, ed25519_verify, sha256

HEADER_CLIENT = "x-secagg-client"
HEADER_TIMESTAMP = "x-secagg-timestamp"
HEADER_NONCE = "x-secagg-nonce"
HEADER_SIGNATURE = "x-secagg-signature"
REQUEST_LABEL = b"secagg-v1 request"
NONCE_HEX_CHARS = 32
CBOR_MEDIA_TYPE = "application/cbor"


def request_payload(
    method: str,
    path: str,
    timestamp: int,
    nonce: str,
    client_id: int,
    body: bytes | memoryview,
    *,
    body_sha256: bytes | None = None,
) -> bytes:
    """The bytes a client signs for one request.

    ``label || 0x0A || METHOD || 0x0A || path?query || 0x0A || timestamp ||
    0x0A || nonce || 0x0A || client id || 0x0A || hex(SHA-256(body))``.
    ``body_sha256``: the body's SHA-256 if the caller computed it already (e.g.
    as a large body streamed in); ``body`` is then not read.
    """
    fields = [
        REQUEST_LABEL,
        method.upper().encode(),
        path.encode(),
        str(timestamp).encode(),
        nonce.encode(),
        str(client_id).encode(),
        (sha256(body) if body_sha256 is None else body_sha256).hex().encode(),
    ]
    return b"\n".join(fields)


def sign_request(
    identity_secret: bytes,
    client_id: int,
    method: str,
    path: str,
    timestamp: int,
    nonce: str,
    body: bytes | memoryview,
) -> dict[str, str]:
    """The authentication headers of one request."""
    payload = request_payload(method, path, timestamp, nonce, client_id, body)
    return {
        HEADER_CLIENT: str(client_id),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: ed25519_sign(identity_secret, payload).hex(),
    }


def verify_request(
    public_key: bytes,
    signature: bytes,
    client_id: int,
    method: str,
    path: str,
    timestamp: int,
    nonce: str,
    body: bytes | memoryview,
    *,
    body_sha256: bytes | None = None,
) -> bool:
    """True if ``signature`` authenticates this request for ``public_key``."""
    payload = request_payload(
        method, path, timestamp, nonce, client_id, body, body_sha256=body_sha256
    )
    return ed25519_verify(public_key, signature, payload)
