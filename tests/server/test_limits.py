"""Request limits, attacked: bounded bodies, headers before bodies, range-checked integers,
scoped downloads, purged nonces, and round messages decoded off the event loop.

Each test plays a hostile client and asserts on what it achieved: how many body
bytes it made the server take in, whether its body was read at all, what it
downloaded, whether a replay went through, how long the event loop stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from client_sdk.client import enrol
from client_sdk.identity import Identity
from protocol.errors import RemoteProtocolError
from protocol.messages import AdvertisedKeys, AdvertiseKeys
from protocol.testing import make_config
from secagg import db as dbm
from secagg import orchestrator
from secagg.app import create_app
from secagg.orchestrator import RoundDriver
from secagg.settings import Settings
from secagg_http.signing import CBOR_MEDIA_TYPE, sign_request
from tests.server.helpers import ADMIN, admin, new_token, running_server

LIMIT = 100_000  # max_body_bytes: protocol messages and admin uploads
PUBLIC = 4096  # max_public_body_bytes: anything an anonymous peer can send
CHUNK = 1024
BODY_TIMEOUT_S = 0.5  # only the trickle test's app: the others must not race it under load
SIZE_TEST_BODY_TIMEOUT_S = 60.0


# -- an ASGI harness: the app without a network, every receive() counted ---------------


class Call:
    """One request driven straight through the ASGI app, with the body fed in chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0  # body bytes the application asked for
        self.receive_calls = 0
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        chunk = next(self.chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def json(self) -> Any:
        return json.loads(self.body)


class TricklingCall(Call):
    """A body that starts and then never goes on (a slow-body attack)."""

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        if self.receive_calls == 1:
            self.pulled += 1
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def _endless(size: int = CHUNK) -> Iterator[bytes]:
    chunk = b"\xa1" * size
    while True:
        yield chunk


def _asgi(app: Any, method: str, path: str, headers: dict[str, str], call: Call) -> Call:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    asyncio.run(app(scope, call.receive, call.send))
    return call


def _app(tmp_path: Path, body_timeout_s: float) -> tuple[Any, dbm.Database]:
    db = dbm.Database.from_url(f"sqlite:///{tmp_path / 'limits.db'}")
    settings = Settings(
        database_url="sqlite://",
        admin_token=ADMIN,
        max_body_bytes=LIMIT,
        max_public_body_bytes=PUBLIC,
        body_timeout_s=body_timeout_s,
    )
    return create_app(settings, db), db


@pytest.fixture
def app_db(tmp_path: Path) -> tuple[Any, dbm.Database]:
    """An app whose body deadline is far beyond any size test, even on a loaded machine."""
    return _app(tmp_path, SIZE_TEST_BODY_TIMEOUT_S)


@pytest.fixture
def short_deadline_app_db(tmp_path: Path) -> tuple[Any, dbm.Database]:
    return _app(tmp_path, BODY_TIMEOUT_S)


def _enrolled(db: dbm.Database) -> tuple[Identity, int]:
    ident = Identity.generate()
    with db.session() as s:
        row = dbm.Client(
            id=7, name="c7", public_key=ident.public_key, status=dbm.ClientStatus.ACTIVE
        )
        s.add(row)
    return ident, 7


def _signed_headers(
    ident: Identity, cid: int, method: str, path: str, body: bytes
) -> dict[str, str]:
    return sign_request(
        ident.secret, cid, method, path, int(time.time()), os.urandom(16).hex(), body
    )


def test_a_chunked_body_is_cut_off_at_the_limit(app_db: tuple[Any, dbm.Database]) -> None:
    """An unauthenticated client streams an endless chunked body to a JSON endpoint."""
    app, _ = app_db
    call = _asgi(app, "POST", "/v1/enrol", {"transfer-encoding": "chunked"}, Call(_endless()))
    assert call.status == 413 and call.json()["error"] == "body_too_large"
    # What the attacker achieved: the server took in at most the limit plus one chunk.
    assert PUBLIC < call.pulled <= PUBLIC + CHUNK
    assert call.headers.get(b"connection") == b"close"


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/enrol"), ("POST", "/v1/rounds/1/messages")]
)
def test_a_trickled_body_is_cut_off_at_the_deadline(
    short_deadline_app_db: tuple[Any, dbm.Database], method: str, path: str
) -> None:
    app, db = short_deadline_app_db
    ident, cid = _enrolled(db)
    headers = _signed_headers(ident, cid, method, path, b"")
    headers |= {"transfer-encoding": "chunked", "content-type": "application/json"}
    if path.endswith("messages"):
        headers["content-type"] = CBOR_MEDIA_TYPE
    started = time.monotonic()
    call = _asgi(app, method, path, headers, TricklingCall(iter(())))
    # What the attacker achieved: its request was held for the deadline, not for ever.
    assert call.status == 408 and call.json()["error"] == "body_timeout"
    assert call.headers.get(b"connection") == b"close"
    assert BODY_TIMEOUT_S * 0.8 <= time.monotonic() - started < BODY_TIMEOUT_S + 5


