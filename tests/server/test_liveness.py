"""Liveness (specs/service-v1.md §4), no network: who is gone, when a stage stops waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from protocol.testing import make_config
from secagg.orchestrator import LiveRound, RoundDriver, TaskRunner
from secagg.round_plan import Assignment, Liveness

FAST = Liveness(heartbeat_s=0.05, timeout_s=0.3, tick_s=0.01, hold_s=30.0)


def _runner(liveness: Liveness = FAST) -> TaskRunner:
    # No database: liveness is in memory.
    return TaskRunner(None, None, 1, liveness=liveness)  # type: ignore[arg-type]


def test_a_held_heartbeat_keeps_a_busy_client_alive_and_a_closed_one_marks_it_gone() -> None:
    async def main() -> None:
        runner = _runner()
        for u in (1, 2):
            runner.touch(u)
        closed = asyncio.Event()

        async def disconnected() -> dict[str, Any]:
            await closed.wait()  # the kernel closed the dead process's socket
            return {"type": "http.disconnect"}

        held = asyncio.create_task(runner.hold_heartbeat(1, disconnected))
        await asyncio.sleep(2 * FAST.timeout_s)
        assert not runner.gone(1), "silent, but its heartbeat is held open: alive"
        assert runner.gone(2), "silent for longer than the timeout, nothing held: gone"
        assert runner.gone(3), "never seen: gone"
        closed.set()
        await held
        assert runner.gone(1), "its connection closed: gone at once, not after the timeout"
        runner.touch(1)  # it comes back (a new request): alive again
        assert not runner.gone(1)

    asyncio.run(main())


def test_a_heartbeat_held_to_its_end_counts_as_a_request() -> None:
    async def main() -> None:
        runner = _runner(Liveness(0.05, 0.3, tick_s=0.01, hold_s=0.1))
        never = asyncio.Event()

        async def disconnected() -> None:
            await never.wait()

        await runner.hold_heartbeat(7, disconnected)
        assert not runner.gone(7)
        await asyncio.sleep(0.4)
        assert runner.gone(7)

    asyncio.run(main())


def test_a_stage_stops_waiting_once_every_client_it_waits_for_is_gone() -> None:
    config = make_config(3, 4)
    gone: set[int] = set()

    async def main() -> tuple[float, float]:
        driver = RoundDriver(1, config, {}, gone=gone.__contains__, tick_s=0.01)
        started = time.monotonic()
        # Nobody gone: the stage waits for its deadline.
        await driver._wait_stage(time.monotonic() + 0.3)
        waited = time.monotonic() - started
        # All three it waits for are gone: it stops at once, long before a 60 s deadline.
        gone.update(config.participants)
        started = time.monotonic()
        await driver._wait_stage(time.monotonic() + 60)
        return waited, time.monotonic() - started

    waited, stopped = asyncio.run(main())
    assert waited >= 0.3
    assert stopped < 1.0


def test_a_client_that_checks_in_again_has_left_its_round() -> None:
    async def main() -> None:
        runner = _runner()
        assignment = Assignment(5, 1, 1, 1, 4, {}, 60.0, 1.0, {}, "active")
        live = LiveRound(assignment, frozenset({1, 2}))
        runner.current = live
        for u in (1, 2):
            runner.touch(u)
        # Client 1 counted itself dropped (e.g. a late message) and checks in again.
        assert await runner.checkin(1, 0.01) is None
        assert runner.gone(1) and not runner.gone(2)

    asyncio.run(main())


def test_the_masked_input_cohort_is_stored_before_any_request_for_a_masked_input_leaves() -> None:
    """A server killed while R2 is open must know, after its restart, whom it asked
    for a masked input on this base version (§10.2): clients record theirs before
    sending, so a cohort recorded only when R2 closes would be re-selected and refuse.
    """
    import numpy as np

    from protocol import ClientSession, Round
    from protocol.policy import SessionPolicy
    from protocol.testing import DeterministicRandom

    config = make_config(5, 4, threshold=3)
    clients = {
        u: ClientSession(
            config,
            u,
            np.arange(4, dtype=np.uint64) + u,
            rng=DeterministicRandom(b"cohort" + bytes([u])),
            policy=SessionPolicy.protocol_only(),
        )
        for u in config.participants
    }
    recorded: list[tuple[frozenset[int], list[int]]] = []

    async def main() -> None:
        driver = RoundDriver(1, config, dict.fromkeys(("R0", "R1", "R2", "R3", "R4"), 30.0))

        async def on_masked_inputs(senders: frozenset[int]) -> None:
            # What had been delivered to each client when the cohort was stored.
            delivered = [len(driver.mailboxes[u].messages) for u in sorted(senders)]
            recorded.append((senders, delivered))

        driver.on_masked_inputs = on_masked_inputs
        run = asyncio.create_task(driver.run())
        for u, c in clients.items():
            await driver.submit(u, c.start())  # R0
        seq = dict.fromkeys(clients, 0)
        while driver.server.round is not Round.R2_MASKED_INPUT_COLLECTION:
            for u, c in clients.items():
                data = await driver.mailboxes[u].get(seq[u], 30)
                assert data is not None
                seq[u] += 1
                reply = c.receive(data)
                if reply is not None and c.round is Round.R1_SHARE_KEYS:
                    await driver.submit(u, reply)
            await asyncio.sleep(0)
        # R2 is open and no masked input has been sent: the cohort is already stored.
        assert recorded, "the R2 cohort must be stored when R2 opens, not when it closes"
        senders, delivered = recorded[0]
        assert senders == frozenset(config.participants)
        # Stored before R1's answers (the requests for masked inputs) were delivered.
        assert delivered == [1] * len(senders)
        await driver.abort("test over")
        await run

    asyncio.run(main())
