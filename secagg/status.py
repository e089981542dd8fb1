"""``secagg status``: tasks, rounds and model versions as terminal tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from secagg import db as dbm
from secagg.registry import ModelRegistry


def print_status(database_url: str, console: Console | None = None, last_rounds: int = 10) -> None:
    console = console or Console()
    db = dbm.Database.from_url(database_url)
    registry = ModelRegistry(db)
    with db.session() as s:
        tasks = list(s.scalars(select(dbm.Task).order_by(dbm.Task.id)))
        clients = len(list(s.scalars(select(dbm.Client.id))))
    console.print(f"[bold]secagg[/bold] {database_url} - {clients} enrolled clients")
    table = Table("task", "name", "status", "completed/rounds", "mode", "graph", "clients/round")
    for t in tasks:
        table.add_row(
            str(t.id),
            t.name,
            t.status.value + (f" ({t.failure_reason})" if t.failure_reason else ""),
            f"{t.completed_rounds}/{t.rounds}",
            t.mode.value,
            t.graph.value,
            str(t.clients_per_round),
        )
    console.print(table)
    for t in tasks:
        with db.session() as s:
            rounds = list(
                s.scalars(
                    select(dbm.Round)
                    .where(dbm.Round.task_id == t.id)
                    .order_by(dbm.Round.number.desc())
                    .limit(last_rounds)
                )
            )
        rt = Table(
            "round",
            "status",
            "participants",
            "dropouts",
            "seconds",
            "accuracy",
            "version",
            "blamed",
            title=f"task {t.id}: last {last_rounds} rounds",
        )
        for r in reversed(rounds):
            drops = sum(int(v.get("dropouts", 0)) for v in (r.stage_stats or {}).values())
            secs = sum(float(v.get("seconds", 0.0)) for v in (r.stage_stats or {}).values())
            acc = (r.metrics or {}).get("eval_accuracy")
            rt.add_row(
                str(r.number),
                r.status.value + (f" ({r.abort_reason})" if r.abort_reason else ""),
                str(len(r.participants)),
                str(drops),
                f"{secs:.2f}",
                f"{acc:.3f}" if isinstance(acc, float) else "-",
                str(r.result_version or "-"),
                ",".join(map(str, r.blamed or [])) or "-",
            )
        console.print(rt)
        with db.session() as s:
            quarantined = list(
                s.scalars(
                    select(dbm.Quarantine)
                    .where(dbm.Quarantine.task_id == t.id, dbm.Quarantine.lifted_at.is_(None))
                    .order_by(dbm.Quarantine.client_id)
                )
            )
        if quarantined:
            qt = Table("client", "round", "reason", "since", title=f"task {t.id}: quarantined")
            for q in quarantined:
                qt.add_row(str(q.client_id), str(q.round_number), q.reason, q.since.isoformat())
            console.print(qt)
        vt = Table(
            "version",
            "parent",
            "round",
            "sha256",
            "tags",
            "current",
            title=f"task {t.id}: model versions",
        )
        for v in registry.list_versions(t.id)[-last_rounds:]:
            vt.add_row(
                str(v.version),
                str(v.parent_version or "-"),
                str(v.round_number or "-"),
                v.sha256[:12],
                ",".join(v.tags),
                "*" if v.is_current else "",
            )
        console.print(vt)