@pytest.mark.parametrize("credential", [None, "Bearer wrong", f"Bearer {ADMIN}"])
def test_only_the_admin_credential_opens_the_large_body_limit(
    app_db: tuple[Any, dbm.Database], credential: str | None
) -> None:
    """Admin bodies are parsed before the credential is checked: the limit must not be."""
    app, _ = app_db
    headers = {"transfer-encoding": "chunked", "content-type": "application/json"}
    if credential is not None:
        headers["authorization"] = credential
    call = _asgi(app, "POST", "/v1/admin/tasks", headers, Call(_endless()))
    assert call.status == 413 and call.json()["error"] == "body_too_large"
    limit = LIMIT if credential == f"Bearer {ADMIN}" else PUBLIC
    assert limit < call.pulled <= limit + CHUNK


def test_a_declared_length_over_the_limit_is_refused_unread(
    app_db: tuple[Any, dbm.Database],
) -> None:
    app, _ = app_db
    call = _asgi(app, "POST", "/v1/enrol", {"content-length": str(600 << 20)}, Call(_endless()))
    assert call.status == 413 and call.json()["error"] == "body_too_large"
    assert call.receive_calls == 0


def test_an_enrolled_clients_body_is_bounded_too(app_db: tuple[Any, dbm.Database]) -> None:
    app, db = app_db
    ident, cid = _enrolled(db)
    path = "/v1/rounds/1/messages"
    headers = _signed_headers(ident, cid, "POST", path, b"")
    headers |= {"transfer-encoding": "chunked", "content-type": CBOR_MEDIA_TYPE}
    call = _asgi(app, "POST", path, headers, Call(_endless()))
    assert call.status == 413 and LIMIT < call.pulled <= LIMIT + CHUNK


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-secagg-client", str(10**30)),
        ("x-secagg-client", "0"),
        ("x-secagg-client", str(1 << 32)),
        ("x-secagg-client", "-7"),
        ("x-secagg-client", "+7"),
        ("x-secagg-client", "7_0"),
        ("x-secagg-client", " 7"),
        ("x-secagg-client", "٧"),
        ("x-secagg-timestamp", str(10**400)),
        ("x-secagg-timestamp", "-1"),
        ("x-secagg-nonce", "zz" * 16),
        ("x-secagg-signature", "0" * 10**4),
    ],
)
def test_bad_auth_headers_are_refused_before_the_body_is_read(
    app_db: tuple[Any, dbm.Database], header: str, value: str
) -> None:
    app, db = app_db
    ident, cid = _enrolled(db)
    path = "/v1/rounds/1/messages"
    headers = _signed_headers(ident, cid, "POST", path, b"")
    headers |= {header: value, "transfer-encoding": "chunked", "content-type": CBOR_MEDIA_TYPE}
    call = _asgi(app, "POST", path, headers, Call(_endless()))
    assert call.status == 401 and call.json()["error"] == "bad_auth_header"
    # What the attacker achieved: not one byte of its body was read.
    assert call.pulled == 0
    assert call.headers.get(b"connection") == b"close"


@pytest.mark.parametrize(
    ("why", "edit"),
    [
        ("unknown client", {"x-secagg-client": "8"}),
        ("stale", {"x-secagg-timestamp": "1000"}),
        ("missing header", {"x-secagg-nonce": None}),
    ],
)
def test_strangers_and_stale_requests_never_get_their_body_read(
    app_db: tuple[Any, dbm.Database], why: str, edit: dict[str, str | None]
) -> None:
    app, db = app_db
    ident, cid = _enrolled(db)
    path = "/v1/rounds/1/messages"
    headers = _signed_headers(ident, cid, "POST", path, b"")
    for k, v in edit.items():
        if v is None:
            del headers[k]
        else:
            headers[k] = v
    headers |= {"transfer-encoding": "chunked", "content-type": CBOR_MEDIA_TYPE}
    call = _asgi(app, "POST", path, headers, Call(_endless()))
    assert call.status == 401, why
    assert call.pulled == 0, why


