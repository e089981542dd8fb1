"""Encoding layer: fixed-point quantisation, arithmetic mod ``2**b`` and bit packing.

Secure aggregation sums vectors of integers modulo ``2**b``. This module
turns a client's float vector into such integers and the server's sum back
into a float vector:

1. :class:`FixedPointEncoding` clips each coordinate to ``[-clip, clip]``,
   scales it by ``scale`` and rounds it *stochastically* (unbiasedly) to an
   integer ``q``. The client's integer weight ``w`` multiplies ``q`` and is
   appended as the last slot, so the server learns only ``sum(w_i q_i)`` and
   ``sum(w_i)`` and forms the weighted mean without seeing any single weight.
2. :func:`to_modular` / :func:`from_modular` map signed integers into
   ``Z / 2**b`` (two's complement) and back (centred lift). If
   ``b >= required_bit_width(n)``, the signed sum of ``n`` encodings never
   leaves ``(-2**(b-1), 2**(b-1))``, so the lifted modular sum is the exact
   integer sum.
3. :func:`pack_bits` / :func:`unpack_bits` serialise a vector of ``b``-bit
   words densely (``ceil(count * b / 8)`` bytes) and canonically.

Everything is vectorised with numpy; the only Python loops run over the 64
columns of the general bit packer and over cache-sized chunks (2**16
coordinates) of the encoder, never over elements. Randomness
for rounding comes only from the injected :class:`~protocol.crypto.RandomSource`
expanded by the protocol PRG (:func:`~protocol.crypto.prg_fill`); neither
``numpy.random`` nor ``random`` is used.
"""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from protocol.crypto import PRG_KEY_SIZE, RandomSource, prg_fill
from protocol.errors import ConfigError, DecodeError

__all__ = [
    "MAX_BIT_WIDTH",
    "MAX_SCALED_CLIP",
    "ROUNDING_SEED_SIZE",
    "FixedPointEncoding",
    "WordArray",
    "add_packed",
    "from_modular",
    "pack_bits",
    "to_modular",
    "unpack_bits",
    "word_dtype",
]

WordArray = npt.NDArray[np.uint32 | np.uint64]
"""A vector of ``b``-bit words held in :func:`word_dtype` ``(b)``."""

MAX_BIT_WIDTH: Final = 64
"""Largest supported modulus exponent: words are held in ``uint64``."""

MAX_SCALED_CLIP: Final = 2**52
"""Upper bound on ``clip * scale``.

Below ``2**52`` a float64 still has a fractional part to round stochastically
and ``floor`` of any scaled coordinate is an exactly representable integer.
"""

ROUNDING_SEED_SIZE: Final = 32
"""Bytes drawn from the :class:`RandomSource` per :meth:`FixedPointEncoding.encode`."""

_INT64_LIMIT: Final = 2**63
_U32_RANGE: Final = 2.0**32
_ENCODE_CHUNK: Final = 1 << 16  # elements; float64 scratch of 512 KiB fits in L2
_FAST_PATH_DTYPES: Final[dict[int, str]] = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}


# --------------------------------------------------------------------------
# Validation helpers.
# --------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a bit width or a weight is a bug.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _check_bit_width(bit_width: int) -> int:
    if not _is_int(bit_width):
        raise ConfigError(f"bit width must be an int, got {type(bit_width).__name__}")
    b = int(bit_width)
    if not 1 <= b <= MAX_BIT_WIDTH:
        raise ConfigError(f"bit width must be in [1, {MAX_BIT_WIDTH}], got {b}")
    return b


def _check_vector(values: object, what: str) -> npt.NDArray[Any]:
    if not isinstance(values, np.ndarray):
        raise ConfigError(f"{what} must be a numpy array, got {type(values).__name__}")
    if values.ndim != 1:
        raise ConfigError(f"{what} must be 1-D, got shape {values.shape}")
    return values


