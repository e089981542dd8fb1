"""Exactness: the unmasked sum equals the survivors' inputs, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    AbortReason,
    FixedPointEncoding,
    GraphKind,
    Mode,
    Round,
    RoundAborted,
    SystemRandom,
    from_modular,
)
from protocol.simulate import DROP_ROUNDS
from protocol.testing import make_config, simulate


def _inputs(n: int, length: int, bit_width: int, seed: int) -> list[np.ndarray]:
    # Test data, not secrets: numpy's generator is fine here.
    rng = np.random.default_rng(seed)
    high = 1 << min(62, bit_width - 1)
    return [rng.integers(-high, high, size=length, dtype=np.int64) for _ in range(n)]


def _expected(inputs: list[np.ndarray], survivors: tuple[int, ...], bit_width: int) -> np.ndarray:
    total = np.zeros_like(inputs[0], dtype=np.uint64)
    for u in survivors:
        total += inputs[u - 1].astype(np.uint64)  # wraps mod 2^64, then reduce mod 2^b
    if bit_width < 64:
        total &= np.uint64((1 << bit_width) - 1)
    return from_modular(total, bit_width)


@pytest.mark.parametrize(
    ("mode", "drop_round"),
    [(Mode.ACTIVE, r) for r in DROP_ROUNDS]
    # Semi-honest sessions have no round 3.
    + [(Mode.SEMI_HONEST, r) for r in DROP_ROUNDS if r is not Round.R3_CONSISTENCY_CHECK],
)
def test_dropout_in_every_round_complete_graph(mode: Mode, drop_round: Round) -> None:
    n, length, b = 9, 257, 20
    config = make_config(n, length, bit_width=b, mode=mode)
    inputs = _inputs(n, length, b, 1)
    dropouts = {2: drop_round, 7: drop_round}
    sim = simulate(config, inputs, dropouts=dropouts, seed=b"t")
    # Clients that dropped before sending their masked input are not in the sum.
    in_sum = drop_round in (Round.R3_CONSISTENCY_CHECK, Round.R4_UNMASKING)
    assert (2 in sim.survivors) == in_sum
    assert (7 in sim.survivors) == in_sum
    assert np.array_equal(sim.aggregate, _expected(inputs, sim.survivors, b))


def test_drop_in_round_two_is_recovered_from_mask_key_shares() -> None:
    config = make_config(6, 100, bit_width=32)
    inputs = _inputs(6, 100, 32, 2)
    sim = simulate(config, inputs, dropouts={4: Round.R2_MASKED_INPUT_COLLECTION}, seed=b"x")
    assert sim.result.dropped == (4,)
    assert sim.survivors == (1, 2, 3, 5, 6)
    assert np.array_equal(sim.aggregate, _expected(inputs, sim.survivors, 32))


def test_too_many_dropouts_abort_below_threshold() -> None:
    config = make_config(6, 10, bit_width=16, threshold=4)
    inputs = _inputs(6, 10, 16, 3)
    dropouts = dict.fromkeys((1, 2, 3), Round.R2_MASKED_INPUT_COLLECTION)
    with pytest.raises(RoundAborted) as info:
        simulate(config, inputs, dropouts=dropouts)
    assert info.value.reason is AbortReason.BELOW_THRESHOLD


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_exact_for_random_configurations_and_dropout_schedules(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 14), label="n")
    harary = data.draw(st.booleans(), label="harary") and n >= 5
    mode = data.draw(st.sampled_from([Mode.SEMI_HONEST, Mode.ACTIVE]), label="mode")
    if harary:
        k = data.draw(st.integers(2, n - 1), label="k")
        if k % 2 == 1 and n % 2 == 1:
            k -= 1
    else:
        k = n - 1
    t_min = k // 2 + 1 if mode is Mode.ACTIVE else 1
    t = data.draw(st.integers(t_min, k), label="t")
    b = data.draw(st.integers(2, 64), label="bit_width")
    length = data.draw(st.integers(1, 70), label="length")
    config = make_config(
        n,
        length,
        bit_width=b,
        threshold=t,
        mode=mode,
        graph=GraphKind.HARARY if harary else GraphKind.COMPLETE,
        degree=k if harary else 0,
    )
    rounds = [r for r in DROP_ROUNDS if mode is Mode.ACTIVE or r is not Round.R3_CONSISTENCY_CHECK]
    dropouts = data.draw(
        st.dictionaries(st.sampled_from(config.participants), st.sampled_from(rounds), max_size=n),
        label="dropouts",
    )
    inputs = _inputs(n, length, b, data.draw(st.integers(0, 2**16), label="input seed"))
    try:
        sim = simulate(config, inputs, dropouts=dropouts, seed=b"hypothesis")
    except RoundAborted as exc:
        # Only ever for lack of survivors/shares, never for a protocol fault.
        assert exc.reason is AbortReason.BELOW_THRESHOLD
        return
    assert np.array_equal(sim.aggregate, _expected(inputs, sim.survivors, b))
    # Whoever dropped before R2 is never in the sum; whoever sent R2 and stayed is.
    for u in config.participants:
        r = dropouts.get(u)
        if r is not None and DROP_ROUNDS.index(r) <= DROP_ROUNDS.index(
            Round.R2_MASKED_INPUT_COLLECTION
        ):
            assert u not in sim.survivors
    assert len(sim.survivors) >= t


def test_same_seed_same_transcript_different_seed_different_masks() -> None:
    config = make_config(5, 16, bit_width=32)
    inputs = _inputs(5, 16, 32, 4)
    a = simulate(config, inputs, seed=b"s", record=True)
    b = simulate(config, inputs, seed=b"s", record=True)
    c = simulate(config, inputs, seed=b"other", record=True)
    assert [e.data for e in a.transcript] == [e.data for e in b.transcript]
    assert [e.data for e in a.transcript] != [e.data for e in c.transcript]
    assert np.array_equal(a.aggregate, c.aggregate)


def test_weighted_float_mean_through_the_secure_sum() -> None:
    n, length = 8, 300
    enc = FixedPointEncoding(clip=2.0, scale=2.0**12, max_weight=100)
    b = enc.required_bit_width(n)
    config = make_config(n, length + 1, bit_width=b)
    data = np.random.default_rng(5)
    xs = [data.normal(0, 1, length) for _ in range(n)]
    ws = [int(w) for w in data.integers(1, 100, n)]
    encoded = [enc.encode(x, w, SystemRandom()) for x, w in zip(xs, ws, strict=True)]
    sim = simulate(config, encoded, dropouts={3: Round.R2_MASKED_INPUT_COLLECTION})
    assert np.array_equal(sim.aggregate, sum(encoded[u - 1] for u in sim.survivors))
    mean, total = enc.decode(sim.aggregate)
    assert total == sum(ws[u - 1] for u in sim.survivors)
    plain = sum(ws[u - 1] * np.clip(xs[u - 1], -2, 2) for u in sim.survivors) / total
    # Stochastic rounding error is at most 1/scale per element.
    assert np.max(np.abs(mean - plain)) <= 1 / enc.scale


def test_wire_size_of_masked_vector_is_b_bits_per_element() -> None:
    config = make_config(4, 10_000, bit_width=21)
    sim = simulate(config, _inputs(4, 10_000, 21, 6), record=True)
    masked = [
        e.data
        for e in sim.transcript
        if e.round is Round.R2_MASKED_INPUT_COLLECTION and e.direction == "to_server"
    ]
    assert masked
    for data in masked:
        assert len(data) <= 21 * 10_000 / 8 * 1.01
