"""Decoding is bounded: linear time, one depth limit, nothing a peer sends can stall it.

The attacker here is any peer (an enrolled client towards the server, the
server towards a client) choosing a body of at most 1 MiB to make one decode as
slow as possible. What it achieves is measured: the CPU time the slowest
decode takes (``time.thread_time``: on an idle machine the same as the
``time.perf_counter`` wall time, but not inflated when other processes share
the cores). Each input is decoded three times and the fastest run counts; the
wall time is also bounded, loosely, so a decoder that sleeps or waits fails.
A super-linear decoder takes seconds on these inputs (the map-key bomb alone
took 30 s on main) and fails either way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import DecodeError, SessionConfig, _cbor, decode_message
from protocol.messages import (
    SHARE_SIZE,
    SIGNATURE_SIZE,
    AdvertisedKeys,
    KeyDirectory,
    UnmaskRequest,
    UnmaskResponse,
)
from protocol.simulate import make_config

MIB = 1 << 20
BOUND_S = 0.050  # CPU seconds per decode of at most 1 MiB
WALL_BOUND_S = 1.0  # wall seconds, for a machine shared by many test runs
SID = bytes(range(32))

Decoder = Callable[[bytes], object]
DECODERS: dict[str, Decoder] = {
    "decode_message": decode_message,
    "SessionConfig.decode": SessionConfig.decode,
    "loads": _cbor.loads,
    "loads_subset": _cbor.loads_subset,
    # Bytes that start like a MaskedInput take the lean codec inside decode_message.
    "decode_message(84 04 ...)": lambda d: decode_message(b"\x84\x04" + d[2:]),
}


def _array(n: int) -> bytes:
    return _cbor.array_head(n)


def _worst_cases() -> dict[str, bytes]:
    budget = _cbor.SCAN_BASE_STEPS + MIB // _cbor.SCAN_BYTES_PER_STEP
    n_pairs = MIB // (SHARE_SIZE + 6)
    cases = {
        # The attack on main: one-entry maps nested as map keys (2^depth to re-encode).
        "maps nested as keys (49 B)": b"\xa1" * 24 + b"\x00" * 25,
        "maps nested as keys (1 MiB)": b"\xa1" * (MIB // 2) + b"\x00" * (MIB // 2 + 1),
        "arrays nested as map keys": b"\xa1\x81" * 20 + b"\x00" * 21,
        "deep array nesting": b"\x81" * MIB,
        "deep indefinite nesting": b"\x9f" * MIB,
        "huge declared array": b"\x9b" + b"\xff" * 8,
        "huge declared byte string": b"\x5b" + b"\xff" * 8,
        "huge declared text in array": b"\x82\x00\x7b" + b"\x7f" * 8,
        "many uints": _array(MIB) + b"\x00" * MIB,
        "many 3-byte uints": _array(MIB // 3) + b"\x19\x01\x00" * (MIB // 3),
        "many empty arrays": _array(MIB) + b"\x80" * MIB,
        "many empty byte strings": _array(MIB) + b"\x40" * MIB,
        "many [0, 0]": _array(MIB // 3) + b"\x82\x00\x00" * (MIB // 3),
        "alternating integer sizes": _array(MIB // 3 * 2) + b"\x00\x18\x18" * (MIB // 3),
        "empty arrays up to the step budget, then ints": _array(MIB - budget)
        + b"\x80\x00" * (budget - 2)
        + b"\x00" * (MIB - 2 * budget),
        "many [0, 32-byte string] pairs": _array(MIB // 36)
        + (b"\x82\x00\x58\x20" + bytes(32)) * (MIB // 36),
        "pairs with alternating shapes": _array(MIB // 70)
        + (b"\x82\x00\x58\x20" + bytes(32) + b"\x82\x00\x58\x21" + bytes(33)) * (MIB // 140),
        "many tags": _array(MIB // 2) + b"\xc2\x40" * (MIB // 2),
        "shared references": b"\x82\xd8\x1c" + _array(1000) + b"\x00" * 1000 + b"\xd8\x1d\x00",
        "many floats": _array(MIB // 9) + b"\xfb" + bytes(8) * (MIB // 9),
        "text strings of invalid UTF-8": _array(MIB // 3) + b"\x62\xff\xfe" * (MIB // 3),
        # Honest messages near 1 MiB must decode within the bound too.
        "honest UnmaskResponse": UnmaskResponse(
            SID, 1, tuple((i, bytes(SHARE_SIZE)) for i in range(1, n_pairs)), ()
        ).encode(),
        "honest UnmaskRequest": UnmaskRequest(
            SID,
            1,
            tuple(range(1, 14_000)),
            (),
            tuple((i, bytes(SIGNATURE_SIZE)) for i in range(1, 14_000)),
        ).encode(),
        "honest KeyDirectory": KeyDirectory(
            SID,
            1,
            [
                AdvertisedKeys(i, bytes(31) + b"\x01", bytes(31) + b"\x02", bytes(SIGNATURE_SIZE))
                for i in range(1, MIB // 140)
            ],
        ).encode(),
        "honest config of 25000 participants": make_config(25_000, 10, mode="active").encode(),
    }
    for name, data in cases.items():
        assert len(data) <= MIB + 16, name
    return cases


WORST = _worst_cases()


def _fastest_of_3(decode: Decoder, data: bytes) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the fastest of three decodes."""
    cpu = wall = float("inf")
    for _ in range(3):
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        with contextlib.suppress(DecodeError):
            decode(data)
        cpu = min(cpu, time.thread_time() - start_cpu)
        wall = min(wall, time.perf_counter() - start_wall)
    return cpu, wall


