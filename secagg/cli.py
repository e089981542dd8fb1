"""The ``secagg`` command line: ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from protocol import (
    FixedPointEncoding,
    Round,
    RoundAborted,
    SystemRandom,
    make_config,
    simulate,
)


def _demo(args: argparse.Namespace) -> int:
    """A simulated secure aggregation of float model updates, with dropouts."""
    n, length = args.clients, args.length
    encoding = FixedPointEncoding(clip=1.0, scale=float(1 << 16), max_weight=1000)
    bits = encoding.required_bit_width(n)
    config = make_config(n, length + 1, bit_width=bits, seed=b"demo", context=encoding.context())
    data = np.random.default_rng(args.seed)  # the updates are data, not secrets
    updates = [data.normal(0, 0.3, length).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in data.integers(10, 1000, n)]
    rng = SystemRandom()
    encoded = [encoding.encode(x, w, rng) for x, w in zip(updates, weights, strict=True)]
    dropouts = {2: Round.R1_SHARE_KEYS, 5: Round.R2_MASKED_INPUT_COLLECTION, 7: Round.R4_UNMASKING}
    t0 = time.perf_counter()
    try:
        sim = simulate(config, encoded, dropouts=dropouts)
    except RoundAborted as exc:
        print(f"round aborted: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    mean, total_weight = encoding.decode(sim.aggregate)
    survivors = sim.result.survivors
    exact = np.zeros(length + 1, np.int64)
    for u in survivors:
        exact += encoded[u - 1]
    plain = sum(
        weights[u - 1] * np.clip(updates[u - 1].astype(np.float64), -1, 1) for u in survivors
    ) / sum(weights[u - 1] for u in survivors)
    print(f"secure aggregation of {n} clients x {length} parameters, {bits}-bit arithmetic")
    print("  dropped: client 2 before sharing keys, 5 before masking, 7 before unmasking")
    print(f"  survivors in the sum: {list(survivors)}")
    print(f"  total weight (computed inside the secure sum): {total_weight}")
    print(
        f"  unmasked sum == sum of quantised inputs: {bool(np.array_equal(sim.aggregate, exact))}"
    )
    print(
        f"  max |secure weighted mean - plaintext weighted mean|: "
        f"{float(np.max(np.abs(mean - plain))):.2e}"
    )
    print(
        f"  wall {wall:.3f} s, server {sim.server_seconds:.3f} s, "
        f"bytes per client {int(np.mean(list(sim.bytes_sent.values())))}"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from secagg.bench import run_bench

    report = run_bench(
        clients=args.clients,
        length=args.length,
        dropout=args.dropout,
        graph=args.graph,
        degree=args.degree,
        threshold=args.threshold,
        mode=args.mode,
        drop_round=args.drop_round,
        bit_width=args.bit_width,
        seed=args.seed,
    )
    print(json.dumps(report))
    return 0 if report["exact"] else 1


def _vectors(args: argparse.Namespace) -> int:
    """Write the transcript test vectors to DIR, or check DIR against them."""
    from pathlib import Path

    from protocol.testvectors import check_vector, dumps_vector, generate_all

    directory = Path(args.dir)
    generated = {name: dumps_vector(v).encode() for name, v in generate_all().items()}
    if args.action == "write":
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in sorted(generated.items()):
            (directory / name).write_bytes(data)
        print(f"wrote {len(generated)} vectors to {directory}")
        for path in sorted(directory.glob("*.json")):
            if path.name not in generated:
                print(f"warning: {path} is not a generated vector", file=sys.stderr)
        return 0

    if not directory.is_dir():
        print(f"error: {directory} is not a directory", file=sys.stderr)
        return 1
    on_disk = {p.name: p.read_bytes() for p in sorted(directory.glob("*.json"))}
    problems: list[str] = [] if on_disk else [f"no vector files in {directory}"]
    if not args.replay_only:
        problems += [f"missing: {n}" for n in sorted(generated.keys() - on_disk.keys())]
        problems += [f"extra: {n}" for n in sorted(on_disk.keys() - generated.keys())]
        for name in sorted(generated.keys() & on_disk.keys()):
            if on_disk[name] != generated[name]:
                ours, theirs = generated[name].splitlines(), on_disk[name].splitlines()
                line = next(
                    (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    min(len(ours), len(theirs)),
                )
                problems.append(f"differs: {name} (first at line {line + 1})")
    for name, data in on_disk.items():
        try:
            check_vector(json.loads(data))
        except Exception as exc:  # report every file, whatever is wrong with it
            problems.append(f"replay failed: {name}: {exc}")
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"{len(on_disk)} vector files in {directory} replayed; "
        f"{'OK' if not problems else f'{len(problems)} problem(s)'}"
    )
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secagg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a simulated secure aggregation round")
    demo.add_argument("--clients", type=int, default=10)
    demo.add_argument("--length", type=int, default=10_000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="time one simulated round; prints JSON")
    bench.add_argument("--clients", type=int, default=50)
    bench.add_argument("--length", type=int, default=100_000)
    bench.add_argument("--dropout", type=float, default=0.1)
    bench.add_argument("--graph", choices=["complete", "harary"], default="complete")
    bench.add_argument("--degree", type=int, default=None)
    bench.add_argument("--threshold", type=int, default=None)
    bench.add_argument("--mode", choices=["semi-honest", "active"], default="semi-honest")
    bench.add_argument("--drop-round", choices=["R0", "R1", "R2", "R3", "R4"], default="R2")
    bench.add_argument("--bit-width", type=int, default=32)
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(func=_bench)

    vectors = sub.add_parser(
        "vectors", help="write or check the transcript test vectors (specs/vectors)"
    )
    vectors.add_argument("action", choices=["write", "check"])
    vectors.add_argument("dir", help="directory of <name>.json vector files")
    vectors.add_argument(
        "--replay-only",
        action="store_true",
        help="check: only replay the files (e.g. from another implementation), no diff",
    )
    vectors.set_defaults(func=_vectors)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
