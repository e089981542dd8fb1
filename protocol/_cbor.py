"""Deterministic CBOR (RFC 8949 §4.2.1) for the subset the protocol uses.

The subset is: unsigned and negative integers (major types 0 and 1), byte
strings (2), UTF-8 text strings (3) and arrays (4), all of definite length.
Maps, tags, floats, simple values and indefinite lengths never occur in a
message. Every head uses its shortest form, so each value has exactly one
encoding and the bytes that are hashed and signed are unambiguous; both
decoders refuse any other form, so decoding and re-encoding is the identity.

Both decoders first run one bounded scan (``_scan``) that accepts exactly the
canonical encodings of the subset, at most ``MAX_DEPTH`` arrays deep, with a
number of Python-level steps and of items bounded by the input's length; only
then are objects built. So decoding is linear in the input with small
constants whatever a peer sends (messages-v1.md §1.1).

Two codecs produce and accept exactly the same bytes:

* ``dumps`` / ``loads`` use cbor2 (C) to build the value: fast for messages
  of many small items.
* ``dumps_subset`` / ``loads_subset`` are a small pure-Python codec that
  copies a byte string once. It is used for the masked-input message, whose
  one large byte string cbor2 copies through growable buffers (0.36 ms to
  encode and 0.28 ms to decode a 400 kB vector, against 0.01-0.1 ms here).

Tests check that the codecs agree, on every message and on random items.
"""

from __future__ import annotations

import re
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


# -- bounded validation ------------------------------------------------------------
#
# Both decoders first run ``_scan``: one linear pass over the heads that accepts
# exactly the canonical encodings of the subset (shortest heads, definite
# lengths, major types 0-4, one item, no trailing bytes, at most MAX_DEPTH nested
# arrays) and bounds the decoding work by the input size. Only then are Python
# objects built (by cbor2 or by ``_Reader``), so nothing a peer sends reaches a
# code path whose cost is not linear in its length: maps (whose canonical
# re-encoding sorts keys by their encodings, 2^depth work for maps nested as
# keys), tags (shared references expand to copies) and floats are refused at
# their head byte, before any object exists.

# The deepest array nesting a protocol message or configuration may use (the
# deepest they use is 3: a KeyDirectory's entries); an array enclosed by
# MAX_DEPTH arrays is refused. One limit for both decoders (messages-v1.md §1).
MAX_DEPTH = 8

# Decoding work budget: each array, each string and each run of consecutive
# integers (skipped by one regex match, at C speed) is one Python-level step of
# the scan, and more than ``SCAN_BASE_STEPS + len(data) // SCAN_BYTES_PER_STEP``
# steps is refused before any object is built. Honest messages take at least 11
# bytes per step (an UnmaskResponse entry [id, share] is three steps for 35+
# bytes; the base covers the few one-byte ids), while a flood of tiny items
# (each empty array costs ~0.2 us to build as a Python list) is cut off.
SCAN_BASE_STEPS = 256
SCAN_BYTES_PER_STEP = 64
# Items (each integer, string and array) are at most SCAN_BASE_ITEMS +
# len(data) // SCAN_BYTES_PER_ITEM: building an integer costs cbor2 ~20 ns, and
# honest id lists take 3 bytes per id once ids pass 255.
SCAN_BASE_ITEMS = 4096
SCAN_BYTES_PER_ITEM = 3

# Runs of canonical integers of one head size. Each pattern accepts only
# shortest forms; anything else falls through to ``_read_head``, which names
# the fault.
_INT_RUNS: tuple[tuple[re.Pattern[bytes], int], ...] = (
    (re.compile(rb"[\x00-\x17\x20-\x37]+"), 1),
    (re.compile(rb"(?:[\x18\x38][\x18-\xff])+"), 2),
    (re.compile(rb"(?:[\x19\x39][\x01-\xff][\x00-\xff])+", re.DOTALL), 3),
    (re.compile(rb"(?:[\x1a\x3a](?!\x00\x00)[\x00-\xff]{4})+", re.DOTALL), 5),
    (re.compile(rb"(?:[\x1b\x3b](?!\x00{4})[\x00-\xff]{8})+", re.DOTALL), 9),
)
_RUN_FOR: tuple[tuple[re.Pattern[bytes], int] | None, ...] = tuple(
    _INT_RUNS[(b & 0x1F) - 23 if b & 0x1F >= 24 else 0]
    if b >> 5 in (_UINT, _NINT) and b & 0x1F <= 27
    else None
    for b in range(256)
)
# Heads that are one byte and need no checks: byte and text strings (major 2,
# 3) and arrays (4) of 0-23, as (major type, length); everything else goes
# through ``_read_head``.
_SHORT_HEAD: tuple[tuple[int, int] | None, ...] = tuple(
    (b >> 5, b & 0x1F) if b >> 5 in (_BYTES, _TEXT, _ARRAY) and b & 0x1F < 24 else None
    for b in range(256)
)

