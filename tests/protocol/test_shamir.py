"""Tests of protocol.shamir: Shamir sharing over GF(2**256 + 297)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import DeterministicRandom, sha256
from protocol.errors import AbortReason, ConfigError, DecodeError, RemoteProtocolError
from protocol.shamir import (
    FIELD_PRIME,
    SECRET_SIZE,
    SHARE_SIZE,
    decode_share,
    encode_share,
    lagrange_at_zero,
    reconstruct_secrets,
    split_secrets,
)

P = FIELD_PRIME
MAX_ID = (1 << 32) - 1


# --------------------------------------------------------------------------
# Helpers: independent reference implementations and scripted randomness.
# --------------------------------------------------------------------------


def is_probable_prime(n: int, bases: Sequence[int]) -> bool:
    """Miller-Rabin with fixed bases (each base that passes quarters the error bound)."""
    if n < 2:
        return False
    for q in bases:
        if n % q == 0:
            return n == q
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


FIRST_PRIMES = [q for q in range(2, 200) if all(q % r for r in range(2, q))]  # 46 primes


def reference_split(
    secrets: Sequence[bytes], holders: Sequence[int], t: int, rng: DeterministicRandom
) -> list[list[int]]:
    """The module docstring read literally: draw, mask, reject, evaluate with pow()."""
    out = []
    for secret in secrets:
        coeffs = [int.from_bytes(secret, "little")]
        while len(coeffs) < t:
            c = int.from_bytes(rng.random_bytes(33), "little") & ((1 << 257) - 1)
            if c < P:
                coeffs.append(c)
        out.append([sum(c * pow(x, k, P) for k, c in enumerate(coeffs)) % P for x in holders])
    return out


def interpolate_at_zero(points: Sequence[tuple[int, int]]) -> int:
    """Textbook Lagrange interpolation at 0, one inversion per term."""
    total = 0
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * xm % P
                den = den * (xm - xj) % P
        total += yj * num * pow(den, -1, P)
    return total % P


def solve_mod_p(matrix: list[list[int]], rhs: list[int]) -> list[int]:
    """Solve a square linear system over GF(p) by Gauss-Jordan elimination."""
    n = len(rhs)
    a = [[*row, b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col] % P)
        a[col], a[pivot] = a[pivot], a[col]
        inv = pow(a[col][col], -1, P)
        a[col] = [v * inv % P for v in a[col]]
        for r in range(n):
            if r != col and a[r][col]:
                f = a[r][col]
                a[r] = [(v - f * w) % P for v, w in zip(a[r], a[col], strict=True)]
    return [a[r][n] for r in range(n)]


class ScriptedRandom:
    """A RandomSource that replays given chunks and records every request."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)
        self.requests: list[int] = []

    def random_bytes(self, n: int) -> bytes:
        self.requests.append(n)
        chunk = self._chunks.pop(0)
        assert len(chunk) == n
        return chunk


class CountingRandom:
    """Wraps a RandomSource and records the size of every request."""

    def __init__(self, inner: DeterministicRandom) -> None:
        self.inner = inner
        self.requests: list[int] = []

    def random_bytes(self, n: int) -> bytes:
        self.requests.append(n)
        return self.inner.random_bytes(n)


def secret_bytes(i: int) -> bytes:
    return sha256(b"secret %d" % i)


def shares_for(
    shares: list[list[int]], holders: Sequence[int], chosen: Sequence[int]
) -> list[list[int]]:
    """The columns of ``shares`` belonging to the holders in ``chosen``, in that order."""
    index = {h: j for j, h in enumerate(holders)}
    return [[row[index[h]] for h in chosen] for row in shares]


# --------------------------------------------------------------------------
# The field.
# --------------------------------------------------------------------------


def test_field_prime_value() -> None:
    assert P == 2**256 + 297
    assert P.bit_length() == 257
    assert SECRET_SIZE == 32 and SHARE_SIZE == 33
    assert (1 << (8 * SECRET_SIZE)) < P < (1 << (8 * SHARE_SIZE))


