"""Shamir secret sharing of 32-byte secrets over the prime field GF(p).

Normative description (``specs/secagg-v1.md`` quotes it; the test vectors
depend on every detail below).

Field
    ``p = FIELD_PRIME = 2**256 + 297``, the smallest prime above ``2**256``.
    A secret is a 32-byte string read as a little-endian integer, so every
    secret is a field element (``< 2**256 < p``). A share is a field element,
    encoded as exactly :data:`SHARE_SIZE` = 33 bytes, little-endian;
    decoding refuses any other length and any value ``>= p``.

Holders
    A holder is a client id used as the x-coordinate of its share: an
    integer in ``[1, 2**32 - 1]`` (0 would hand out the secret itself).
    Holder lists must not contain duplicates. The threshold ``t`` satisfies
    ``1 <= t <= len(holders)``; any ``t`` shares determine the secret and any
    ``t - 1`` shares are independent of it.

Randomness (``split_secrets``)
    For each secret in the given order, for each coefficient of degree
    ``1, 2, ..., t - 1`` in that order: draw 33 bytes from the random source,
    read them as a little-endian integer, AND it with ``2**257 - 1`` and
    accept the result if it is ``< p``; otherwise draw 33 fresh bytes and
    repeat (rejection sampling, so every coefficient is exactly uniform in
    GF(p); about half of all draws are rejected). No other bytes are drawn,
    so a deterministic source reproduces the shares byte for byte.

Sharing
    Secret ``s`` with coefficients ``c_1 .. c_{t-1}`` defines
    ``f(x) = s + c_1 x + ... + c_{t-1} x^{t-1} mod p``; holder ``x`` gets
    ``f(x)``. The order of the holder list does not affect any share.

Reconstruction
    From shares ``y_j = f(x_j)`` of exactly the ``t`` given holders,
    ``s = sum_j lambda_j y_j mod p`` with the Lagrange coefficients at zero
    ``lambda_j = prod_{m != j} x_m / (x_m - x_j) mod p``. A result
    ``>= 2**256`` is not a secret and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from operator import mul

from protocol.crypto import RandomSource
from protocol.errors import AbortReason, ConfigError, DecodeError, RemoteProtocolError

FIELD_PRIME = (1 << 256) + 297
SECRET_SIZE = 32
SHARE_SIZE = 33
MAX_HOLDER = (1 << 32) - 1

_SECRET_LIMIT = 1 << (8 * SECRET_SIZE)
_DRAW_MASK = (1 << 257) - 1  # the smallest all-ones mask covering p


# --------------------------------------------------------------------------
# Encoding.
# --------------------------------------------------------------------------


def encode_share(value: int) -> bytes:
    """The canonical 33-byte little-endian encoding of a share.

    Args:
        value: a field element, ``0 <= value < FIELD_PRIME``.

    Returns:
        Exactly :data:`SHARE_SIZE` bytes.

    Raises:
        ConfigError: ``value`` is not an integer in ``[0, FIELD_PRIME)``.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < FIELD_PRIME:
        raise ConfigError("a share must be an integer in [0, FIELD_PRIME)")
    return value.to_bytes(SHARE_SIZE, "little")