def _check_unsigned(values: object, bit_width: int, what: str) -> WordArray:
    """A 1-D unsigned array whose every element is below ``2**bit_width``."""
    array = _check_vector(values, what)
    if not np.issubdtype(array.dtype, np.unsignedinteger):
        raise ConfigError(f"{what} must have an unsigned integer dtype, got {array.dtype}")
    # Only dtypes wider than b bits can hold out-of-range words.
    if array.size and array.dtype.itemsize * 8 > bit_width:
        top = int(array.max())
        if top >> bit_width:
            index = int(np.argmax(array >> np.uint64(bit_width) != 0))
            raise ConfigError(
                f"{what}[{index}] = {int(array[index])} does not fit in {bit_width} bits "
                f"(must be < 2**{bit_width})"
            )
    return cast(WordArray, array)


# --------------------------------------------------------------------------
# Arithmetic modulo 2**b.
# --------------------------------------------------------------------------


def word_dtype(bit_width: int) -> type[np.uint32] | type[np.uint64]:
    """The numpy word type that holds elements of ``Z / 2**bit_width``.

    Args:
        bit_width: the modulus exponent ``b``.

    Returns:
        ``np.uint32`` if ``1 <= b <= 32``, ``np.uint64`` if ``33 <= b <= 64``.

    Raises:
        ConfigError: ``b`` is not an int in ``[1, 64]``.
    """
    b = _check_bit_width(bit_width)
    return np.uint32 if b <= 32 else np.uint64


def to_modular(values: npt.NDArray[np.integer], bit_width: int) -> WordArray:
    """Reduce signed (or unsigned) integers modulo ``2**bit_width`` (two's complement).

    Args:
        values: 1-D array of any integer dtype.
        bit_width: the modulus exponent ``b``.

    Returns:
        A new array of dtype :func:`word_dtype` ``(b)`` holding ``values mod 2**b``,
        i.e. the low ``b`` bits of each value's two's complement representation.

    Raises:
        ConfigError: ``b`` is out of range, or ``values`` is not a 1-D integer array.
    """
    b = _check_bit_width(bit_width)
    array = _check_vector(values, "values")
    if not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"values must have an integer dtype, got {array.dtype}")
    dtype = word_dtype(b)
    # Integer casts to an unsigned type are modular (two's complement), so the
    # cast already keeps the low 32 or 64 bits; the mask keeps the low b.
    out = cast(WordArray, array.astype(dtype))
    if b not in (32, 64):
        np.bitwise_and(out, dtype((1 << b) - 1), out=out)
    return out


def from_modular(values: WordArray, bit_width: int) -> npt.NDArray[np.int64]:
    """Centred lift of ``Z / 2**bit_width`` into the signed integers.

    A word ``v`` maps to ``v`` if ``v < 2**(b-1)`` and to ``v - 2**b`` otherwise,
    so the result lies in ``[-2**(b-1), 2**(b-1))``.

    Args:
        values: 1-D unsigned array, every element ``< 2**b``.
        bit_width: the modulus exponent ``b``.

    Returns:
        A new ``int64`` array.

    Raises:
        ConfigError: ``b`` is out of range, ``values`` is not a 1-D unsigned
            array, or an element is ``>= 2**b`` (not a reduced residue).
    """
    b = _check_bit_width(bit_width)
    array = _check_unsigned(values, b, "values")
    # Sign extension from bit b-1 in wrapping 64-bit arithmetic:
    # (v XOR m) - m with m = 2**(b-1) leaves v < m unchanged and maps v >= m to
    # v - 2**b (mod 2**64), which the int64 view reads as the negative number.
    sign = np.uint64(1 << (b - 1))
    out = array.astype(np.uint64)
    np.bitwise_xor(out, sign, out=out)
    np.subtract(out, sign, out=out)
    return out.view(np.int64)


# --------------------------------------------------------------------------
# Bit packing.
# --------------------------------------------------------------------------


def _packed_size(count: int, bit_width: int) -> int:
    return (count * bit_width + 7) // 8