_REFUSED_MAJOR = {5: "maps", 6: "tags", 7: "floats and simple values"}


def _read_head(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head) of the head at ``pos``."""
    if pos >= len(data):
        raise DecodeError("truncated CBOR item")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major in _REFUSED_MAJOR:
        raise DecodeError(f"CBOR {_REFUSED_MAJOR[major]} are not allowed in protocol messages")
    if info < 24:
        return major, info, pos
    if info <= 27:
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise DecodeError("truncated CBOR head")
        value = int.from_bytes(data[pos : pos + size], "big")
        # Shortest form only (RFC 8949 §4.2.1).
        if value < (24 if size == 1 else 1 << (4 * size)):
            raise DecodeError("not the canonical (deterministic) CBOR encoding")
        return major, value, pos + size
    if info == 31:
        raise DecodeError("indefinite-length CBOR items are not allowed")
    raise DecodeError(f"reserved CBOR additional information {info}")


# Runs of same-shaped entries -- [id, share] pairs, KeyDirectory entries, lists
# of 32-byte keys -- are matched by one regex per shape, so an honest list costs
# a few steps whatever its length. A shape is a byte string, or a flat array of
# at most _SHAPE_MAX_ITEMS integers and byte strings; its entries must be at least
# _SHAPE_MIN_BYTES long, which bounds what a run can make the decoder build (at
# most one array and a few items per 32 input bytes). The regex itself checks
# every entry, the first included, so a run is only taken when all of it is
# canonical. Shapes are compiled once; after _SHAPE_CACHE_SIZE distinct ones the
# scan takes the step-by-step path for new ones (slower for honest input, never
# wrong).
_SHAPE_MAX_ITEMS = 8
_SHAPE_MIN_BYTES = 32
_SHAPE_MAX_STRING = 1024
_SHAPE_CACHE_SIZE = 512
_INT_SIZE = tuple(
    (1, 2, 3, 5, 9)[(b & 0x1F) - 23 if b & 0x1F >= 24 else 0]
    if b >> 5 in (_UINT, _NINT) and b & 0x1F <= 27
    else 0
    for b in range(256)
)
_INT_FRAGMENT = {
    size: pattern.pattern[3:-2] if size > 1 else pattern.pattern[:-1] for pattern, size in _INT_RUNS
}
_shapes: dict[tuple[int, ...], re.Pattern[bytes]] = {}


def _string_shape(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """(head size, length) of the byte string at ``pos``; (0, 0) if it cannot be shaped."""
    initial = data[pos]
    if 0x40 <= initial < 0x58:
        return 1, initial - 0x40
    # Only shortest-form heads (others take the step-by-step path, which names
    # the fault); every entry of a run repeats the first one's head bytes.
    if initial == 0x58 and pos + 1 < end and data[pos + 1] >= 24:
        return 2, data[pos + 1]
    if initial == 0x59 and pos + 2 < end:
        length = int.from_bytes(data[pos + 1 : pos + 3], "big")
        return (3, length) if 0x100 <= length <= _SHAPE_MAX_STRING else (0, 0)
    return 0, 0


def _shape_regex(shape: tuple[int, ...]) -> re.Pattern[bytes]:
    """The regex matching a run of entries of ``shape`` (see ``_shape_run``)."""
    fragments: list[bytes] = []
    it = iter(shape)
    for token in it:
        if token < 0:  # an integer of -token bytes
            fragments.append(_INT_FRAGMENT[-token])
        elif token == 0x100:  # an array head: its byte follows
            fragments.append(re.escape(bytes((next(it),))))
        else:  # a byte string: head size, then the head's bytes... encoded as
            head = bytes(next(it) for _ in range(token))
            length = next(it)
            fragments.append(re.escape(head) + b"[\\x00-\\xff]{%d}" % length)
    return re.compile(b"(?:" + b"".join(fragments) + b")+", re.DOTALL)


def _shape_run(
    data: bytes | memoryview, pos: int, end: int, remaining: int, open_arrays: int
) -> tuple[int, int, int]:
    """(entries, items per entry, bytes per entry) of the run of same-shaped
    entries at ``pos`` (at most ``remaining``); entries is 0 if there is none."""
    initial = data[pos]
    shape: list[int] = []
    if 0x81 <= initial <= 0x80 + _SHAPE_MAX_ITEMS:
        if open_arrays >= MAX_DEPTH:
            return 0, 0, 0
        shape += (0x100, initial)
        size, per_entry, p = 1, 1 + (initial - 0x80), pos + 1
        for _ in range(initial - 0x80):
            if p >= end:
                return 0, 0, 0
            int_size = _INT_SIZE[data[p]]
            if int_size:
                shape.append(-int_size)
                size += int_size
                p += int_size
                continue
            head, length = _string_shape(data, p, end)
            if not head:
                return 0, 0, 0
            shape += (head, *data[p : p + head], length)
            size += head + length
            p += head + length
    else:
        head, length = _string_shape(data, pos, end)
        if not head:
            return 0, 0, 0
        shape += (head, *data[pos : pos + head], length)
        size, per_entry = head + length, 1
    if size < _SHAPE_MIN_BYTES:
        return 0, 0, 0
    key = tuple(shape)
    pattern = _shapes.get(key)
    if pattern is None:
        if len(_shapes) >= _SHAPE_CACHE_SIZE:
            return 0, 0, 0
        pattern = _shapes[key] = _shape_regex(key)
    match = pattern.match(data, pos, min(end, pos + remaining * size))
    if match is None:
        return 0, 0, 0
    return (match.end() - pos) // size, per_entry, size


def _scan(data: bytes | memoryview) -> int:
    """Check that ``data`` is exactly one canonical item of the subset; return its item count.

    Linear in ``len(data)``, with at most ``SCAN_BASE_STEPS + len(data) //
    SCAN_BYTES_PER_STEP`` Python-level steps (see there).

    Raises:
        DecodeError: naming the first fault (refused major type, non-shortest
            head, indefinite length, truncation, invalid UTF-8, nesting deeper
            than MAX_DEPTH, too many items for the size, trailing bytes).
    """
    end = len(data)
    steps = SCAN_BASE_STEPS + end // SCAN_BYTES_PER_STEP
    pos = 0
    items = 0
    remaining = 1  # items still due in the innermost open array (the top level: one)
    shapes = True  # whether to look for a run of same-shaped entries at this level
    stack: list[tuple[int, bool]] = []  # the same two for each enclosing open array
    run_for, short_head = _RUN_FOR, _SHORT_HEAD
    while True:
        while remaining == 0:
            if not stack:
                if pos != end:
                    raise DecodeError(f"{end - pos} trailing bytes after the CBOR item")
                if items > SCAN_BASE_ITEMS + end // SCAN_BYTES_PER_ITEM:
                    raise DecodeError(f"{items} CBOR items are too many for {end} bytes")
                return items
            remaining, shapes = stack.pop()
        steps -= 1
        if steps < 0:
            raise DecodeError("too many CBOR items for the message size")
        if pos >= end:
            raise DecodeError("truncated CBOR item")
        initial = data[pos]
        if shapes and remaining >= 2 and (0x40 <= initial <= 0x59 or 0x81 <= initial <= 0x88):
            entries, per_entry, size = _shape_run(data, pos, end, remaining, len(stack))
            if entries:
                pos += entries * size
                remaining -= entries
                items += entries * per_entry
                continue
            shapes = False  # honest lists are uniform: one miss per array is enough
        run = run_for[initial]
        if run is not None:
            pattern, int_size = run
            match = pattern.match(data, pos, min(end, pos + remaining * int_size))
            if match is not None:
                count = (match.end() - pos) // int_size
                pos += count * int_size
                remaining -= count
                items += count
                continue
        head = short_head[initial]
        if head is None:
            major, value, pos = _read_head(data, pos)
        else:
            major, value = head
            pos += 1
        remaining -= 1
        items += 1
        if major == _ARRAY:
            if len(stack) >= MAX_DEPTH:
                raise DecodeError(f"CBOR arrays nested deeper than {MAX_DEPTH}")
            # Each element takes at least one byte: refuse impossible lengths.
            if value > end - pos:
                raise DecodeError("truncated CBOR array")
            if value:
                stack.append((remaining, shapes))
                remaining, shapes = value, True
        elif major == _BYTES:
            pos += value
            if pos > end:
                raise DecodeError("truncated CBOR string")
        elif major == _TEXT:
            if value > end - pos:
                raise DecodeError("truncated CBOR string")
            try:
                bytes(data[pos : pos + value]).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("CBOR text string is not valid UTF-8") from exc
            pos += value
        # else: a lone integer the run patterns did not take; _read_head has
        # checked that its head is in shortest form.


def _check_input(data: object) -> bytes | memoryview:
    """``data`` itself if it is ``bytes`` or a read-only flat byte view (e.g. of a
    spooled request body: not copied), else an immutable copy."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if not isinstance(data, bytes) and not (
        isinstance(data, memoryview)
        and data.readonly
        and data.format == "B"
        and data.ndim == 1
        and data.c_contiguous
    ):
        data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return data


