"""``make bench``: federated learning with distributed DP on LEAF Synthetic(1, 1), as JSON.

The learning benchmark of specs/dp-v1.md: multinomial logistic regression
(``d = 60 * 10 + 10 = 610`` weights, numpy only) trained with FedAvg on
Synthetic(1, 1) (:mod:`benchmarks.leaf_synthetic`), 1000 devices, cohorts of
100 per round. Every arm uses the same data, the same cohorts, the same local
SGD minibatches and the same hyperparameters; only the aggregation differs:

- ``plaintext``: FedAvg, unclipped float mean of the updates;
- ``clipped``: each update clipped to L2 norm ``c``, float mean, no noise
  (the ``epsilon = inf`` point of every DP curve);
- ``central``: a trusted server adds ``N(0, (z c)**2)`` to the sum of the
  clipped updates, ``z`` the Gaussian mechanism's noise multiplier for
  ``participations`` compositions at ``(epsilon, delta)`` (RDP accounting);
- ``skellam`` / ``ddgauss``: distributed DP through the real protocol path:
  every client of the cohort encodes its update with
  :class:`protocol.dp.DPEncoding` (clip, rotate, scale, conditional rounding,
  its share of discrete noise), the cohort runs one secure aggregation session
  (:func:`protocol.testing.simulate`: key agreement, Shamir shares, masking,
  unmasking, over the canonical message encodings), and the server decodes the
  unmasked sum. Parameters come from :func:`protocol.dp.calibrate.calibrate`
  for the *worst case* (``min_honest`` = the fewest survivors a round accepts
  minus the colluders a client assumes) and, for comparison, the *average case*
  (every cohort member honest and present).

Privacy unit and accounting: one client's whole update (user level), add or
remove one client, ``delta = 1e-5``. Clients are drawn in passes over the
population: each pass is a random permutation of the 1000 devices cut into
cohorts of 100, so every device takes part in exactly
``participations = rounds * 100 / 1000`` rounds. No amplification by
subsampling is claimed (the server picks cohorts; it is not trusted to sample
at random), so every participation spends the full per-round cost.

What the figures say about the task: Synthetic(1, 1) draws every device's
model ``(W_k, b_k)`` independently and its ten classes are exchangeable, so on
a device it never saw no global model beats chance (``unseen_devices_accuracy``
measures it on 200 devices, generated with the others, that never train). The
test accuracy FedAvg reaches on the training devices' held-out samples is
memorisation of those devices, which user-level DP bounds by design; a DP
model there stays near the class prior whatever the mechanism. The companion
run on Synthetic-IID (one model for all devices, same generator,
``synthetic_iid`` in the JSON) shows the mechanism's cost where the task has
population-level signal.

Run ``python -m benchmarks.dp_synthetic``. Environment knobs:
``SECAGG_DP_BENCH_ROUNDS`` (default 50, a multiple of ``devices / cohort``),
``SECAGG_DP_BENCH_QUICK=1`` (CI: 10 rounds, epsilon in {8, inf}, no average
case, DDG or Synthetic-IID run), ``SECAGG_DP_BENCH_EPSILONS``
(comma-separated, ``inf`` allowed), ``SECAGG_DP_BENCH_BITS``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.leaf_synthetic import NUM_CLASSES, NUM_FEATURES, FederatedData, generate_synthetic
from protocol.crypto import PRG_KEY_SIZE, DeterministicRandom, prg_fill
from protocol.dp import DPEncoding, DPParams, Mechanism
from protocol.dp.accounting import gaussian_noise_multiplier
from protocol.dp.calibrate import calibrate
from protocol.encoding import to_modular
from protocol.errors import ParameterError
from protocol.params import AdversaryClass, complete_graph_threshold, derive_parameters
from protocol.testing import make_config, simulate

DIM = NUM_FEATURES * NUM_CLASSES + NUM_CLASSES  # 610: W (60 x 10) row-major, then b (10)
FLOAT32_BITS = 32
UNSEEN_DEVICES = 200
# Synthetic-IID (the companion run): its updates are smaller and aligned.
IID_CLIENT_LR = 0.05
IID_SERVER_LR = 3.0
IID_L2_CLIP = 0.4

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines a run; printed in the JSON so a figure can be reproduced.

    Attributes:
        num_devices / cohort: population and clients per round.
        rounds: FedAvg rounds (a multiple of ``num_devices // cohort``, so that
            every device takes part equally often).
        local_epochs / batch_size / client_lr: local minibatch SGD on each
            client's own training data (one pass = one epoch).
        server_lr / server_momentum: the server's step: heavy-ball momentum on the
            aggregated mean update, ``v <- momentum v + mean``, ``w <- w + server_lr v``.
        l2_clip: ``c``, the L2 clip of one client's update (clipped and DP arms).
        delta: the ``delta`` of every DP statement.
        epsilons: the curve; ``inf`` means no noise (the ``clipped`` arm).
        bits: the modulus exponent ``b`` of the DP secure sum.
        min_survivors: a round aborts below this many survivors (a fraction of
            the cohort: the dropout rate the SecAgg+ graph is sized for).
        colluders: clients of a cohort that a client assumes collude with the
            server; their noise does not count.
        average_case: also run the average-case calibration (``min_honest = cohort``).
        ddgauss_epsilon: the epsilon of the one DDG arm, or None.
        alpha / beta / iid / max_samples: the data set (:func:`generate_synthetic`).
        data_seed / train_seed / protocol_seed: data; cohorts and minibatches;
            the protocol's (deterministic, public) randomness, for reproducibility.
    """

    num_devices: int = 1000
    cohort: int = 100
    rounds: int = 50
    local_epochs: int = 1
    batch_size: int = 10
    client_lr: float = 0.002
    server_lr: float = 5.0
    server_momentum: float = 0.0
    l2_clip: float = 0.3
    delta: float = 1e-5
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, math.inf)
    bits: int = 16
    min_survivors: int = 80
    colluders: int = 10
    average_case: bool = True
    ddgauss_epsilon: float | None = 8.0
    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    max_samples: int | None = 1000
    data_seed: int = 0
    train_seed: int = 1
    protocol_seed: int = 2

    @property
    def participations(self) -> int:
        """Rounds each device takes part in (exact: cohorts are cut from permutations)."""
        return self.rounds * self.cohort // self.num_devices

    @property
    def min_honest_worst(self) -> int:
        """``m`` of the worst case: the fewest survivors minus the assumed colluders."""
        return self.min_survivors - self.colluders


