"""Deterministic CBOR (RFC 8949 §4.2.1) for the subset the protocol uses.

The subset is: unsigned and negative integers (major types 0 and 1), byte
strings (2), UTF-8 text strings (3) and arrays (4), all of definite length.
Maps, tags, floats, simple values and indefinite lengths never occur in a
message. Every head uses its shortest form, so each value has exactly one
encoding and the bytes that are hashed and signed are unambiguous; both
decoders refuse any other form, so decoding and re-encoding is the identity.

Two codecs produce and accept exactly the same bytes:

* ``dumps`` / ``loads`` use cbor2 (C): fast for messages of many small
  items. ``loads`` re-encodes and compares to refuse non-canonical input;
  items outside the subset (maps, tags, floats, ...) decode to Python types
  that the message field validators refuse.
* ``dumps_subset`` / ``loads_subset`` are a small pure-Python codec that
  checks head minimality while parsing and copies a byte string once. It is
  used for the masked-input message, whose one large byte string cbor2
  copies through growable buffers (0.36 ms to encode, 0.28 ms to decode and
  0.36 ms to re-encode a 400 kB vector, against 0.01-0.1 ms here).

Tests check that the codecs agree, on every message and on random items.
"""

from __future__ import annotations

from typing import Any

import cbor2

from protocol.errors import DecodeError

# Upper bound on one message, far above any legitimate one (a 2^26-element
# 64-bit vector is 512 MiB); the transport should enforce tighter limits.
MAX_MESSAGE_SIZE = 1 << 30
MAX_DEPTH = 8

CborValue = Any

_UINT, _NINT, _BYTES, _TEXT, _ARRAY = 0, 1, 2, 3, 4
_U64 = (1 << 64) - 1


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    if value <= 0xFF:
        return bytes((major << 5 | 24, value))
    if value <= 0xFFFF:
        return bytes((major << 5 | 25,)) + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return bytes((major << 5 | 26,)) + value.to_bytes(4, "big")
    if value <= _U64:
        return bytes((major << 5 | 27,)) + value.to_bytes(8, "big")
    raise ValueError("integer outside the CBOR 64-bit range")


def array_head(length: int) -> bytes:
    """The head of an array of ``length`` items (its items' encodings follow)."""
    return _head(_ARRAY, length)


def bytes_head(length: int) -> bytes:
    """The head of a byte string of ``length`` bytes."""
    return _head(_BYTES, length)


def uint(value: int) -> bytes:
    """The encoding of a non-negative integer."""
    return _head(_UINT, value)


def _encode(value: CborValue, out: list[bytes | bytearray | memoryview]) -> None:
    if isinstance(value, bool) or value is None:
        raise TypeError(f"{value!r} is not in the protocol's CBOR subset")
    if isinstance(value, int):
        if value >= 0:
            out.append(_head(_UINT, value))
        else:
            out.append(_head(_NINT, -1 - value))
    elif isinstance(value, bytes | bytearray | memoryview):
        out.append(_head(_BYTES, len(value)))
        out.append(value)  # bytes.join copies any buffer exactly once
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out.append(_head(_TEXT, len(data)))
        out.append(data)
    elif isinstance(value, list | tuple):
        out.append(_head(_ARRAY, len(value)))
        for item in value:
            _encode(item, out)
    else:
        raise TypeError(f"{type(value).__name__} is not in the protocol's CBOR subset")


def dumps(value: CborValue) -> bytes:
    """Deterministic encoding of ``value`` (via cbor2)."""
    return cbor2.dumps(value, canonical=True)


def loads(data: bytes) -> CborValue:
    """Decode one item (via cbor2); refuse anything that is not its canonical encoding."""
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
        again = cbor2.dumps(value, canonical=True)
    except Exception as exc:  # pragma: no cover - decoded values always encode
        raise DecodeError(f"CBOR item cannot be re-encoded: {exc}") from exc
    if again != data:
        raise DecodeError("not the canonical (deterministic) CBOR encoding")
    return value


def dumps_subset(value: CborValue) -> bytes:
    """Deterministic encoding of ``value`` (ints, bytes, str, lists/tuples), pure Python."""
    out: list[bytes | bytearray | memoryview] = []
    _encode(value, out)
    return b"".join(out)


# Byte strings at least this long are returned as read-only views of the input
# by ``loads_subset(..., views=True)``: a masked vector is then never copied.
VIEW_THRESHOLD = 4096


class _Reader:
    __slots__ = ("data", "pos", "views")

    def __init__(self, data: bytes, views: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.views = views

    def head(self) -> tuple[int, int]:
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise DecodeError("truncated CBOR item")
        initial = data[pos]
        major, info = initial >> 5, initial & 0x1F
        pos += 1
        if info < 24:
            value = info
        elif info <= 27:
            size = 1 << (info - 24)
            if pos + size > len(data):
                raise DecodeError("truncated CBOR head")
            value = int.from_bytes(data[pos : pos + size], "big")
            pos += size
            # Shortest form only (RFC 8949 §4.2.1).
            if value < (24 if size == 1 else 1 << (4 * size)):
                raise DecodeError("not the canonical (deterministic) CBOR encoding")
        elif info == 31:
            raise DecodeError("indefinite-length CBOR items are not allowed")
        else:
            raise DecodeError(f"reserved CBOR additional information {info}")
        self.pos = pos
        return major, value

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("truncated CBOR string")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def take_bytes(self, n: int) -> bytes | memoryview:
        if self.views and n >= VIEW_THRESHOLD:
            end = self.pos + n
            if end > len(self.data):
                raise DecodeError("truncated CBOR string")
            view = memoryview(self.data)[self.pos : end]
            self.pos = end
            return view
        return self.take(n)

    def item(self, depth: int) -> CborValue:
        if depth > MAX_DEPTH:
            raise DecodeError("CBOR nesting deeper than the protocol uses")
        major, value = self.head()
        if major == _UINT:
            return value
        if major == _NINT:
            return -1 - value
        if major == _BYTES:
            return self.take_bytes(value)
        if major == _TEXT:
            try:
                return self.take(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("CBOR text string is not valid UTF-8") from exc
        if major == _ARRAY:
            # Each element takes at least one byte: refuse impossible lengths
            # before allocating anything.
            if value > len(self.data) - self.pos:
                raise DecodeError("truncated CBOR array")
            return [self.item(depth + 1) for _ in range(value)]
        names = {5: "maps", 6: "tags", 7: "floats and simple values"}
        raise DecodeError(f"CBOR {names[major]} are not allowed in protocol messages")


def loads_subset(data: bytes, *, views: bool = False) -> CborValue:
    """Decode exactly one canonical item of the subset; anything else raises DecodeError.

    With ``views``, byte strings of ``VIEW_THRESHOLD`` bytes or more come back
    as read-only ``memoryview`` slices of ``data`` instead of copies.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    reader = _Reader(data, views)
    value = reader.item(0)
    if reader.pos != len(data):
        raise DecodeError(f"{len(data) - reader.pos} trailing bytes after the CBOR item")
    return value
