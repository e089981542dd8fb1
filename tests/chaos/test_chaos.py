"""The chaos test (issue 7): a real server on PostgreSQL, real clients, SIGKILLs, cut connections.

The short variant runs under ``make test``; ``make chaos`` runs the longer one
(more rounds and faults, ``CHAOS_SEED`` picks the plan). What is checked is
listed in ``tests.chaos.harness.INVARIANTS``; the report names every
violation, the plan and the work directory (logs of every process).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.chaos.harness import INVARIANTS, SHORT, PostgresUnavailable, make_plan, run_chaos


def test_plan_is_drawn_from_the_seed_and_covers_every_stage() -> None:
    plan = make_plan(replace(SHORT, seed=3, client_kills=14))
    assert plan == make_plan(replace(SHORT, seed=3, client_kills=14))
    assert sorted(plan.kill_stages) == sorted(
        ["checkin", "training", "R0", "R1", "R2", "R3", "R4"] * 2
    )
    assert plan != make_plan(replace(SHORT, seed=4, client_kills=14))
    assert plan.slow_index is not None and 0 <= plan.slow_index < SHORT.clients


@pytest.mark.slow
def test_chaos_short(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or SHORT.seed)
    try:
        report = run_chaos(replace(SHORT, seed=seed), tmp_path)
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    assert set(report.violations) == set(INVARIANTS)
    assert not report.failed, report.summary()