def decode_share(data: bytes) -> int:
    """Inverse of :func:`encode_share`; accepts canonical encodings only.

    Args:
        data: bytes received from a peer.

    Returns:
        The field element, ``0 <= value < FIELD_PRIME``.

    Raises:
        DecodeError: ``data`` is not exactly 33 bytes or encodes a value ``>= p``.
    """
    if len(data) != SHARE_SIZE:
        raise DecodeError(f"a share is {SHARE_SIZE} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= FIELD_PRIME:
        # Accepting it would give two encodings of one field element.
        raise DecodeError("share value is not below the field prime")
    return value


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


def _check_holders(holders: Sequence[int]) -> list[int]:
    """The holders as a list of ints; ConfigError unless distinct ids in [1, 2**32 - 1]."""
    xs = list(holders)
    for x in xs:
        if not isinstance(x, int) or isinstance(x, bool):
            raise ConfigError(f"holder ids must be integers, got {x!r}")
        if not 1 <= x <= MAX_HOLDER:
            raise ConfigError(f"holder ids must lie in [1, {MAX_HOLDER}], got {x}")
    if len(set(xs)) != len(xs):
        raise ConfigError("holder ids must be distinct")
    return xs


def _check_threshold(threshold: int, n: int) -> None:
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise ConfigError(f"threshold must be an integer, got {threshold!r}")
    if not 1 <= threshold <= n:
        raise ConfigError(f"threshold must lie in [1, {n}] for {n} holders, got {threshold}")


# --------------------------------------------------------------------------
# Sharing.
# --------------------------------------------------------------------------


def _draw_coefficient(rng: RandomSource) -> int:
    """One uniform field element, drawn exactly as the module docstring prescribes."""
    while True:
        value = int.from_bytes(rng.random_bytes(SHARE_SIZE), "little") & _DRAW_MASK
        if value < FIELD_PRIME:
            return value


def split_secrets(
    secrets: Sequence[bytes], holders: Sequence[int], threshold: int, rng: RandomSource
) -> list[list[int]]:
    """Share each secret among ``holders`` so that any ``threshold`` of them recover it.

    Args:
        secrets: 32-byte secrets (little-endian integers), each shared independently.
        holders: distinct client ids in ``[1, 2**32 - 1]``, the x-coordinates.
        threshold: ``t``, the number of shares needed; ``1 <= t <= len(holders)``.
        rng: source of the polynomial coefficients, consumed exactly as the
            module docstring prescribes.

    Returns:
        ``result[i][j]``, the share of ``secrets[i]`` for holder ``holders[j]``.

    Raises:
        ConfigError: a secret is not 32 bytes, the holders are invalid or the
            threshold is out of range.
    """
    xs = _check_holders(holders)
    _check_threshold(threshold, len(xs))
    for secret in secrets:
        if len(secret) != SECRET_SIZE:
            raise ConfigError(f"a secret is {SECRET_SIZE} bytes, got {len(secret)}")
    p = FIELD_PRIME
    # All randomness first, in the normative order; evaluation below is
    # deterministic and free to reorder its arithmetic.
    polys = [
        (int.from_bytes(secret, "little"), [_draw_coefficient(rng) for _ in range(threshold - 1)])
        for secret in secrets
    ]
    if threshold == 1:
        # Constant polynomial: every holder's share is the secret itself.
        return [[s] * len(xs) for s, _ in polys]
    # Horner evaluation with exact integer arithmetic and a reduction only
    # every `stride` steps: one step multiplies by x (< 2**32), which is far
    # cheaper than a 257-bit modular multiplication, and the accumulator
    # stays below about 2**520 between reductions. Measured on the reference case
    # (2 secrets, 100 holders, t = 51) this beats a precomputed table of
    # x^k mod p, whose construction alone costs as much as the evaluation.
    stride = max(1, 256 // max(xs).bit_length())
    result: list[list[int]] = []
    for s, coeffs in polys:
        top_down = coeffs[::-1]  # c_{t-1}, ..., c_1
        chunks = [top_down[i : i + stride] for i in range(0, len(top_down), stride)]
        row: list[int] = []
        for x in xs:
            acc = 0
            for chunk in chunks:
                for c in chunk:
                    acc = (acc + c) * x
                acc %= p
            # acc = c_1 x + ... + c_{t-1} x^{t-1} (mod p)
            row.append((acc + s) % p)
        result.append(row)
    return result


# --------------------------------------------------------------------------
# Reconstruction.
# --------------------------------------------------------------------------


def _groups(factors: list[int], size: int = 8) -> list[list[int]]:
    """``factors`` cut into consecutive groups of at most ``size`` (~32-bit factors each)."""
    return [factors[i : i + size] for i in range(0, len(factors), size)]


def lagrange_at_zero(holders: Sequence[int]) -> list[int]:
    """Lagrange coefficients for interpolating at ``x = 0`` from these holders.

    ``lambda_j = prod_{m != j} x_m / (x_m - x_j) mod p``, so that
    ``f(0) = sum_j lambda_j f(x_j)`` for every polynomial of degree
    ``< len(holders)``.

    Args:
        holders: distinct client ids in ``[1, 2**32 - 1]`` (at least one).

    Returns:
        One coefficient per holder, in the order given.

    Raises:
        ConfigError: the holder list is empty or invalid.
    """
    xs = _check_holders(holders)
    if not xs:
        raise ConfigError("need at least one holder")
    p = FIELD_PRIME
    # Write lambda_j = N / (x_j * d_j) with N = prod_m x_m and
    # d_j = prod_{m != j} (x_m - x_j). The factors are small (|x_m - x_j| <
    # 2**32), so they are multiplied exactly in C (math.prod) eight at a time
    # and reduced per group, which keeps operands near 2**256 for any t.
    # denominators[j] holds x_j * d_j; none is 0 mod p, as the ids are
    # distinct, nonzero and far below p.
    numerator = 1
    for group in _groups(xs):
        numerator = numerator * prod(group) % p
    denominators: list[int] = []
    for xj in xs:
        d = xj
        for group in _groups([xm - xj for xm in xs if xm != xj]):
            d = d * prod(group) % p
        denominators.append(d)
    # Montgomery's trick: invert all denominators with a single pow().
    prefix: list[int] = []
    running = 1
    for d in denominators:
        prefix.append(running)  # product of denominators[:j]
        running = running * d % p
    inverse = pow(running, -1, p)  # 1 / (product of all denominators)
    coefficients = [0] * len(xs)
    for j in range(len(xs) - 1, -1, -1):
        # inverse = 1 / prod(denominators[: j + 1]) here.
        coefficients[j] = numerator * inverse % p * prefix[j] % p
        inverse = inverse * denominators[j] % p
    return coefficients


def reconstruct_secrets(holders: Sequence[int], shares: Sequence[Sequence[int]]) -> list[bytes]:
    """Recover secrets from the shares of exactly the given holders.

    Every given share is used: pass exactly ``t`` holders (more would also
    interpolate correctly, fewer yield an unrelated value). The Lagrange
    coefficients are computed once for all secrets.

    Args:
        holders: distinct client ids in ``[1, 2**32 - 1]``, the x-coordinates.
        shares: ``shares[i][j]``, the share of secret ``i`` held by ``holders[j]``;
            field elements as returned by :func:`decode_share`.

    Returns:
        The 32-byte secrets, in the order of ``shares``.

    Raises:
        ConfigError: the holders are invalid, a row of ``shares`` has the
            wrong length or holds a value outside ``[0, p)``.
        RemoteProtocolError: (``RECONSTRUCTION_FAILED``) a reconstructed
            value is ``>= 2**256``, so the shares were not honest. Note this
            catches bad shares only with probability ~2**-248; callers must
            check the secret against a public commitment (e.g. a public key).
    """
    lambdas = lagrange_at_zero(holders)
    n = len(lambdas)
    p = FIELD_PRIME
    out: list[bytes] = []
    for i, row in enumerate(shares):
        if len(row) != n:
            raise ConfigError(f"secret {i}: {len(row)} shares for {n} holders")
        if min(row) < 0 or max(row) >= p:
            raise ConfigError(f"secret {i}: a share is not a field element")
        # Products are ~514 bits; summing before one reduction keeps the
        # loop inside C (map/sum) instead of the interpreter.
        value = sum(map(mul, lambdas, row)) % p
        if value >= _SECRET_LIMIT:
            raise RemoteProtocolError(
                AbortReason.RECONSTRUCTION_FAILED,
                f"secret {i}: interpolated value is not a 32-byte secret",
            )
        out.append(value.to_bytes(SECRET_SIZE, "little"))
    return out
