"""A model download as the server sends it (secagg/downloads.py), for fake servers in tests."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
import numpy.typing as npt


def npy_response(weights: npt.ArrayLike, version: int) -> httpx.Response:
    """``200`` with the ``.npy`` body and the hash and version headers of the contract."""
    raw = np.ascontiguousarray(weights, dtype="<f4")
    buf = io.BytesIO()
    np.save(buf, raw, allow_pickle=False)
    body = buf.getvalue()
    return httpx.Response(
        200,
        content=body,
        headers={
            "x-secagg-version": str(version),
            "x-secagg-sha256": hashlib.sha256(body).hexdigest(),
            "x-secagg-weights-sha256": hashlib.sha256(raw.tobytes()).hexdigest(),
        },
    )
