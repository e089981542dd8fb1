"""The DP round's client pipeline and server decoding (specs/dp-v1.md §4, §6, §7)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from protocol.crypto import DeterministicRandom, prg_fill
from protocol.dp import DPEncoding, DPParams, Mechanism, conditional_rounding_bound
from protocol.dp.rotation import fwht, rotate, rotation_signs, unrotate
from protocol.dp.rounding import RoundingFailed, conditional_round
from protocol.errors import ConfigError
from protocol.simulate import make_config, simulate

SID = hashlib.sha256(b"dp-test-session").digest()


def params(**kw: object) -> DPParams:
    base: dict[str, object] = dict(
        mechanism=Mechanism.SKELLAM,
        dim=100,
        l2_clip=1.0,
        scale=200.0,
        beta=math.exp(-0.5),
        local_variance=300,
        min_honest=4,
        bits=20,
        epsilon_budget=8.0,
        delta=1e-5,
    )
    base.update(kw)
    return DPParams(**base)  # type: ignore[arg-type]


def hadamard(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


# -- §4 rotation -----------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 64, 256])
def test_fwht_is_the_sylvester_hadamard_matrix(n: int) -> None:
    v = np.random.default_rng(n).normal(size=n)  # test data only
    assert np.allclose(fwht(v), hadamard(n) @ v, rtol=0, atol=1e-12)


def test_signs_follow_the_spec_bit_order() -> None:
    # Independent reading of §4 step 1: bit i%64 of little-endian word i//64;
    # d = 130 needs s (130 signs) and t (128 signs).
    from protocol._keys import dp_rotation_key

    words = np.empty(5, dtype=np.uint64)
    prg_fill(dp_rotation_key(SID), words)
    want = [1.0 if (int(words[i // 64]) >> (i % 64)) & 1 == 0 else -1.0 for i in range(258)]
    assert rotation_signs(SID, 130).tolist() == want
    assert rotation_signs(SID, 128).tolist() == want[:128]
    assert rotation_signs(hashlib.sha256(b"other").digest(), 130).tolist() != want


def spec_rotation(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    # §4 with explicit matrices: the orthogonal map the code must implement.
    d = len(x)
    n = 1 << (d.bit_length() - 1)
    first = np.eye(d)
    first[:n, :n] = hadamard(n) / math.sqrt(n)
    m = first @ np.diag(signs[:d])
    if n < d:
        second = np.eye(d)
        second[d - n :, d - n :] = hadamard(n) @ np.diag(signs[d:]) / math.sqrt(n)
        m = second @ m
    return m


@pytest.mark.parametrize("d", [1, 2, 5, 64, 100, 610])
def test_rotation_is_the_orthogonal_map_of_section_4(d: int) -> None:
    signs = rotation_signs(SID, d)
    m = spec_rotation(np.zeros(d), signs)
    assert np.allclose(m @ m.T, np.eye(d), rtol=0, atol=1e-12)  # orthogonal
    x = np.random.default_rng(d).normal(size=d)  # test data only
    y = rotate(x, signs)
    assert y.shape == (d,)  # nothing padded
    assert np.allclose(y, m @ x, rtol=0, atol=1e-12)
    assert math.isclose(float(np.linalg.norm(y)), float(np.linalg.norm(x)), rel_tol=1e-12)
    assert np.allclose(unrotate(y, signs), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [64, 100, 610])
def test_rotation_spreads_a_spike_over_at_least_half_the_coordinates(d: int) -> None:
    # What the modular-clipping analysis (§10) uses: over the random signs,
    # every rotated coordinate has second moment at most |x|^2 / n, n > d/2.
    n = 1 << (d.bit_length() - 1)
    trials = 300
    for index in (0, d // 2, d - 1):
        spike = np.zeros(d)
        spike[index] = 1.0
        moment = np.zeros(d)
        for t in range(trials):
            y = rotate(spike, rotation_signs(hashlib.sha256(b"%d" % t).digest(), d))
            assert int(np.count_nonzero(np.abs(y) > 1e-15)) >= n
            moment += y * y
        # Each y_i^2 lies in [0, 1]; 300 trials estimate E[y_i^2] <= 1/n to within
        # a few 1/n at most (1/n-scaled Rademacher sums): 2/n fails a wrong rotation.
        assert float(np.max(moment / trials)) <= 2.0 / n
        assert math.isclose(float(moment.sum() / trials), 1.0, rel_tol=1e-9)


def test_rotation_refuses_bad_shapes() -> None:
    with pytest.raises(ConfigError):
        fwht(np.zeros(6))
    with pytest.raises(ConfigError):
        rotate(np.zeros(9), rotation_signs(SID, 8))
    with pytest.raises(ConfigError):
        unrotate(np.zeros(8), rotation_signs(SID, 9))


# -- §6 conditional rounding -------------------------------------------------


def test_conditional_rounding_meets_the_bound_and_is_unbiased() -> None:
    d, clip = 256, 30.0
    bound = conditional_rounding_bound(clip, d, math.exp(-0.5))
    y = np.random.default_rng(5).normal(size=d)  # test data only
    y *= clip / np.linalg.norm(y)
    total = np.zeros(d)
    trials = 400
    for i in range(trials):
        z, attempts = conditional_round(y, i.to_bytes(16, "big"), bound)
        assert float(np.dot(z, z)) <= bound**2
        assert np.all(np.abs(z - y) < 1)  # every coordinate rounds to a neighbour
        assert attempts >= 1
        total += z
    # Each coordinate's rounding error has variance <= 1/4 per trial; the mean
    # of 400 trials has std <= 0.025, and conditioning adds a bias bounded in
    # KLS21 (small here): 0.15 is 6 sigma.
    assert np.max(np.abs(total / trials - y)) < 0.15


def test_conditional_rounding_is_a_function_of_the_key() -> None:
    y = np.linspace(-3.3, 3.3, 64)
    bound = conditional_rounding_bound(float(np.linalg.norm(y)), 64, 0.5)
    a, _ = conditional_round(y, b"k" * 16, bound)
    b, _ = conditional_round(y, b"k" * 16, bound)
    c, _ = conditional_round(y, b"j" * 16, bound)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    # Attempt 0 follows §6 literally.
    r = np.empty(64, dtype=np.uint32)
    prg_fill(b"k" * 16, r)
    want = [
        math.floor(v) + (1 if int(w) < (v - math.floor(v)) * 2**32 else 0)
        for v, w in zip(y, r, strict=True)
    ]
    first, attempts = conditional_round(y, b"k" * 16, 1e9)
    assert attempts == 1 and first.tolist() == want


def test_conditional_rounding_gives_up_when_the_bound_cannot_hold() -> None:
    y = np.full(16, 10.5)
    with pytest.raises(RoundingFailed):
        conditional_round(y, b"k" * 16, 1.0)
    with pytest.raises(ConfigError):
        conditional_round(y, b"short", 100.0)
    with pytest.raises(ConfigError):
        conditional_round(np.array([np.nan]), b"k" * 16, 100.0)


# -- §3 parameters -------------------------------------------------------------


def test_params_validate_and_bind_every_field() -> None:
    p = params()
    assert p.rotation_block == 64 and p.vector_length == 101
    assert p.l2_sensitivity == conditional_rounding_bound(200.0, 100, math.exp(-0.5))
    contexts = {p.context()}
    for change in (
        {"mechanism": Mechanism.DDGAUSS},
        {"dim": 101},
        {"l2_clip": 1.5},
        {"scale": 201.0},
        {"beta": 0.5},
        {"local_variance": 301},
        {"min_honest": 5},
        {"bits": 21},
        {"epsilon_budget": 4.0},
        {"delta": 1e-6},
    ):
        contexts.add(params(**change).context())
    assert len(contexts) == 11  # every field changes the bytes bound into the session
    for bad in (
        {"mechanism": "laplace"},
        {"dim": 0},
        {"l2_clip": -1.0},
        {"scale": float("inf")},
        {"beta": 1.0},
        {"local_variance": 0},
        {"min_honest": 0},
        {"bits": 1},
        {"delta": 0.0},
        {"bits": 8},  # one client's rounded update (norm ~ 200) does not fit in 8 bits
        {"dim": True},
    ):
        with pytest.raises(ConfigError):
            params(**bad)


# -- §7 encoding, the secure sum, decoding ---------------------------------------


def updates(n: int, d: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)  # test data only
    return [rng.normal(size=d) * rng.uniform(0.01, 0.5) for _ in range(n)]


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_the_secure_sum_is_exactly_the_sum_of_the_noised_vectors(mechanism: Mechanism) -> None:
    p = params(mechanism=mechanism)
    enc = DPEncoding(p)
    n = 8
    config = make_config(n, enc.vector_length, bit_width=p.bits)
    ups = updates(n, p.dim, 11)
    vectors = [
        enc.encode(u, config.session_id, DeterministicRandom(b"client" + bytes([i])))
        for i, u in enumerate(ups)
    ]
    result = simulate(config, vectors, seed=b"dp-sum")
    assert result.aggregate.tolist() == np.sum(vectors, axis=0).tolist()  # exact, bit for bit
    mean, count = enc.decode(result.aggregate, config.session_id)
    assert count == n
    # The noise in the mean has variance n v / (gamma n)^2 per coordinate and the
    # rounding at most 1/4 per client: 6 sigma of the per-coordinate RMS error.
    clipped = [enc.clip(u) for u in ups]
    truth = np.mean(clipped, axis=0)
    predicted = math.sqrt((n * p.local_variance + n * 0.25) / (p.scale * n) ** 2)
    rms = float(np.sqrt(np.mean((mean - truth) ** 2)))
    assert rms < 1.5 * predicted
    assert rms > 0.5 * predicted  # the noise is really there


def test_clipping_bounds_a_hostile_update() -> None:
    p = params(local_variance=1)
    enc = DPEncoding(p)
    huge = np.full(p.dim, 1e6)
    z = enc.encode(huge, SID, DeterministicRandom(b"x"))
    assert np.linalg.norm(enc.clip(huge)) <= p.l2_clip * (1 + 1e-12)
    # Noise of variance 1 on 100 coordinates adds far less than 60 to the norm.
    assert float(np.linalg.norm(z[:-1])) < p.l2_sensitivity + 60
    assert z[-1] == 1


def test_encode_draws_two_seeds_and_is_reproducible() -> None:
    calls: list[int] = []

    class Counting(DeterministicRandom):
        def random_bytes(self, n: int) -> bytes:
            calls.append(n)
            return super().random_bytes(n)

    enc = DPEncoding(params())
    u = updates(1, 100, 2)[0]
    rng = Counting(b"seed")
    a = enc.encode(u, SID, rng)
    assert calls == [32, 32]
    assert enc.encode(u, SID, DeterministicRandom(b"seed")).tolist() == a.tolist()
    assert enc.encode(u, SID, DeterministicRandom(b"seed2")).tolist() != a.tolist()


def test_encode_and_decode_refuse_bad_input() -> None:
    enc = DPEncoding(params())
    rng = DeterministicRandom(b"s")
    for bad in (np.zeros(99), np.zeros((10, 10)), np.zeros(100, dtype=np.int64)):
        with pytest.raises(ConfigError):
            enc.encode(bad, SID, rng)
    nan = np.zeros(100)
    nan[42] = np.nan
    with pytest.raises(ConfigError, match=r"update\[42\]"):
        enc.encode(nan, SID, rng)
    with pytest.raises(ConfigError):
        enc.encode(np.zeros(100), b"short", rng)
    with pytest.raises(ConfigError):
        enc.decode(np.zeros(100, dtype=np.int64), SID)
    with pytest.raises(ConfigError, match="count"):
        enc.decode(np.zeros(101, dtype=np.int64), SID)


def test_params_json_round_trip_is_strict() -> None:
    p = params()
    assert DPParams.from_json(p.to_json()) == p
    for bad in (
        {**p.to_json(), "extra": 1},
        {k: v for k, v in p.to_json().items() if k != "bits"},
        {**p.to_json(), "bits": "20"},
        {**p.to_json(), "dim": True},
        {**p.to_json(), "mechanism": "laplace"},
        [],
    ):
        with pytest.raises(ConfigError):
            DPParams.from_json(bad)
