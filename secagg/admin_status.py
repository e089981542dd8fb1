"""Plain-text views of the admin API's task list and task detail (``secagg status``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from secagg.task_spec import TaskView

__all__ = ["render_task", "render_tasks"]

LAST_ROUNDS = 10


def render_tasks(tasks: Sequence[TaskView]) -> str:
    if not tasks:
        return "no tasks"
    rows = [("id", "name", "status", "rounds done", "last round", "note")]
    for t in tasks:
        rows.append(
            (
                str(t.id),
                t.name,
                t.status,
                f"{t.completed_rounds}/{t.rounds}",
                str(t.current_round),
                t.failure_reason or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def render_task(detail: dict[str, Any]) -> str:
    t = TaskView.model_validate(detail)
    lines = [
        f"task {t.id} {t.name!r}: {t.status}",
        f"  rounds completed {t.completed_rounds}/{t.rounds}, last round {t.current_round}, "
        f"aborted in a row {t.aborted_in_a_row}/{t.max_aborted_rounds}",
        f"  {t.clients_per_round} clients per round (min {t.min_clients}), mode {t.mode}, "
        f"graph {t.graph}, {t.vector_length} weights, training window {t.training_window_s} s",
        f"  strategy {t.strategy}",
    ]
    if t.failure_reason:
        lines.append(f"  failure: {t.failure_reason}")
    if detail.get("waiting_reason"):
        lines.append(f"  waiting: {detail['waiting_reason']}")
    rounds = list(detail.get("rounds_detail") or [])[-LAST_ROUNDS:]
    if rounds:
        lines.append("  rounds:")
        for r in rounds:
            reason = f" ({r['abort_reason']})" if r.get("abort_reason") else ""
            result = f" -> v{r['result_version']}" if r.get("result_version") else ""
            lines.append(
                f"    #{r['number']} {r['status']}{reason}{result}, "
                f"{len(r.get('participants') or [])} participants"
            )
    versions = list(detail.get("versions") or [])
    if versions:
        lines.append("  versions:")
        for v in versions[-LAST_ROUNDS:]:
            mark = " (current)" if v.get("is_current") else ""
            tags = f" tags {','.join(v['tags'])}" if v.get("tags") else ""
            lines.append(f"    v{v['version']}{mark}{tags} sha256 {v['sha256'][:16]}...")
    for q in detail.get("quarantined") or []:
        lines.append(
            f"  quarantined: client {q['client_id']} since round {q['round_number']} "
            f"({q['reason']})"
        )
    return "\n".join(lines)
