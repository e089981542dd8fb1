"""A parallel in-memory driver: the clients of one session split across worker processes.

``protocol.simulate`` is the sequential reference (the protocol package has no
threads or processes). Real clients compute on their own machines, so the
benchmark also runs the same session with the clients shared among ``workers``
processes (one per core) and the server in the parent, exchanging the same
canonical bytes; the aggregate is identical.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol import ClientSession, Mode, Round, ServerSession, SessionConfig
from protocol.encoding import from_modular
from protocol.errors import RoundAborted
from protocol.policy import SessionPolicy
from protocol.simulate import DROP_ROUNDS, identity_secret

_ORDER = {r: i for i, r in enumerate(DROP_ROUNDS)}


def _worker(
    conn: Connection,
    config_bytes: bytes,
    clients: list[int],
    inputs: Mapping[int, npt.NDArray[np.integer]],
) -> None:
    config = SessionConfig.decode(config_bytes)
    active = config.mode is Mode.ACTIVE
    sessions = {
        u: ClientSession(
            config,
            u,
            inputs[u],
            identity_key=identity_secret(u) if active else None,
            policy=SessionPolicy.protocol_only(),  # benchmark/simulation worker
        )
        for u in clients
    }
    busy = 0.0
    while True:
        command, payload = conn.recv()
        t0 = time.perf_counter()
        if command == "start":
            out = {u: sessions[u].start() for u in payload}
        elif command == "deliver":
            out = {}
            for u, data in payload.items():
                reply = sessions[u].receive(data)
                if reply is not None:
                    out[u] = reply
        else:
            conn.send(busy)
            return
        busy += time.perf_counter() - t0
        conn.send(out)


def simulate_parallel(
    config: SessionConfig,
    inputs: Sequence[npt.NDArray[np.integer]],
    *,
    dropouts: Mapping[int, Round] | None = None,
    workers: int = 2,
) -> tuple[npt.NDArray[np.int64], tuple[int, ...], float, float]:
    """Run one session; return (aggregate, survivors, client CPU seconds, server seconds)."""
    drops = dict(dropouts or {})
    by_id = dict(zip(config.participants, inputs, strict=True))
    groups = [list(config.participants[i::workers]) for i in range(workers)]
    owner = {u: w for w, g in enumerate(groups) for u in g}
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for g in groups:
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker, args=(child, config.encode(), g, {u: by_id[u] for u in g}), daemon=True
        )
        proc.start()
        pipes.append(parent)
        procs.append(proc)

    def gone(u: int, r: Round) -> bool:
        return u in drops and _ORDER[drops[u]] <= _ORDER[r]

    def exchange(command: str, per_worker: list[Any]) -> dict[int, bytes]:
        for pipe, payload in zip(pipes, per_worker, strict=True):
            pipe.send((command, payload))
        out: dict[int, bytes] = {}
        for pipe in pipes:
            out.update(pipe.recv())
        return out

    server = ServerSession(config)
    server_s = 0.0
    try:
        starters = [[u for u in g if not gone(u, Round.R0_ADVERTISE_KEYS)] for g in groups]
        replies = exchange("start", starters)
        while server.round not in (Round.COMPLETED, Round.ABORTED):
            t0 = time.perf_counter()
            for data in replies.values():
                server.receive(data)
            outgoing = server.advance()
            server_s += time.perf_counter() - t0
            stage = Round(server.round)
            if stage in (Round.COMPLETED, Round.ABORTED):
                break
            batches: list[dict[int, bytes]] = [{} for _ in groups]
            for u, data in outgoing.items():
                if not gone(u, stage):
                    batches[owner[u]][u] = data
            replies = exchange("deliver", batches)
        client_s = 0.0
        for pipe in pipes:
            pipe.send(("stop", None))
            client_s += float(pipe.recv())
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    if server.round is Round.ABORTED:
        assert server.abort_reason is not None
        raise RoundAborted(server.abort_reason, server.abort_detail)
    result = server.result
    return (from_modular(result.aggregate, config.bit_width), result.survivors, client_s, server_s)
