"""``make bench``: the protocol's performance targets, one JSON object per line.

Each figure comes with its primitive-cost model measured in the same run
(see ``benchmarks.bench``), so results from different machines stay comparable.
Set ``SECAGG_BENCH_QUICK=1`` to skip the n=1000 x 10^6 run.
"""

from __future__ import annotations

import json
import os
import sys

from benchmarks.bench import run_bench

RUNS: list[dict[str, object]] = [
    # complete graph, n=50, 10^5 elements, 10% dropped in R2 (target <= 0.6 s)
    {"clients": 50, "length": 100_000, "graph": "complete", "degree": None},
    # SecAgg+ n=200, k=31, 10% dropped (target <= 1.2 s)
    {"clients": 200, "length": 100_000, "graph": "harary", "degree": 31},
    # active mode on the complete graph
    {"clients": 50, "length": 100_000, "graph": "complete", "degree": None, "mode": "active"},
    # drops in the other rounds
    {"clients": 50, "length": 100_000, "graph": "complete", "degree": None, "drop_round": "R1"},
    {"clients": 50, "length": 100_000, "graph": "complete", "degree": None, "drop_round": "R4"},
    # n=1000, 10^6 elements, derived SecAgg+ parameters (target <= 60 s)
    {"clients": 1000, "length": 1_000_000, "graph": "harary", "degree": None, "large": True},
]


def main() -> int:
    quick = os.environ.get("SECAGG_BENCH_QUICK") == "1"
    ok = True
    for spec in RUNS:
        if spec.get("large") and quick:
            continue
        report = run_bench(
            clients=int(spec["clients"]),  # type: ignore[call-overload]
            length=int(spec["length"]),  # type: ignore[call-overload]
            dropout=0.1,
            graph=str(spec["graph"]),
            degree=spec["degree"],  # type: ignore[arg-type]
            threshold=None,
            mode=str(spec.get("mode", "semi-honest")),
            drop_round=str(spec.get("drop_round", "R2")),
            bit_width=32,
            seed=0,
        )
        print(json.dumps(report), flush=True)
        ok = ok and bool(report["exact"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
