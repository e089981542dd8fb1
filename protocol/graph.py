"""Who masks with (and shares secrets with) whom: the neighbour graph.

The graph is a pure function of public data (the participant ids, the
degree and a public seed), so every party recomputes it and can verify that
the server relays messages only between neighbours.

Normative description (``specs/secagg-v1.md`` quotes it; test vectors
depend on every detail below).

Complete graph (SecAgg, Bonawitz et al. 2017)
    Every participant is adjacent to every other participant.

Harary graph ``H(k, n)`` (SecAgg+, Bell et al. 2020)
    ``n`` participants sit at positions ``0 .. n-1`` of a ring. With
    ``h = floor(k / 2)``, position ``i`` is adjacent to positions
    ``i +- 1, i +- 2, ..., i +- h (mod n)`` and, if ``k`` is odd, also to
    ``i + n/2 (mod n)``; odd ``k`` therefore requires even ``n``. The degree
    ``k`` is the number of neighbours of every participant (itself
    excluded) and must satisfy ``1 <= k <= n - 1``; ``k = n - 1`` gives the
    complete graph.

Placing participants on the ring
    Sort the participant ids ascending into a list ``a``. Create
    ``rng = DeterministicRandom(seed)`` (``protocol.crypto``). For ``i`` from
    ``n - 1`` down to ``1``: draw 8 bytes from ``rng`` and read them as a
    little-endian unsigned integer ``r``; let
    ``limit = 2**64 - (2**64 mod (i + 1))``; if ``r >= limit`` draw again
    (rejection sampling, so ``j`` is exactly uniform), else let
    ``j = r mod (i + 1)`` and swap ``a[i]`` and ``a[j]`` (Fisher-Yates).
    Position ``q`` then holds participant ``a[q]``. No other bytes are drawn.

Participant ids are integers in ``[1, 2**32 - 1]`` (they double as Shamir
x-coordinates, see :mod:`protocol.shamir`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from protocol.crypto import DeterministicRandom, RandomSource
from protocol.errors import ConfigError

MAX_PARTICIPANT = (1 << 32) - 1
_TWO_64 = 1 << 64


def _sorted_participants(participants: Sequence[int]) -> list[int]:
    """The ids sorted ascending; ConfigError unless non-empty, distinct, in [1, 2**32 - 1]."""
    ids = list(participants)
    if not ids:
        raise ConfigError("a graph needs at least one participant")
    for x in ids:
        if not isinstance(x, int) or isinstance(x, bool):
            raise ConfigError(f"participant ids must be integers, got {x!r}")
        if not 1 <= x <= MAX_PARTICIPANT:
            raise ConfigError(f"participant ids must lie in [1, {MAX_PARTICIPANT}], got {x}")
    if len(set(ids)) != len(ids):
        raise ConfigError("participant ids must be distinct")
    ids.sort()
    return ids


class Graph:
    """An immutable k-regular graph on client ids, laid out as a Harary ring.

    Build it with :func:`complete_graph` or :func:`harary_graph`. Two graphs
    compare equal when they have the same participants and the same edges,
    however the participants were placed on the ring.
    """

    __slots__ = ("_degree", "_half", "_members", "_n", "_participants", "_position", "_ring")

    _participants: tuple[int, ...]
    _degree: int
    _n: int
    _half: int
    _ring: tuple[int, ...]
    _position: dict[int, int]
    _members: frozenset[int]

    def __init__(self, ring: Sequence[int], degree: int) -> None:
        """A Harary graph with ``ring[q]`` at position ``q``.

        Args:
            ring: the distinct participant ids in ring order.
            degree: ``k``, neighbours per participant; ``0 <= k <= n - 1``
                and ``k`` odd only if ``n`` is even.

        Raises:
            ConfigError: invalid ids or an infeasible degree.
        """
        order = tuple(ring)
        ids = _sorted_participants(order)
        n = len(ids)
        if not isinstance(degree, int) or isinstance(degree, bool):
            raise ConfigError(f"degree must be an integer, got {degree!r}")
        if not 0 <= degree <= n - 1:
            raise ConfigError(f"degree must lie in [0, {n - 1}] for {n} participants, got {degree}")
        if degree % 2 == 1 and n % 2 == 1:
            raise ConfigError(f"odd degree {degree} needs an even number of participants, got {n}")
        set_ = object.__setattr__
        set_(self, "_participants", tuple(ids))
        set_(self, "_degree", degree)
        set_(self, "_n", n)
        set_(self, "_half", degree // 2)
        # The ring written twice, so that every neighbourhood is two slices.
        set_(self, "_ring", order + order)
        set_(self, "_position", {c: q for q, c in enumerate(order)})
        set_(self, "_members", frozenset(order))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def participants(self) -> tuple[int, ...]:
        """The participant ids, sorted ascending."""
        return self._participants

    @property
    def ring(self) -> tuple[int, ...]:
        """The participant ids in ring order: ``ring[q]`` sits at position ``q``."""
        return self._ring[: self._n]

    @property
    def degree(self) -> int:
        """``k``, the number of neighbours of every participant."""
        return self._degree

    def is_complete(self) -> bool:
        """True if every participant is adjacent to every other one."""
        return self._degree == self._n - 1

    def _locate(self, client: int) -> int:
        try:
            return self._position[client]
        except (KeyError, TypeError):  # TypeError: unhashable input
            raise ConfigError(f"client {client!r} is not a participant") from None

    def neighbours(self, client: int) -> frozenset[int]:
        """The neighbours of ``client``; never ``client`` itself.

        Args:
            client: a participant id.

        Returns:
            Exactly :attr:`degree` participant ids.

        Raises:
            ConfigError: ``client`` is not a participant.
        """
        q = self._locate(client)
        if self._degree == self._n - 1:
            # Complete: a set difference copies stored hashes, ~10x faster
            # than building the set from slices (matters for n ~ 1000s).
            return self._members - {client}
        n, h, ring = self._n, self._half, self._ring
        # Positions q+1 .. q+h and q-h .. q-1 (the latter as q+n-h .. q+n-1).
        out = ring[q + 1 : q + h + 1] + ring[q + n - h : q + n]
        if self._degree % 2 == 1:
            out += (ring[q + n // 2],)
        return frozenset(out)

    def are_neighbours(self, a: int, b: int) -> bool:
        """True if ``a`` and ``b`` are adjacent, in O(1). A client is not its own neighbour.

        Raises:
            ConfigError: ``a`` or ``b`` is not a participant.
        """
        n = self._n
        d = (self._locate(b) - self._locate(a)) % n
        if d == 0:
            return False
        return min(d, n - d) <= self._half or (self._degree % 2 == 1 and 2 * d == n)

    def __contains__(self, client: object) -> bool:
        """True if ``client`` is a participant."""
        try:
            return client in self._position
        except TypeError:  # unhashable input is not a participant
            return False

    def __len__(self) -> int:
        """The number of participants."""
        return self._n

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        if self._participants != other._participants or self._degree != other._degree:
            return False
        if self._ring == other._ring or self.is_complete():
            return True
        return all(self.neighbours(c) == other.neighbours(c) for c in self._participants)

    def __hash__(self) -> int:
        # Equal graphs have equal participants and degree; the ring order may differ.
        return hash((self._participants, self._degree))

    def __repr__(self) -> str:
        kind = "complete" if self.is_complete() else "harary"
        return f"Graph({kind}, n={self._n}, degree={self._degree})"


def complete_graph(participants: Sequence[int]) -> Graph:
    """The complete graph (original SecAgg): everyone is everyone's neighbour.

    Args:
        participants: distinct ids in ``[1, 2**32 - 1]``, any order.

    Returns:
        A graph of degree ``n - 1`` (0 for a single participant).

    Raises:
        ConfigError: the ids are empty, repeated or out of range.
    """
    return Graph(_sorted_participants(participants), len(participants) - 1)


def _uniform_below(rng: RandomSource, bound: int) -> int:
    """A uniform integer in ``[0, bound)``, ``1 <= bound <= 2**64``, exactly as specified."""
    # Reject the top 2**64 mod bound values so that every residue is hit by
    # the same number of accepted r: the result is exactly uniform.
    limit = _TWO_64 - _TWO_64 % bound
    while True:
        r = int.from_bytes(rng.random_bytes(8), "little")
        if r < limit:
            return r % bound


def ring_placement(participants: Sequence[int], seed: bytes) -> tuple[int, ...]:
    """The seeded Fisher-Yates shuffle of the sorted ids: entry ``q`` sits at position ``q``.

    Args:
        participants: distinct ids in ``[1, 2**32 - 1]``, any order.
        seed: public bytes (any length) keying :class:`DeterministicRandom`.

    Returns:
        The ids in ring order, as specified in the module docstring.

    Raises:
        ConfigError: invalid ids or a non-bytes seed.
    """
    ids = _sorted_participants(participants)
    if not isinstance(seed, bytes):
        raise ConfigError("the graph seed must be bytes")
    rng = DeterministicRandom(seed)
    for i in range(len(ids) - 1, 0, -1):
        j = _uniform_below(rng, i + 1)
        ids[i], ids[j] = ids[j], ids[i]
    return tuple(ids)


def harary_graph(participants: Sequence[int], degree: int, seed: bytes) -> Graph:
    """The Harary graph ``H(degree, n)`` on a seed-determined placement (SecAgg+).

    Args:
        participants: distinct ids in ``[1, 2**32 - 1]``, any order (they are
            sorted before shuffling, so the order given does not matter).
        degree: ``k``, neighbours per participant; ``1 <= k <= n - 1``, and
            odd ``k`` needs even ``n``.
        seed: public bytes that fix the placement (any length); every party
            must use the same seed.

    Returns:
        The graph described in the module docstring.

    Raises:
        ConfigError: invalid ids, an infeasible degree, or a non-bytes seed.
    """
    ids = _sorted_participants(participants)
    n = len(ids)
    if not isinstance(degree, int) or isinstance(degree, bool) or not 1 <= degree <= n - 1:
        raise ConfigError(f"degree must lie in [1, {n - 1}] for {n} participants, got {degree!r}")
    if degree % 2 == 1 and n % 2 == 1:
        raise ConfigError(f"odd degree {degree} needs an even number of participants, got {n}")
    return Graph(ring_placement(ids, seed), degree)
