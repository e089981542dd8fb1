"""A TLS certificate the client does not trust is a TrustError at once, never a retry.

A real HTTPS server on 127.0.0.1 with a self-signed certificate (as
``secagg dev-cert`` writes), and the real ``httpx``/``ssl`` stack on the
client side: the error classification depends on how they nest exceptions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import Client, RetryPolicy, TrustError, enrol
from client_sdk.identity import Identity
from tests.sdk.fakes import FakeClock, https_server

MODEL = [np.zeros(4, np.float32)]


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
