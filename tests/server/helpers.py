"""A real uvicorn server on loopback, in a background thread, for API tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from client_sdk.client import ClientPolicy, enrol
from client_sdk.identity import Identity
from protocol import SystemRandom
from protocol.crypto import ed25519_public_key
from secagg.app import create_app
from secagg.settings import Settings
from secagg_sim import upload_roster

ADMIN = "test-admin-token"


@contextmanager
def running_server(
    tmp_path: Path, database_url: str | None = None, **settings: object
) -> Iterator[str]:
    cfg = Settings(
        database_url=database_url or f"sqlite:///{tmp_path / 'secagg.db'}",
        admin_token=ADMIN,
        long_poll_s=2.0,
        **settings,
    )  # type: ignore[arg-type]
    app = create_app(cfg)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class TaskAuthority:
    """A task authority played by the test (a deployment keeps it offline):
    identities enrolled through it pin its key; ``certify`` uploads its roster."""

    def __init__(self) -> None:
        self.secret = SystemRandom().random_bytes(32)
        self.public_key = ed25519_public_key(self.secret)

    def enrol(self, url: str, name: str) -> Identity:
        return enrol(url, new_token(url), name=name, authority_key=self.public_key)

    def certify(self, url: str, task_id: int, identities: list[Identity]) -> None:
        members = [(i.client_id, i.public_key) for i in identities if i.client_id is not None]
        with admin(url) as c:
            upload_roster(c, task_id, self.secret, members)


def uncertified_policy() -> ClientPolicy:
    """The default client policy (active sessions only, >= 5 participants, the
    collusion rule) with ONE explicit opt-out: ``require_certified_identities=False``.

    For end-to-end tests whose subject is not identity certification (blame,
    quarantine, the differencing rule), so that they need no task authority and
    roster. Certified rounds are tested in ``test_authority_service.py``.
    """
    return ClientPolicy(require_certified_identities=False)


def admin(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)


def new_token(url: str) -> str:
    with admin(url) as c:
        r = c.post("/v1/admin/tokens", json={"label": "test"})
        r.raise_for_status()
        return str(r.json()["token"])


def wait_rounds_finished(url: str, task_id: int, count: int, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    """The task detail once ``count`` rounds have left ``running`` (clients finish
    a round before the server has unmasked and stored it)."""
    deadline = time.monotonic() + timeout
    while True:
        with admin(url) as c:
            detail = c.get(f"/v1/admin/tasks/{task_id}").json()
        done = [r for r in detail["rounds_detail"] if r["status"] != "running"]
        if len(done) >= count:
            return dict(detail)
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(done)} of {count} rounds finished")
        time.sleep(0.05)


_ = asyncio  # the server thread runs its own event loop