def _assert_within_bounds(name: str, case: str, decode: Decoder, data: bytes) -> None:
    cpu, wall = _fastest_of_3(decode, data)
    assert cpu < BOUND_S, f"{name} took {cpu * 1e3:.1f} ms of CPU on {case}"
    assert wall < WALL_BOUND_S, f"{name} took {wall * 1e3:.1f} ms (wall) on {case}"


@pytest.mark.parametrize("case", sorted(WORST))
def test_worst_case_bodies_decode_within_the_bound(case: str) -> None:
    for name, decode in DECODERS.items():
        _assert_within_bounds(name, case, decode, WORST[case])


def test_honest_near_mib_messages_still_decode() -> None:
    for case in ("honest UnmaskResponse", "honest UnmaskRequest", "honest KeyDirectory"):
        assert decode_message(WORST[case]).encode() == WORST[case]
    config = SessionConfig.decode(WORST["honest config of 25000 participants"])
    assert config.num_participants == 25_000


def test_the_map_key_bomb_is_refused_at_its_first_byte() -> None:
    with pytest.raises(DecodeError, match="maps are not allowed"):
        decode_message(WORST["maps nested as keys (49 B)"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=4096), st.integers(min_value=0, max_value=255))
def test_fuzz_bytes_repeated_to_a_mib_decode_within_the_bound(unit: bytes, prefix: int) -> None:
    # A random pattern repeated up to 1 MiB behind a random head byte: the
    # shapes that stress a decoder are repetitive, not random.
    data = bytes((prefix,)) + _array(MIB) + (unit or b"\x00") * (MIB // max(len(unit), 1))
    data = data[:MIB]
    for name, decode in DECODERS.items():
        start = time.thread_time()
        with contextlib.suppress(DecodeError):
            decode(data)
        if time.thread_time() - start >= BOUND_S:  # re-measure before failing
            _assert_within_bounds(name, f"{unit.hex()[:40]}...", decode, data)


# -- one depth limit for both codecs ---------------------------------------------------


def _nested(arrays: int, innermost: bytes = b"\x00") -> bytes:
    return b"\x81" * arrays + innermost


@pytest.mark.parametrize("decode", [_cbor.loads, _cbor.loads_subset])
def test_both_codecs_share_one_depth_limit(decode: Decoder) -> None:
    depth = _cbor.MAX_DEPTH
    assert decode(_nested(depth)) is not None
    assert decode(_nested(depth - 1, b"\x80")) is not None  # depth arrays, the last empty
    with pytest.raises(DecodeError, match="nested deeper"):
        decode(_nested(depth + 1))
    with pytest.raises(DecodeError, match="nested deeper"):
        decode(_nested(depth, b"\x80"))


def test_the_depth_limit_is_cbor2s_max_depth() -> None:
    """cbor2 runs with the same limit as a second line; it is no looser than the scan."""
    depth = _cbor.MAX_DEPTH
    assert cbor2.loads(_nested(depth), max_depth=depth) is not None
    with pytest.raises(cbor2.CBORDecodeError):
        cbor2.loads(_nested(depth + 1), max_depth=depth)


def test_honest_messages_stay_far_below_the_depth_limit() -> None:
    deepest = KeyDirectory(SID, 1, [AdvertisedKeys(1, bytes(31) + b"\x01", bytes(31) + b"\x02")])
    assert _cbor.loads(deepest.encode())  # [1, sid, r, [[id, k, k, sig]]]: 3 arrays deep
    assert _cbor.MAX_DEPTH >= 3


@given(st.integers(min_value=0, max_value=200))
def test_lean_codec_refuses_more_items_than_allowed(n: int) -> None:
    data = _array(n) + b"\x00" * n
    assert _cbor.loads_subset(data, max_items=n + 1) == [0] * n
    with pytest.raises(DecodeError, match=f"at most {n}"):
        _cbor.loads_subset(data, max_items=n)
