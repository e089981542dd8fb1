"""A task's training report: accuracy, loss, dropouts and bytes per round, as PNG and HTML.

:func:`render_report` is pure over the admin task-detail JSON
(``GET /v1/admin/tasks/{id}``): it reads nothing else, so a report can be
drawn from a saved detail file as well as from a live server
(``secagg report --task N --server URL -o DIR``).

What is drawn, per round number:

* accuracy and mean loss of the round's base model over the survivors'
  evaluation examples: the securely aggregated evaluation sums, the only
  evaluation the server ever sees (rounds without examples are left out);
* clients that dropped out, stacked by stage, aborted rounds marked;
* protocol bytes received from and sent to clients.

The PNG is drawn with matplotlib's Agg backend on a private ``Figure`` (no
pyplot state, no display needed); the HTML page embeds it as a data URI and
lists the rounds, so it is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RoundPoint", "render_report", "round_points"]

STAGES = ("R0", "R1", "R2", "R3", "R4")
STAGE_COLOURS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974")


@dataclass(frozen=True)
class RoundPoint:
    """One round's figures, read from the task detail."""

    number: int
    status: str
    abort_reason: str | None
    accuracy: float | None
    loss: float | None
    eval_examples: int | None
    survivors: int | None
    dropouts: dict[str, int]
    bytes_in: int
    bytes_out: int


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: object) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def round_points(task_detail: Mapping[str, Any]) -> list[RoundPoint]:
    """Every round of the detail with a number, ordered by number (bad fields read as absent)."""
    points: list[RoundPoint] = []
    for r in task_detail.get("rounds_detail") or []:
        if not isinstance(r, Mapping) or not isinstance(r.get("number"), int):
            continue
        metrics: Mapping[str, Any] = _mapping(r.get("metrics"))
        stages = {k: v for k, v in _mapping(r.get("stage_stats")).items() if isinstance(v, Mapping)}
        examples = metrics.get("eval_examples")
        measured = isinstance(examples, int) and examples > 0
        points.append(
            RoundPoint(
                number=int(r["number"]),
                status=str(r.get("status", "unknown")),
                abort_reason=str(r["abort_reason"]) if r.get("abort_reason") else None,
                accuracy=_finite(metrics.get("eval_accuracy")) if measured else None,
                loss=_finite(metrics.get("eval_loss")) if measured else None,
                eval_examples=examples if isinstance(examples, int) else None,
                survivors=metrics.get("survivors")
                if isinstance(metrics.get("survivors"), int)
                else None,
                dropouts={s: _count(stages.get(s, {}).get("dropouts")) for s in STAGES},
                bytes_in=sum(_count(v.get("bytes_in")) for v in stages.values()),
                bytes_out=sum(_count(v.get("bytes_out")) for v in stages.values()),
            )
        )
    return sorted(points, key=lambda p: p.number)


def _draw_png(title: str, points: Sequence[RoundPoint]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    acc_ax, loss_ax, drop_ax, bytes_ax = fig.subplots(2, 2, sharex=True).flat
    numbers = [p.number for p in points]
    aborted = [p.number for p in points if p.status == "aborted"]

    for ax, attr, label in (
        (acc_ax, "accuracy", "accuracy"),
        (loss_ax, "loss", "loss"),
    ):
        xs = [p.number for p in points if getattr(p, attr) is not None]
        ys = [getattr(p, attr) for p in points if getattr(p, attr) is not None]
        ax.plot(xs, ys, marker="o", color="#4c72b0")
        ax.set_title(f"{label} of the base model (aggregated sums)")
        ax.set_ylabel(label if attr == "accuracy" else "mean loss per example")
        if attr == "accuracy":
            ax.set_ylim(0, 1.02)
        if not xs:
            ax.text(0.5, 0.5, "no evaluation examples yet", ha="center", transform=ax.transAxes)

    bottom = [0] * len(points)
    for stage, colour in zip(STAGES, STAGE_COLOURS, strict=True):
        heights = [p.dropouts[stage] for p in points]
        if any(heights):
            drop_ax.bar(numbers, heights, bottom=bottom, color=colour, label=stage)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    top = max(bottom, default=0)
    if aborted:
        drop_ax.scatter(
            aborted, [top + 0.5] * len(aborted), marker="x", color="black", label="aborted"
        )
    drop_ax.set_title("dropouts per round, by stage")
    drop_ax.set_ylabel("clients")
    if top or aborted:
        drop_ax.legend(fontsize="small")

    bytes_ax.plot(numbers, [p.bytes_in / 1e6 for p in points], marker="o", label="from clients")
    bytes_ax.plot(numbers, [p.bytes_out / 1e6 for p in points], marker="s", label="to clients")
    bytes_ax.set_title("protocol bytes per round")
    bytes_ax.set_ylabel("MB")
    if points:
        bytes_ax.legend(fontsize="small")
    for ax in (drop_ax, bytes_ax):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drop_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not points:
        fig.text(0.5, 0.5, "no rounds yet", ha="center", fontsize="large")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _fmt(value: float | int | None, spec: str = "") -> str:
    return "" if value is None else format(value, spec)


def _html(title: str, png: bytes, points: Sequence[RoundPoint], task: Mapping[str, Any]) -> str:
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(cell)}</td>"
            for cell in (
                str(p.number),
                p.status + (f" ({p.abort_reason})" if p.abort_reason else ""),
                _fmt(p.accuracy, ".4f"),
                _fmt(p.loss, ".4f"),
                _fmt(p.eval_examples),
                _fmt(p.survivors),
                str(sum(p.dropouts.values())),
                f"{p.bytes_in:,}",
                f"{p.bytes_out:,}",
            )
        )
        + "</tr>"
        for p in points
    )
    facts = ", ".join(
        f"{k}: {html.escape(str(task[k]))}"
        for k in (
            "status",
            "rounds",
            "completed_rounds",
            "clients_per_round",
            "mode",
            "epsilon_spent",
            "epsilon_budget",
        )
        if task.get(k) is not None
    )
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>{facts}</p>
<p>Accuracy and loss are those of each round's base model over the survivors' evaluation
examples, known to the server only as securely aggregated sums.</p>
<img alt="accuracy, loss, dropouts and bytes per round" src="data:image/png;base64,{image}">
<h2>Rounds</h2>
<table>
<tr><th>round</th><th>status</th><th>accuracy</th><th>loss</th><th>eval examples</th>
<th>survivors</th><th>dropouts</th><th>bytes in</th><th>bytes out</th></tr>
{rows}
</table>
</body>
</html>
"""


def render_report(task_detail: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Draw the report of one task into ``out_dir`` (created if missing).

    Args:
        task_detail: the JSON of ``GET /v1/admin/tasks/{id}``.
        out_dir: where to write ``task<id>-report.png`` and ``task<id>-report.html``.

    Returns:
        The paths written: the PNG, then the HTML page (which embeds the PNG).

    Raises:
        ValueError: ``task_detail`` has no integer ``id``.
    """
    task_id = task_detail.get("id")
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise ValueError("task_detail has no integer 'id': pass GET /v1/admin/tasks/{id}'s JSON")
    name = str(task_detail.get("name", ""))
    title = f"task {task_id}" + (f" ({name})" if name else "")
    points = round_points(task_detail)
    png = _draw_png(title, points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png_path = out / f"task{task_id}-report.png"
    html_path = out / f"task{task_id}-report.html"
    png_path.write_bytes(png)
    html_path.write_text(_html(title, png, points, task_detail), encoding="utf-8")
    return [png_path, html_path]
