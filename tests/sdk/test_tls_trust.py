"""A TLS certificate the client does not trust is a TrustError at once, never a retry.

A real HTTPS server on 127.0.0.1 with a self-signed certificate (as
``secagg dev-cert`` writes), and the real ``httpx``/``ssl`` stack on the
client side: the error classification depends on how they nest exceptions.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import Client, RetryPolicy, TrustError, enrol
from client_sdk.identity import Identity
from protocol.crypto.x509 import self_signed_certificate
from tests.sdk.fakes import FakeClock

MODEL = [np.zeros(4, np.float32)]


class _Enrol(BaseHTTPRequestHandler):
    hits: list[str]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        self.hits.append(self.path)
        body = json.dumps({"client_id": 42}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@contextmanager
def https_server(tmp_path: Path, hosts: list[str]) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS server on 127.0.0.1 whose certificate names ``hosts``; yields (port, cert, hits)."""
    cert, key = self_signed_certificate(hosts)
    cert_file, key_file = tmp_path / f"cert-{hosts[0]}.pem", tmp_path / f"key-{hosts[0]}.pem"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    hits: list[str] = []
    handler = type("Handler", (_Enrol,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
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


def _client(url: str, verify: bool | str, fake: FakeClock) -> Client:
    ident = Identity.generate().with_enrolment(3, url)
    client = Client(url, ident, MODEL, lambda m: 1, task_id=1, verify=verify)
    transport = client._transport
    transport.clock, transport.sleep = fake.clock, fake.sleep
    transport.retry = RetryPolicy(give_up_after_s=600)
    return client


def test_an_untrusted_issuer_is_a_trust_error_naming_the_ca_file(tmp_path: Path) -> None:
    with https_server(tmp_path, ["127.0.0.1"]) as (port, cert, hits):
        url = f"https://127.0.0.1:{port}"
        # The system CAs do not know the self-signed certificate.
        fake = FakeClock()
        client = _client(url, True, fake)
        with pytest.raises(TrustError) as info:
            client._request("POST", "/v1/tasks/1/checkin")
        assert "not trusted" in str(info.value) and "ca.pem" in str(info.value)
        assert fake.sleeps == [] and client._transport.retries == 0  # never retried
        with pytest.raises(TrustError, match="not trusted"):
            enrol(url, "sa1_token", retry=RetryPolicy())
        assert hits == []  # nothing got through the handshake
        # The control: with its certificate as the CA the same server answers.
        ident = enrol(url, "sa1_token", verify=str(cert))
        assert ident.client_id == 42 and hits == ["/v1/enrol"]


def test_a_host_name_the_certificate_does_not_name_is_a_trust_error(tmp_path: Path) -> None:
    with https_server(tmp_path, ["secagg.invalid"]) as (port, cert, hits):
        fake = FakeClock()
        client = _client(f"https://127.0.0.1:{port}", str(cert), fake)
        with pytest.raises(TrustError) as info:
            client._request("POST", "/v1/tasks/1/checkin")
        message = str(info.value)
        assert "not valid for the host name '127.0.0.1'" in message
        assert "secagg dev-cert --host" in message
        assert fake.sleeps == [] and hits == []


def test_a_missing_or_unusable_ca_file_is_a_trust_error(tmp_path: Path) -> None:
    ident = Identity.generate().with_enrolment(3, "https://x")
    with pytest.raises(TrustError, match="does not exist"):
        Client("https://x", ident, MODEL, lambda m: 1, task_id=1, verify=str(tmp_path / "nope"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TrustError, match="no usable PEM certificate"):
        enrol("https://x", "sa1_token", verify=str(junk))
