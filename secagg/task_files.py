"""A task file (TOML) plus an initial model file -> the body of ``POST /v1/admin/tasks``.

The TOML holds task fields at the top level (``docs/reference.md`` lists them),
with ``[strategy]`` and ``[deadlines]`` as tables::

    name = "mnist-consortium"
    rounds = 20
    clients_per_round = 5
    [strategy]
    name = "fedavg"

With ``--init`` the model file fills in ``initial_weights``, ``model_layout``
and, if the file does not give it, ``vector_length``. Field validation is the
server's (it answers 422 naming an unknown or bad field); here only what the
file itself gets wrong is refused.
"""

from __future__ import annotations

import base64
import io
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from secagg.model_files import read_model_file

__all__ = ["TaskFileError", "task_request"]

MAX_TASK_FILE_BYTES = 1 << 20


class TaskFileError(Exception):
    """The task file cannot be used; the message says why."""


def task_request(task_file: Path, init: Path | None = None) -> dict[str, Any]:
    """The JSON body creating the task described by ``task_file`` (and ``init``).

    Raises:
        TaskFileError: unreadable or invalid TOML, or a vector_length that
            disagrees with the initial model.
        ModelFileError: the model file cannot be read.
    """
    if task_file.stat().st_size > MAX_TASK_FILE_BYTES:
        raise TaskFileError(f"{task_file} is larger than {MAX_TASK_FILE_BYTES} bytes")
    try:
        spec: dict[str, Any] = tomllib.loads(task_file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{task_file} is not valid TOML: {exc}") from exc
    if init is None:
        return spec
    if "initial_weights" in spec or "model_layout" in spec:
        raise TaskFileError(
            f"{task_file} gives initial_weights or model_layout and --init gives a model: use one"
        )
    weights, layout = read_model_file(init)
    length = spec.setdefault("vector_length", len(weights))
    if length != len(weights):
        raise TaskFileError(
            f"{task_file} says vector_length = {length}, the model in {init} has "
            f"{len(weights)} weights"
        )
    buffer = io.BytesIO()
    np.save(buffer, weights, allow_pickle=False)
    spec["initial_weights"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    if layout is not None:
        spec["model_layout"] = layout
    return spec
