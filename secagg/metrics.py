"""Prometheus metrics of the service (rounds, dropouts, client outcomes, stage latencies, bytes)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry()
ROUNDS = Counter("secagg_rounds_total", "Rounds by outcome", ["outcome"], registry=REGISTRY)
DROPOUTS = Counter(
    "secagg_dropouts_total", "Clients that missed a stage", ["stage"], registry=REGISTRY
)
STAGE_SECONDS = Histogram(
    "secagg_stage_seconds",
    "Stage latency",
    ["stage"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
BYTES = Counter("secagg_protocol_bytes_total", "Protocol bytes", ["direction"], registry=REGISTRY)
# What became of each participant (specs/secagg-v1.md §16.1): completed,
# dropped_in_Ri, pruned_in_Ri, aborted, refused_<abort reason>, blamed_<blame reason>.
CLIENT_OUTCOMES = Counter(
    "secagg_client_outcomes_total",
    "Participants by what became of them in their round",
    ["outcome"],
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "secagg_clients_quarantined_total", "Clients quarantined after blame", registry=REGISTRY
)
TASKS_FAILED = Counter(
    "secagg_tasks_failed_total", "Tasks failed after too many aborted rounds", registry=REGISTRY
)


def observe(kind: str, data: dict[str, Any]) -> None:
    if kind == "stage":
        stage = str(data["stage"])
        DROPOUTS.labels(stage).inc(int(data["dropouts"]))
        STAGE_SECONDS.labels(stage).observe(float(data["seconds"]))
        BYTES.labels("in").inc(int(data["bytes_in"]))
        BYTES.labels("out").inc(int(data["bytes_out"]))
    elif kind == "round_completed":
        ROUNDS.labels("completed").inc()
    elif kind == "round_aborted":
        ROUNDS.labels("aborted").inc()
    elif kind == "client_outcomes":
        for outcome, count in dict(data["outcomes"]).items():
            CLIENT_OUTCOMES.labels(str(outcome)).inc(int(count))
    elif kind == "client_quarantined":
        QUARANTINED.inc()
    elif kind == "task_failed":
        TASKS_FAILED.inc()


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
