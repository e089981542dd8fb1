"""Prometheus metrics of the service, labelled by task.

Everything here is fed by the coordinator's events (:func:`observe`, called
with every event the task runners emit) and read at ``GET /metrics``.

Label cardinality is bounded by design: the only open-ended label is the task
id (an operator creates tasks); stages, outcomes and abort reasons come from
closed vocabularies, and an abort reason that does not look like one of them
(free text) is reported as ``other``. No client id is ever a label.
:func:`forget_task` drops a task's series (e.g. once it is archived).

The evaluation metrics are those of the securely aggregated evaluation sums
(``protocol.encoding.EvalSums`` in the round's vector): the server sees only
their total over the round's survivors, never one client's.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["REGISTRY", "forget_task", "observe", "reason_label", "render"]

REGISTRY = CollectorRegistry()
TASK = "task"

# -- rounds ----------------------------------------------------------------------------
ROUNDS = Counter(
    "secagg_rounds_total",
    "Rounds that ended, by outcome (completed, aborted)",
    [TASK, "outcome"],
    registry=REGISTRY,
)
ABORTED = Counter(
    "secagg_rounds_aborted_total",
    "Aborted rounds by reason (protocol abort reasons and the service's: store_failed, "
    "aggregation_failed, server_shutdown, task_cancelled, too_few_trained, "
    "dp_too_few_survivors, ...)",
    [TASK, "reason"],
    registry=REGISTRY,
)
CURRENT_ROUND = Gauge(
    "secagg_current_round",
    "Number of the task's latest round (running or last finished)",
    [TASK],
    registry=REGISTRY,
)
ROUND_RUNNING = Gauge(
    "secagg_round_running", "1 while a round of the task runs, else 0", [TASK], registry=REGISTRY
)
MODEL_VERSION = Gauge(
    "secagg_model_version",
    "The model version the task's last completed round produced",
    [TASK],
    registry=REGISTRY,
)

# -- the last round ------------------------------------------------------------------------
LAST_ACCURACY = Gauge(
    "secagg_last_round_accuracy",
    "Accuracy of the base model over the survivors' evaluation examples, from the securely "
    "aggregated sums (NaN: no examples)",
    [TASK],
    registry=REGISTRY,
)
LAST_LOSS = Gauge(
    "secagg_last_round_loss",
    "Mean loss per evaluation example, from the securely aggregated sums (NaN: no examples)",
    [TASK],
    registry=REGISTRY,
)
LAST_EVAL_EXAMPLES = Gauge(
    "secagg_last_round_eval_examples", "Evaluation examples summed", [TASK], registry=REGISTRY
)
LAST_TRAIN_EXAMPLES = Gauge(
    "secagg_last_round_train_examples",
    "Total weight (training examples) of the survivors",
    [TASK],
    registry=REGISTRY,
)
LAST_SURVIVORS = Gauge(
    "secagg_last_round_survivors",
    "Clients whose input is in the last completed round's sum",
    [TASK],
    registry=REGISTRY,
)
LAST_DROPOUTS = Gauge(
    "secagg_last_round_dropouts",
    "Clients that missed a stage of the last round, all stages together",
    [TASK],
    registry=REGISTRY,
)
LAST_BYTES = Gauge(
    "secagg_last_round_bytes",
    "Protocol bytes of the last round by direction (in: from clients, out: to clients)",
    [TASK, "direction"],
    registry=REGISTRY,
)
LAST_FINISHED = Gauge(
    "secagg_last_round_finished_timestamp_seconds",
    "When the task's last round ended (Unix time)",
    [TASK],
    registry=REGISTRY,
)

# -- stages and clients -------------------------------------------------------------------
DROPOUTS = Counter(
    "secagg_dropouts_total", "Clients that missed a stage", [TASK, "stage"], registry=REGISTRY
)
STAGE_SECONDS = Histogram(
    "secagg_stage_seconds",
    "Stage latency",
    [TASK, "stage"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
BYTES = Counter(
    "secagg_protocol_bytes_total", "Protocol bytes", [TASK, "direction"], registry=REGISTRY
)
# What became of each participant (specs/secagg-v1.md §16.1): completed,
# dropped_in_Ri, pruned_in_Ri, aborted, refused_<abort reason>, blamed_<blame reason>.
CLIENT_OUTCOMES = Counter(
    "secagg_client_outcomes_total",
    "Participants by what became of them in their round",
    [TASK, "outcome"],
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "secagg_clients_quarantined_total",
    "Clients quarantined after blame",
    [TASK],
    registry=REGISTRY,
)
TASKS_FAILED = Counter(
    "secagg_tasks_failed_total",
    "Tasks failed (e.g. after too many aborted rounds)",
    [TASK],
    registry=REGISTRY,
)

# -- distributed DP (service-v1.md §11) --------------------------------------------------
EPSILON_SPENT = Gauge(
    "secagg_dp_epsilon_spent",
    "Largest privacy budget (epsilon, at the task's delta) any client has spent in the "
    "task's rounds, by the server's count",
    [TASK],
    registry=REGISTRY,
)
EPSILON_BUDGET = Gauge(
    "secagg_dp_epsilon_budget",
    "Each client's privacy budget (epsilon) in the task",
    [TASK],
    registry=REGISTRY,
)

_BY_TASK = (
    ROUNDS,
    ABORTED,
    CURRENT_ROUND,
    ROUND_RUNNING,
    MODEL_VERSION,
    LAST_ACCURACY,
    LAST_LOSS,
    LAST_EVAL_EXAMPLES,
    LAST_TRAIN_EXAMPLES,
    LAST_SURVIVORS,
    LAST_DROPOUTS,
    LAST_BYTES,
    LAST_FINISHED,
    DROPOUTS,
    STAGE_SECONDS,
    BYTES,
    CLIENT_OUTCOMES,
    QUARANTINED,
    TASKS_FAILED,
    EPSILON_SPENT,
    EPSILON_BUDGET,
)

_REASON = re.compile(r"[a-z][a-z0-9_]{0,47}")
_LABEL = re.compile(r"[A-Za-z0-9_]{1,64}")


def reason_label(reason: object) -> str:
    """An abort reason as a bounded label: its code (the text before any ``:``) if it
    looks like one (``[a-z][a-z0-9_]*``, at most 48 characters), else ``other``."""
    code = str(reason).split(":", 1)[0].strip()
    return code if _REASON.fullmatch(code) else "other"


def _bounded(value: object) -> str:
    text = str(value)
    return text if _LABEL.fullmatch(text) else "other"


@dataclass
class _RoundTally:
    """Per-round sums of the stage events, published when the round ends."""

    number: int
    bytes_in: int = 0
    bytes_out: int = 0
    dropouts: int = 0


# One tally per task (the running round's): bounded by the number of tasks.
_tallies: dict[str, _RoundTally] = {}


def _tally(task: str, number: object) -> _RoundTally:
    n = int(number) if isinstance(number, int) else -1
    tally = _tallies.get(task)
    if tally is None or tally.number != n:
        tally = _tallies[task] = _RoundTally(n)
    return tally


def _round_ended(task: str, data: dict[str, Any]) -> _RoundTally:
    tally = _tally(task, data.get("round"))
    ROUND_RUNNING.labels(task).set(0)
    LAST_DROPOUTS.labels(task).set(tally.dropouts)
    LAST_BYTES.labels(task, "in").set(tally.bytes_in)
    LAST_BYTES.labels(task, "out").set(tally.bytes_out)
    LAST_FINISHED.labels(task).set(time.time())
    _tallies.pop(task, None)
    return tally


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def observe(kind: str, data: dict[str, Any]) -> None:
    """Update the metrics from one coordinator event (unknown kinds are ignored)."""
    task = str(data.get("task_id", "none"))
    if kind == "round_started":
        CURRENT_ROUND.labels(task).set(_number(data.get("round")))
        ROUND_RUNNING.labels(task).set(1)
        _tally(task, data.get("round"))
    elif kind == "stage":
        stage = _bounded(data["stage"])
        tally = _tally(task, data.get("round"))
        tally.dropouts += int(data["dropouts"])
        tally.bytes_in += int(data["bytes_in"])
        tally.bytes_out += int(data["bytes_out"])
        DROPOUTS.labels(task, stage).inc(int(data["dropouts"]))
        STAGE_SECONDS.labels(task, stage).observe(float(data["seconds"]))
        BYTES.labels(task, "in").inc(int(data["bytes_in"]))
        BYTES.labels(task, "out").inc(int(data["bytes_out"]))
    elif kind == "round_completed":
        _round_ended(task, data)
        ROUNDS.labels(task, "completed").inc()
        if "version" in data:
            MODEL_VERSION.labels(task).set(_number(data["version"]))
        LAST_ACCURACY.labels(task).set(_number(data.get("eval_accuracy")))
        LAST_LOSS.labels(task).set(_number(data.get("eval_loss")))
        LAST_EVAL_EXAMPLES.labels(task).set(_number(data.get("eval_examples")))
        LAST_TRAIN_EXAMPLES.labels(task).set(_number(data.get("train_examples")))
        LAST_SURVIVORS.labels(task).set(_number(data.get("survivors")))
        if "epsilon_spent" in data:
            EPSILON_SPENT.labels(task).set(_number(data["epsilon_spent"]))
    elif kind == "round_aborted":
        _round_ended(task, data)
        ROUNDS.labels(task, "aborted").inc()
        ABORTED.labels(task, reason_label(data.get("reason"))).inc()
    elif kind == "client_outcomes":
        for outcome, count in dict(data["outcomes"]).items():
            CLIENT_OUTCOMES.labels(task, _bounded(outcome)).inc(int(count))
    elif kind == "client_quarantined":
        QUARANTINED.labels(task).inc()
    elif kind == "task_failed":
        TASKS_FAILED.labels(task).inc()
    elif kind == "dp_budget":
        EPSILON_SPENT.labels(task).set(_number(data.get("epsilon_spent")))
        EPSILON_BUDGET.labels(task).set(_number(data.get("epsilon_budget")))


def forget_task(task_id: int) -> None:
    """Drop every series of ``task_id`` (keeps ``/metrics`` small once a task is gone)."""
    task = str(task_id)
    _tallies.pop(task, None)
    for metric in _BY_TASK:
        # prometheus_client keeps children by label tuple; the task is the first label.
        for labels in [k for k in list(metric._metrics) if k and k[0] == task]:
            metric.remove(*labels)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
