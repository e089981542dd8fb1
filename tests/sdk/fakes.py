"""Fakes for the SDK's resilience tests: a manual clock and scripted HTTP answers.

Time never really passes in these tests: the transport's ``clock`` and
``sleep`` are a :class:`FakeClock`, so a ten-minute retry budget runs in
milliseconds and the assertions hold on a loaded machine.
"""

from __future__ import annotations

import json
import random
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from client_sdk.client import Client, ClientPolicy, RetryPolicy
from client_sdk.identity import Identity
from client_sdk.models import FunctionModel
from client_sdk.transport import SignedTransport, Signer
from protocol.crypto.x509 import self_signed_certificate
from secagg_http.signing import HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, verify_request

URL = "https://server.test"
TASK = 1
EPOCH = 1_800_000_000.0


@dataclass
class FakeClock:
    """Monotonic time that moves only when slept on (or advanced by a handler)."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def slept(self) -> float:
        return sum(self.sleeps)


class MaxJitter(random.Random):
    """Full jitter that always draws the top of its range: waits equal the caps."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes
    headers: dict[str, str]


Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class Scripted:
    """An HTTP handler that records every request and answers from ``handler``."""

    handler: Handler
    requests: list[Recorded] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(
            Recorded(
                request.method, request.url.raw_path.decode(), request.read(), dict(request.headers)
            )
        )
        return self.handler(request)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


def identity() -> Identity:
    return Identity.generate().with_enrolment(7, URL)


def make_client(
    handler: Handler,
    *,
    retry: RetryPolicy | None = None,
    fake: FakeClock | None = None,
    jitter: random.Random | None = None,
    ident: Identity | None = None,
) -> tuple[Client, Scripted, FakeClock]:
    """A Client whose transport talks to ``handler`` on a fake clock."""
    fake = fake or FakeClock()
    ident = ident or identity()
    w = {"w": np.zeros(4, np.float32)}
    client = Client(
        URL,
        ident,
        FunctionModel(lambda: w["w"].copy(), lambda v: w.__setitem__("w", np.asarray(v))),
        lambda m: 1,
        task_id=TASK,
        policy=ClientPolicy(require_certified_identities=False),
    )
    scripted = Scripted(handler)
    assert ident.client_id is not None
    client._transport = SignedTransport(
        httpx.Client(base_url=URL, transport=httpx.MockTransport(scripted)),
        Signer(ident.client_id, ident.secret),
        retry or RetryPolicy(),
        clock=fake.clock,
        sleep=fake.sleep,
        wall_clock=fake.wall,
        rng=jitter or MaxJitter(),
    )
    client._transport.observer = client._observe
    return client, scripted, fake


def signature_ok(ident: Identity, r: Recorded) -> bool:
    """True if ``r`` carries a valid signature of ``ident`` over what was sent."""
    assert ident.client_id is not None
    return verify_request(
        ident.public_key,
        bytes.fromhex(r.headers[HEADER_SIGNATURE]),
        ident.client_id,
        r.method,
        r.path,
        int(r.headers[HEADER_TIMESTAMP]),
        r.headers[HEADER_NONCE],
        r.body,
    )


def refused(code_status: int, code: str, detail: str = "", **extra: object) -> httpx.Response:
    """A typed error answer ``{"error": code, "detail": detail, **extra}``."""
    return httpx.Response(code_status, json={"error": code, "detail": detail or code, **extra})


class _Enrol(BaseHTTPRequestHandler):
    hits: list[str]
    hangups: list[int]  # how many requests are still to be cut without an answer

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        self.hits.append(self.path)
        if self.hangups[0] > 0:  # a server dying mid-request: no status line at all
            self.hangups[0] -= 1
            self.close_connection = True
            return
        body = json.dumps({"client_id": 42}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@contextmanager
def https_server(
    tmp_path: Path, hosts: list[str], port: int = 0, *, tls: bool = True, hangups: int = 0
) -> Iterator[tuple[int, Path, list[str]]]:
    """A real HTTP(S) server on 127.0.0.1 (``port``, 0: any free one) whose
    certificate names ``hosts``; yields (port, certificate file, paths posted).

    Every POST is answered 200 ``{"client_id": 42}`` (an enrolment answer),
    except the first ``hangups``, whose connection is closed without an answer.
    """
    cert, key = self_signed_certificate(hosts)
    cert_file, key_file = tmp_path / f"cert-{hosts[0]}.pem", tmp_path / f"key-{hosts[0]}.pem"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    hits: list[str] = []
    handler = type("Handler", (_Enrol,), {"hits": hits, "hangups": [hangups]})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert_file, hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
