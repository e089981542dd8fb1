"""Test vectors of distributed DP, in ``specs/vectors/dp/`` (``specs/dp-v1.md`` §12).

Two files:

* ``encoding.json``: for each case, the ``DPParams`` (JSON), the session
  id, the update, the ``DeterministicRandom`` seed the client draws from,
  and every intermediate value of the client pipeline of dp-v1 §7: the
  rotation signs, the rounded vector, the noise, the encoded vector; then
  the centred sum of the case's clients and the server's decoded mean.
* ``samplers.json``: noise samples (dp-v1 §5) for given keys and variances,
  written from the independent scalar reference implementation of §5 in
  ``tests/protocol/dp/test_samplers.py``; replayed here against the code.

``secagg vectors write|check DIR`` writes ``encoding.json`` and checks both
in ``DIR/dp``.
Replaying recomputes every value from the inputs with the reference code
and compares exactly (floats as binary64, through their shortest repr).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from protocol.crypto import PRG_KEY_SIZE, DeterministicRandom, sha256
from protocol.dp import DPEncoding, DPParams, Mechanism
from protocol.dp.rotation import rotate, rotation_signs
from protocol.dp.rounding import conditional_round
from protocol.dp.samplers import sample_noise
from protocol.encoding import from_modular, to_modular

__all__ = ["check_dp_vectors", "generate_dp_vectors", "write_dp_vectors"]

SUBDIRECTORY: Final = "dp"
FORMAT_ENCODING: Final = "secagg-dp-v1-encoding"
FORMAT_SAMPLERS: Final = "dp-v1-sampler-vector"
SAMPLER_FILE: Final = "samplers.json"
"""Written from the scalar reference of dp-v1 §5 (``python -m tests.protocol.dp.test_samplers``)."""

Vector = dict[str, Any]


def _params(mechanism: Mechanism, dim: int, **kw: Any) -> DPParams:
    base: dict[str, Any] = dict(
        mechanism=mechanism,
        dim=dim,
        l2_clip=1.0,
        scale=50.0,
        beta=math.exp(-0.5),
        local_variance=40,
        min_honest=2,
        bits=16,
        epsilon_budget=10.0,
        delta=1e-5,
    )
    base.update(kw)
    return DPParams(**base)


_CASES: Final = (
    ("skellam_d5", _params(Mechanism.SKELLAM, 5), 0.4),
    ("ddgauss_d8", _params(Mechanism.DDGAUSS, 8), 0.7),
    ("skellam_clipped", _params(Mechanism.SKELLAM, 6, local_variance=1000), 3.0),
    ("ddgauss_unconditional", _params(Mechanism.DDGAUSS, 3, beta=0.0, scale=20.0), 0.9),
)
_CLIENTS: Final = 3


def _update(name: str, client: int, dim: int, norm: float) -> list[float]:
    # A fixed, readable update: coordinates from SHA-256, scaled to L2 norm `norm`.
    raw = sha256(f"{name}/{client}".encode()) * ((dim + 31) // 32)
    values = [(b - 127.5) / 127.5 for b in raw[:dim]]
    length = math.sqrt(math.fsum(v * v for v in values))
    return [round(v * norm / length, 6) for v in values]


def _client_case(
    name: str, params: DPParams, sid: bytes, client: int, norm: float
) -> dict[str, Any]:
    enc = DPEncoding(params)
    update = _update(name, client, params.dim, norm)
    seed = f"{name}/client/{client}".encode()
    x = np.array(update, dtype=np.float64)
    encoded = enc.encode(x, sid, DeterministicRandom(seed))
    # The intermediate values, recomputed step by step (dp-v1 §7).
    rng = DeterministicRandom(seed)
    round_key = rng.random_bytes(32)[:PRG_KEY_SIZE]
    noise_key = rng.random_bytes(32)[:PRG_KEY_SIZE]
    y = rotate(enc.clip(x), rotation_signs(sid, params.dim))
    np.multiply(y, float(params.scale), out=y)
    rounded, attempts = conditional_round(y, round_key, params.l2_sensitivity)
    noise = sample_noise(params.mechanism, noise_key, params.local_variance, params.dim)
    if (rounded + noise).tolist() != encoded[:-1].tolist():
        raise AssertionError(f"{name}: the pipeline's steps disagree with DPEncoding.encode")
    return {
        "client": client,
        "rng_seed": seed.hex(),
        "update": update,
        "round_key": round_key.hex(),
        "noise_key": noise_key.hex(),
        "rounding_attempts": attempts,
        "rounded": [int(v) for v in rounded],
        "noise": [int(v) for v in noise],
        "encoded": [int(v) for v in encoded],
    }


def _encoding() -> Vector:
    cases = []
    for name, params, norm in _CASES:
        sid = sha256(f"dp-vector/{name}".encode())
        clients = [_client_case(name, params, sid, u, norm) for u in range(1, _CLIENTS + 1)]
        total = np.zeros(params.vector_length, dtype=np.uint64)
        for c in clients:
            total = (total + to_modular(np.array(c["encoded"], np.int64), params.bits)) & np.uint64(
                (1 << params.bits) - 1
            )
        lifted = from_modular(total.astype(np.uint64), params.bits)
        mean, count = DPEncoding(params).decode(lifted, sid)
        signs = rotation_signs(sid, params.dim)
        cases.append(
            {
                "name": name,
                "params": params.to_json(),
                "context": params.context().hex(),
                "session_id": sid.hex(),
                "rotation_block": params.rotation_block,
                "l2_sensitivity": params.l2_sensitivity,
                "rotation_signs": "".join("+" if s > 0 else "-" for s in signs),
                "clients": clients,
                "sum": [int(v) for v in lifted],
                "count": count,
                "mean": [float(v) for v in mean],
            }
        )
    return {
        "format": FORMAT_ENCODING,
        "description": (
            "dp-v1 §7 client pipeline and server decoding. Per client: the update, "
            "the DeterministicRandom seed (two 32-byte draws: rounding, then noise; keys are "
            "their first 16 bytes), the rounded vector (§6), the noise (§5) and the encoded "
            "vector (rounded + noise, then the count slot 1). 'sum' is the centred lift of "
            "the clients' encodings summed modulo 2^bits; 'mean' is the decoded mean."
        ),
        "cases": cases,
    }


def generate_dp_vectors() -> dict[str, Vector]:
    """Every vector of this module, keyed by file name (relative to ``dp/``)."""
    return {"encoding.json": _encoding()}


def _check_encoding(vector: Mapping[str, Any]) -> None:
    for case in vector["cases"]:
        params = DPParams.from_json(case["params"])
        sid = bytes.fromhex(case["session_id"])
        enc = DPEncoding(params)
        if params.context().hex() != case["context"]:
            raise AssertionError(f"{case['name']}: context differs")
        signs = rotation_signs(sid, params.dim)
        if "".join("+" if s > 0 else "-" for s in signs) != case["rotation_signs"]:
            raise AssertionError(f"{case['name']}: rotation signs differ")
        total = np.zeros(params.vector_length, dtype=np.int64)
        for c in case["clients"]:
            x = np.array(c["update"], dtype=np.float64)
            got = enc.encode(x, sid, DeterministicRandom(bytes.fromhex(c["rng_seed"])))
            if got.tolist() != c["encoded"]:
                raise AssertionError(f"{case['name']} client {c['client']}: encoding differs")
            if [a + b for a, b in zip(c["rounded"], c["noise"], strict=True)] + [1] != c["encoded"]:
                raise AssertionError(f"{case['name']}: encoded != rounded + noise, 1")
            total += got
        modulus = 1 << params.bits
        lifted = [((int(v) + modulus // 2) % modulus) - modulus // 2 for v in total]
        if lifted != case["sum"]:
            raise AssertionError(f"{case['name']}: the sum differs")
        mean, count = enc.decode(np.array(case["sum"], dtype=np.int64), sid)
        if count != case["count"] or [float(v) for v in mean] != case["mean"]:
            raise AssertionError(f"{case['name']}: the decoded mean differs")


def _check_samplers(vector: Mapping[str, Any]) -> None:
    for case in vector["cases"]:
        got = sample_noise(
            Mechanism(case["mechanism"]), bytes.fromhex(case["key"]), case["variance"], case["size"]
        )
        if got.tolist() != case["expected"]:
            raise AssertionError(f"{case['mechanism']} variance {case['variance']}: differ")


def check_dp_vector(vector: Mapping[str, Any]) -> None:
    """Replay one vector of this module; raises on the first disagreement."""
    fmt = vector.get("format")
    if fmt == FORMAT_ENCODING:
        _check_encoding(vector)
    elif fmt == FORMAT_SAMPLERS:
        _check_samplers(vector)
    else:
        raise AssertionError(f"unknown DP vector format {fmt!r}")


def _dumps(vector: Vector) -> bytes:
    return (json.dumps(vector, indent=1) + "\n").encode()


def write_dp_vectors(directory: Path) -> int:
    """Write every vector into ``directory/dp``; returns how many."""
    target = directory / SUBDIRECTORY
    target.mkdir(parents=True, exist_ok=True)
    vectors = generate_dp_vectors()
    for name, vector in sorted(vectors.items()):
        (target / name).write_bytes(_dumps(vector))
    return len(vectors)


def check_dp_vectors(directory: Path, *, replay_only: bool = False) -> list[str]:
    """Problems found in ``directory/dp`` (empty: every file matches and replays)."""
    target = directory / SUBDIRECTORY
    on_disk = {p.name: p.read_bytes() for p in sorted(target.glob("*.json"))}
    problems: list[str] = []
    if not replay_only:
        generated = {n: _dumps(v) for n, v in generate_dp_vectors().items()}
        problems += [f"missing: dp/{n}" for n in sorted(generated.keys() - on_disk.keys())]
        problems += [
            f"extra: dp/{n}" for n in sorted(on_disk.keys() - generated.keys() - {SAMPLER_FILE})
        ]
        problems += [
            f"differs: dp/{n}"
            for n in sorted(generated.keys() & on_disk.keys())
            if generated[n] != on_disk[n]
        ]
    for name, data in on_disk.items():
        try:
            check_dp_vector(json.loads(data))
        except Exception as exc:  # report every file, whatever is wrong with it
            problems.append(f"replay failed: dp/{name}: {exc}")
    return problems
