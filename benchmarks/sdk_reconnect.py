"""How fast SDK clients come back after a server outage, under a RetryPolicy.

A model of :class:`client_sdk.transport.SignedTransport`'s waits (the same
``RetryPolicy.delay`` draws, no network): for each outage length, the time
from the server being back to a client's first successful attempt, the
attempts one client makes, and the attempts per second a fleet sends while
the server is down. One JSON object per line::

    .venv/bin/python -m benchmarks.sdk_reconnect [--clients 1000] [--trials 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from client_sdk.transport import RetryPolicy

OUTAGES_S = (5.0, 30.0, 60.0, 180.0, 300.0, 590.0)


def _one_client(policy: RetryPolicy, outage_s: float, rng: random.Random) -> tuple[float, int]:
    """(seconds from the server's return to the first answered attempt, attempts)."""
    t, attempts = 0.0, 0
    while True:
        attempts += 1
        if t >= outage_s:
            return t - outage_s, attempts
        t += policy.delay(attempts, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="fleet size for the load")
    parser.add_argument("--trials", type=int, default=20_000, help="simulated clients per row")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    policy = RetryPolicy()
    rng = random.Random(args.seed)  # a model of jitter, not secret material
    for outage in OUTAGES_S:
        runs = [_one_client(policy, outage, rng) for _ in range(args.trials)]
        back = sorted(r[0] for r in runs)
        attempts = [r[1] for r in runs]
        # Attempts made while the server was down, per second, by the whole fleet.
        failed = statistics.mean(a - 1 for a in attempts)
        row = {
            "policy": policy.__dict__,
            "outage_s": outage,
            "reconnect_after_back_s": {
                "median": round(statistics.median(back), 2),
                "p95": round(back[int(0.95 * len(back))], 2),
                "max": round(back[-1], 2),
            },
            "attempts_per_client_median": statistics.median(attempts),
            "fleet_attempts_per_s_while_down": round(args.clients * failed / outage, 1),
            "clients": args.clients,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
