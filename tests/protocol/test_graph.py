"""Tests of protocol.graph: complete and Harary neighbour graphs."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.crypto import DeterministicRandom
from protocol.errors import ConfigError
from protocol.graph import (
    Graph,
    _uniform_below,
    complete_graph,
    harary_graph,
    ring_placement,
)

MAX_ID = (1 << 32) - 1


# --------------------------------------------------------------------------
# Helpers: the module docstring read literally.
# --------------------------------------------------------------------------


def reference_placement(participants: Sequence[int], seed: bytes) -> list[int]:
    a = sorted(participants)
    rng = DeterministicRandom(seed)
    for i in range(len(a) - 1, 0, -1):
        limit = 2**64 - (2**64 % (i + 1))
        while True:
            r = int.from_bytes(rng.random_bytes(8), "little")
            if r < limit:
                break
        j = r % (i + 1)
        a[i], a[j] = a[j], a[i]
    return a


def reference_neighbours(ring: Sequence[int], k: int) -> dict[int, set[int]]:
    n = len(ring)
    out: dict[int, set[int]] = {}
    for q, client in enumerate(ring):
        positions = {(q + d) % n for d in range(1, k // 2 + 1)}
        positions |= {(q - d) % n for d in range(1, k // 2 + 1)}
        if k % 2 == 1:
            positions.add((q + n // 2) % n)
        out[client] = {ring[x] for x in positions}
    return out


class ScriptedRandom:
    def __init__(self, values: Sequence[int]) -> None:
        self._values = list(values)
        self.requests: list[int] = []

    def random_bytes(self, n: int) -> bytes:
        self.requests.append(n)
        return self._values.pop(0).to_bytes(n, "little")


def ids(n: int) -> list[int]:
    """n distinct ids, deliberately unsorted and spread over the id range."""
    return [(i * 2654435761) % MAX_ID + 1 for i in range(n)][::-1]


def check_regular_simple_graph(graph: Graph, k: int) -> None:
    parts = graph.participants
    assert list(parts) == sorted(set(parts))
    assert graph.degree == k
    members = set(parts)
    for c in parts:
        nbrs = graph.neighbours(c)
        assert isinstance(nbrs, frozenset)
        assert len(nbrs) == k  # regular
        assert c not in nbrs  # no self loops
        assert nbrs <= members
        for v in nbrs:
            assert c in graph.neighbours(v)  # symmetric
    for a, b in itertools.product(parts, repeat=2):
        assert graph.are_neighbours(a, b) == (b in graph.neighbours(a))


# --------------------------------------------------------------------------
# Complete graph.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 31])
def test_complete_graph(n: int) -> None:
    parts = ids(n)
    graph = complete_graph(parts)
    assert graph.participants == tuple(sorted(parts))
    assert graph.ring == graph.participants
    assert graph.is_complete()
    assert len(graph) == n
    check_regular_simple_graph(graph, n - 1)
    for c in parts:
        assert graph.neighbours(c) == frozenset(parts) - {c}
        assert c in graph
    assert 0 not in graph and MAX_ID + 5 not in graph and [1] not in graph


def test_complete_graph_ignores_input_order() -> None:
    assert complete_graph([3, 1, 2]) == complete_graph([1, 2, 3])


# --------------------------------------------------------------------------
# Harary graph.
# --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_harary_graph_is_k_regular_simple_and_symmetric(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=40), label="n")
    k = data.draw(st.integers(min_value=1, max_value=n - 1), label="k")
    assume(not (k % 2 == 1 and n % 2 == 1))
    parts = data.draw(
        st.lists(st.integers(min_value=1, max_value=MAX_ID), min_size=n, max_size=n, unique=True),
        label="participants",
    )
    seed = data.draw(st.binary(max_size=16), label="seed")
    graph = harary_graph(parts, k, seed)
    assert graph.participants == tuple(sorted(parts))
    assert graph.is_complete() == (k == n - 1)
    check_regular_simple_graph(graph, k)


@pytest.mark.parametrize(
    ("n", "k"), [(2, 1), (3, 2), (4, 1), (4, 2), (4, 3), (7, 4), (10, 3), (10, 5), (12, 7)]
)
def test_harary_graph_matches_reference(n: int, k: int) -> None:
    parts = ids(n)
    seed = b"reference %d %d" % (n, k)
    ring = reference_placement(parts, seed)
    assert list(ring_placement(parts, seed)) == ring
    graph = harary_graph(parts, k, seed)
    assert list(graph.ring) == ring
    expected = reference_neighbours(ring, k)
    assert {c: set(graph.neighbours(c)) for c in parts} == expected


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 16])
def test_degree_n_minus_1_is_the_complete_graph(n: int) -> None:
    parts = ids(n)
    harary = harary_graph(parts, n - 1, b"seed")
    complete = complete_graph(parts)
    assert harary.is_complete()
    for c in parts:
        assert harary.neighbours(c) == complete.neighbours(c)
    assert harary == complete
    assert hash(harary) == hash(complete)


def test_cycle_structure() -> None:
    # k = 2 is a Hamiltonian cycle following the ring.
    graph = harary_graph(range(1, 9), 2, b"cycle")
    ring = graph.ring
    for q, c in enumerate(ring):
        assert graph.neighbours(c) == {ring[q - 1], ring[(q + 1) % 8]}


def test_odd_degree_adds_the_antipode() -> None:
    graph = harary_graph(range(1, 11), 3, b"antipode")
    ring = graph.ring
    for q, c in enumerate(ring):
        assert graph.neighbours(c) == {ring[q - 1], ring[(q + 1) % 10], ring[(q + 5) % 10]}


def test_deterministic_for_equal_seeds() -> None:
    parts = ids(30)
    a = harary_graph(parts, 6, b"seed")
    b = harary_graph(list(reversed(parts)), 6, b"seed")
    assert a.ring == b.ring
    assert a == b
    assert all(a.neighbours(c) == b.neighbours(c) for c in parts)


def test_different_seeds_give_different_graphs() -> None:
    parts = ids(30)
    graphs = [harary_graph(parts, 6, b"seed %d" % i) for i in range(5)]
    for g, h in itertools.combinations(graphs, 2):
        assert g.ring != h.ring
        assert g != h
        assert any(g.neighbours(c) != h.neighbours(c) for c in parts)


def test_equality_sees_edges_not_placement() -> None:
    # Rotating or reflecting the ring changes the placement, not the edges.
    ring = ids(8)
    base = Graph(ring, 4)
    assert Graph(ring[3:] + ring[:3], 4) == base
    assert Graph(ring[::-1], 4) == base
    assert Graph([ring[1], ring[0], *ring[2:]], 4) != base
    assert Graph(ring, 2) != base
    assert base != "graph"


# --------------------------------------------------------------------------
# The shuffle.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "trials"), [(3, 1200), (4, 2400)])
def test_fisher_yates_is_uniform(n: int, trials: int) -> None:
    parts = list(range(1, n + 1))
    counts = Counter(ring_placement(parts, b"uniform %d" % i) for i in range(trials))
    perms = list(itertools.permutations(parts))
    assert set(counts) == set(perms)  # every permutation appears
    expected = trials / len(perms)
    # Pearson chi-square; the seeds are fixed, so this is deterministic. The
    # bound is the 99.9% quantile for 5 resp. 23 degrees of freedom.
    chi2 = sum((counts[p] - expected) ** 2 / expected for p in perms)
    assert chi2 < {3: 20.5, 4: 49.7}[n]


def test_uniform_below_rejects_the_biased_tail() -> None:
    # bound 3: 2**64 mod 3 = 1, so limit = 2**64 - 1 and r = 2**64 - 1 is rejected.
    rng = ScriptedRandom([2**64 - 1, 2**64 - 2, 7])
    assert _uniform_below(rng, 3) == (2**64 - 2) % 3
    assert rng.requests == [8, 8]
    assert _uniform_below(rng, 3) == 1
    # bound 2**63 + 1: the largest rejection rate; almost half of all r are rejected.
    bound = 2**63 + 1
    limit = 2**64 - 2**64 % bound
    rng = ScriptedRandom([limit, limit - 1])
    assert _uniform_below(rng, bound) == (limit - 1) % bound
    # bound 1 never rejects.
    assert _uniform_below(ScriptedRandom([2**64 - 1]), 1) == 0


def test_placement_draws_8_bytes_per_attempt() -> None:
    class Counting:
        def __init__(self) -> None:
            self.inner = DeterministicRandom(b"count")
            self.requests: list[int] = []

        def random_bytes(self, n: int) -> bytes:
            self.requests.append(n)
            return self.inner.random_bytes(n)

    # Same draws as the reference shuffle, which requests exactly 8 at a time.
    counting = Counting()
    for i in range(9, 0, -1):
        _uniform_below(counting, i + 1)
    assert set(counting.requests) == {8}
    assert len(counting.requests) >= 9


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(3, 1), (5, 3), (9, 7), (11, 1)])
def test_odd_degree_with_odd_n_is_refused(n: int, k: int) -> None:
    with pytest.raises(ConfigError):
        harary_graph(range(1, n + 1), k, b"seed")


@pytest.mark.parametrize(("n", "k"), [(5, 0), (5, 5), (5, -1), (1, 1), (1, 0), (4, 10)])
def test_degree_out_of_range_is_refused(n: int, k: int) -> None:
    with pytest.raises(ConfigError):
        harary_graph(range(1, n + 1), k, b"seed")


BAD_PARTICIPANTS: list[list[object]] = [
    [],
    [0, 1, 2],
    [1, 2, MAX_ID + 1],
    [1, 2, 2],
    [1, True],
    [1, 2.0],
]


@pytest.mark.parametrize("parts", BAD_PARTICIPANTS)
def test_bad_participants_are_refused(parts: list[object]) -> None:
    with pytest.raises(ConfigError):
        complete_graph(parts)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        harary_graph(parts, 1, b"seed")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ring_placement(parts, b"seed")  # type: ignore[arg-type]


def test_seed_must_be_bytes() -> None:
    with pytest.raises(ConfigError):
        harary_graph([1, 2, 3, 4], 2, "seed")  # type: ignore[arg-type]


def test_unknown_client_is_refused() -> None:
    for graph in (complete_graph([1, 2, 3]), harary_graph([1, 2, 3, 4], 2, b"x")):
        for bad in (0, 5, 99, "1", [1]):
            with pytest.raises(ConfigError):
                graph.neighbours(bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            graph.are_neighbours(1, 99)


def test_graph_is_immutable() -> None:
    graph = harary_graph([1, 2, 3, 4], 2, b"x")
    with pytest.raises(AttributeError):
        graph.degree = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        graph._degree = 3
    with pytest.raises(AttributeError):
        del graph._ring
    assert graph.degree == 2
    assert "harary" in repr(graph) and "degree=2" in repr(graph)