# ---------------------------------------------------------------------------
# Model: multinomial logistic regression, trained for a whole cohort at once.
# ---------------------------------------------------------------------------


def _softmax(logits: FloatArray) -> FloatArray:
    shifted: FloatArray = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def accuracy(weights: FloatArray, x: FloatArray, y: npt.NDArray[np.int64]) -> float:
    """Share of samples whose arg-max logit is the label."""
    w = weights[: NUM_FEATURES * NUM_CLASSES].reshape(NUM_FEATURES, NUM_CLASSES)
    b = weights[NUM_FEATURES * NUM_CLASSES :]
    return float(np.mean(np.argmax(x @ w + b, axis=1) == y))


def local_updates(
    weights: FloatArray,
    cohort: npt.NDArray[np.int64],
    data: FederatedData,
    config: BenchConfig,
    rng: np.random.Generator,
) -> FloatArray:
    """Each cohort member's update ``local model - global model`` (rows), unclipped.

    Every client runs ``local_epochs`` passes of minibatch SGD (cross-entropy,
    batch ``batch_size``, a fresh random order per pass) over its own training
    samples. The cohort is processed as one batched computation: step ``s`` of
    every client at once, a client whose pass is over (fewer samples) masked
    out. The minibatch order is data handling, not privacy noise: numpy's
    generator is fine here.
    """
    k = len(cohort)
    sizes = data.train_sizes[cohort]
    offsets = data.train_offsets[cohort]
    w = np.repeat(
        weights[: NUM_FEATURES * NUM_CLASSES].reshape(1, NUM_FEATURES, NUM_CLASSES), k, axis=0
    )
    b = np.repeat(weights[None, NUM_FEATURES * NUM_CLASSES :], k, axis=0)
    longest = int(sizes.max())
    steps = -(-longest // config.batch_size)
    rows = np.arange(k)[:, None]
    positions = np.arange(longest)
    for _ in range(config.local_epochs):
        keys = rng.random((k, longest))
        keys[positions[None, :] >= sizes[:, None]] = np.inf  # padding sorts last
        order = np.argsort(keys, axis=1)
        for s in range(steps):
            cols = positions[s * config.batch_size : (s + 1) * config.batch_size]
            valid = cols[None, :] < sizes[:, None]
            index = offsets[:, None] + np.where(valid, order[:, cols], 0)
            x = data.train_x[index]  # (k, batch, 60)
            probs = _softmax(np.einsum("kbi,kic->kbc", x, w) + b[:, None, :])
            probs[rows, np.arange(len(cols))[None, :], data.train_y[index]] -= 1.0
            probs *= valid[:, :, None]
            count = np.maximum(valid.sum(axis=1), 1).astype(np.float64)
            # A client with no valid sample in this step gets a zero gradient.
            w -= config.client_lr * np.einsum("kbi,kbc->kic", x, probs) / count[:, None, None]
            b -= config.client_lr * probs.sum(axis=1) / count[:, None]
    local = np.concatenate([w.reshape(k, -1), b], axis=1)
    return local - weights[None, :]


def clip_rows(updates: FloatArray, l2_clip: float) -> FloatArray:
    """Each row scaled to L2 norm at most ``l2_clip`` (a new array)."""
    norms = np.linalg.norm(updates, axis=1)
    factors = np.minimum(1.0, l2_clip / np.maximum(norms, np.finfo(np.float64).tiny))
    clipped: FloatArray = updates * factors[:, None]
    return clipped


# ---------------------------------------------------------------------------
# Accounting for the central baseline, and calibration of the distributed arms.
# ---------------------------------------------------------------------------


def calibrate_params(
    mechanism: Mechanism, config: BenchConfig, epsilon: float, min_honest: int
) -> DPParams:
    """The round parameters of a distributed arm, from ``protocol.dp.calibrate``."""
    return calibrate(
        mechanism,
        dim=DIM,
        l2_clip=config.l2_clip,
        epsilon=epsilon,
        delta=config.delta,
        participations=config.participations,
        min_honest=min_honest,
        num_clients=config.cohort,
        bits=config.bits,
    )


# ---------------------------------------------------------------------------
# Aggregators: the only thing that differs between arms.
# ---------------------------------------------------------------------------


@dataclass
class RoundStats:
    """What an aggregator measured over a run (the DP arms fill the wire figures)."""

    exact_rounds: int = 0
    rounds: int = 0
    bytes_sent: list[float] = field(default_factory=list)
    bytes_received: list[float] = field(default_factory=list)
    protocol_seconds: float = 0.0
    encode_seconds: float = 0.0


Aggregator = Callable[[int, FloatArray, RoundStats], FloatArray]


def plaintext_mean(_round: int, updates: FloatArray, _stats: RoundStats) -> FloatArray:
    """FedAvg's float mean, unclipped."""
    return np.asarray(updates.mean(axis=0), dtype=np.float64)


def clipped_mean(l2_clip: float) -> Aggregator:
    """The mean of the clipped updates, no noise."""

    def aggregate(_round: int, updates: FloatArray, _stats: RoundStats) -> FloatArray:
        return np.asarray(clip_rows(updates, l2_clip).mean(axis=0), dtype=np.float64)

    return aggregate


def csprng_gaussian(key: bytes, size: int) -> FloatArray:
    """``size`` standard normals from the protocol CSPRNG (Box-Muller in binary64).

    For the central *baseline* only: floating-point Gaussian sampling is not
    an exact mechanism (Mironov, CCS 2012, on the Laplace analogue) and is
    never used inside the protocol, whose noise is sampled exactly over the
    integers. The uniforms come from ``prg_fill`` (AES-128-CTR), never from
    numpy's generators: 53 bits each, ``u1`` in ``(0, 1]`` so ``log`` is finite.
    """
    words = np.empty(2 * size, dtype=np.uint64)
    prg_fill(key, words)
    uniform = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u1 = 1.0 - uniform[:size]
    u2 = uniform[size:]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def central_gaussian(
    l2_clip: float, noise_multiplier: float, cohort: int, seed: bytes
) -> Aggregator:
    """A trusted server's Gaussian mechanism: ``(sum of clipped + N(0, (z c)^2)) / cohort``."""
    source = DeterministicRandom(seed)

    def aggregate(_round: int, updates: FloatArray, _stats: RoundStats) -> FloatArray:
        total = clip_rows(updates, l2_clip).sum(axis=0)
        noise = csprng_gaussian(source.random_bytes(PRG_KEY_SIZE), total.shape[0])
        return np.asarray((total + noise_multiplier * l2_clip * noise) / cohort, dtype=np.float64)

    return aggregate


@dataclass(frozen=True)
class SecAggGraph:
    """The cohort's sharing graph, sized for the benchmark's dropout and collusion rates."""

    kind: str  # "harary" (SecAgg+) or "complete" (SecAgg)
    degree: int
    threshold: int


def secagg_graph(config: BenchConfig) -> SecAggGraph:
    """SecAgg+ parameters for the cohort (``1 - min_survivors / cohort`` dropouts, colluders).

    Small cohorts (tests) have no admissible sparse graph; they use the
    complete graph with fcp's threshold, as the service does.
    """
    dropout_rate = 1.0 - config.min_survivors / config.cohort
    corrupt_rate = config.colluders / config.cohort
    adversary = AdversaryClass.SEMI_HONEST
    try:
        params = derive_parameters(config.cohort, dropout_rate, corrupt_rate, adversary)
    except ParameterError:
        t = complete_graph_threshold(config.cohort, dropout_rate, corrupt_rate, adversary)
        return SecAggGraph("complete", config.cohort - 1, t)
    return SecAggGraph("harary", params.degree, params.threshold)


def distributed_round(
    encoding: DPEncoding,
    updates: FloatArray,
    graph: SecAggGraph,
    seed: bytes,
) -> tuple[FloatArray, int, npt.NDArray[np.int64], npt.NDArray[np.int64], Any]:
    """One DP round through the protocol: encode, securely sum, decode.

    Args:
        encoding: the round's DP encoding (its parameters are bound into the session).
        updates: one row per cohort member (client ids ``1..n`` in row order).
        graph: the SecAgg+ graph's degree and threshold.
        seed: public seed of the session nonce and of every party's randomness
            (the benchmark's runs are reproducible; a deployment uses the OS CSPRNG).

    Returns:
        ``(decoded mean, count, unmasked sum (centred lift), the clients' encoded
        vectors (rows), the simulation result)``.
    """
    n = updates.shape[0]
    params = encoding.params
    config = make_config(
        n,
        encoding.vector_length,
        bit_width=encoding.required_bit_width(n),
        graph=graph.kind,
        degree=graph.degree,
        threshold=graph.threshold,
        seed=seed,
        context=encoding.context(),
    )
    session_id = config.session_id
    encoded = np.stack(
        [
            encoding.encode(
                updates[i],
                session_id,
                DeterministicRandom(seed + b"/dp/" + (i + 1).to_bytes(4, "big")),
            )
            for i in range(n)
        ]
    )
    inputs = [to_modular(row, params.bits) for row in encoded]
    result = simulate(config, inputs, seed=seed + b"/secagg")
    mean, count = encoding.decode(result.aggregate, session_id)
    return mean, count, result.aggregate, encoded, result


def independent_sum(encoded: npt.NDArray[np.int64], bits: int) -> npt.NDArray[np.int64]:
    """The centred lift of the encoded vectors summed mod ``2**bits``, without the protocol."""
    modulus = 1 << bits
    total = np.mod(encoded.sum(axis=0), modulus)  # int64 sum: |entries| < 2**bits, n < 2**20
    lifted: npt.NDArray[np.int64] = np.where(total >= modulus // 2, total - modulus, total)
    return lifted.astype(np.int64)


def distributed_dp(params: DPParams, graph: SecAggGraph, seed: bytes) -> Aggregator:
    """Distributed DP through the protocol; checks each sum against the independent sum."""
    encoding = DPEncoding(params)

    def aggregate(round_index: int, updates: FloatArray, stats: RoundStats) -> FloatArray:
        t0 = time.perf_counter()
        mean, count, total, encoded, result = distributed_round(
            encoding, updates, graph, seed + b"/round/" + round_index.to_bytes(4, "big")
        )
        stats.protocol_seconds += time.perf_counter() - t0
        n = updates.shape[0]
        stats.rounds += 1
        stats.exact_rounds += int(
            count == n and np.array_equal(total, independent_sum(encoded, params.bits))
        )
        stats.bytes_sent.append(sum(result.bytes_sent.values()) / n)
        stats.bytes_received.append(sum(result.bytes_received.values()) / n)
        return mean

    return aggregate


# ---------------------------------------------------------------------------
# Training loop and the report.
# ---------------------------------------------------------------------------


def cohorts(config: BenchConfig) -> list[npt.NDArray[np.int64]]:
    """Every round's cohort: passes of random permutations of the devices, cut in cohorts."""
    if config.num_devices % config.cohort or config.rounds % (config.num_devices // config.cohort):
        raise ValueError("rounds must be a whole number of passes over the devices")
    rng = np.random.default_rng([config.train_seed, 0])
    out: list[npt.NDArray[np.int64]] = []
    while len(out) < config.rounds:
        out.extend(rng.permutation(config.num_devices).reshape(-1, config.cohort))
    return out


def train(
    data: FederatedData, config: BenchConfig, aggregate: Aggregator
) -> tuple[list[float], RoundStats, float, FloatArray]:
    """FedAvg for ``config.rounds`` rounds: per-round test accuracy, stats, seconds, model."""
    t0 = time.perf_counter()
    sgd_rng = np.random.default_rng([config.train_seed, 1])  # the same minibatches in every arm
    weights = np.zeros(DIM)
    velocity = np.zeros(DIM)
    stats = RoundStats()
    history: list[float] = []
    for r, cohort in enumerate(cohorts(config)):
        updates = local_updates(weights, cohort, data, config, sgd_rng)
        velocity = config.server_momentum * velocity + aggregate(r, updates, stats)
        weights = weights + config.server_lr * velocity
        history.append(accuracy(weights, data.test_x, data.test_y))
    return history, stats, time.perf_counter() - t0, weights


def arm_report(
    run: tuple[list[float], RoundStats, float, FloatArray], unseen: FederatedData, **extra: Any
) -> dict[str, Any]:
    """Accuracy (final, mean over the last 5 rounds, on unseen devices) and the run's costs."""
    history, stats, seconds, weights = run
    report: dict[str, Any] = {
        "final_accuracy": round(history[-1], 4),
        "last5_accuracy": round(float(np.mean(history[-5:])), 4),
        "unseen_devices_accuracy": round(accuracy(weights, unseen.train_x, unseen.train_y), 4),
        "seconds": round(seconds, 2),
    }
    report.update(extra)
    if stats.rounds:
        report["exact_rounds"] = stats.exact_rounds
        report["rounds_checked"] = stats.rounds
        report["bytes_sent_per_client_round"] = round(float(np.mean(stats.bytes_sent)), 1)
        report["bytes_received_per_client_round"] = round(float(np.mean(stats.bytes_received)), 1)
        report["protocol_seconds"] = round(stats.protocol_seconds, 2)
    return report


def _eps_key(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def wire_figures(params: DPParams) -> dict[str, Any]:
    """Bits on the wire: ``b (d + 1) / d`` per model weight (the count slot), against float32."""
    masked_bytes = -(-params.bits * params.vector_length // 8)
    return {
        "bits": params.bits,
        "vector_length": params.vector_length,
        "bits_per_parameter": round(params.bits * params.vector_length / params.dim, 3),
        "masked_input_bytes": masked_bytes,
        "float32_bytes": FLOAT32_BITS // 8 * params.dim,
    }


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Run every arm and return the report (one JSON object)."""
    started = time.perf_counter()
    # One generation of ``num_devices + UNSEEN_DEVICES`` devices: the first
    # train, the last never do. Synthetic(alpha, beta) draws every device's
    # model independently and its classes are exchangeable, so on a new device
    # no global model beats chance (1/10) by more than sampling error, and the
    # accuracy on the training devices' test samples is memorisation of those
    # devices, which user-level DP bounds by design. (Synthetic-IID devices
    # share one model: there the unseen devices are like any other.)
    everyone = generate_synthetic(
        config.alpha,
        config.beta,
        num_devices=config.num_devices + UNSEEN_DEVICES,
        seed=config.data_seed,
        max_samples=config.max_samples,
        iid=config.iid,
    )
    data = everyone.devices(0, config.num_devices)
    held_out = everyone.devices(config.num_devices, everyone.num_devices)
    unseen = replace(
        held_out,
        train_x=np.concatenate([held_out.train_x, held_out.test_x]),
        train_y=np.concatenate([held_out.train_y, held_out.test_y]),
    )
    graph = secagg_graph(config)
    seed = b"dp-synthetic/" + str(config.protocol_seed).encode()
    arms: dict[str, Any] = {}

    arms["plaintext"] = arm_report(
        train(data, config, plaintext_mean), unseen, bits_per_parameter=FLOAT32_BITS
    )
    plaintext = arms["plaintext"]
    arms["clipped"] = arm_report(
        train(data, config, clipped_mean(config.l2_clip)), unseen, bits_per_parameter=FLOAT32_BITS
    )

    finite = [e for e in config.epsilons if math.isfinite(e)]
    central: dict[str, Any] = {}
    for epsilon in finite:
        z = gaussian_noise_multiplier(epsilon, config.delta, config.participations)
        aggregate = central_gaussian(
            config.l2_clip, z, config.cohort, seed + b"/central/" + _eps_key(epsilon).encode()
        )
        central[_eps_key(epsilon)] = arm_report(
            train(data, config, aggregate), unseen, noise_multiplier=round(z, 4)
        )
    arms["central"] = central

    distributed_arms: list[tuple[str, Mechanism, list[float], int]] = [
        ("skellam_worst_case", Mechanism.SKELLAM, finite, config.min_honest_worst)
    ]
    if config.average_case:
        distributed_arms.append(("skellam_average_case", Mechanism.SKELLAM, finite, config.cohort))
    if config.ddgauss_epsilon is not None:
        distributed_arms.append(
            (
                "ddgauss_worst_case",
                Mechanism.DDGAUSS,
                [config.ddgauss_epsilon],
                config.min_honest_worst,
            )
        )
    for name, mechanism, epsilons, min_honest in distributed_arms:
        results: dict[str, Any] = {}
        for epsilon in epsilons:
            params = calibrate_params(mechanism, config, epsilon, min_honest)
            aggregate = distributed_dp(params, graph, seed + f"/{name}/{epsilon:g}".encode())
            results[_eps_key(epsilon)] = arm_report(
                train(data, config, aggregate),
                unseen,
                min_honest=min_honest,
                noise_multiplier=round(params.noise_multiplier, 4),
                scale=params.scale,
                local_variance=params.local_variance,
                **wire_figures(params),
            )
        arms[name] = results

    return {
        "benchmark": "dp_synthetic",
        "config": _config_json(config, data, graph),
        "arms": arms,
        "acceptance": acceptance(arms, plaintext, config),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _config_json(config: BenchConfig, data: FederatedData, graph: SecAggGraph) -> dict[str, Any]:
    out = asdict(config)
    out["epsilons"] = [_eps_key(e) for e in config.epsilons]
    out["dim"] = DIM
    out["participations"] = config.participations
    out["min_honest_worst_case"] = config.min_honest_worst
    out["min_honest_average_case"] = config.cohort
    out["train_samples"] = int(data.train_sizes.sum())
    out["test_samples"] = int(data.test_sizes.sum())
    out["secagg_graph"] = asdict(graph)
    out["accuracy_metric"] = (
        "pooled test accuracy of the global model; last5 = mean over the last 5 rounds"
    )
    return out


def acceptance(
    arms: dict[str, Any], plaintext: dict[str, Any], config: BenchConfig
) -> dict[str, Any]:
    """The issue's learning checks, next to the figures they are computed from (last-5 accuracy)."""
    checks: dict[str, Any] = {}
    worst = arms.get("skellam_worst_case", {})
    for key, result in worst.items():
        if "last5_accuracy" not in result or float(key) > 8:
            continue
        gap_plain = plaintext["last5_accuracy"] - result["last5_accuracy"]
        central = arms["central"].get(key, {})
        gap_central = central.get("last5_accuracy", math.nan) - result["last5_accuracy"]
        checks[f"eps_{key}"] = {
            "skellam_minus_plaintext_points": round(-100 * gap_plain, 2),
            "skellam_minus_central_points": round(-100 * gap_central, 2),
            "within_3_points_of_plaintext": bool(gap_plain <= 0.03),
            "within_1_point_of_central": bool(abs(gap_central) <= 0.01),
            "bits_at_most_20": bool(result["bits"] <= 20),
            "bits_per_parameter_below_float32": bool(result["bits_per_parameter"] < FLOAT32_BITS),
            "every_sum_exact": bool(result["exact_rounds"] == result["rounds_checked"]),
        }
    checks["pass_at_some_eps_le_8"] = any(
        c["within_3_points_of_plaintext"]
        and c["within_1_point_of_central"]
        and c["bits_at_most_20"]
        for c in checks.values()
        if isinstance(c, dict)
    )
    return checks


def config_from_env(environ: dict[str, str] | None = None) -> BenchConfig:
    """The run's configuration from the ``SECAGG_DP_BENCH_*`` knobs (module docstring)."""
    env = dict(os.environ if environ is None else environ)
    config = BenchConfig()
    if env.get("SECAGG_DP_BENCH_QUICK") == "1":
        config = replace(
            config, rounds=10, epsilons=(8.0, math.inf), average_case=False, ddgauss_epsilon=None
        )
    if "SECAGG_DP_BENCH_ROUNDS" in env:
        config = replace(config, rounds=int(env["SECAGG_DP_BENCH_ROUNDS"]))
    if "SECAGG_DP_BENCH_EPSILONS" in env:
        config = replace(
            config,
            epsilons=tuple(float(e) for e in env["SECAGG_DP_BENCH_EPSILONS"].split(",")),
        )
    if "SECAGG_DP_BENCH_BITS" in env:
        config = replace(config, bits=int(env["SECAGG_DP_BENCH_BITS"]))
    return config


def iid_config(config: BenchConfig) -> BenchConfig:
    """The Synthetic-IID companion run: the same protocol, tuned for that data set.

    Synthetic-IID has one model for every device, so there is population-level
    signal for a DP model to learn; its figures show what the mechanism costs
    when the task allows private learning at all. Fewer arms: the worst-case
    Skellam arm only (no average case, no DDG).
    """
    return replace(
        config,
        iid=True,
        client_lr=IID_CLIENT_LR,
        server_lr=IID_SERVER_LR,
        l2_clip=IID_L2_CLIP,
        average_case=False,
        ddgauss_epsilon=None,
    )


def _all_exact(report: dict[str, Any]) -> bool:
    return all(
        r.get("exact_rounds") == r.get("rounds_checked")
        for name, arm in report["arms"].items()
        if name.endswith("_case")
        for r in arm.values()
    )


def main() -> int:
    config = config_from_env()
    report = run_benchmark(config)
    if os.environ.get("SECAGG_DP_BENCH_QUICK") != "1":
        report["synthetic_iid"] = run_benchmark(iid_config(config))
        report["seconds"] = round(report["seconds"] + report["synthetic_iid"]["seconds"], 1)
    print(json.dumps(report), flush=True)
    exact = _all_exact(report) and _all_exact(report.get("synthetic_iid", {"arms": {}}))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