def test_field_prime_is_prime() -> None:
    # 46 fixed bases: a composite passes with probability below 4**-46.
    assert is_probable_prime(P, FIRST_PRIMES)


def test_miller_rabin_helper_rejects_composites() -> None:
    # Sanity of the test itself: Carmichael numbers, a strong pseudoprime to
    # base 2, products of large primes and the neighbours of p.
    for n in (561, 1105, 2047, 3215031751, (2**61 - 1) * (2**31 - 1), P - 2, P + 2, P * 3):
        assert not is_probable_prime(n, FIRST_PRIMES)
    assert is_probable_prime(2**127 - 1, FIRST_PRIMES)


def test_field_prime_is_smallest_prime_above_2_256() -> None:
    # The module docstring says so; a composite fails base 2 or 3 at once.
    assert not any(is_probable_prime(2**256 + k, [2, 3]) for k in range(1, 297))


# --------------------------------------------------------------------------
# Share encoding.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 297, 2**256 - 1, 2**256, P - 1])
def test_encode_decode_round_trip(value: int) -> None:
    data = encode_share(value)
    assert len(data) == SHARE_SIZE
    assert data == value.to_bytes(33, "little")
    assert decode_share(data) == value


@given(st.integers(min_value=0, max_value=P - 1))
def test_encode_decode_round_trip_any(value: int) -> None:
    assert decode_share(encode_share(value)) == value


@pytest.mark.parametrize("length", [0, 1, 32, 34, 64])
def test_decode_rejects_wrong_length(length: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_share(bytes(length))
    assert info.value.reason is AbortReason.MALFORMED_MESSAGE


@pytest.mark.parametrize("value", [P, P + 1, 2**257, 2**264 - 1])
def test_decode_rejects_non_canonical(value: int) -> None:
    with pytest.raises(DecodeError):
        decode_share(value.to_bytes(33, "little"))


@pytest.mark.parametrize("value", [-1, P, 2**264, True, 1.0, "1"])
def test_encode_rejects_non_field_elements(value: object) -> None:
    with pytest.raises(ConfigError):
        encode_share(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Splitting and reconstructing.
# --------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    (1, 1),
    (2, 1),
    (2, 2),
    (3, 2),
    (5, 1),
    (5, 3),
    (5, 5),
    (10, 4),
    (16, 16),
    (33, 17),
    (40, 1),
    (40, 40),
]


@pytest.mark.parametrize(("n", "t"), ROUND_TRIP_CASES)
def test_round_trip(n: int, t: int) -> None:
    holders = [3 * i + 1 for i in range(n)]
    secrets = [secret_bytes(i) for i in range(3)] + [bytes(32), b"\xff" * 32]
    shares = split_secrets(secrets, holders, t, DeterministicRandom(b"round trip %d %d" % (n, t)))
    assert len(shares) == len(secrets)
    assert all(len(row) == n and all(0 <= v < P for v in row) for row in shares)
    # The first t, the last t (reversed) and a spread-out t-subset all reconstruct.
    spread = (holders[1::2] + holders[::2])[:t]
    for chosen in (holders[:t], holders[-t:][::-1], spread):
        assert reconstruct_secrets(chosen, shares_for(shares, holders, chosen)) == secrets


@pytest.mark.parametrize(("n", "t"), [(5, 3), (6, 2), (4, 4)])
def test_every_t_subset_reconstructs(n: int, t: int) -> None:
    holders = [7, 1000, 12345, MAX_ID, 2, 99][:n]
    secrets = [secret_bytes(0), secret_bytes(1)]
    shares = split_secrets(secrets, holders, t, DeterministicRandom(b"subsets"))
    for chosen in itertools.combinations(holders, t):
        assert reconstruct_secrets(chosen, shares_for(shares, holders, chosen)) == secrets


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_t_subset_reconstructs(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=12), label="n")
    t = data.draw(st.integers(min_value=1, max_value=n), label="t")
    holders = data.draw(
        st.lists(st.integers(min_value=1, max_value=MAX_ID), min_size=n, max_size=n, unique=True),
        label="holders",
    )
    secrets = data.draw(
        st.lists(st.binary(min_size=32, max_size=32), min_size=0, max_size=3), label="secrets"
    )
    seed = data.draw(st.binary(max_size=8), label="seed")
    shares = split_secrets(secrets, holders, t, DeterministicRandom(seed))
    chosen = data.draw(st.permutations(holders), label="order")[:t]
    assert reconstruct_secrets(chosen, shares_for(shares, holders, chosen)) == secrets
    # More than t shares of a degree t-1 polynomial interpolate the same value.
    assert reconstruct_secrets(holders, shares) == secrets


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=10),
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=8),
)
def test_t_minus_1_shares_do_not_reconstruct(t: int, secret: bytes, seed: bytes) -> None:
    holders = list(range(1, t + 3))
    shares = split_secrets([secret], holders, t, DeterministicRandom(seed))
    chosen = holders[: t - 1]
    lambdas = lagrange_at_zero(chosen)
    guess = sum(lam * y for lam, y in zip(lambdas, shares[0][: t - 1], strict=True)) % P
    # Equality would need the uniformly random c_{t-1} to hit one value: 1/p.
    assert guess != int.from_bytes(secret, "little")


