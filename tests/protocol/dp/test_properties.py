"""Properties of the DP pipeline over many shapes and parameters (hypothesis)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.crypto import DeterministicRandom
from protocol.dp import DPEncoding, DPParams, Mechanism
from protocol.dp.rotation import rotate, rotation_signs, unrotate
from protocol.encoding import from_modular, to_modular
from protocol.errors import ConfigError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(d=st.integers(1, 3000), seed=st.binary(min_size=1, max_size=8))
def test_rotation_is_an_isometry_and_inverts_for_every_length(d: int, seed: bytes) -> None:
    sid = hashlib.sha256(seed).digest()
    signs = rotation_signs(sid, d)
    x = np.frombuffer(hashlib.sha256(seed + b"x").digest() * (d // 32 + 1), dtype=np.uint8)[:d]
    x = x.astype(np.float64) - 127.5
    y = rotate(x, signs)
    assert y.shape == (d,)
    assert math.isclose(float(np.linalg.norm(y)), float(np.linalg.norm(x)), rel_tol=1e-12)
    assert np.allclose(unrotate(y, signs), x, rtol=0, atol=1e-9)


@st.composite
def dp_params(draw: Any) -> DPParams:
    return DPParams(
        mechanism=draw(st.sampled_from(list(Mechanism))),
        dim=draw(st.integers(1, 200)),
        l2_clip=draw(st.floats(0.01, 10.0)),
        scale=draw(st.floats(1.0, 300.0)),
        beta=draw(st.sampled_from([0.0, math.exp(-0.5), 0.9])),
        local_variance=draw(st.integers(1, 10_000)),
        min_honest=draw(st.integers(1, 50)),
        bits=draw(st.integers(20, 40)),
        epsilon_budget=draw(st.floats(0.1, 20.0)),
        delta=draw(st.sampled_from([1e-5, 1e-7, 1e-3])),
    )


@SETTINGS
@given(p=dp_params(), n=st.integers(1, 6), seed=st.binary(min_size=1, max_size=8))
def test_the_modular_sum_lifts_to_the_exact_sum_of_encodings(
    p: DPParams, n: int, seed: bytes
) -> None:
    enc = DPEncoding(p)
    sid = hashlib.sha256(b"sid" + seed).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "big"))  # test data only
    vectors = [
        enc.encode(rng.normal(size=p.dim) * 3.0, sid, DeterministicRandom(seed + bytes([i])))
        for i in range(n)
    ]
    mask = np.uint64((1 << p.bits) - 1)
    total = np.zeros(p.vector_length, dtype=np.uint64)
    for v in vectors:
        total = (total + to_modular(v, p.bits)) & mask
    lifted = from_modular(total, p.bits)
    assert lifted.tolist() == np.sum(vectors, axis=0).tolist()
    _, count = enc.decode(lifted, sid)
    assert count == n
    # No single encoding wraps the modulus on its own.
    for v in vectors:
        assert np.all(np.abs(v[:-1]) < 2 ** (p.bits - 1))


@SETTINGS
@given(
    value=st.dictionaries(
        st.sampled_from(
            [
                "mechanism",
                "dim",
                "l2_clip",
                "scale",
                "beta",
                "local_variance",
                "min_honest",
                "bits",
                "epsilon_budget",
                "delta",
                "extra",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=8),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_dp_params_from_hostile_json_is_a_config_error_or_valid(value: dict[str, Any]) -> None:
    try:
        p = DPParams.from_json(value)
    except ConfigError:
        return
    assert DPParams.from_json(p.to_json()) == p