def test_an_honest_signed_body_still_goes_through(app_db: tuple[Any, dbm.Database]) -> None:
    app, db = app_db
    ident, cid = _enrolled(db)
    path = "/v1/rounds/1/messages"
    body = b"\x00" * 1000
    headers = _signed_headers(ident, cid, "POST", path, body)
    headers |= {"content-length": str(len(body)), "content-type": CBOR_MEDIA_TYPE}
    call = _asgi(app, "POST", path, headers, Call(iter([body])))
    # Authenticated (the signature covered the body); the round does not exist.
    assert call.status == 410 and call.json()["error"] == "round_over"
    assert call.pulled == len(body)


# -- over real HTTP ---------------------------------------------------------------------


_DB_URLS: dict[str, str] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("limits")
    with running_server(
        work, max_body_bytes=LIMIT, request_clock_skew_s=3.0, nonce_purge_interval_s=0.2
    ) as url:
        _DB_URLS[url] = f"sqlite:///{work / 'secagg.db'}"  # running_server's database
        yield url


def _task(url: str, name: str) -> int:
    with admin(url) as c:
        r = c.post(
            "/v1/admin/tasks",
            # 5 clients per round: the smallest cohort a default client accepts (spec §4.7).
            json={"name": name, "vector_length": 4, "rounds": 1, "clients_per_round": 5},
        )
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


def _get(url: str, ident: Identity, path: str) -> httpx.Response:
    assert ident.client_id is not None
    headers = _signed_headers(ident, ident.client_id, "GET", path, b"")
    return httpx.get(url + path, headers=headers, timeout=30)


def test_chunked_upload_over_http_gets_a_typed_413(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/enrol HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"10000\r\n" + b"{" * 0x10000 + b"\r\n"
        sent = 0
        try:
            while sent < 64 << 20:
                sock.sendall(chunk)
                sent += 0x10000
        except OSError:
            pass  # the server closed the connection: what we want
        response = b""
        try:
            while data := sock.recv(65536):
                response += data
        except OSError:
            pass
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"] == "body_too_large"
    # The server closed the connection long before 64 MiB went through.
    assert sent < 64 << 20


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/admin/tasks/99999999999999999999999999/versions/1/weights", 422),
        ("/v1/admin/tasks/1/versions/99999999999999999999999999/weights", 400),
        ("/v1/admin/tasks/1/versions/-1/weights", 400),
        ("/v1/admin/tasks/1/versions/٣/weights", 400),
        ("/v1/admin/tasks/1/versions/2147483648/weights", 400),
        ("/v1/admin/tasks/1/versions/2147483647/weights", 404),
        ("/v1/admin/tasks/1/versions/99999999999999999999999/promote", 422),
        ("/v1/admin/tasks/1/versions/4294967296/tags/x", 422),
    ],
)
def test_out_of_range_path_integers_get_4xx(server: str, path: str, status: int) -> None:
    _task(server, f"paths-{abs(hash(path))}")
    with admin(server) as c:
        method = "GET" if path.endswith("weights") else "POST"
        r = c.request(method, path)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_out_of_range_client_header_over_http_is_401(server: str) -> None:
    for value in (str(10**30), "-1", "18446744073709551616"):
        r = httpx.get(
            server + "/v1/rounds/1/messages/0",
            headers={
                "x-secagg-client": value,
                "x-secagg-timestamp": str(int(time.time())),
                "x-secagg-nonce": "00" * 16,
                "x-secagg-signature": "00" * 64,
            },
        )
        assert r.status_code == 401 and r.json()["error"] == "bad_auth_header"
    # Unauthenticated, a path integer out of range is refused as unauthenticated first.
    r = httpx.get(server + "/v1/rounds/99999999999999999999999/messages/0")
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"


def test_only_clients_assigned_to_a_task_may_download_its_model(server: str) -> None:
    task = _task(server, "scoped-download")
    insider = enrol(server, new_token(server))
    outsider = enrol(server, new_token(server))
    assert insider.client_id is not None
    # The insider has been assigned a round of the task (recorded as the server does).
    db = dbm.Database.from_url(_db_url(server), create=False)
    with db.session() as s:
        s.add(
            dbm.Round(
                task_id=task,
                number=100,
                status=dbm.RoundStatus.RUNNING,
                session_id=os.urandom(32),
                config=b"",
                participants=[insider.client_id],
                base_version=1,
            )
        )
    path = f"/v1/tasks/{task}/models/current"
    ok = _get(server, insider, path)
    assert ok.status_code == 200 and ok.headers["x-secagg-version"] == "1"
    # What the outsider gets: a typed refusal and not one byte of the model.
    refused = _get(server, outsider, path)
    assert refused.status_code == 403 and refused.json()["error"] == "not_eligible"
    assert b"NUMPY" not in refused.content
    # Nor another task's model by way of the insider's eligibility.
    other = _task(server, "scoped-download-2")
    assert _get(server, insider, f"/v1/tasks/{other}/models/current").status_code == 403