@pytest.mark.parametrize("t", [2, 3, 5])
def test_t_minus_1_shares_are_consistent_with_every_secret(t: int) -> None:
    # Information-theoretic hiding, constructively: for the shares of t-1
    # holders and ANY candidate secret s', some coefficients c_1..c_{t-1}
    # make split_secrets(s') hand those holders exactly the same shares.
    holders = [5, 17, 4096, MAX_ID, 77, 123456][: t + 1]
    seen = holders[: t - 1]
    real = split_secrets([secret_bytes(1)], holders, t, DeterministicRandom(b"hiding"))[0]
    observed = real[: t - 1]
    for candidate in (bytes(32), b"\xff" * 32, secret_bytes(2), secret_bytes(3)):
        s = int.from_bytes(candidate, "little")
        # Unknowns c_1..c_{t-1}, one equation sum_k c_k x^k = y - s' per
        # seen holder: a square system with an invertible (scaled
        # Vandermonde) matrix, so exactly one polynomial fits each s'.
        matrix = [[pow(x, k, P) for k in range(1, t)] for x in seen]
        rhs = [(y - s) % P for y in observed]
        coeffs = solve_mod_p(matrix, rhs)
        rng = ScriptedRandom([c.to_bytes(33, "little") for c in coeffs])
        forged = split_secrets([candidate], holders, t, rng)[0]
        assert forged[: t - 1] == observed
        assert reconstruct_secrets(holders[:t], [forged[:t]]) == [candidate]


def test_threshold_one_hands_out_the_secret() -> None:
    rng = CountingRandom(DeterministicRandom(b"t1"))
    shares = split_secrets([secret_bytes(0)], [1, 2, 3], 1, rng)
    assert shares == [[int.from_bytes(secret_bytes(0), "little")] * 3]
    assert rng.requests == []


def test_no_secrets() -> None:
    rng = CountingRandom(DeterministicRandom(b"none"))
    assert split_secrets([], [1, 2, 3], 2, rng) == []
    assert rng.requests == []
    assert reconstruct_secrets([1, 2], []) == []


def test_share_of_a_holder_does_not_depend_on_holder_order() -> None:
    holders = [9, 4, 1, 70000]
    a = split_secrets([secret_bytes(0)], holders, 3, DeterministicRandom(b"order"))[0]
    b = split_secrets([secret_bytes(0)], holders[::-1], 3, DeterministicRandom(b"order"))[0]
    assert a == b[::-1]


