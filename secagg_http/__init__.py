"""The HTTP binding shared by the service and the SDK: request signing and media types.

Kept out of the sans-I/O protocol core; imports only ``protocol``.
"""

from secagg_http.signing import (
    CBOR_MEDIA_TYPE,
    HEADER_CLIENT,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NONCE_HEX_CHARS,
    REQUEST_LABEL,
    request_payload,
    sign_request,
    verify_request,
)

__all__ = [
    "CBOR_MEDIA_TYPE",
    "HEADER_CLIENT",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "NONCE_HEX_CHARS",
    "REQUEST_LABEL",
    "request_payload",
    "sign_request",
    "verify_request",
]
