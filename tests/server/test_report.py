"""secagg.report: the per-round plot and page from a task detail, and `secagg report`."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from secagg.cli import app
from secagg.report import render_report, round_points
from tests.server.helpers import ADMIN, admin, running_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stage(dropouts: int = 0, b_in: int = 1000, b_out: int = 500) -> dict[str, Any]:
    return {
        "participants": 5,
        "dropouts": dropouts,
        "seconds": 0.1,
        "bytes_in": b_in,
        "bytes_out": b_out,
    }


def detail() -> dict[str, Any]:
    completed = {
        "eval_accuracy": 0.5,
        "eval_loss": 0.7,
        "eval_examples": 40,
        "train_examples": 100,
        "survivors": 4,
        "dropped": 1,
    }
    return {
        "id": 7,
        "name": "digits",
        "status": "active",
        "rounds": 5,
        "completed_rounds": 2,
        "rounds_detail": [
            {
                "number": 3,
                "status": "completed",
                "abort_reason": None,
                "metrics": {**completed, "eval_accuracy": 0.8, "eval_loss": 0.3},
                "stage_stats": {s: stage() for s in ("R0", "R1", "R2", "R3", "R4")},
            },
            {
                "number": 1,
                "status": "completed",
                "abort_reason": None,
                "metrics": completed,
                "stage_stats": {
                    "R0": stage(),
                    "R1": stage(),
                    "R2": stage(dropouts=1),
                    "R3": stage(),
                    "R4": stage(),
                },
            },
            {
                "number": 2,
                "status": "aborted",
                "abort_reason": "below_threshold",
                "metrics": None,
                "stage_stats": {"R0": stage(dropouts=3, b_in=10, b_out=0)},
            },
            # Junk a hand-edited file may hold: skipped or read as absent, never a crash.
            {"number": "x"},
            {
                "number": 4,
                "status": "running",
                "metrics": {"eval_examples": 0, "eval_accuracy": None},
                "stage_stats": {"R0": "bad"},
            },
        ],
    }


def test_round_points_read_what_each_round_measured() -> None:
    points = round_points(detail())
    assert [p.number for p in points] == [1, 2, 3, 4]
    first, aborted, third, running = points
    assert (first.accuracy, first.loss, first.survivors) == (0.5, 0.7, 4)
    assert first.dropouts["R2"] == 1 and sum(first.dropouts.values()) == 1
    assert (first.bytes_in, first.bytes_out) == (5000, 2500)
    assert aborted.status == "aborted" and aborted.abort_reason == "below_threshold"
    assert aborted.accuracy is None and aborted.dropouts["R0"] == 3 and aborted.bytes_in == 10
    assert third.accuracy == 0.8
    assert running.accuracy is None and running.bytes_in == 0  # no examples: not plotted


def test_render_report_writes_a_png_and_a_self_contained_page(tmp_path: Path) -> None:
    paths = render_report(detail(), tmp_path / "out")
    assert [p.name for p in paths] == ["task7-report.png", "task7-report.html"]
    png, page = paths[0].read_bytes(), paths[1].read_text()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    # The page embeds exactly that PNG and fetches nothing.
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None and base64.b64decode(embedded.group(1)) == png
    assert not re.search(r"(src|href)=\"https?:", page)
    assert "below_threshold" in page and "0.8000" in page and "task 7 (digits)" in page


def test_render_report_without_rounds(tmp_path: Path) -> None:
    paths = render_report({"id": 1, "rounds_detail": []}, tmp_path)
    assert paths[0].read_bytes().startswith(PNG_MAGIC)


def test_render_report_needs_a_task_detail(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no integer 'id'"):
        render_report({"rounds_detail": []}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_report_fetches_the_detail_and_draws(tmp_path: Path) -> None:
    with running_server(tmp_path) as url:
        with admin(url) as c:
            r = c.post(
                "/v1/admin/tasks",
                json={"name": "rep", "vector_length": 4, "rounds": 1, "clients_per_round": 5},
            )
            task = int(r.json()["id"])
        runner = CliRunner()
        out = tmp_path / "report"
        result = runner.invoke(
            app, ["report", "--task", str(task), "--server", url, "--token", ADMIN, "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert (out / f"task{task}-report.png").read_bytes().startswith(PNG_MAGIC)
        assert f"task{task}-report.html" in result.output
        refused = runner.invoke(
            app,
            ["report", "--task", str(task), "--server", url, "--token", "wrong", "-o", str(out)],
        )
        assert refused.exit_code == 1 and "403" in refused.output
        missing = runner.invoke(
            app, ["report", "--task", "999", "--server", url, "--token", ADMIN, "-o", str(out)]
        )
        assert missing.exit_code == 1 and "404" in missing.output