# --------------------------------------------------------------------------
# Randomness: exactly as the module docstring prescribes.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "t"), [(1, 1), (3, 2), (7, 4), (20, 20), (100, 51)])
def test_matches_reference_implementation(n: int, t: int) -> None:
    holders = [1 + 65537 * i for i in range(n)]
    secrets = [secret_bytes(0), secret_bytes(1), b"\xff" * 32]
    got_rng, ref_rng = DeterministicRandom(b"ref"), DeterministicRandom(b"ref")
    assert split_secrets(secrets, holders, t, got_rng) == reference_split(
        secrets, holders, t, ref_rng
    )
    # Both consumed exactly the same bytes: the streams are still in step.
    assert got_rng.random_bytes(16) == ref_rng.random_bytes(16)


def test_draws_33_bytes_per_attempt_and_nothing_else() -> None:
    rng = CountingRandom(DeterministicRandom(b"count"))
    split_secrets([secret_bytes(0), secret_bytes(1)], list(range(1, 11)), 6, rng)
    assert set(rng.requests) == {33}
    assert len(rng.requests) >= 2 * 5  # rejections add draws, never fewer


def test_rejection_sampling_and_masking() -> None:
    s = 1000
    secret = s.to_bytes(32, "little")
    draws = [
        b"\xff" * 33,  # masked to 2**257 - 1 >= p: rejected
        P.to_bytes(33, "little"),  # exactly p: rejected
        (5).to_bytes(32, "little") + b"\xfe",  # bits 257..263 set: masked away -> 5
        (P - 1).to_bytes(33, "little"),  # largest element: accepted
    ]
    rng = ScriptedRandom(draws)
    holders = [1, 2, MAX_ID]
    shares = split_secrets([secret], holders, 3, rng)[0]
    assert rng.requests == [33, 33, 33, 33]
    # f(x) = s + 5 x + (p - 1) x^2
    assert shares == [(s + 5 * x + (P - 1) * x * x) % P for x in holders]


def test_deterministic_for_equal_seeds() -> None:
    args = ([secret_bytes(0), secret_bytes(1)], list(range(1, 30)), 12)
    a = split_secrets(*args, DeterministicRandom(b"seed"))
    b = split_secrets(*args, DeterministicRandom(b"seed"))
    c = split_secrets(*args, DeterministicRandom(b"seed!"))
    assert a == b
    assert a != c
    assert a[0] != a[1]


# Regression vector: pins the normative algorithm together with
# DeterministicRandom. Changing either breaks the published test vectors.
VECTOR_HOLDERS = [1, 2, 3, 1000, MAX_ID]
VECTOR_SHARES_SHA256 = "d8afeaf187adc51e92ce7aaf9501b2085cc855a6bd58aa322a152b145d42b310"
VECTOR_FIRST_SHARE = "2a8a19b008f5271a5b0f5f06469cc1b4f41dadb5abe821e8410ea37a3f24c4df00"


def test_known_answer_vector() -> None:
    secrets = [bytes(range(32)), b"\xff" * 32]
    shares = split_secrets(secrets, VECTOR_HOLDERS, 3, DeterministicRandom(b"secagg-v1 shamir"))
    blob = b"".join(encode_share(v) for row in shares for v in row)
    assert encode_share(shares[0][0]).hex() == VECTOR_FIRST_SHARE
    assert sha256(blob).hex() == VECTOR_SHARES_SHA256


# --------------------------------------------------------------------------
# Lagrange coefficients.
# --------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=MAX_ID), min_size=1, max_size=25, unique=True))
def test_lagrange_coefficients(holders: list[int]) -> None:
    lambdas = lagrange_at_zero(holders)
    assert len(lambdas) == len(holders)
    assert all(0 <= v < P for v in lambdas)
    # They interpolate 1, x, ..., x^(t-1) at zero: 1, 0, ..., 0.
    for k in range(len(holders)):
        value = sum(lam * pow(x, k, P) for lam, x in zip(lambdas, holders, strict=True)) % P
        assert value == (1 if k == 0 else 0)


