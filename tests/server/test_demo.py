"""`secagg demo` end to end (shortened): real server process, ten client processes, TLS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from examples.digits.run import run_demo


@pytest.mark.slow
def test_demo_matches_plaintext_fedavg_with_dropouts(tmp_path: Path) -> None:
    # Round 1 loses a client before sharing keys, round 2 one before masking,
    # round 3 one before unmasking.
    with (tmp_path / "console.txt").open("w") as out:
        summary = run_demo(
            tmp_path,
            rounds=3,
            drops={1: (2, "R1"), 2: (4, "R2"), 3: (6, "R4")},
            console=Console(file=out),
        )
    assert summary["rounds_completed"] == 3
    assert summary["accuracy_gap_points"] <= 0.5
    assert summary["dropouts_survived"] == 3
    assert summary["secure_accuracy"] > 0.5
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "secure_accuracy",
        "plaintext_accuracy",
        "central_accuracy",
        "rounds",
        "bytes_per_client_per_round",
        "seconds_per_round",
        "dropouts_survived",
    ):
        assert key in on_disk
