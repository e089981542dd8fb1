"""Deterministic CBOR (RFC 8949 §4.2.1) with strict decoding.

A decoded item must re-encode to exactly the input bytes, so every value
has one encoding and the bytes that are hashed and signed are unambiguous.
Which types may appear where is checked field by field by the message
decoders (``protocol.messages``), which reject anything else.
"""

from __future__ import annotations

from typing import Any

import cbor2

from protocol.errors import DecodeError

# Upper bound on one message, far above any legitimate one (a 2^26-element
# 64-bit vector is 512 MiB); the transport should enforce tighter limits.
MAX_MESSAGE_SIZE = 1 << 30

CborValue = Any


def dumps(value: CborValue) -> bytes:
    """Canonical encoding of ``value``."""
    return cbor2.dumps(value, canonical=True)


def loads(data: bytes) -> CborValue:
    """Decode one canonical CBOR item; any other input raises :class:`DecodeError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    try:
        value = cbor2.loads(data)
    except RecursionError as exc:
        raise DecodeError("CBOR nesting too deep") from exc
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise DecodeError(f"not valid CBOR: {exc}") from exc
    try:
        again = dumps(value)
    except Exception as exc:  # pragma: no cover - decoded values always encode
        raise DecodeError(f"CBOR item cannot be re-encoded: {exc}") from exc
    if again != data:
        raise DecodeError("not the canonical (deterministic) CBOR encoding")
    return value
