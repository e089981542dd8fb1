"""Prometheus metrics of the service (rounds, dropouts, stage latencies, bytes)."""

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


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
