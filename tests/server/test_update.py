"""secagg.update: the segment-wise decoding equals the whole-vector one, checks included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from protocol.encoding import (
    EvalSums,
    FixedPointEncoding,
    RoundEncoding,
    from_modular,
    to_modular,
)
from protocol.errors import ConfigError
from protocol.testing import DeterministicRandom
from secagg.strategies import make_strategy
from secagg.update import next_model

LENGTH = 1000
ENCODING = RoundEncoding(FixedPointEncoding(clip=1.0, scale=1024.0, max_weight=100))


def aggregate(n: int, seed: int) -> tuple[np.ndarray, int]:
    """The modular sum of ``n`` clients' encodings, and its bit width."""
    rng = np.random.default_rng(seed)  # test data, not secrets
    bits = ENCODING.required_bit_width(n)
    total = np.zeros(ENCODING.vector_length(LENGTH), np.int64)
    for i in range(n):
        update = rng.uniform(-0.5, 0.5, LENGTH)
        total += ENCODING.encode(
            update, i + 1, EvalSums(i, 2 * i + 1, 0.5 * i), DeterministicRandom(bytes([i]) * 32)
        )
    return to_modular(total, bits), bits


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "fedavg"},
        {"name": "fedavg", "server_lr": 0.5, "momentum": 0.9},
        {"name": "fedadam", "server_lr": 0.01},
    ],
)
@pytest.mark.parametrize("segment", [1, 7, 256, LENGTH, 10 * LENGTH])
def test_segments_equal_the_whole_vector(spec: dict[str, Any], segment: int) -> None:
    agg, bits = aggregate(5, 1)
    base = np.random.default_rng(2).standard_normal(LENGTH).astype(np.float32)
    base.flags.writeable = False  # a cached model is a read-only view
    strategy = make_strategy(spec)
    state: bytes | None = None
    for _ in range(2):  # the second round starts from the first one's state
        mean, weight, metrics = ENCODING.decode(from_modular(agg, bits))
        expected, expected_state = strategy.apply(base, mean, state)
        update = next_model(ENCODING, agg, bits, base, strategy, state, segment=segment)
        assert update.weights.dtype == np.float32
        assert np.array_equal(update.weights, expected)  # bit for bit
        assert update.total_weight == weight == 1 + 2 + 3 + 4 + 5
        assert update.metrics == metrics and metrics.count == 1 + 3 + 5 + 7 + 9
        assert update.state == expected_state
        state = update.state


def test_out_of_range_sums_are_refused_as_whole_decoding_does() -> None:
    agg, bits = aggregate(3, 4)
    agg = agg.copy()
    agg[LENGTH - 1] = (1 << (bits - 1)) - 1  # far beyond weight x clip x scale
    base = np.zeros(LENGTH, np.float32)
    with pytest.raises(ConfigError, match="exceeds total weight") as whole:
        ENCODING.decode(from_modular(agg, bits))
    with pytest.raises(ConfigError) as segmented:
        next_model(ENCODING, agg, bits, base, make_strategy({"name": "fedavg"}), None, segment=64)
    assert str(segmented.value) == str(whole.value)


def test_zero_weight_and_bad_lengths_are_refused() -> None:
    bits = ENCODING.required_bit_width(2)
    zero = np.zeros(ENCODING.vector_length(LENGTH), np.uint32 if bits <= 32 else np.uint64)
    fedavg = make_strategy({"name": "fedavg"})
    with pytest.raises(ConfigError, match="total weight is 0"):
        next_model(ENCODING, zero, bits, np.zeros(LENGTH, np.float32), fedavg, None)
    with pytest.raises(ConfigError, match="does not hold 999 weights"):
        next_model(ENCODING, zero, bits, np.zeros(LENGTH - 1, np.float32), fedavg, None)


WIDE = RoundEncoding(FixedPointEncoding(clip=1.0, scale=float(1 << 20), max_weight=10**6))


@pytest.mark.parametrize("encoding", [ENCODING, WIDE], ids=["uint32", "uint64"])
@pytest.mark.parametrize("segment", [1, 100, 333, LENGTH])
def test_in_place_writes_the_same_weights_over_the_aggregate(
    encoding: RoundEncoding, segment: int
) -> None:
    rng = np.random.default_rng(5)  # test data, not secrets
    bits = encoding.required_bit_width(3)
    total = np.zeros(encoding.vector_length(LENGTH), np.int64)
    for i in range(3):
        total += encoding.encode(
            rng.uniform(-1, 1, LENGTH),
            30 * (i + 1),
            EvalSums(1, 2, 0.5),
            DeterministicRandom(bytes([i]) * 32),
        )
    agg = to_modular(total, bits)
    assert agg.dtype == (np.uint32 if encoding is ENCODING else np.uint64)
    base = np.random.default_rng(6).standard_normal(LENGTH).astype(np.float32)
    fedavg = make_strategy({"name": "fedavg", "server_lr": 0.7})
    expected = next_model(encoding, agg, bits, base, fedavg, None)
    consumed = agg.copy()
    update = next_model(
        encoding, consumed, bits, base, fedavg, None, segment=segment, in_place=True
    )
    assert np.array_equal(update.weights, expected.weights)
    assert np.shares_memory(update.weights, consumed)  # no new model-sized array
    assert (update.total_weight, update.metrics) == (expected.total_weight, expected.metrics)


def test_in_place_needs_a_writable_aggregate() -> None:
    agg, bits = aggregate(2, 7)
    agg.flags.writeable = False
    with pytest.raises(ConfigError, match="writable"):
        next_model(
            ENCODING,
            agg,
            bits,
            np.zeros(LENGTH, np.float32),
            make_strategy({"name": "fedavg"}),
            None,
            in_place=True,
        )