def test_lagrange_matches_textbook_formula() -> None:
    holders = [MAX_ID, 1, 2**31, 77, 5, 123456789]
    ys = [secret_bytes(i)[0] for i in range(len(holders))]
    lambdas = lagrange_at_zero(holders)
    expected = interpolate_at_zero(list(zip(holders, ys, strict=True)))
    assert sum(lam * y for lam, y in zip(lambdas, ys, strict=True)) % P == expected
    for j, x in enumerate(holders):
        num = den = 1
        for m, xm in enumerate(holders):
            if m != j:
                num, den = num * xm % P, den * (xm - x) % P
        assert lambdas[j] == num * pow(den, -1, P) % P


def test_lagrange_large_threshold() -> None:
    holders = list(range(1, 301))
    lambdas = lagrange_at_zero(holders)
    shares = split_secrets([secret_bytes(9)], holders, 300, DeterministicRandom(b"big"))
    assert sum(lam * y for lam, y in zip(lambdas, shares[0], strict=True)) % P == int.from_bytes(
        secret_bytes(9), "little"
    )


# --------------------------------------------------------------------------
# Reconstruction failures.
# --------------------------------------------------------------------------


def test_reconstruction_refuses_values_above_2_256() -> None:
    # Honest shares of a 32-byte secret never interpolate to >= 2**256; these
    # are shares of f(x) = (2**256 + 5) + 11 x, a field element but no secret.
    holders = [3, 8]
    shares = [[(2**256 + 5 + 11 * x) % P for x in holders]]
    with pytest.raises(RemoteProtocolError) as info:
        reconstruct_secrets(holders, shares)
    assert info.value.reason is AbortReason.RECONSTRUCTION_FAILED


def test_reconstruction_with_a_wrong_share_gives_a_wrong_secret() -> None:
    holders = [1, 2, 3]
    shares = split_secrets([secret_bytes(0)], holders, 3, DeterministicRandom(b"bad"))
    shares[0][1] = (shares[0][1] + 1) % P
    try:
        assert reconstruct_secrets(holders, shares) != [secret_bytes(0)]
    except RemoteProtocolError as exc:  # pragma: no cover - probability ~2**-248
        assert exc.reason is AbortReason.RECONSTRUCTION_FAILED


@pytest.mark.parametrize(
    "rows",
    [
        [[1, 2]],  # too few shares
        [[1, 2, 3, 4]],  # too many
        [[1, 2, P]],  # not a field element
        [[1, -1, 2]],
        [[1, 2, 3], [1, 2]],
    ],
)
def test_reconstruct_rejects_malformed_share_matrices(rows: list[list[int]]) -> None:
    with pytest.raises(ConfigError):
        reconstruct_secrets([1, 2, 3], rows)


# --------------------------------------------------------------------------
# Parameter validation.
# --------------------------------------------------------------------------

BAD_HOLDERS: list[list[object]] = [
    [0, 1, 2],  # 0 would be the secret itself
    [1, 2, 2**32],  # out of range
    [1, -3],
    [1, 2, 1],  # duplicate
    [1, True],  # bool is not an id
    [1, 2.0],
]


@pytest.mark.parametrize("holders", BAD_HOLDERS)
def test_split_rejects_bad_holders(holders: list[object]) -> None:
    with pytest.raises(ConfigError):
        split_secrets([secret_bytes(0)], holders, 1, DeterministicRandom(b""))  # type: ignore[arg-type]


@pytest.mark.parametrize("holders", [*BAD_HOLDERS, []])
def test_lagrange_and_reconstruct_reject_bad_holders(holders: list[object]) -> None:
    with pytest.raises(ConfigError):
        lagrange_at_zero(holders)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        reconstruct_secrets(holders, [[1] * len(holders)])  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "t"), [(3, 0), (3, 4), (0, 1), (1, -1)])
def test_split_rejects_bad_threshold(n: int, t: int) -> None:
    with pytest.raises(ConfigError):
        split_secrets([secret_bytes(0)], list(range(1, n + 1)), t, DeterministicRandom(b""))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_split_rejects_bad_secret_length(length: int) -> None:
    rng = CountingRandom(DeterministicRandom(b""))
    with pytest.raises(ConfigError):
        split_secrets([secret_bytes(0), bytes(length)], [1, 2], 2, rng)
    assert rng.requests == []  # validation happens before any draw