def loads(data: bytes | memoryview) -> CborValue:
    """Decode one canonical item of the subset (objects built by cbor2).

    The bounded scan has already refused anything that is not the canonical
    encoding of a subset item, so cbor2 only ever sees integers, strings and
    arrays of bounded depth, and the decoded value re-encodes to ``data``.
    """
    data = bytes(_check_input(data))  # no copy for bytes
    _scan(data)
    try:
        return cbor2.loads(data, max_depth=MAX_DEPTH, allow_indefinite=False)
    except Exception as exc:  # pragma: no cover - the scan accepted it
        raise DecodeError(f"not valid CBOR: {exc}") from exc


def dumps_subset(value: CborValue) -> bytes:
    """Deterministic encoding of ``value`` (ints, bytes, str, lists/tuples), pure Python."""
    out: list[bytes | bytearray | memoryview] = []
    _encode(value, out)
    return b"".join(out)


# Byte strings at least this long are returned as read-only views of the input
# by ``loads_subset(..., views=True)``: a masked vector is then never copied.
VIEW_THRESHOLD = 4096


class _Reader:
    """Builds the value of input that ``_scan`` has accepted (so no checks repeat here)."""

    __slots__ = ("data", "pos", "views")

    def __init__(self, data: bytes | memoryview, views: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.views = views

    def take(self, n: int) -> bytes:
        chunk = bytes(self.data[self.pos : self.pos + n])  # no copy when data is bytes
        self.pos += n
        return chunk

    def take_bytes(self, n: int) -> bytes | memoryview:
        if self.views and n >= VIEW_THRESHOLD:
            view = memoryview(self.data)[self.pos : self.pos + n]
            self.pos += n
            return view
        return self.take(n)

    def item(self) -> CborValue:
        major, value, self.pos = _read_head(self.data, self.pos)
        if major == _UINT:
            return value
        if major == _NINT:
            return -1 - value
        if major == _BYTES:
            return self.take_bytes(value)
        if major == _TEXT:
            return self.take(value).decode("utf-8")
        return [self.item() for _ in range(value)]


# This codec builds every item in Python (~0.2 us each): it takes few of them.
SUBSET_MAX_ITEMS = 4096


def loads_subset(
    data: bytes | memoryview, *, views: bool = False, max_items: int = SUBSET_MAX_ITEMS
) -> CborValue:
    """Decode exactly one canonical item of the subset; anything else raises DecodeError.

    With ``views``, byte strings of ``VIEW_THRESHOLD`` bytes or more come back
    as read-only ``memoryview`` slices of ``data`` instead of copies. Input of
    more than ``max_items`` items (arrays and their elements counted) is
    refused before any object is built.
    """
    data = _check_input(data)
    items = _scan(data)
    if items > max_items:
        raise DecodeError(f"{items} CBOR items where at most {max_items} are expected")
    return _Reader(data, views).item()