def pack_bits(values: WordArray, bit_width: int) -> bytes:
    """Serialise ``b``-bit words densely into a little-endian bit stream.

    Element ``i`` occupies bits ``[i*b, (i+1)*b)`` of the stream, least
    significant bit first; bit ``k`` of the stream is bit ``k % 8`` of byte
    ``k // 8``. The output is exactly ``ceil(len(values) * b / 8)`` bytes and
    the padding bits of the last byte are zero, so the encoding is canonical.
    For ``b`` in ``{8, 16, 32, 64}`` this is the plain little-endian array.

    Args:
        values: 1-D unsigned array (normally :func:`word_dtype` ``(b)``),
            every element ``< 2**b``.
        bit_width: the word size ``b``.

    Returns:
        The packed bytes.

    Raises:
        ConfigError: ``b`` is out of range, ``values`` is not a 1-D unsigned
            array, or an element does not fit in ``b`` bits.
    """
    b = _check_bit_width(bit_width)
    array = _check_unsigned(values, b, "values")
    fast = _FAST_PATH_DTYPES.get(b)
    if fast is not None:
        return np.ascontiguousarray(array, dtype=fast).tobytes()
    count = int(array.shape[0])
    if count == 0:
        return b""
    # 64 elements of b bits are exactly b 64-bit words. Lay the (zero-padded)
    # vector out as 64 contiguous columns of m rows: column j holds elements
    # j, 64+j, 128+j, ... whose bits all start at offset j*b within their row's
    # b words. Each column is then one shift and one OR (plus the spill into
    # the next word) over all m rows at once.
    rows = -(-count // 64)
    # One transposing, widening copy; the zero padding fills the last row.
    full = count // 64
    columns = np.zeros((64, rows), dtype=np.uint64)
    columns[:, :full] = array[: full * 64].reshape(full, 64).T
    columns[: count - full * 64, full:] = array[full * 64 :, None]
    words = np.zeros((b, rows), dtype=np.uint64)
    scratch = np.empty(rows, dtype=np.uint64)
    for j in range(64):
        word, shift = divmod(j * b, 64)
        np.left_shift(columns[j], np.uint64(shift), out=scratch)
        np.bitwise_or(words[word], scratch, out=words[word])
        if shift + b > 64:  # the element straddles two words
            np.right_shift(columns[j], np.uint64(64 - shift), out=scratch)
            np.bitwise_or(words[word + 1], scratch, out=words[word + 1])
    # Padding elements are zero, so everything after the last real bit is zero.
    stream = np.ascontiguousarray(words.T, dtype="<u8").tobytes()
    return stream[: _packed_size(count, b)]


def unpack_bits(data: bytes | memoryview, bit_width: int, count: int) -> WordArray:
    """Inverse of :func:`pack_bits`; accepts only the canonical encoding.

    Args:
        data: the packed bytes (any bytes-like object).
        bit_width: the word size ``b``.
        count: the number of elements expected.

    Returns:
        An array of ``count`` elements of dtype :func:`word_dtype` ``(b)``; for
        b = 32 and 64 a read-only view of ``data`` (no copy).

    Raises:
        ConfigError: ``b`` is out of range or ``count`` is not an int.
        DecodeError: ``count < 0``, ``len(data) != ceil(count * b / 8)``, or a
            padding bit of the last byte is set (non-canonical encoding).
    """
    b = _check_bit_width(bit_width)
    if not _is_int(count):
        raise ConfigError(f"count must be an int, got {type(count).__name__}")
    count = int(count)
    if count < 0:
        raise DecodeError(f"element count must be >= 0, got {count}")
    expected = _packed_size(count, b)
    if len(data) != expected:
        raise DecodeError(
            f"packed vector of {count} {b}-bit elements must be {expected} bytes, got {len(data)}"
        )
    dtype = word_dtype(b)
    fast = _FAST_PATH_DTYPES.get(b)
    if fast is not None:
        view = np.frombuffer(data, dtype=fast)
        # b = 32 or 64 on a little-endian host: the bytes already are the words;
        # a read-only view avoids copying a vector the caller only reads.
        return cast(WordArray, view if view.dtype == np.dtype(dtype) else view.astype(dtype))
    if count == 0:
        return cast(WordArray, np.zeros(0, dtype=dtype))
    used = (count * b) % 8
    if used and data[-1] >> used:
        raise DecodeError(f"non-zero padding bits in the last byte ({data[-1]:#04x})")
    rows = -(-count // 64)
    raw = np.zeros(rows * b * 8, dtype=np.uint8)
    raw[:expected] = np.frombuffer(data, dtype=np.uint8)
    words = np.ascontiguousarray(raw.view("<u8").reshape(rows, b).T, dtype=np.uint64)
    columns = np.empty((64, rows), dtype=np.uint64)
    scratch = np.empty(rows, dtype=np.uint64)
    mask = np.uint64((1 << b) - 1)
    for j in range(64):
        word, shift = divmod(j * b, 64)
        np.right_shift(words[word], np.uint64(shift), out=columns[j])
        if shift + b > 64:
            np.left_shift(words[word + 1], np.uint64(64 - shift), out=scratch)
            np.bitwise_or(columns[j], scratch, out=columns[j])
        np.bitwise_and(columns[j], mask, out=columns[j])
    # One transposing, narrowing copy back to element order.
    out = np.empty((rows, 64), dtype=dtype)
    out[...] = columns.T
    return out.reshape(-1)[:count]


# Elements unpacked at a time by add_packed: a multiple of 64, so that every
# block starts on a byte (indeed a 64-bit word) boundary of the stream.
ADD_BLOCK_ELEMENTS: Final[int] = 1 << 16


def add_packed(acc: WordArray, data: bytes | memoryview, bit_width: int) -> None:
    """``acc += unpack_bits(data, bit_width, len(acc))`` (mod the word size), in place.

    The same values and the same checks as :func:`unpack_bits`, done before
    ``acc`` is touched; the vector is then unpacked in blocks of
    :data:`ADD_BLOCK_ELEMENTS`, so the working memory is a block, not the
    unpacked vector (whose widening temporaries cost ~16 bytes per element).
    A block of ``64 k`` elements is exactly ``8 k b`` bytes of the stream and is
    itself the canonical packing of its elements.

    Args:
        acc: a 1-D array of dtype :func:`word_dtype` ``(b)``, the running sum.
        data: the packed bytes of ``len(acc)`` elements.
        bit_width: the word size ``b``.

    Raises:
        ConfigError: ``b`` is out of range, or ``acc`` is not a 1-D array of
            :func:`word_dtype` ``(b)``.
        DecodeError: as :func:`unpack_bits`; ``acc`` is then unchanged.
    """
    b = _check_bit_width(bit_width)
    if not isinstance(acc, np.ndarray) or acc.ndim != 1 or acc.dtype != np.dtype(word_dtype(b)):
        raise ConfigError(f"acc must be a 1-D {np.dtype(word_dtype(b))} array")
    count = int(acc.shape[0])
    expected = _packed_size(count, b)
    if len(data) != expected:
        raise DecodeError(
            f"packed vector of {count} {b}-bit elements must be {expected} bytes, got {len(data)}"
        )
    used = (count * b) % 8
    if used and data[-1] >> used:
        raise DecodeError(f"non-zero padding bits in the last byte ({data[-1]:#04x})")
    view = memoryview(data).cast("B")
    block_bytes = ADD_BLOCK_ELEMENTS * b // 8
    for start in range(0, count, ADD_BLOCK_ELEMENTS):
        n = min(ADD_BLOCK_ELEMENTS, count - start)
        first = start // ADD_BLOCK_ELEMENTS * block_bytes
        values = unpack_bits(view[first : first + _packed_size(n, b)], b, n)
        part = acc[start : start + n]
        np.add(part, values, out=part)


# --------------------------------------------------------------------------
# Fixed-point encoding with stochastic rounding.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedPointEncoding:
    """Weighted fixed-point encoding of float vectors for a secure sum.

    A client with vector ``x`` and integer weight ``w`` contributes
    ``[w * q(x_0), ..., w * q(x_{d-1}), w]`` where
    ``q(t) = stochastic_round(clip(t, -clip, clip) * scale)``. The server sums
    the contributions and :meth:`decode` returns
    ``sum_i(w_i * q(x_i)) / (scale * sum_i(w_i))``, an unbiased estimate of the
    weighted mean of the clipped inputs (quantisation noise has variance at
    most ``1 / (4 * scale**2)`` per client and coordinate).

    Attributes:
        clip: each coordinate is clipped to ``[-clip, clip]``; finite, > 0.
        scale: fixed-point scale (quantisation step ``1 / scale``); finite, > 0.
        max_weight: largest weight any client may use (e.g. its number of
            examples); an int >= 1.

    Raises:
        ConfigError: on construction, if a parameter is invalid, if
            ``clip * scale > 2**52`` (float64 could no longer round it), or if
            :meth:`max_abs_element` would not fit in a signed 64-bit word.
    """

    clip: float
    scale: float
    max_weight: int

    def __post_init__(self) -> None:
        for name in ("clip", "scale"):
            value: object = getattr(self, name)
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
                raise ConfigError(f"{name} must be a real number, got {type(value).__name__}")
            as_float = float(value)
            if not (math.isfinite(as_float) and as_float > 0):
                raise ConfigError(f"{name} must be finite and > 0, got {value!r}")
        if not _is_int(self.max_weight) or self.max_weight < 1:
            raise ConfigError(f"max_weight must be an int >= 1, got {self.max_weight!r}")
        scaled = float(self.clip) * float(self.scale)
        if scaled > MAX_SCALED_CLIP:
            raise ConfigError(
                f"clip * scale = {scaled!r} exceeds 2**52; float64 cannot round it stochastically"
            )
        if self.max_abs_element() >= _INT64_LIMIT:
            raise ConfigError(
                f"max_weight * ceil(clip * scale) = {self.max_abs_element()} must be < 2**63 "
                "(one client would overflow the 64-bit maximum bit width)"
            )

    def max_quantised(self) -> int:
        """The largest ``|q|`` any coordinate can round to: ``ceil(clip * scale)``.

        Rounding is monotonic, so ``|fl(t * scale)| <= fl(clip * scale)`` for
        every ``|t| <= clip``, and stochastic rounding at most rounds up to the
        next integer.
        """
        return math.ceil(float(self.clip) * float(self.scale))

    def max_abs_element(self) -> int:
        """Largest ``|element|`` a single client's encoding can contain.

        That is ``max_weight * ceil(clip * scale)``; it also bounds the weight
        slot, since ``ceil(clip * scale) >= 1``.
        """
        return int(self.max_weight) * self.max_quantised()

    def required_bit_width(self, num_clients: int) -> int:
        """Smallest ``b`` such that the signed sum of ``num_clients`` encodings cannot wrap.

        That is the smallest ``b`` with ``num_clients * max_abs_element() < 2**(b-1)``:
        every coordinate of the sum then lies in ``(-2**(b-1), 2**(b-1))`` and
        :func:`from_modular` recovers it exactly.

        Args:
            num_clients: the largest number of clients whose encodings are summed.

        Returns:
            The bit width ``b`` (between 2 and 64).

        Raises:
            ConfigError: ``num_clients`` is not an int >= 1, or ``b`` would exceed
                64 (the message names the largest feasible number of clients).
        """
        if not _is_int(num_clients) or num_clients < 1:
            raise ConfigError(f"num_clients must be an int >= 1, got {num_clients!r}")
        bound = int(num_clients) * self.max_abs_element()
        b = bound.bit_length() + 1
        if b > MAX_BIT_WIDTH:
            limit = (_INT64_LIMIT - 1) // self.max_abs_element()
            raise ConfigError(
                f"{num_clients} clients * max_abs_element {self.max_abs_element()} = {bound} "
                f"needs a {b}-bit modulus; the limit is {MAX_BIT_WIDTH} bits "
                f"(sum < 2**63), i.e. at most {limit} clients with these parameters"
            )
        return b

    def check_bit_width(self, num_clients: int, bit_width: int) -> None:
        """Refuse a session bit width under which ``num_clients`` encodings could wrap.

        Raises:
            ConfigError: ``bit_width < required_bit_width(num_clients)``; the
                message names both widths.
        """
        need = self.required_bit_width(num_clients)
        if bit_width < need:
            raise ConfigError(
                f"bit_width {bit_width} is too small: the sum of {num_clients} clients "
                f"needs {need} bits (clip={self.clip}, scale={self.scale}, "
                f"max_weight={self.max_weight})"
            )

    def context(self) -> bytes:
        """The encoding parameters as bytes, to bind into a session's ``context``.

        ``"fixed-point" 0x00 || clip (float64 BE) || scale (float64 BE) ||
        max_weight (uint64 BE)``: clients agreeing on a session also agree on
        how its sum is to be decoded.
        """
        return b"fixed-point\x00" + struct.pack(">ddQ", self.clip, self.scale, self.max_weight)

    def encode(
        self, x: npt.NDArray[np.floating], weight: int, rng: RandomSource
    ) -> npt.NDArray[np.int64]:
        """Quantise ``x`` stochastically and weight it.

        Normative procedure (test vectors depend on it), for ``d = len(x)``:

        1. ``v = clip(float64(x), -clip, clip) * scale`` (float64, elementwise).
        2. ``seed = rng.random_bytes(32)`` -- exactly one call, also when
           ``d == 0`` or ``weight == 0``; ``key = seed[:16]`` (the other 16
           bytes are unused and reserved).
        3. ``r = prg_fill(key, uint32[d])``: keystream words ``0 .. d-1`` of
           AES-128-CTR under ``key`` (counter block starting at zero), each
           read as a little-endian uint32.
        4. ``u = float64(r) * 2**-32`` (exact, in ``[0, 1)``);
           ``f = v - floor(v)`` (float64);
           ``q = floor(v) + (1 if u < f else 0)`` as int64.
        5. Output (int64, length ``d + 1``): ``[weight * q_0, ...,
           weight * q_{d-1}, weight]``.

        ``E[q] = floor(v) + ceil(f * 2**32) / 2**32``, i.e. ``v`` up to a bias
        below ``2**-32`` quantisation steps (from the 32-bit granularity of
        ``u``), plus float64 rounding of ``f``.

        Args:
            x: 1-D floating array; every value finite.
            weight: int in ``[0, max_weight]``; 0 contributes nothing.
            rng: source of the rounding seed.

        Returns:
            A new ``int64`` array of length ``len(x) + 1``; every element has
            absolute value at most :meth:`max_abs_element`.

        Raises:
            ConfigError: ``x`` is not a 1-D floating array, holds a NaN or an
                infinity (the message names the first such index), or
                ``weight`` is not an int in ``[0, max_weight]``.
        """
        array = _check_vector(x, "x")
        if not np.issubdtype(array.dtype, np.floating):
            raise ConfigError(f"x must have a floating dtype, got {array.dtype}")
        if not _is_int(weight) or not 0 <= weight <= self.max_weight:
            raise ConfigError(
                f"weight must be an int in [0, max_weight={self.max_weight}], got {weight!r}"
            )
        finite = np.isfinite(array)
        if not finite.all():
            index = int(np.argmin(finite))
            raise ConfigError(f"x[{index}] = {array[index]!r} is not finite")

        d = int(array.shape[0])
        seed = rng.random_bytes(ROUNDING_SEED_SIZE)
        if len(seed) != ROUNDING_SEED_SIZE:
            raise ConfigError(
                f"RandomSource returned {len(seed)} bytes, expected {ROUNDING_SEED_SIZE}"
            )
        key = seed[:PRG_KEY_SIZE]
        clip, scale, w = float(self.clip), float(self.scale), int(weight)

        out = np.empty(d + 1, dtype=np.int64)
        out[d] = w
        # The vector is processed in cache-sized chunks with reused scratch
        # buffers: over whole 1e6-element arrays, page faults on fresh
        # temporaries and memory traffic cost 2-3x the arithmetic. Chunking does
        # not change the result: coordinate i always uses keystream word i
        # (prg_fill is seekable), and every step is elementwise.
        size = min(d, _ENCODE_CHUNK)
        noise = np.empty(size, dtype=np.uint32)
        frac = np.empty(size, dtype=np.float64)
        q = np.empty(size, dtype=np.float64)
        up = np.empty(size, dtype=np.bool_)
        for lo in range(0, d, _ENCODE_CHUNK):
            hi = min(lo + _ENCODE_CHUNK, d)
            r, f, qc, uc = noise[: hi - lo], frac[: hi - lo], q[: hi - lo], up[: hi - lo]
            prg_fill(key, r, start=lo)
            # Widen first: clipping a float32 input in its own precision would
            # round the bound itself (0.1 -> 0.10000000149...).
            np.copyto(f, array[lo:hi])
            np.clip(f, -clip, clip, out=f)
            np.multiply(f, scale, out=f)  # v = clip(float64(x)) * scale
            np.floor(f, out=qc)
            np.subtract(f, qc, out=f)  # f = v - floor(v), in [0, 1)
            # u < f  <=>  r < f * 2**32, as scaling by a power of two is exact.
            np.multiply(f, _U32_RANGE, out=f)
            np.less(r, f, out=uc)
            np.add(qc, uc, out=qc)
            body = out[lo:hi]
            # |q| <= ceil(clip * scale) <= 2**52 is an integer that float64 and
            # int64 both hold exactly, so the cast is exact; the product is
            # formed in int64 (float64 would round above 2**53) and
            # |weight * q| <= max_abs_element < 2**63, checked at construction.
            np.copyto(body, qc, casting="unsafe")
            np.multiply(body, w, out=body)
        return out

    def decode(self, total: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float64], int]:
        """The weighted mean of the clipped inputs from a sum of encodings.

        Args:
            total: the element-wise sum of the clients' :meth:`encode` outputs
                (e.g. the :func:`from_modular` lift of the modular aggregate);
                a 1-D integer array of length ``d + 1``.

        Returns:
            ``(mean, total_weight)`` with ``mean = total[:-1] / (scale * W)``
            (float64, length ``d``) and ``W = total[-1]``.

        Raises:
            ConfigError: ``total`` is not a 1-D integer array of length >= 1;
                the total weight is 0 (no client contributed: the mean is
                undefined) or negative; or some ``|total[i]|`` exceeds
                ``W * ceil(clip * scale)``, which no sum of valid encodings can.

        The last two checks are cheap sanity checks, not a guarantee: a modular
        sum that wrapped because the bit width was below
        :meth:`required_bit_width` usually still lands inside the bounds and
        cannot be told apart from a valid total. Choosing the bit width with
        :meth:`required_bit_width` is what rules wrapping out.
        """
        array = _check_vector(total, "total")
        if not np.issubdtype(array.dtype, np.integer):
            raise ConfigError(f"total must have an integer dtype, got {array.dtype}")
        if array.shape[0] < 1:
            raise ConfigError("total must hold at least the weight slot")
        weight = int(array[-1])
        if weight == 0:
            raise ConfigError("total weight is 0: no client contributed, the mean is undefined")
        if weight < 0:
            raise ConfigError(
                f"total weight {weight} is negative: the modular sum wrapped "
                "(bit width below required_bit_width) or is corrupt"
            )
        body = array[:-1]
        bound = weight * self.max_quantised()
        # Python ints compare exactly even where int64/uint64 would overflow.
        if body.size and max(int(body.max()), -int(body.min())) > bound:
            raise ConfigError(
                f"|total| exceeds total weight * ceil(clip * scale) = {bound}: not a sum of "
                "valid encodings (a contribution out of range, or the modular sum wrapped)"
            )
        mean = body.astype(np.float64)
        np.divide(mean, float(self.scale) * weight, out=mean)
        return mean, weight


# --------------------------------------------------------------------------
# A training round's vector: weighted update, weight, evaluation sums.
# --------------------------------------------------------------------------

METRIC_SLOTS = 3  # correct predictions, evaluated examples, quantised loss sum


@dataclass(frozen=True)
class EvalSums:
    """Sums over one client's (or, aggregated, all survivors') evaluation examples."""

    correct: int
    count: int
    loss_sum: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")


@dataclass(frozen=True)
class RoundEncoding:
    """The vector one client contributes to a training round, and its decoding.

    Layout (length ``d + 4``): ``weight * q(update)`` (d elements, see
    :class:`FixedPointEncoding`), ``weight``, then the client's evaluation
    sums of the round's *incoming* global model: correct predictions,
    examples evaluated, and ``round(loss_sum * loss_scale)``. The server thus
    learns the weighted mean update and the global model's metrics over all
    survivors, and no single client's update, weight or metric.

    Attributes:
        update: quantisation of the model update (clip, scale, max weight).
        max_eval_examples: largest number of evaluation examples per client.
        max_example_loss: per-example losses are clipped to ``[0, max_example_loss]``.
        loss_scale: fixed-point scale of the loss sum.
    """

    update: FixedPointEncoding
    # Defaults keep each metric slot below 2^19 per client, so up to about a
    # thousand clients the metrics never widen the modulus past 32 bits (which
    # would double the mask work and the bytes on the wire).
    max_eval_examples: int = 1 << 12
    max_example_loss: float = 8.0
    loss_scale: float = 16.0

    def __post_init__(self) -> None:
        if not _is_int(self.max_eval_examples) or self.max_eval_examples < 0:
            raise ConfigError("max_eval_examples must be an int >= 0")
        for name in ("max_example_loss", "loss_scale"):
            value = getattr(self, name)
            if not isinstance(value, float | int) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")

    def vector_length(self, num_weights: int) -> int:
        return num_weights + 1 + METRIC_SLOTS

    def _max_loss_q(self) -> int:
        return math.ceil(self.max_eval_examples * self.max_example_loss * self.loss_scale)

    def required_bit_width(self, num_clients: int) -> int:
        """Smallest modulus exponent under which the sum of ``num_clients`` vectors cannot wrap."""
        widest = max(self.update.max_abs_element(), self.max_eval_examples, self._max_loss_q())
        b = (num_clients * widest).bit_length() + 1
        if b > MAX_BIT_WIDTH:
            raise ConfigError(
                f"{num_clients} clients need a {b}-bit modulus (limit {MAX_BIT_WIDTH}); lower "
                "max_weight, scale, clip, max_eval_examples or loss_scale"
            )
        return max(b, self.update.required_bit_width(num_clients))

    def context(self) -> bytes:
        """Every encoding parameter, to bind into the session's ``context``."""
        return self.update.context() + struct.pack(
            ">Qdd", self.max_eval_examples, self.max_example_loss, self.loss_scale
        )

    def encode(
        self,
        update: npt.NDArray[np.floating],
        weight: int,
        metrics: EvalSums,
        rng: RandomSource,
    ) -> npt.NDArray[np.int64]:
        """The client's integer vector; see the class docstring for the layout.

        Raises:
            ConfigError: a bad update or weight (see :meth:`FixedPointEncoding.encode`),
                or metrics outside ``0 <= correct <= count <= max_eval_examples``.
        """
        if not (_is_int(metrics.correct) and _is_int(metrics.count)):
            raise ConfigError("metric counts must be integers")
        if not 0 <= metrics.correct <= metrics.count <= self.max_eval_examples:
            raise ConfigError(
                f"need 0 <= correct ({metrics.correct}) <= count ({metrics.count}) "
                f"<= max_eval_examples ({self.max_eval_examples})"
            )
        if not math.isfinite(metrics.loss_sum) or metrics.loss_sum < 0:
            raise ConfigError(f"loss_sum must be finite and >= 0, got {metrics.loss_sum}")
        loss = min(metrics.loss_sum, metrics.count * self.max_example_loss)
        head = self.update.encode(update, weight, rng)
        tail = np.array(
            [metrics.correct, metrics.count, round(loss * self.loss_scale)], dtype=np.int64
        )
        return np.concatenate([head, tail])

    def decode(self, total: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float64], int, EvalSums]:
        """``(mean update, total weight, evaluation sums)`` from the aggregate."""
        array = _check_vector(total, "total")
        if array.shape[0] < 1 + METRIC_SLOTS:
            raise ConfigError("total is shorter than the weight and metric slots")
        correct, count, loss_q = (int(v) for v in array[-METRIC_SLOTS:])
        if not 0 <= correct <= count:
            raise ConfigError(f"aggregated metrics are inconsistent: {correct} of {count}")
        mean, weight = self.update.decode(array[:-METRIC_SLOTS])
        return mean, weight, EvalSums(correct, count, loss_q / self.loss_scale)


def session_context(task_id: int, round_number: int, encoding_context: bytes) -> bytes:
    """The ``context`` of a training round's session: task, round and vector encoding.

    Server and client compute it independently, so a client refuses a session
    whose encoding parameters differ from those it was told to use.
    """
    return (
        b"secagg-task\x00"
        + task_id.to_bytes(8, "big")
        + round_number.to_bytes(8, "big")
        + encoding_context
    )
