"""``secagg bench``: one simulated round, timed, next to its primitive-cost model.

The model prices the same round from primitive costs measured in the same
run (AES-CTR mask expansion, X25519 + HKDF, Shamir, AEAD, signatures), so
``client_s / model_client_s`` says how much overhead the implementation adds
on top of the cryptography it cannot avoid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protocol import GraphKind, Mode, Round, SessionConfig
from protocol._keys import pairwise_mask_key
from protocol.crypto import (
    MaskExpander,
    SystemRandom,
    aead_open,
    aead_seal,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    prg_fill,
    x25519_generate,
)
from protocol.encoding import word_dtype
from protocol.shamir import lagrange_at_zero, reconstruct_secrets, split_secrets
from protocol.testing import make_config, simulate


def _best_of(fn: Callable[[], object], repeat: int = 5, number: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


@dataclass(frozen=True)
class PrimitiveCosts:
    """Seconds per operation, measured on this machine in this run."""

    mask: float  # expand + add one mask of the bench's length
    agree: float  # X25519 + HKDF to a PRG key
    keygen: float
    split_per_holder: float  # Shamir split of 2 secrets, per holder (at the bench's t)
    reconstruct: float  # one secret from t shares, coefficients amortised
    lagrange: float  # Lagrange coefficients at zero for one set of t holders
    aead: float
    sign: float
    verify: float
    keystream_gbps: float

    @classmethod
    def measure(cls, length: int, bit_width: int, threshold: int, holders: int) -> PrimitiveCosts:
        rng = SystemRandom()
        dtype = word_dtype(bit_width)
        expander = MaskExpander(dtype)
        acc = np.zeros(length, dtype)
        keys = [rng.random_bytes(16) for _ in range(8)]
        # A client applies all its masks in one call; price one mask of such a call.
        mask = _best_of(lambda: expander.apply(acc, add=keys), repeat=7) / len(keys)
        key = keys[0]
        sk = x25519_generate(rng)
        pk = x25519_generate(rng).public
        sid = bytes(32)
        agree = _best_of(lambda: pairwise_mask_key(sk, pk, sid, 1, 2), number=50)
        keygen = _best_of(lambda: x25519_generate(rng), number=50)
        xs = list(range(1, holders + 1))
        secrets = [rng.random_bytes(32), rng.random_bytes(32)]
        split = _best_of(lambda: split_secrets(secrets, xs, threshold, rng), number=3)
        shares = split_secrets([rng.random_bytes(32) for _ in range(64)], xs, threshold, rng)
        recon = (
            _best_of(
                lambda: reconstruct_secrets(xs[:threshold], [row[:threshold] for row in shares])
            )
            / 64
        )
        lagrange = _best_of(lambda: lagrange_at_zero(xs[:threshold]), number=20)
        k32 = rng.random_bytes(32)
        ct = aead_seal(k32, bytes(74), b"aad")
        aead = _best_of(lambda: aead_open(k32, ct, b"aad"), number=200)
        ident = rng.random_bytes(32)
        sig = ed25519_sign(ident, b"m")
        pub = ed25519_public_key(ident)
        sign = _best_of(lambda: ed25519_sign(ident, b"m"), number=50)
        verify = _best_of(lambda: ed25519_verify(pub, sig, b"m"), number=50)
        nbytes = length * np.dtype(dtype).itemsize
        stream = np.zeros(length, dtype)
        ks = _best_of(lambda: prg_fill(key, stream), repeat=7)
        return cls(
            mask=mask,
            agree=agree,
            keygen=keygen,
            split_per_holder=split / holders,
            reconstruct=recon,
            lagrange=lagrange,
            aead=aead,
            sign=sign,
            verify=verify,
            keystream_gbps=nbytes / ks / 1e9,
        )


def run_bench(
    *,
    clients: int,
    length: int,
    dropout: float,
    graph: str,
    degree: int | None,
    threshold: int | None,
    mode: str,
    drop_round: str,
    bit_width: int,
    seed: int,
) -> dict[str, object]:
    """Run one simulated round and return the JSON-able report."""
    from protocol.params import AdversaryClass, derive_parameters

    graph_kind = GraphKind(graph)
    mode_ = Mode(mode)
    if graph_kind is GraphKind.HARARY and degree is None:
        params = derive_parameters(
            clients,
            max(dropout, 0.05),
            0.05,
            AdversaryClass.SEMI_MALICIOUS if mode_ is Mode.ACTIVE else AdversaryClass.SEMI_HONEST,
        )
        degree, threshold = params.degree, threshold or params.threshold
    k = clients - 1 if graph_kind is GraphKind.COMPLETE else int(degree or 0)
    t = threshold if threshold is not None else k // 2 + 1
    seed_bytes = seed.to_bytes(8, "big")
    config = make_config(
        clients,
        length,
        bit_width=bit_width,
        threshold=t,
        graph=graph_kind,
        degree=k if graph_kind is GraphKind.HARARY else 0,
        mode=mode_,
        seed=b"bench" + seed_bytes,
    )
    # Inputs are data, not secrets: numpy's generator is fine here.
    data_rng = np.random.default_rng(seed)
    headroom = max(1, bit_width - int(np.ceil(np.log2(clients))) - 1)
    high = 1 << min(headroom, 62)
    # A few distinct vectors shared round-robin keep the memory of a
    # 1000-client x 10^6 run small; the sum still differs per dropout pattern.
    distinct = [data_rng.integers(-high, high, size=length, dtype=np.int64) for _ in range(8)]
    inputs = [distinct[u % len(distinct)] for u in range(clients)]
    round_ = {
        "R0": Round.R0_ADVERTISE_KEYS,
        "R1": Round.R1_SHARE_KEYS,
        "R2": Round.R2_MASKED_INPUT_COLLECTION,
        "R3": Round.R3_CONSISTENCY_CHECK,
        "R4": Round.R4_UNMASKING,
    }[drop_round.upper()]
    n_drop = round(dropout * clients)
    # Drop clients spread over the id space (not only the last ones).
    drop_ids = [int(x) for x in data_rng.choice(np.arange(1, clients + 1), n_drop, replace=False)]
    dropouts = dict.fromkeys(drop_ids, round_)

    t0 = time.perf_counter()
    sim = simulate(config, inputs, dropouts=dropouts)
    wall = time.perf_counter() - t0

    from benchmarks.parallel import simulate_parallel

    t0 = time.perf_counter()
    par_aggregate, par_survivors, _, _ = simulate_parallel(config, inputs, dropouts=dropouts)
    parallel_wall = time.perf_counter() - t0

    survivors = set(sim.result.survivors)
    expected = np.zeros(length, np.int64)
    for u, x in zip(config.participants, inputs, strict=True):
        if u in survivors:
            expected += x
    exact = bool(np.array_equal(sim.aggregate, expected)) and bool(
        np.array_equal(par_aggregate, expected) and set(par_survivors) == survivors
    )

    costs = PrimitiveCosts.measure(length, bit_width, t, k)
    model_client, model_server = _cost_model(config, costs, dropouts, sim.result.survivors)
    client_s = sum(sim.client_seconds.values())
    sent = [sim.bytes_sent[u] + sim.bytes_received[u] for u in config.participants]
    masked_bytes = config.packed_size
    return {
        "clients": clients,
        "length": length,
        "graph": graph_kind.value,
        "degree": k,
        "threshold": t,
        "mode": mode_.value,
        "bit_width": bit_width,
        "dropout": dropout,
        "drop_round": drop_round.upper(),
        "dropped": len(drop_ids),
        "survivors": len(survivors),
        "wall_s": round(wall, 4),
        # The same session with the clients on 2 worker processes (2 cores).
        "parallel_wall_s": round(parallel_wall, 4),
        "client_s": round(client_s, 4),
        "server_s": round(sim.server_seconds, 4),
        "model_s": round(model_client + model_server, 4),
        "model_client_s": round(model_client, 4),
        "model_server_s": round(model_server, 4),
        "client_over_model": round(client_s / model_client, 3) if model_client else None,
        "server_over_model": round(sim.server_seconds / model_server, 3) if model_server else None,
        "bytes_per_client": int(np.mean(sent)),
        "masked_vector_bytes": masked_bytes,
        "masked_vector_overhead": round(masked_bytes / (bit_width / 8 * length) - 1, 6),
        "exact": exact,
        "reference": {
            "keystream_GBps": round(costs.keystream_gbps, 2),
            "mask_ms": round(costs.mask * 1e3, 4),
            "x25519_hkdf_us": round(costs.agree * 1e6, 2),
            "shamir_split_per_holder_us": round(costs.split_per_holder * 1e6, 2),
            "shamir_reconstruct_us": round(costs.reconstruct * 1e6, 2),
            "aead_us": round(costs.aead * 1e6, 2),
            "ed25519_sign_us": round(costs.sign * 1e6, 2),
            "ed25519_verify_us": round(costs.verify * 1e6, 2),
        },
    }


def _cost_model(
    config: SessionConfig,
    costs: PrimitiveCosts,
    dropouts: dict[int, Round],
    survivors: tuple[int, ...],
) -> tuple[float, float]:
    """Primitive cost of the round that actually ran, client side and server side."""
    order = [
        Round.R0_ADVERTISE_KEYS,
        Round.R1_SHARE_KEYS,
        Round.R2_MASKED_INPUT_COLLECTION,
        Round.R3_CONSISTENCY_CHECK,
        Round.R4_UNMASKING,
    ]

    def sent(u: int, r: Round) -> bool:
        return u not in dropouts or order.index(dropouts[u]) > order.index(r)

    g = config.neighbour_graph
    parts = config.participants
    u1 = {u for u in parts if sent(u, Round.R0_ADVERTISE_KEYS)}
    u2 = {u for u in u1 if sent(u, Round.R1_SHARE_KEYS)}
    u3 = set(survivors)
    dropped = u2 - u3
    active = config.mode is Mode.ACTIVE
    client = 0.0
    for u in u1:
        n1 = len(g.neighbours(u) & u1)
        client += 2 * costs.keygen + costs.sign * active + costs.verify * active * (n1 + 1)
        if u not in u2:
            continue
        n2 = len(g.neighbours(u) & u2)
        client += n1 * (costs.agree + costs.aead + costs.split_per_holder)
        client += n2 * costs.aead
        if u in u3 or sent(u, Round.R2_MASKED_INPUT_COLLECTION):
            client += (n2 + 1) * costs.mask + n2 * costs.agree
    # Round 0: each advertised key is checked not to be small-order (one X25519).
    server = 2 * len(u1) * costs.agree
    server += len(u3) * costs.mask * 0.5  # accumulating a vector ~ half an expand+add
    server += len(u3) * (costs.mask + costs.reconstruct)
    needed = [d for d in dropped if g.neighbours(d) & u3]
    for d in needed:
        live = g.neighbours(d) & u3
        server += costs.reconstruct + costs.keygen + len(live) * (costs.agree + costs.mask)
    # Lagrange coefficients: one set per distinct group of first-t holders.
    t = config.threshold
    groups = {tuple(sorted(g.neighbours(o) & u3)[:t]) for o in [*u3, *needed]}
    server += len(groups) * costs.lagrange
    if active:
        server += len(u1) * costs.verify + len(u3) * costs.verify
    return client, server