def _db_url(server: str) -> str:
    return _DB_URLS[server]


def test_stale_nonces_are_purged_and_their_replay_still_fails(server: str) -> None:
    ident = enrol(server, new_token(server))
    assert ident.client_id is not None
    path = "/v1/rounds/999999/messages/0"
    stamp, nonce = int(time.time()), os.urandom(16).hex()
    headers = sign_request(ident.secret, ident.client_id, "GET", path, stamp, nonce, b"")
    assert httpx.get(server + path, headers=headers).status_code == 410  # accepted
    db = dbm.Database.from_url(_db_url(server), create=False)

    def remembered() -> int:
        with db.session() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(dbm.RequestNonce)
                    .where(dbm.RequestNonce.nonce == nonce)
                )
                or 0
            )

    assert remembered() == 1
    deadline = time.monotonic() + 30
    while remembered() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remembered() == 0, "the background purge never removed the nonce"
    # The attacker replays the recorded request after the purge: still refused.
    replay = httpx.get(server + path, headers=headers)
    assert replay.status_code == 401 and replay.json()["error"] == "stale_request"


# -- round messages: decoded only for participants, never on the event loop -----------


def _driver() -> RoundDriver:
    config = make_config(3, 4)
    return RoundDriver(round_id=1, config=config, deadlines={})


def _advert(sender: int) -> bytes:
    config = make_config(3, 4)
    keys = AdvertisedKeys(sender, bytes(31) + b"\x09", bytes(31) + b"\x0a")
    return AdvertiseKeys(config.session_id, keys).encode()


def test_a_non_participants_bytes_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    real = orchestrator.decode_message
    monkeypatch.setattr(
        orchestrator, "decode_message", lambda data: decoded.append(data) or real(data)
    )
    bomb = b"\xa1" * 24 + b"\x00" * 25
    driver = _driver()
    with pytest.raises(RemoteProtocolError, match="not in this round"):
        asyncio.run(driver.submit(99, bomb))
    assert decoded == []


def test_decoding_runs_off_the_event_loop_and_outside_the_round_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A participant's slow-to-decode message stalls neither the loop nor the round."""
    release = threading.Event()
    entered = threading.Event()
    real = orchestrator.decode_message

    def slow_decode(data: bytes) -> Any:
        entered.set()
        release.wait(30)
        return real(data)

    monkeypatch.setattr(orchestrator, "decode_message", slow_decode)

    async def scenario() -> tuple[float, bool]:
        driver = _driver()
        lags: list[float] = []

        async def ticker() -> None:
            while True:
                start = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - start - 0.01)

        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        # The decode takes 1 s (a stand-in for a slow one); on the event loop it
        # would freeze the ticker for that long.
        threading.Timer(1.0, release.set).start()
        submit = asyncio.ensure_future(driver.submit(1, _advert(1)))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        lock_free = not driver._lock.locked()  # nobody holds the round while it decodes
        with contextlib.suppress(RemoteProtocolError):
            await submit
        tick.cancel()
        return max(lags), lock_free

    lag, lock_free = asyncio.run(scenario())
    assert lock_free
    assert lag < 0.5


def test_a_client_gone_mid_body_is_neither_an_error_nor_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A client killed while its request body streams: starlette raises
    # ClientDisconnect from the app. Nobody is left to answer; it is no error.
    from starlette.requests import Request

    from secagg.limits import BodyLimitMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async for _ in Request(scope, receive).stream():
            pass

    messages = iter([{"type": "http.request", "body": b"ab", "more_body": True}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/rounds/3/heartbeat",
        "headers": [(b"transfer-encoding", b"chunked")],
    }
    middleware = BodyLimitMiddleware(app, lambda _s: 1 << 20, 30.0)
    with caplog.at_level("INFO", logger="secagg.limits"):
        asyncio.run(middleware(scope, receive, send))
    assert sent == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("disconnected" in r.getMessage() for r in caplog.records)
