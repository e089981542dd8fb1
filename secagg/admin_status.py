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
                _budget(t) + (t.failure_reason or ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _budget(t: TaskView) -> str:
    """``epsilon 1.2/4 `` for a DP task (spent / budget), else empty."""
    if t.epsilon_budget is None:
        return ""
    return f"epsilon {t.epsilon_spent or 0.0:.4g}/{t.epsilon_budget:g} "


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
    if t.dp is not None and t.epsilon_budget is not None:
        spec, params = t.dp.get("spec") or {}, t.dp.get("params") or {}
        lines.append(
            f"  dp {spec.get('mechanism')}: epsilon spent {t.epsilon_spent or 0.0:.4g} of "
            f"{t.epsilon_budget:g} (delta {spec.get('delta')}), "
            f"{t.dp.get('round_epsilon', 0.0):.4g} per round, at most "
            f"{t.dp.get('max_participations')} rounds per client, "
            f"min_honest {params.get('min_honest')}, {params.get('bits')} bits"
        )
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
            spent = (r.get("metrics") or {}).get("epsilon_spent")
            eps = f", epsilon spent {spent:.4g}" if isinstance(spent, int | float) else ""
            lines.append(
                f"    #{r['number']} {r['status']}{reason}{result}, "
                f"{len(r.get('participants') or [])} participants{eps}"
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
