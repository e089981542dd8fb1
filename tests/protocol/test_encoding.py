"""Tests of protocol.encoding: fixed point, arithmetic mod 2**b, bit packing."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import DeterministicRandom, prg_fill
from protocol.encoding import (
    FixedPointEncoding,
    WordArray,
    from_modular,
    pack_bits,
    to_modular,
    unpack_bits,
    word_dtype,
)
from protocol.errors import ConfigError, DecodeError, RemoteProtocolError

AWKWARD_LENGTHS = (0, 1, 2, 7, 8, 63, 64, 65, 127, 128, 129, 1000)


# --------------------------------------------------------------------------
# Helpers: reproducible test data and independent reference implementations.
# --------------------------------------------------------------------------


def random_words(seed: bytes, count: int, bit_width: int) -> WordArray:
    """``count`` uniformly random ``bit_width``-bit words from a fixed seed."""
    raw = np.frombuffer(DeterministicRandom(seed).random_bytes(8 * count), dtype="<u8")
    words = raw.astype(np.uint64) >> np.uint64(64 - bit_width)
    return words.astype(word_dtype(bit_width))


def reference_pack(values: WordArray, bit_width: int) -> bytes:
    """Bit packing as one big Python integer: element i at bit offset i*b."""
    acc = 0
    for i, v in enumerate(values.tolist()):
        acc |= int(v) << (i * bit_width)
    return acc.to_bytes(math.ceil(len(values) * bit_width / 8), "little")


def reference_encode(
    enc: FixedPointEncoding, x: npt.NDArray[np.float64], weight: int, seed: bytes
) -> list[int]:
    """The normative procedure of FixedPointEncoding.encode, one element at a time."""
    key = DeterministicRandom(seed).random_bytes(32)[:16]
    noise = np.empty(len(x), dtype=np.uint32)
    prg_fill(key, noise)
    out = []
    for xi, ri in zip(x.tolist(), noise.tolist(), strict=True):
        v = min(max(xi, -enc.clip), enc.clip) * enc.scale
        fl = math.floor(v)
        q = fl + (1 if ri * 2.0**-32 < v - fl else 0)
        out.append(weight * q)
    return [*out, weight]


class CountingRandom:
    """A RandomSource that records how many bytes were requested."""

    def __init__(self, seed: bytes) -> None:
        self._inner = DeterministicRandom(seed)
        self.requests: list[int] = []

    def random_bytes(self, n: int) -> bytes:
        self.requests.append(n)
        return self._inner.random_bytes(n)


# --------------------------------------------------------------------------
# word_dtype
# --------------------------------------------------------------------------


def test_word_dtype_boundaries() -> None:
    assert word_dtype(1) is np.uint32
    assert word_dtype(32) is np.uint32
    assert word_dtype(33) is np.uint64
    assert word_dtype(64) is np.uint64


@pytest.mark.parametrize("bad", [0, -1, 65, 128, True, 8.0, "8"])
def test_word_dtype_rejects_bad_width(bad: object) -> None:
    with pytest.raises(ConfigError):
        word_dtype(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Bit packing
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bit_width", "values", "expected"),
    [
        # 1 = 100, 2 = 010, 3 = 110 (LSB first) -> stream 10001011 0 -> 0xd1 0x00.
        (3, [1, 2, 3], "d100"),
        # Bits 0, 2, 3 and 8 set; 7 padding bits.
        (1, [1, 0, 1, 1, 0, 0, 0, 0, 1], "0d01"),
        # 0xabc fills byte 0 (0xbc) and the low nibble of byte 1; 0x123 the rest.
        (12, [0xABC, 0x123], "bc3a12"),
        (12, [0xABC], "bc0a"),
        (5, [31], "1f"),
        (5, [31, 1], "3f00"),
        (7, [0x7F, 0], "7f00"),
        (20, [0xFFFFF], "ffff0f"),
        (8, [1, 255], "01ff"),
        (16, [0x1234], "3412"),
        (32, [0x01020304], "04030201"),
        (33, [1 << 32], "0000000001"),
        (64, [1, 0x0102030405060708], "0100000000000000" + "0807060504030201"),
        (63, [(1 << 63) - 1], "ffffffffffffff7f"),
        (3, [], ""),
    ],
)
def test_pack_known_answers(bit_width: int, values: list[int], expected: str) -> None:
    array = np.array(values, dtype=np.uint64)
    packed = pack_bits(array, bit_width)
    assert packed.hex() == expected
    unpacked = unpack_bits(packed, bit_width, len(values))
    assert unpacked.dtype == word_dtype(bit_width)
    assert unpacked.tolist() == values


@pytest.mark.parametrize("bit_width", range(1, 65))
def test_pack_round_trip_every_width(bit_width: int) -> None:
    for count in AWKWARD_LENGTHS:
        values = random_words(b"pack-%d-%d" % (bit_width, count), count, bit_width)
        packed = pack_bits(values, bit_width)
        assert len(packed) == math.ceil(count * bit_width / 8)
        assert packed == reference_pack(values, bit_width)
        unpacked = unpack_bits(packed, bit_width, count)
        assert unpacked.dtype == word_dtype(bit_width)
        np.testing.assert_array_equal(unpacked, values)


@settings(max_examples=300, deadline=None)
@given(
    bit_width=st.integers(1, 64),
    count=st.one_of(st.sampled_from(AWKWARD_LENGTHS), st.integers(0, 300)),
    pattern=st.sampled_from(["random", "zeros", "ones", "alternate"]),
    seed=st.binary(min_size=1, max_size=16),
)
def test_pack_round_trip_property(bit_width: int, count: int, pattern: str, seed: bytes) -> None:
    dtype = word_dtype(bit_width)
    top = (1 << bit_width) - 1
    if pattern == "random":
        values = random_words(seed, count, bit_width)
    elif pattern == "zeros":
        values = np.zeros(count, dtype=dtype)
    elif pattern == "ones":
        values = np.full(count, top, dtype=dtype)
    else:
        values = np.array([top if i % 2 else 0 for i in range(count)], dtype=dtype)
    packed = pack_bits(values, bit_width)
    assert packed == reference_pack(values, bit_width)
    np.testing.assert_array_equal(unpack_bits(packed, bit_width, count), values)


def test_pack_accepts_narrower_and_wider_unsigned_dtypes() -> None:
    # The annotation promises word dtypes; any unsigned dtype works at run time.
    values = np.array([1, 2, 3], dtype=np.uint8)
    assert pack_bits(values, 3) == bytes.fromhex("d100")  # type: ignore[arg-type]
    assert pack_bits(values.astype(np.uint64), 3) == bytes.fromhex("d100")
    wide = pack_bits(values.astype(np.uint16), 40)
    assert wide == reference_pack(values.astype(np.uint64), 40)


@pytest.mark.parametrize("bit_width", [1, 3, 8, 16, 20, 31, 32, 33, 63])
def test_pack_rejects_values_too_wide(bit_width: int) -> None:
    values = np.zeros(70, dtype=np.uint64)
    values[42] = 1 << bit_width
    with pytest.raises(ConfigError, match=r"values\[42\]"):
        pack_bits(values, bit_width)


@pytest.mark.parametrize(
    "values",
    [
        np.array([1, 2], dtype=np.int64),  # signed
        np.array([1.0, 2.0]),  # float
        np.zeros((2, 2), dtype=np.uint32),  # not 1-D
        [1, 2, 3],  # not an array
    ],
)
def test_pack_rejects_bad_arrays(values: object) -> None:
    with pytest.raises(ConfigError):
        pack_bits(values, 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("bit_width", [3, 8, 20, 64])
def test_unpack_rejects_wrong_length(bit_width: int) -> None:
    packed = pack_bits(random_words(b"len", 10, bit_width), bit_width)
    for data in (packed[:-1], packed + b"\x00", b""):
        with pytest.raises(DecodeError, match="bytes"):
            unpack_bits(data, bit_width, 10)


def test_unpack_rejects_nonzero_padding_bits() -> None:
    # b=3, three elements: 9 bits used, bits 9..15 of the last byte are padding.
    assert unpack_bits(bytes.fromhex("d101"), 3, 3).tolist() == [1, 2, 7]
    for last in (0x02, 0x80, 0xFE):
        with pytest.raises(DecodeError, match="padding"):
            unpack_bits(bytes([0xD1, last]), 3, 3)
    # A single padding bit (b=7, 1 element): bit 7 must be clear.
    with pytest.raises(DecodeError, match="padding"):
        unpack_bits(b"\x80", 7, 1)


def test_unpack_decode_error_is_a_malformed_message() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        unpack_bits(b"\x00", 3, 5)
    assert info.value.reason.value == "malformed_message"


def test_unpack_rejects_negative_count() -> None:
    with pytest.raises(DecodeError, match="count"):
        unpack_bits(b"", 3, -1)


def test_unpack_zero_elements() -> None:
    for bit_width in (1, 8, 20, 64):
        out = unpack_bits(b"", bit_width, 0)
        assert out.shape == (0,)
        assert out.dtype == word_dtype(bit_width)


def test_unpack_output_is_writable_and_independent_of_input() -> None:
    data = bytearray(pack_bits(np.array([5, 6], dtype=np.uint32), 8))
    out = unpack_bits(bytes(data), 8, 2)
    out[0] = 9  # must not raise: frombuffer views are read-only
    assert out.tolist() == [9, 6]


# --------------------------------------------------------------------------
# Arithmetic modulo 2**b
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bit_width", range(1, 65))
def test_modular_round_trip_every_width(bit_width: int) -> None:
    half = 1 << (bit_width - 1)
    signed = [-half, -half + 1, -1, 0, 1, half - 1]
    if bit_width == 1:
        signed = [-1, 0]
    words = to_modular(np.array(signed, dtype=np.int64), bit_width)
    assert words.dtype == word_dtype(bit_width)
    assert words.tolist() == [s % (1 << bit_width) for s in signed]
    lifted = from_modular(words, bit_width)
    assert lifted.dtype == np.int64
    assert lifted.tolist() == signed


def test_to_modular_wraps_out_of_range_values() -> None:
    assert to_modular(np.array([4, -5, 8, 100], dtype=np.int64), 3).tolist() == [4, 3, 0, 4]
    assert from_modular(to_modular(np.array([4, -5], dtype=np.int64), 3), 3).tolist() == [-4, 3]
    big = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max], dtype=np.int64)
    assert to_modular(big, 64).tolist() == [1 << 63, (1 << 63) - 1]
    assert to_modular(big, 63).tolist() == [0, (1 << 63) - 1]
    assert to_modular(np.array([2**40 + 7], dtype=np.int64), 32).tolist() == [7]


def test_to_modular_accepts_any_integer_dtype() -> None:
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64):
        out = to_modular(np.array([0, 1, 100], dtype=dtype), 5)
        assert out.tolist() == [0, 1, 4]
    assert to_modular(np.array([-1], dtype=np.int8), 40).tolist() == [(1 << 40) - 1]


def test_from_modular_rejects_unreduced_words() -> None:
    with pytest.raises(ConfigError, match=r"values\[1\]"):
        from_modular(np.array([0, 8], dtype=np.uint32), 3)
    with pytest.raises(ConfigError):
        from_modular(np.array([1], dtype=np.int64), 3)


def test_to_modular_rejects_non_integers() -> None:
    with pytest.raises(ConfigError):
        to_modular(np.array([1.0]), 8)
    with pytest.raises(ConfigError):
        to_modular(np.zeros((1, 1), dtype=np.int64), 8)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), bit_width=st.integers(2, 64), parties=st.integers(1, 8))
def test_modular_sum_lifts_to_signed_sum(data: st.DataObject, bit_width: int, parties: int) -> None:
    # Any inputs whose every partial magnitude stays below 2**(b-1) / parties
    # have a signed sum in range, which the modular sum must reproduce.
    bound = ((1 << (bit_width - 1)) - 1) // parties
    length = data.draw(st.integers(0, 20))
    vectors = [
        data.draw(st.lists(st.integers(-bound, bound), min_size=length, max_size=length))
        for _ in range(parties)
    ]
    dtype = word_dtype(bit_width)
    mask = dtype((1 << bit_width) - 1)
    acc = np.zeros(length, dtype=dtype)
    for vector in vectors:
        acc += to_modular(np.array(vector, dtype=np.int64), bit_width)
        acc &= mask
    expected = [sum(column) for column in zip(*vectors, strict=True)] if length else []
    assert from_modular(acc, bit_width).tolist() == expected


def test_modular_sum_wraps_past_the_bound() -> None:
    # b=4: the signed range is [-8, 8); 5 + 3 = 8 wraps to -8.
    acc = to_modular(np.array([5], dtype=np.int64), 4) + to_modular(np.array([3]), 4)
    acc &= np.uint32(0xF)
    assert from_modular(acc, 4).tolist() == [-8]


# --------------------------------------------------------------------------
# FixedPointEncoding: parameters and bit widths
# --------------------------------------------------------------------------


def test_max_abs_element() -> None:
    assert FixedPointEncoding(clip=1.0, scale=10.0, max_weight=5).max_abs_element() == 50
    # clip * scale not an integer: stochastic rounding can round up to the ceiling.
    assert FixedPointEncoding(clip=0.15, scale=10.0, max_weight=3).max_abs_element() == 6
    # Tiny clip * scale still allows |q| = 1, and the weight slot is bounded too.
    assert FixedPointEncoding(clip=1e-9, scale=1.0, max_weight=7).max_abs_element() == 7


@pytest.mark.parametrize("bit_width", [2, 3, 17, 32, 33, 63, 64])
def test_required_bit_width_boundary(bit_width: int) -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)  # max_abs_element = 1
    fits = (1 << (bit_width - 1)) - 1  # n * max_abs = 2**(b-1) - 1
    assert enc.required_bit_width(fits) == bit_width
    if bit_width < 64:
        assert enc.required_bit_width(fits + 1) == bit_width + 1
    else:
        with pytest.raises(ConfigError, match="64"):
            enc.required_bit_width(fits + 1)


def test_required_bit_width_with_composite_bound() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=3)
    assert enc.required_bit_width(5) == 5  # 15 = 2**4 - 1
    assert enc.required_bit_width(6) == 6  # 18 >= 16
    assert enc.required_bit_width(1) == 3  # 3 < 4


def test_required_bit_width_infeasible_names_the_limit() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=2.0**20, max_weight=2**20)  # 2**40 per client
    assert enc.required_bit_width(2**22 - 1) == 63
    assert enc.required_bit_width(2**23 - 1) == 64
    with pytest.raises(ConfigError, match=r"64 bits.*at most 8388607 clients"):
        enc.required_bit_width(2**23)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_required_bit_width_rejects_bad_client_count(bad: object) -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)
    with pytest.raises(ConfigError, match="num_clients"):
        enc.required_bit_width(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("clip", "scale", "max_weight", "match"),
    [
        (0.0, 1.0, 1, "clip"),
        (-1.0, 1.0, 1, "clip"),
        (math.inf, 1.0, 1, "clip"),
        (math.nan, 1.0, 1, "clip"),
        (1.0, 0.0, 1, "scale"),
        (1.0, math.inf, 1, "scale"),
        (1.0, "2", 1, "scale"),
        (1.0, 1.0, 0, "max_weight"),
        (1.0, 1.0, 2.0, "max_weight"),
        (1.0, 1.0, True, "max_weight"),
        (2.0**26, 2.0**26 + 1, 1, "2\\*\\*52"),
        (1.0, 2.0**40, 2**23, "2\\*\\*63"),
        (1.0, 2.0**52, 2**11, "2\\*\\*63"),
    ],
)
def test_encoding_rejects_bad_parameters(
    clip: float, scale: float, max_weight: int, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        FixedPointEncoding(clip=clip, scale=scale, max_weight=max_weight)


def test_encoding_accepts_largest_parameters() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=2.0**52, max_weight=2**11 - 1)
    assert enc.max_abs_element() == 2**63 - 2**52
    assert enc.required_bit_width(1) == 64
    with pytest.raises(ConfigError, match="at most 1 clients"):
        enc.required_bit_width(2)


# --------------------------------------------------------------------------
# FixedPointEncoding: encode
# --------------------------------------------------------------------------


def test_encode_known_answer() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=10.0, max_weight=5)
    x = np.array([0.123, -0.456, 0.789, -1.5, 2.0, 0.05])
    out = enc.encode(x, 2, DeterministicRandom(b"encoding-kat"))
    assert out.dtype == np.int64
    # Pinned vector of the normative procedure; also re-derived independently.
    assert out.tolist() == [2, -10, 16, -20, 20, 2, 2]
    assert out.tolist() == reference_encode(enc, x, 2, b"encoding-kat")


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=50),
    weight=st.integers(0, 9),
    seed=st.binary(min_size=1, max_size=8),
    scale=st.sampled_from([1.0, 3.0, 1000.0, 0.01]),
)
def test_encode_matches_reference_procedure(
    values: list[float], weight: int, seed: bytes, scale: float
) -> None:
    enc = FixedPointEncoding(clip=5.0, scale=scale, max_weight=9)
    x = np.array(values, dtype=np.float64)
    out = enc.encode(x, weight, DeterministicRandom(seed))
    assert out.tolist() == reference_encode(enc, x, weight, seed)
    assert np.abs(out).max(initial=0) <= enc.max_abs_element()


def test_encode_long_vector_matches_whole_vector_reference() -> None:
    # Longer than the encoder's internal chunk (2**16), with a ragged tail, so
    # that chunk boundaries would show if they shifted the keystream.
    d = 3 * 2**16 + 5
    enc = FixedPointEncoding(clip=3.0, scale=1000.0, max_weight=9)
    data = DeterministicRandom(b"long-x").random_bytes(8 * d)
    x = (np.frombuffer(data, dtype="<u8") / 2.0**63 - 1.0) * 4.0
    seed = b"long-rounding"
    out = enc.encode(x, 9, DeterministicRandom(seed))
    # The normative procedure, written over the whole vector at once.
    noise = np.empty(d, dtype=np.uint32)
    prg_fill(DeterministicRandom(seed).random_bytes(32)[:16], noise)
    v = np.clip(x, -3.0, 3.0) * 1000.0
    fl = np.floor(v)
    q = fl + (noise * 2.0**-32 < v - fl)
    np.testing.assert_array_equal(out[:-1], q.astype(np.int64) * 9)
    assert out[-1] == 9


def test_encode_draws_exactly_one_seed() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=10.0, max_weight=5)
    for x, weight in ((np.zeros(10), 1), (np.zeros(0), 1), (np.ones(3), 0)):
        rng = CountingRandom(b"count")
        enc.encode(x, weight, rng)
        assert rng.requests == [32]


def test_encode_is_reproducible_and_seed_dependent() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)
    x = np.full(256, 0.5)
    a = enc.encode(x, 1, DeterministicRandom(b"a"))
    assert np.array_equal(a, enc.encode(x, 1, DeterministicRandom(b"a")))
    assert not np.array_equal(a, enc.encode(x, 1, DeterministicRandom(b"b")))


def test_encode_clips_and_keeps_exact_values_exact() -> None:
    enc = FixedPointEncoding(clip=2.0, scale=4.0, max_weight=3)
    x = np.array([1e300, -1e300, 2.0, -2.0, 0.25, -0.75, 0.0, -0.0])
    out = enc.encode(x, 3, DeterministicRandom(b"clip"))
    assert out.tolist() == [24, -24, 24, -24, 3, -9, 0, 0, 3]


def test_encode_weight_zero_contributes_nothing() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=100.0, max_weight=4)
    out = enc.encode(np.array([0.5, -0.3, 0.77]), 0, DeterministicRandom(b"zero"))
    assert out.tolist() == [0, 0, 0, 0]


def test_encode_accepts_float32_and_numpy_int_weight() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=4.0, max_weight=4)
    x = np.array([0.5, -0.25], dtype=np.float32)
    out = enc.encode(x, np.int64(2), DeterministicRandom(b"f32"))  # type: ignore[arg-type]
    assert out.tolist() == [4, -2, 2]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_encode_clips_in_float64(dtype: type[np.floating]) -> None:
    # 0.1 is not a float32/float16 value: the clip bound must not be rounded to
    # the input's precision. 0.1 * 2**30 = 107374182.4 exactly in float64 terms.
    enc = FixedPointEncoding(clip=0.1, scale=2.0**30, max_weight=1)
    x = np.array([0.5, -0.5, 0.05], dtype=dtype)
    out = enc.encode(x, 1, DeterministicRandom(b"f64"))
    assert out[0] in (107374182, 107374183)
    assert out[1] in (-107374183, -107374182)
    assert out.tolist() == reference_encode(enc, x.astype(np.float64), 1, b"f64")


@pytest.mark.parametrize(
    ("value", "scale"),
    [(0.3, 1.0), (-0.3, 1.0), (0.5, 1.0), (0.001, 1.0), (-0.999, 1.0), (0.123, 100.0)],
)
def test_stochastic_rounding_is_unbiased(value: float, scale: float) -> None:
    enc = FixedPointEncoding(clip=1.0, scale=scale, max_weight=1)
    draws = 200_000
    out = enc.encode(np.full(draws, value), 1, DeterministicRandom(b"unbiased"))[:-1]
    target = value * scale
    # Every draw is one of the two neighbouring integers...
    assert set(np.unique(out).tolist()) <= {math.floor(target), math.floor(target) + 1}
    # ... and the mean is the value. Standard error <= 0.5 / sqrt(draws) ~ 0.0011;
    # the tolerance is ~9 standard errors and the seed is fixed, so no flakes.
    assert abs(out.mean() - target) < 0.01


def test_stochastic_rounding_unbiased_across_clients() -> None:
    # Fresh seeds per client (as in deployment): each coordinate's mean over
    # clients is unbiased as well.
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)
    rng = DeterministicRandom(b"clients")
    x = np.array([0.1, 0.5, -0.7])
    total = sum(enc.encode(x, 1, rng) for _ in range(4000))
    mean, weight = enc.decode(np.asarray(total, dtype=np.int64))
    assert weight == 4000
    np.testing.assert_allclose(mean, x, atol=0.04)  # ~5 standard errors


@pytest.mark.parametrize(("bad", "index"), [(math.nan, 0), (math.inf, 3), (-math.inf, 7)])
def test_encode_rejects_non_finite_naming_the_index(bad: float, index: int) -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)
    x = np.zeros(10)
    x[index] = bad
    x[9] = math.nan  # only the first bad index is named
    with pytest.raises(ConfigError, match=rf"x\[{index}\]"):
        enc.encode(x, 1, DeterministicRandom(b"nan"))


@pytest.mark.parametrize("weight", [-1, 6, 2.0, True, None])
def test_encode_rejects_bad_weight(weight: object) -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=5)
    with pytest.raises(ConfigError, match="max_weight=5"):
        enc.encode(np.zeros(3), weight, DeterministicRandom(b"w"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "x",
    [np.zeros((2, 2)), np.zeros(3, dtype=np.int64), np.array(1.0), [0.0, 1.0]],
)
def test_encode_rejects_bad_arrays(x: object) -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)
    with pytest.raises(ConfigError, match="x must"):
        enc.encode(x, 1, DeterministicRandom(b"x"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# FixedPointEncoding: decode and the whole pipeline
# --------------------------------------------------------------------------


def _aggregate(contributions: list[npt.NDArray[np.int64]], bit_width: int) -> npt.NDArray[np.int64]:
    """Sum encodings the way the protocol does: mod 2**b, through the wire format."""
    dtype = word_dtype(bit_width)
    mask = dtype((1 << bit_width) - 1)
    acc = np.zeros(len(contributions[0]), dtype=dtype)
    for vector in contributions:
        wire = pack_bits(to_modular(vector, bit_width), bit_width)
        acc += unpack_bits(wire, bit_width, len(vector))
        acc &= mask
    return from_modular(acc, bit_width)


def test_decode_known_sum_exactly() -> None:
    enc = FixedPointEncoding(clip=2.0, scale=4.0, max_weight=3)
    rng = DeterministicRandom(b"exact")
    # Multiples of 1/scale round deterministically.
    a = enc.encode(np.array([0.5, -1.0, 2.0]), 3, rng)
    b = enc.encode(np.array([1.0, 0.25, -2.0]), 1, rng)
    assert a.tolist() == [6, -12, 24, 3]
    assert b.tolist() == [4, 1, -8, 1]
    bit_width = enc.required_bit_width(2)
    total = _aggregate([a, b], bit_width)
    assert total.tolist() == [10, -11, 16, 4]
    mean, weight = enc.decode(total)
    assert weight == 4
    assert mean.dtype == np.float64
    assert mean.tolist() == [0.625, -0.6875, 1.0]


def test_weighted_mean_of_random_clients() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=2.0**16, max_weight=100)
    seeds = DeterministicRandom(b"clients-data")
    clients = 20
    d = 1000
    xs = [
        (np.frombuffer(seeds.random_bytes(8 * d), dtype="<u8") / 2.0**63 - 1.0) * 1.2
        for _ in range(clients)
    ]
    weights = [int(w) % 101 for w in seeds.random_bytes(clients)]
    weights[0] = 100  # ensure a positive total
    rng = DeterministicRandom(b"clients-rounding")
    bit_width = enc.required_bit_width(clients)
    contributions = [enc.encode(x, w, rng) for x, w in zip(xs, weights, strict=True)]
    mean, weight = enc.decode(_aggregate(contributions, bit_width))
    assert weight == sum(weights)
    expected = np.average(np.clip(np.array(xs), -1.0, 1.0), axis=0, weights=weights)
    # Each coordinate is off by less than one quantisation step.
    assert np.max(np.abs(mean - expected)) < 1.0 / enc.scale


def test_required_bit_width_suffices_at_the_extremes() -> None:
    enc = FixedPointEncoding(clip=0.3, scale=10.0, max_weight=7)
    clients = 5
    bit_width = enc.required_bit_width(clients)
    x = np.array([0.3, -0.3, 1.0, -1.0, 0.29])
    contributions = [enc.encode(x, 7, DeterministicRandom(b"%d" % i)) for i in range(clients)]
    mean, weight = enc.decode(_aggregate(contributions, bit_width))
    assert weight == 35
    np.testing.assert_allclose(mean[:4], [0.3, -0.3, 0.3, -0.3])
    # One bit fewer and the sum wraps: 5 * 7 * 3 = 105 does not fit in 7 signed
    # bits. decode cannot notice (the wrapped value is in range), which is why
    # the bit width must come from required_bit_width.
    assert _aggregate(contributions, bit_width)[0] == 105
    assert _aggregate(contributions, bit_width - 1)[0] == 105 - 128


def test_decode_rejects_zero_and_negative_weight() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)
    with pytest.raises(ConfigError, match="total weight is 0"):
        enc.decode(np.array([0, 0, 0], dtype=np.int64))
    with pytest.raises(ConfigError, match="negative"):
        enc.decode(np.array([0, -2], dtype=np.int64))


def test_decode_rejects_inconsistent_total() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=4.0, max_weight=2)
    assert enc.decode(np.array([8, -8, 2], dtype=np.int64))[0].tolist() == [1.0, -1.0]
    with pytest.raises(ConfigError, match="= 8"):
        enc.decode(np.array([9, 0, 2], dtype=np.int64))
    with pytest.raises(ConfigError, match="= 8"):
        enc.decode(np.array([0, -9, 2], dtype=np.int64))


@pytest.mark.parametrize(
    "total",
    [np.zeros(0, dtype=np.int64), np.zeros((2, 2), dtype=np.int64), np.array([1.0, 1.0])],
)
def test_decode_rejects_bad_arrays(total: object) -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=1)
    with pytest.raises(ConfigError):
        enc.decode(total)  # type: ignore[arg-type]


def test_decode_empty_vector() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=1.0, max_weight=3)
    mean, weight = enc.decode(enc.encode(np.zeros(0), 3, DeterministicRandom(b"e")))
    assert mean.shape == (0,)
    assert weight == 3


def test_check_bit_width_refuses_widths_that_could_wrap() -> None:
    enc = FixedPointEncoding(clip=1.0, scale=2.0**16, max_weight=1000)
    need = enc.required_bit_width(10)
    enc.check_bit_width(10, need)
    enc.check_bit_width(10, 64)
    with pytest.raises(ConfigError, match=f"needs {need} bits"):
        enc.check_bit_width(10, need - 1)


def test_context_binds_every_encoding_parameter() -> None:
    base = FixedPointEncoding(clip=1.0, scale=2.0**16, max_weight=1000)
    others = [
        FixedPointEncoding(clip=2.0, scale=2.0**16, max_weight=1000),
        FixedPointEncoding(clip=1.0, scale=2.0**15, max_weight=1000),
        FixedPointEncoding(clip=1.0, scale=2.0**16, max_weight=999),
    ]
    assert base.context() == FixedPointEncoding(1.0, 2.0**16, 1000).context()
    assert len({base.context(), *(o.context() for o in others)}) == 4
    assert base.context().startswith(b"fixed-point\x00")


def test_round_encoding_carries_update_weight_and_metrics_through_the_sum() -> None:
    from protocol.encoding import EvalSums, RoundEncoding

    enc = RoundEncoding(
        FixedPointEncoding(clip=1.0, scale=2.0**10, max_weight=50), max_eval_examples=1000
    )
    rng = DeterministicRandom(b"round")
    rows = [
        (np.full(5, 0.5), 10, EvalSums(7, 9, 2.5)),
        (np.full(5, -0.25), 30, EvalSums(1, 4, 8.0)),
    ]
    vectors = [enc.encode(x, w, m, rng) for x, w, m in rows]
    assert all(v.shape == (enc.vector_length(5),) for v in vectors)
    mean, weight, metrics = enc.decode(sum(vectors))
    assert weight == 40
    assert np.allclose(mean, (10 * 0.5 + 30 * -0.25) / 40)
    assert metrics == EvalSums(8, 13, 10.5)
    assert metrics.accuracy == 8 / 13
    b = enc.required_bit_width(2)
    assert b >= FixedPointEncoding(1.0, 2.0**10, 50).required_bit_width(2)
    assert (2 * 1000 * 8 * 16).bit_length() + 1 <= b


def test_round_encoding_refuses_impossible_metrics() -> None:
    from protocol.encoding import EvalSums, RoundEncoding

    enc = RoundEncoding(
        FixedPointEncoding(clip=1.0, scale=2.0**10, max_weight=50), max_eval_examples=10
    )
    rng = DeterministicRandom(b"m")
    for bad in (EvalSums(5, 4, 0.0), EvalSums(1, 11, 0.0), EvalSums(1, 2, float("nan"))):
        with pytest.raises(ConfigError):
            enc.encode(np.zeros(3), 1, bad, rng)


# -- add_packed: the server's block-wise unpack-and-add -------------------------


@pytest.mark.parametrize("bit_width", [1, 7, 8, 13, 16, 22, 29, 32, 33, 47, 64])
@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 200, 1000])
def test_add_packed_equals_unpack_then_add(
    bit_width: int, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import protocol.encoding as enc

    monkeypatch.setattr(enc, "ADD_BLOCK_ELEMENTS", 128)  # several blocks, a partial last one
    rng = np.random.default_rng(bit_width * 1000 + count)  # test data, not secrets
    dtype = word_dtype(bit_width)
    top = (1 << bit_width) - 1
    start = rng.integers(0, top, count, dtype=np.uint64, endpoint=True).astype(dtype)
    values = rng.integers(0, top, count, dtype=np.uint64, endpoint=True).astype(dtype)
    acc = start.copy()
    enc.add_packed(acc, pack_bits(values, bit_width), bit_width)
    expected = start + unpack_bits(pack_bits(values, bit_width), bit_width, count)
    assert acc.dtype == expected.dtype and np.array_equal(acc, expected)


def test_add_packed_refuses_before_touching_the_sum() -> None:
    from protocol.encoding import add_packed

    acc = np.arange(10, dtype=np.uint32)
    data = bytearray(pack_bits(np.ones(10, np.uint32), 13))
    data[-1] |= 0x80  # a padding bit: 10 x 13 = 130 bits, 6 of the last byte are padding
    with pytest.raises(DecodeError, match="padding bits"):
        add_packed(acc, bytes(data), 13)
    with pytest.raises(DecodeError, match="must be 17 bytes"):
        add_packed(acc, bytes(data[:-1]), 13)
    assert np.array_equal(acc, np.arange(10, dtype=np.uint32))
    with pytest.raises(ConfigError, match="acc must be a 1-D uint32"):
        add_packed(acc.astype(np.uint64), bytes(data), 13)
